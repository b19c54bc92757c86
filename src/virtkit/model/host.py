"""What the QEMU argv builder needs to know about the host, as plain data.

The host layer probes these facts (accelerator verdict, QEMU version, machine
type aliases, firmware paths); :mod:`virtkit.qemu.argv` consumes them.  Keeping
them here, in the model, lets the argv builder stay a pure function that
golden files can test without a host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class HostCaps:
    """Host capabilities that change the QEMU command line."""

    accel: Literal["kvm", "tcg"]
    qemu_version: tuple[int, int, int] = (7, 2, 0)
    machine_aliases: dict[str, str] = field(default_factory=dict)
    ovmf_code: str | None = None
    ovmf_vars: str | None = None
    sandbox: bool = True
    vhost_net: bool = False

    def machine_type(self, alias: str) -> str:
        """The concrete, versioned machine type for ``q35``/``pc`` (stable across upgrades)."""
        return self.machine_aliases.get(alias, alias)


@dataclass(frozen=True)
class LaunchFiles:
    """Per-start files and inherited descriptors handed to QEMU.

    ``fds`` maps a role (``qmp``, ``serial0``, ``agent``) to a listening socket
    descriptor that the daemon bound before spawning QEMU; passing descriptors
    removes the start-up race on socket paths and the 108-byte path limit.
    ``tapN`` is the tap device the daemon opened for NIC N (network and bridge
    NICs): QEMU gets the open device, never the right to create one.
    """

    run_dir: str
    log_dir: str
    fds: dict[str, int]
    nvram: str | None = None
    incoming: str | None = None
