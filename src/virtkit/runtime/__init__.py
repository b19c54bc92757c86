"""virtkit.runtime layer."""
