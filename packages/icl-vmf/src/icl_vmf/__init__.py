"""icl_vmf."""
