"""virtkit.web layer."""
