"""fsg_bnn."""
