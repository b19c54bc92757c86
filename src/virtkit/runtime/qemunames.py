"""What the service layer may know of ``virtkit.qemu``, through the runtime.

The service never imports ``qemu`` itself (tests/unit/test_layers.py): it reads the
device layout the argv builder gives a domain (QEMU ids, node names, guest names
such as ``vda``) and names the guest agent's client type from here.
"""

from __future__ import annotations

from virtkit.qemu.agent import GuestAgent
from virtkit.qemu.argv import DiskSlot, disk_slots

__all__ = ["DiskSlot", "GuestAgent", "disk_slots"]
