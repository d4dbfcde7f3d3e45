"""sr_cis."""
