"""virtkit.cli layer."""
