"""virtkit.service layer."""
