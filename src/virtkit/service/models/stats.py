"""What the statistics service (service/stats.py) answers."""

from __future__ import annotations

from virtkit.service.models.base import Result
from virtkit.service.models.documents import QemuCounters


class StateReason(Result):
    """The ``state`` group: the domain's state and why it is in it."""

    state: str
    reason: str | None


class DomainStats(Result):
    """One domain of ``virsh domstats`` (``GET /v1/domstats``).  A group asked for
    is present only while the domain runs; ``error``: QEMU went away meanwhile.
    The groups' contents are runtime/stats.py's (QEMU's counters, as collected)."""

    name: str
    uuid: str
    state: StateReason | None = None
    pid: int | None = None
    started: float | None = None
    error: str | None = None
    cpu: QemuCounters | None = None
    balloon: QemuCounters | None = None
    vcpu: QemuCounters | None = None
    net: list[QemuCounters] | None = None
    block: list[QemuCounters] | None = None


class VcpuThread(Result):
    """One vCPU's thread: its state, CPU time (s), the host CPU it last ran on, the
    host CPUs it may run on, and its share of a CPU since the last sample (%)."""

    id: int
    thread_id: int
    state: str | None
    time: float | None
    host_cpu: int | None
    affinity: str | None
    percent: float | None


class VcpuInfo(Result):
    """vcpuinfo: vCPU -> host thread, host CPU, state, CPU time, affinity."""

    name: str
    pid: int | None
    state: StateReason | None
    vcpus: list[VcpuThread]
    #: the host's CPU count (the width of the affinity map)
    host_cpus: int | None


class HostCpus(Result):
    cpus: int
    memory_mib: int


class Ratios(Result):
    cpu: float
    memory: float


class Limits(Result):
    vcpus: int
    memory_mib: int


class Allocation(Result):
    domains: int
    vcpus: int
    memory_mib: int


class Capacity(Result):
    """Allocated vCPUs and memory of running and defined domains vs the host."""

    host: HostCpus
    ratios: Ratios
    limits: Limits
    running: Allocation
    defined: Allocation
