"""mecoin."""
