"""Host tuning parts of a domain spec: CPU pinning, guest NUMA, hugepages, PCI passthrough.

These are libvirt's ``<cputune>``, ``<cpu><numa>``, ``<numatune>``,
``<memoryBacking><hugepages/>`` and ``<hostdev type='pci'>``.  Validation here is
what the spec alone decides (syntax, vCPU numbers in range, cells covering every
vCPU and all memory); whether the host has the CPUs, nodes, hugepages or IOMMU
is checked at define and start by ``runtime/preflight.py`` and ``host/``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from virtkit.model.cpulist import parse_cpulist
from virtkit.model.units import parse_mib

PCI_ADDRESS = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


def _mib(value: Any) -> Any:
    return parse_mib(value, field="memory") if isinstance(value, str) else value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _cpulist(value: str) -> str:
    parse_cpulist(value)
    return value


def normalize_pci(address: str) -> str:
    """'01:00.0' or '0000:01:00.0' -> '0000:01:00.0'; ValueError for anything else."""
    match = PCI_ADDRESS.match(address.strip().lower())
    if not match:
        raise ValueError(f"PCI address {address!r} must look like 0000:01:00.0 or 01:00.0")
    domain, bus, slot, function = match.groups()
    return f"{domain or '0000'}:{bus}:{slot}.{function}"


# -- resource limits: libvirt's <cputune> shares/period/quota, <memtune>, <blkiotune> --------

#: libvirt's ranges (virsh schedinfo, memtune, blkiotune)
SHARES_RANGE = (2, 262144)
PERIOD_RANGE = (1000, 1000000)
QUOTA_RANGE = (1000, 17592186044415)
BLKIO_WEIGHT_RANGE = (10, 1000)
UNLIMITED_KIB = 9007199254740991  # what virsh prints for "no limit"


class SchedTune(_Spec):
    """CPU scheduler limits of QEMU's cgroup (virsh schedinfo; <cputune><shares> ...)."""

    shares: int | None = Field(default=None, description="relative CPU weight (cpu_shares, "
                               "libvirt's 2-262144; 1024 = the default weight)")
    period: int | None = Field(default=None, description="CFS period in microseconds "
                               "(vcpu_period, 1000-1000000)")
    quota: int | None = Field(default=None, description="CPU time per period in "
                              "microseconds, -1 unlimited (vcpu_quota)")

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: int | None) -> int | None:
        return _in_range(value, SHARES_RANGE, "cpu_shares")

    @field_validator("period")
    @classmethod
    def _period(cls, value: int | None) -> int | None:
        return _in_range(value, PERIOD_RANGE, "vcpu_period")

    @field_validator("quota")
    @classmethod
    def _quota(cls, value: int | None) -> int | None:
        return None if value is None or value == -1 else _in_range(value, QUOTA_RANGE,
                                                                   "vcpu_quota")


class CpuTune(SchedTune):
    """Where vCPU threads and QEMU's other threads may run (virsh vcpupin/emulatorpin)."""

    vcpupin: dict[int, str] = Field(default_factory=dict,
                                    description="vCPU number -> host CPU list, e.g. {0: '1'}")
    emulatorpin: str | None = Field(default=None, description="host CPUs for QEMU's "
                                    "non-vCPU threads (main loop, I/O)")

    @field_validator("vcpupin")
    @classmethod
    def _vcpupin(cls, value: dict[int, str]) -> dict[int, str]:
        for vcpu, cpus in value.items():
            if vcpu < 0:
                raise ValueError(f"vcpupin: vCPU {vcpu} is negative")
            _cpulist(cpus)
        return dict(sorted(value.items()))

    @field_validator("emulatorpin")
    @classmethod
    def _emulatorpin(cls, value: str | None) -> str | None:
        return None if value is None else _cpulist(value)


class NumaCell(_Spec):
    """One guest NUMA node: its vCPUs and its share of the memory."""

    cpus: str = Field(description="guest vCPU numbers of this node, e.g. '0-1'")
    memory: Annotated[int, BeforeValidator(_mib)] = Field(description="MiB on this node")

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: str) -> str:
        return _cpulist(value)


