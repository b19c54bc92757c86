"""What the host-tuning and limits services (service/tuning.py, service/limits.py)
answer: pinning, KSM, NUMA, host PCI devices, schedinfo, memtune, blkiotune,
blkdeviotune.  ``live``: the values are the running QEMU's (else the definition's)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from virtkit.service.models.base import Request, Result

#: a throttle or weight: 0 removes it
Throttle = Annotated[int, Field(ge=0, le=2**63 - 1)]


class VcpuPin(Result):
    vcpu: int
    #: only when read from the running QEMU
    thread_id: int | None = None
    affinity: str | None


class PinTable(Result):
    """vcpupin without a CPU list: every vCPU's affinity, and the emulator threads'."""

    name: str
    live: bool
    vcpus: list[VcpuPin]
    emulator: str | None


class EmulatorPin(Result):
    name: str
    live: bool
    emulator: str | None


class KsmStatus(Result):
    """/sys/kernel/mm/ksm: ``run`` and its counters (None: unreadable), and the
    memory merged pages save."""

    run: int
    pages_shared: int | None
    pages_sharing: int | None
    pages_unshared: int | None
    pages_volatile: int | None
    full_scans: int | None
    pages_to_scan: int | None
    sleep_millisecs: int | None
    enabled: bool
    saved_mib: float


class PciDevice(Result):
    """nodedev-list: one host PCI function (host/pci.py's PciDevice)."""

    address: str
    vendor_id: str
    device_id: str
    class_id: str
    driver: str | None
    iommu_group: int | None
    vendor: str | None
    product: str | None
    numa_node: int | None
    sriov_totalvfs: int | None
    sriov_numvfs: int | None
    virtfns: list[str]
    physfn: str | None


class NumaNode(Result):
    id: int
    cpus: str
    memory_mib: int
    free_mib: int


class HugePageSize(Result):
    size_kib: int
    total: int
    free: int


class NumaInfo(Result):
    """The host's NUMA nodes and huge pages."""

    nodes: list[NumaNode]
    hugepages: list[HugePageSize]


class SchedInfo(Result):
    """virsh schedinfo (cgroup values; None where the file is absent)."""

    name: str
    live: bool
    cpu_shares: int | None
    vcpu_period: int | None
    vcpu_quota: int | None


class MemTuneValues(Result):
    """virsh memtune, in KiB (libvirt's 'unlimited' is its largest value)."""

    name: str
    live: bool
    hard_limit: int | None
    soft_limit: int | None
    swap_hard_limit: int | None


class BlkioTuneValues(Result):
    """virsh blkiotune: the weight, and per device lists (``/dev/sda,500,...``)."""

    name: str
    live: bool
    weight: int | None
    device_weight: str
    device_read_iops_sec: str
    device_write_iops_sec: str
    device_read_bytes_sec: str
    device_write_bytes_sec: str


class BlkDevIoTune(Result):
    """virsh blkdeviotune: one disk's throttle (0 = unlimited); the values are absent
    when QEMU has no such block device."""

    name: str
    disk: str
    live: bool
    total_bytes_sec: int | None = None
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    total_iops_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None


class BlkioDeviceChange(Request):
    """blkiotune: one host block device's values (left out: kept; 0: removed); also an
    item of the ``devices`` of ``POST /v1/domains/{ref}/limits/blkiotune``."""

    path: str = Field(max_length=255)
    weight: Throttle | None = None
    read_bytes_sec: Throttle | None = None
    write_bytes_sec: Throttle | None = None
    read_iops_sec: Throttle | None = None
    write_iops_sec: Throttle | None = None
