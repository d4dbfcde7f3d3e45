"""ibta."""