class NumaTune(_Spec):
    """Which host NUMA nodes hold the guest's memory (libvirt's <numatune><memory>)."""

    nodeset: str = Field(description="host NUMA nodes, e.g. '0' or '0-1'")
    mode: Literal["strict", "preferred", "interleave"] = "strict"

    @field_validator("nodeset")
    @classmethod
    def _nodeset(cls, value: str) -> str:
        return _cpulist(value)


class MemoryBacking(_Spec):
    """Guest RAM backing: ``hugepages`` puts it on huge pages (memfd with hugetlb)."""

    hugepages: bool = False
    page_size_kib: int = Field(default=2048, description="huge page size in KiB "
                               "(2048 or 1048576 on x86)")

    @field_validator("page_size_kib")
    @classmethod
    def _page_size(cls, value: int) -> int:
        if value not in (2048, 1048576):
            raise ValueError("page_size_kib must be 2048 (2 MiB) or 1048576 (1 GiB)")
        return value


class HostDev(_Spec):
    """A host PCI device passed through to the guest with VFIO."""

    address: str = Field(description="PCI address, e.g. 0000:01:00.0")
    managed: bool = Field(default=True, description="bind it to vfio-pci at start and give "
                          "it back to its driver at stop")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return normalize_pci(value)


def check_tuning(*, vcpus_max: int, memory_mib: int, machine: str, cputune: CpuTune,
                 numa: list[NumaCell], hostdevs: list[HostDev],
                 backing: MemoryBacking | None = None) -> list[tuple[str, str]]:
    """Problems as (field, message) pairs; empty when the tuning parts agree with the spec."""
    problems: list[tuple[str, str]] = []
    for vcpu in cputune.vcpupin:
        if vcpu >= vcpus_max:
            problems.append(("cputune.vcpupin", f"vCPU {vcpu} does not exist: the domain "
                             f"has vCPUs 0-{vcpus_max - 1}"))
    if numa:
        problems += _check_cells(numa, vcpus_max, memory_mib)
    if machine == "microvm" and (numa or hostdevs):
        problems.append(("numa" if numa else "hostdevs",
                         "microvm has no NUMA tables or PCI bus; use machine: q35"))
    if backing is not None and backing.hugepages:
        page_mib = max(backing.page_size_kib // 1024, 1)
        sizes = [cell.memory for cell in numa] or [memory_mib]
        if any(size % page_mib for size in sizes):
            problems.append(("memory_backing.page_size_kib", f"guest memory (per NUMA cell) "
                             f"must be a multiple of the {page_mib} MiB huge page size"))
    addresses = [dev.address for dev in hostdevs]
    if len(addresses) != len(set(addresses)):
        problems.append(("hostdevs", "one PCI device is listed twice"))
    return problems


def _check_cells(numa: list[NumaCell], vcpus_max: int, memory_mib: int
                 ) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen: set[int] = set()
    for index, cell in enumerate(numa):
        cpus = parse_cpulist(cell.cpus)
        if cpus & seen:
            problems.append((f"numa[{index}].cpus", f"vCPUs {sorted(cpus & seen)} are in "
                             "two cells; give each vCPU one cell"))
        seen |= cpus
        if cell.memory <= 0:
            problems.append((f"numa[{index}].memory", "each cell needs some memory"))
    if seen != set(range(vcpus_max)):
        problems.append(("numa", f"the cells name vCPUs {sorted(seen)}, but the domain has "
                         f"vCPUs 0-{vcpus_max - 1}; every vCPU must be in exactly one cell"))
    total = sum(cell.memory for cell in numa)
    if total != memory_mib:
        problems.append(("numa", f"the cells hold {total} MiB but memory is {memory_mib} "
                         "MiB; make them add up"))
    return problems


class MemTune(_Spec):
    """Memory limits of QEMU's cgroup in KiB, as libvirt's <memtune> (virsh memtune)."""

    hard_limit: int | None = Field(default=None, description="KiB QEMU may use at most")
    soft_limit: int | None = Field(default=None, description="KiB it is pushed back to "
                                   "under memory pressure")
    swap_hard_limit: int | None = Field(default=None, description="KiB of memory plus swap")

    @field_validator("hard_limit", "soft_limit", "swap_hard_limit")
    @classmethod
    def _kib(cls, value: int | None) -> int | None:
        if value is not None and not 0 < value <= UNLIMITED_KIB:
            raise ValueError(f"{value} KiB is out of range (1-{UNLIMITED_KIB})")
        return None if value == UNLIMITED_KIB else value

    @model_validator(mode="after")
    def _order(self) -> MemTune:
        if self.hard_limit and self.swap_hard_limit and self.swap_hard_limit < self.hard_limit:
            raise ValueError("swap_hard_limit must be at least hard_limit (it counts memory "
                             "plus swap)")
        return self


#: a device's throttles in <blkiotune><device> (libvirt's names; 0 or None = none)
BLKIO_DEVICE_THROTTLES = ("read_bytes_sec", "write_bytes_sec", "read_iops_sec",
                          "write_iops_sec")


class BlkioDevice(_Spec):
    """One host block device's weight and throttles for the QEMU's cgroup (libvirt's
    <blkiotune><device>; virsh blkiotune --device-weights, --device-read-bytes-sec ...)."""

    path: str = Field(description="the host block device, e.g. /dev/sda")
    weight: int | None = Field(default=None, description="10-1000 on this device")
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/dev/") or "\0" in value or "," in value or \
                len(value) > 255:
            raise ValueError(f"blkiotune device {value!r} must be a block device path "
                             "under /dev (no commas)")
        return value

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int | None) -> int | None:
        return None if not value else _in_range(value, BLKIO_WEIGHT_RANGE, "device weight")

    @field_validator(*BLKIO_DEVICE_THROTTLES)
    @classmethod
    def _throttle(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("device throttles are whole numbers >= 0 (0 = unlimited)")
        return value or None

    def empty(self) -> bool:
        return self.weight is None and all(getattr(self, k) is None
                                           for k in BLKIO_DEVICE_THROTTLES)


class BlkioTune(_Spec):
    """Block I/O of QEMU's cgroup: its relative weight (virsh blkiotune --weight) and
    per host device weights and throttles."""

    weight: int | None = Field(default=None, description="10-1000 (libvirt's range)")
    devices: list[BlkioDevice] = Field(default_factory=list, max_length=64)

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int | None) -> int | None:
        return _in_range(value, BLKIO_WEIGHT_RANGE, "weight")

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[BlkioDevice]) -> list[BlkioDevice]:
        paths = [device.path for device in value]
        if len(set(paths)) != len(paths):
            raise ValueError("blkiotune names a device twice")
        return [device for device in value if not device.empty()]


