"""What the host service (service/host.py) answers."""

from __future__ import annotations

from typing import Literal

from virtkit.service.models.base import Result


class HostCheck(Result):
    """One line of ``host check``: what was checked, the outcome, how to fix it."""

    name: str
    status: Literal["PASS", "WARN", "FAIL"]
    detail: str
    fix: str | None
    #: the value found, where a script wants it (the accelerator check: kvm or tcg)
    value: str | None


class QemuBinary(Result):
    path: str
    version: str


class CpuTopology(Result):
    """virsh nodeinfo's CPU lines (host/nodefacts.py's cpu_topology)."""

    cpus: int
    mhz: int
    nodes: int
    sockets: int
    cores: int
    threads: int


class HostInfo(Result):
    """``GET /v1/host``: the host's facts, the accelerator verdict, the QEMU binary,
    and virsh nodeinfo's facts (libvirt's virNodeInfo)."""

    hostname: str
    kernel: str
    cpus: int | None
    memory_mib: int
    accelerator: Literal["kvm", "tcg"]
    accelerator_reason: str
    qemu: QemuBinary
    arch: str
    memory_kib: int
    topology: CpuTopology
