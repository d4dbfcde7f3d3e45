"""papers_shared."""
