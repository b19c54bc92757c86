"""virtkit.model layer."""
