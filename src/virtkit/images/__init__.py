"""virtkit.images layer."""
