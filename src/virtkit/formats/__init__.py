"""virtkit.formats layer."""
