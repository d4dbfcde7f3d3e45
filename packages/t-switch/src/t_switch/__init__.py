"""t_switch."""
