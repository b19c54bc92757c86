"""virtkit.storage layer."""
