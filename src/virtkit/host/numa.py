"""The host's NUMA nodes and huge pages, read from sysfs.

``/sys/devices/system/node/nodeN`` (cpulist, meminfo) and
``/sys/kernel/mm/hugepages/hugepages-<size>kB`` (nr/free).  Every reader takes a
``sys_root`` so tests can point it at a fake tree.  A kernel without NUMA support
has no node folders: it is reported as one node 0 holding all CPUs and memory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from virtkit.model.cpulist import format_cpulist, parse_cpulist

SYS = Path("/sys")


@dataclass(frozen=True)
class HostNode:
    """One host NUMA node."""

    id: int
    cpus: str
    memory_mib: int
    free_mib: int


@dataclass(frozen=True)
class HugePages:
    """One huge page size: configured and free pages (host-wide)."""

    size_kib: int
    total: int
    free: int

    @property
    def free_mib(self) -> int:
        return self.free * self.size_kib // 1024


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _meminfo_kib(text: str, key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(match.group(1)) if match else 0


def host_nodes(sys_root: Path = SYS) -> list[HostNode]:
    """The host's NUMA nodes (one node 0 for a kernel without NUMA)."""
    base = sys_root / "devices" / "system" / "node"
    nodes = []
    for folder in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        meminfo = _read(folder / "meminfo")
        nodes.append(HostNode(int(folder.name[4:]), _read(folder / "cpulist"),
                              _meminfo_kib(meminfo, "MemTotal") // 1024,
                              _meminfo_kib(meminfo, "MemFree") // 1024))
    if nodes:
        return nodes
    meminfo = _read(Path("/proc/meminfo")) if sys_root == SYS else ""
    cpus = format_cpulist(os.sched_getaffinity(0)) if sys_root == SYS else "0"
    return [HostNode(0, cpus, _meminfo_kib(meminfo, "MemTotal") // 1024,
                     _meminfo_kib(meminfo, "MemAvailable") // 1024)]


def node_ids(sys_root: Path = SYS) -> set[int]:
    return {node.id for node in host_nodes(sys_root)}


def hugepages(sys_root: Path = SYS) -> dict[int, HugePages]:
    """Huge page sizes of the host: {size in KiB: HugePages}."""
    result = {}
    for folder in (sys_root / "kernel" / "mm" / "hugepages").glob("hugepages-*kB"):
        size = int(folder.name[len("hugepages-"):-2])
        result[size] = HugePages(size, int(_read(folder / "nr_hugepages", "0") or 0),
                                 int(_read(folder / "free_hugepages", "0") or 0))
    return result


def check_nodeset(nodeset: str, sys_root: Path = SYS) -> set[int]:
    """The host nodes ``nodeset`` names that this host lacks (empty when all exist)."""
    return parse_cpulist(nodeset) - node_ids(sys_root)
