"""Assemble the :class:`HostCaps` a domain starts with, from the host probes.

The accelerator verdict (cached per boot), the QEMU binary's version, machine
type aliases and sandbox support, and the OVMF firmware pair are combined here
so that the launcher needs one call and the argv builder stays pure.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.host.accel import decide_accelerator
from virtkit.host.qemubin import qemu_info, select_firmware
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps


class HostCapsProvider:
    """Callable: ``provider(domain) -> (HostCaps, qemu binary path)``."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir

    def accelerator(self, requested: str = "auto") -> str:
        return decide_accelerator(requested, self._cache_dir).accel

    def __call__(self, domain: Domain) -> tuple[HostCaps, str]:
        info = qemu_info()
        info.resolve_machine(domain.machine.value)
        verdict = decide_accelerator(domain.accelerator.value, self._cache_dir)
        firmware = select_firmware(info.firmware)
        caps = HostCaps(
            accel=verdict.accel,
            qemu_version=info.version,
            machine_aliases=info.aliases,
            ovmf_code=str(firmware.code) if firmware else None,
            ovmf_vars=str(firmware.vars_template) if firmware and firmware.vars_template
            else None,
            sandbox=info.sandbox,
            vhost_net=os.path.exists("/dev/vhost-net"),
        )
        return caps, str(info.path)