IOTUNE_KEYS = ("total_bytes_sec", "read_bytes_sec", "write_bytes_sec",
               "total_iops_sec", "read_iops_sec", "write_iops_sec")


class IoTune(_Spec):
    """One disk's I/O throttle (libvirt's <iotune>, virsh blkdeviotune; QEMU's
    block_set_io_throttle); 0 or None = unlimited."""

    total_bytes_sec: int | None = None
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    total_iops_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None

    @field_validator(*IOTUNE_KEYS)
    @classmethod
    def _value(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("throttle values are whole numbers >= 0 (0 = unlimited)")
        return value or None

    @model_validator(mode="after")
    def _exclusive(self) -> IoTune:
        for kind in ("bytes", "iops"):
            if getattr(self, f"total_{kind}_sec") and (getattr(self, f"read_{kind}_sec")
                                                       or getattr(self, f"write_{kind}_sec")):
                raise ValueError(f"total_{kind}_sec cannot be combined with read_{kind}_sec "
                                 f"or write_{kind}_sec (QEMU refuses it)")
        return self

    def empty(self) -> bool:
        return not any(getattr(self, key) for key in IOTUNE_KEYS)


def _in_range(value: int | None, bounds: tuple[int, int], name: str) -> int | None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} {value} is out of range ({bounds[0]}-{bounds[1]})")
    return value
