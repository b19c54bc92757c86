"""virtkit.store layer."""
