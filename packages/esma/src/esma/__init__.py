"""esma."""
