"""smr_ssm."""
