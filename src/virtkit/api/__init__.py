"""virtkit.api layer."""
