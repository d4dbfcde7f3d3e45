"""ofs_dpo."""
