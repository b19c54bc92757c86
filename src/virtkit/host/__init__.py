"""virtkit.host layer."""
