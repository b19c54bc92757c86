"""The host command API: ``host check`` and the facts the overview pages show."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

from virtkit.host.accel import decide_accelerator
from virtkit.host.checks import Check, run_host_checks
from virtkit.host.nodefacts import cpu_topology, memory_stats
from virtkit.host.qemubin import qemu_info
from virtkit.runtime.preflight import host_memory_mib
from virtkit.service.models.host import CpuTopology, HostCheck, HostInfo, QemuBinary


class HostService:
    def __init__(self, cache_dir: Path,
                 cgroups: Callable[[], tuple[bool, str]] | None = None,
                 cgroup_required: bool = True) -> None:
        self._cache_dir = cache_dir
        #: the daemon's own view of the cgroups it puts QEMUs in (runtime/confine.py)
        self._cgroups = cgroups
        self._cgroup_required = cgroup_required

    def check(self, *, daemon_reachable: bool | None = True) -> list[HostCheck]:
        """The host check lines (PASS/WARN/FAIL with a fix), accelerator verdict last."""
        checks = run_host_checks(daemon_reachable=daemon_reachable, cache_dir=self._cache_dir)
        if self._cgroups is not None:
            ok, detail = self._cgroups()
            if ok:
                line = Check("daemon's QEMU cgroups", "PASS", detail)
            elif self._cgroup_required:
                line = Check("daemon's QEMU cgroups", "FAIL",
                             f"confined starts will fail: {detail}",
                             "mount the cgroup file systems, or start virtkitd with "
                             "--no-cgroup")
            else:
                line = Check("daemon's QEMU cgroups", "WARN", detail,
                             "mount the cgroup file systems and restart virtkitd without "
                             "--no-cgroup")
            checks.insert(len(checks) - 1, line)
        return [HostCheck(**check.to_dict()) for check in checks]

    def info(self) -> HostInfo:
        verdict = decide_accelerator("auto", self._cache_dir)
        qemu = qemu_info()
        return HostInfo(
            hostname=os.uname().nodename,
            kernel=os.uname().release,
            cpus=os.cpu_count(),
            memory_mib=host_memory_mib(),
            accelerator=verdict.accel,
            accelerator_reason=verdict.reason,
            qemu=QemuBinary(path=str(qemu.path), version=".".join(map(str, qemu.version))),
            # virsh nodeinfo's facts (libvirt's virNodeInfo)
            arch=platform.machine(),
            memory_kib=memory_stats()["total"],
            topology=CpuTopology(**cpu_topology()))
