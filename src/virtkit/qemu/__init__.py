"""virtkit.qemu layer."""
