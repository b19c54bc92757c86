"""virtkit.network layer."""
