"""g2g_fscil."""
