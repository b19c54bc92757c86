"""Host tuning at start: checks of the spec's tuning parts, pinning, VFIO binding.

* :func:`check_host` refuses a spec the host cannot honour: pinning to CPUs the
  host lacks, NUMA nodes it lacks, more huge pages than are free, PCI devices that
  cannot be passed through.  It runs at define (``at_start=False``: what does not
  change) and again at every start.
* :func:`apply_cputune` pins the vCPU threads (``cputune.vcpupin``) and QEMU's
  other threads (``cputune.emulatorpin``) once QMP has listed the vCPU threads,
  before ``cont`` (the launcher's set-up step).
* :func:`bind_hostdevs` / :func:`release_hostdevs` bind ``managed`` devices to
  vfio-pci before QEMU starts and give them back to their drivers after it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from virtkit.errors import HostError, InvalidSpec
from virtkit.host import numa, pci
from virtkit.model.cpulist import format_cpulist, parse_cpulist
from virtkit.model.domain import Domain
from virtkit.model.tuning import HostDev
from virtkit.qemu.monitor import Monitor

log = logging.getLogger(__name__)


def host_cpus() -> set[int]:
    return os.sched_getaffinity(0)


def check_cpus(text: str, field: str, usable: set[int] | None = None) -> set[int]:
    """The CPUs of ``text`` (a host CPU list); refuses CPUs this host lacks."""
    usable = host_cpus() if usable is None else usable
    try:
        cpus = parse_cpulist(text)
    except ValueError as exc:
        raise InvalidSpec(f"{field}: {exc}", field=field, fix="write e.g. '0-1' or '0,2'") \
            from None
    missing = cpus - usable
    if missing:
        raise InvalidSpec(f"{field}: this host has no CPU {format_cpulist(missing)} (usable: "
                          f"{format_cpulist(usable)})", field=field,
                          fix=f"pick CPUs from {format_cpulist(usable)}")
    return cpus


def check_host(domain: Domain, *, at_start: bool, sys_root: Path = numa.SYS) -> None:
    """Refuse what this host cannot do for the spec's tuning parts (message + fix)."""
    for vcpu, cpus in domain.cputune.vcpupin.items():
        check_cpus(cpus, f"cputune.vcpupin[{vcpu}]")
    if domain.cputune.emulatorpin:
        check_cpus(domain.cputune.emulatorpin, "cputune.emulatorpin")
    if domain.numatune is not None:
        missing = numa.check_nodeset(domain.numatune.nodeset, sys_root)
        if missing:
            have = format_cpulist(numa.node_ids(sys_root))
            raise InvalidSpec(f"numatune.nodeset: this host has no NUMA node "
                              f"{format_cpulist(missing)} (it has node {have})",
                              field="numatune.nodeset", fix=f"use nodes from {have}")
    if domain.memory_backing.hugepages and at_start:
        check_hugepages(domain, sys_root)
    for index, dev in enumerate(domain.hostdevs):
        pci.check_passthrough(dev.address, managed=dev.managed, sys_root=sys_root,
                              field_name=f"hostdevs[{index}]")


def check_hugepages(domain: Domain, sys_root: Path = numa.SYS) -> None:
    """Enough free huge pages of the spec's size for all guest memory."""
    size = domain.memory_backing.page_size_kib
    pages = numa.hugepages(sys_root).get(size)
    need = domain.memory.current * 1024 // size
    path = sys_root / "kernel" / "mm" / "hugepages" / f"hugepages-{size}kB"
    if pages is None:
        raise HostError(f"memory_backing: this host has no {size // 1024} MiB huge pages "
                        f"({path} is missing)", fix="use page_size_kib: 2048, or boot with "
                        "hugepagesz=1G hugepages=N")
    if pages.free < need:
        raise HostError(
            f"memory_backing: the guest needs {need} huge pages of {size // 1024} MiB "
            f"({domain.memory.current} MiB) but only {pages.free} are free (of "
            f"{pages.total})", fix=f"reserve more: echo {pages.total - pages.free + need} > "
            f"{path}/nr_hugepages (as root), or drop memory_backing.hugepages")


def pin(tid: int, cpus: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.sched_setaffinity(tid, cpus)


def thread_ids(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def apply_cputune(domain: Domain, pid: int, vcpu_threads: dict[int, int]) -> None:
    """emulatorpin on every non-vCPU thread, vcpupin on each named vCPU thread."""
    tune = domain.cputune
    vcpu_tids = set(vcpu_threads.values())
    if tune.emulatorpin:
        cpus = parse_cpulist(tune.emulatorpin)
        for tid in thread_ids(pid):
            if tid not in vcpu_tids:
                pin(tid, cpus)
    for vcpu, text in tune.vcpupin.items():
        if vcpu in vcpu_threads:
            pin(vcpu_threads[vcpu], parse_cpulist(text))


async def vcpu_thread_ids(monitor: Monitor) -> dict[int, int]:
    """vCPU index -> host thread id (QMP query-cpus-fast)."""
    reply = await monitor.query_cpus_fast()
    return {int(cpu["cpu-index"]): int(cpu["thread-id"]) for cpu in reply}


async def pin_new_vcpus(monitor: Monitor, domain: Domain, known: set[int]) -> None:
    """Pin the vCPU threads a hotplug just created (not in ``known``) as a start would:
    ``cputune.vcpupin``, else ``vcpus.cpuset``, else every host CPU.  QEMU's main thread
    creates them, so without this they would inherit the emulator's pinning."""
    for index, tid in (await vcpu_thread_ids(monitor)).items():
        if tid in known:
            continue
        text = domain.cputune.vcpupin.get(index) or domain.vcpus.cpuset
        pin(tid, parse_cpulist(text) if text else host_cpus())


def bind_hostdevs(domain: Domain, sys_root: Path = numa.SYS) -> dict[str, str | None]:
    """Bind ``managed`` devices to vfio-pci; {address: original driver} to restore later."""
    return bind_devices(domain.hostdevs, sys_root)


def bind_devices(hostdevs: Iterable[HostDev], sys_root: Path = numa.SYS
                 ) -> dict[str, str | None]:
    """:func:`bind_hostdevs` of these devices (all of them given back on a failure)."""
    bound: dict[str, str | None] = {}
    try:
        for dev in hostdevs:
            if dev.managed:
                bound[dev.address] = pci.bind_vfio(dev.address, sys_root)
    except BaseException:
        release_hostdevs(bound, sys_root)
        raise
    return bound


def release_hostdevs(bound: dict[str, str | None], sys_root: Path = numa.SYS) -> None:
    for address, original in bound.items():
        try:
            pci.restore_driver(address, original, sys_root)
        except Exception:  # giving a device back must not stop the others
            log.exception("could not give %s back to %s", address, original)
