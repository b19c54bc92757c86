"""Host facts virsh shows: nodememstats, nodecpustats and sysinfo (SMBIOS from sysfs).

Each reader takes the file or folder it reads, so tests give it a copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.errors import InvalidSpec

PROC = Path("/proc")
DMI = Path("/sys/class/dmi/id")
#: virsh's names for the /proc/meminfo fields (libvirt's linux node driver)
MEMINFO = {"total": "MemTotal", "free": "MemFree", "buffers": "Buffers", "cached": "Cached"}

#: sysinfo's <entry name=...> per block, read from /sys/class/dmi/id/<file>
SMBIOS: dict[str, tuple[tuple[str, str], ...]] = {
    "bios": (("vendor", "bios_vendor"), ("version", "bios_version"), ("date", "bios_date"),
             ("release", "bios_release")),
    "system": (("manufacturer", "sys_vendor"), ("product", "product_name"),
               ("version", "product_version"), ("serial", "product_serial"),
               ("uuid", "product_uuid"), ("sku", "product_sku"),
               ("family", "product_family")),
    "baseBoard": (("manufacturer", "board_vendor"), ("product", "board_name"),
                  ("version", "board_version"), ("serial", "board_serial"),
                  ("asset", "board_asset_tag")),
    "chassis": (("manufacturer", "chassis_vendor"), ("version", "chassis_version"),
                ("serial", "chassis_serial"), ("asset", "chassis_asset_tag")),
}


def memory_stats(meminfo: Path = PROC / "meminfo") -> dict[str, int]:
    """total/free/buffers/cached in KiB (virsh nodememstats)."""
    values: dict[str, int] = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdecimal():
            values[key] = int(fields[0])
    return {name: values.get(key, 0) for name, key in MEMINFO.items()}


def cpu_stats(cpu: int | None = None, stat: Path = PROC / "stat") -> dict[str, int]:
    """user/system/idle/iowait in ns since boot, all CPUs or ``cpu`` (virsh
    nodecpustats): user includes nice, system includes irq and softirq, as libvirt's."""
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    wanted = "cpu" if cpu is None else f"cpu{cpu}"
    for line in stat.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == wanted:
            user, nice, system, idle, iowait, irq, softirq = (int(v) for v in fields[1:8])
            return {"user": (user + nice) * tick_ns,
                    "system": (system + irq + softirq) * tick_ns,
                    "idle": idle * tick_ns, "iowait": iowait * tick_ns}
    raise InvalidSpec(f"the host has no CPU {cpu}", field="cpu",
                      fix=f"give a number from 0 to {(os.cpu_count() or 1) - 1}")


def smbios(dmi: Path = DMI) -> dict[str, list[tuple[str, str]]]:
    """The host's SMBIOS tables as sysfs shows them: block -> [(entry, value)];
    unreadable files (serials are root's only) and empty values are left out."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for block, entries in SMBIOS.items():
        found = []
        for name, filename in entries:
            try:
                value = (dmi / filename).read_text(errors="replace").strip()
            except OSError:
                continue
            if value:
                found.append((name, value))
        if found:
            tables[block] = found
    return tables


def cpu_topology(sysfs: Path = Path("/sys/devices/system"), cpuinfo: Path = PROC / "cpuinfo"
                 ) -> dict[str, int]:
    """virsh nodeinfo's CPU lines as libvirt's linux node driver counts them: online
    CPUs, MHz, NUMA cells, sockets per cell, cores per socket, threads per core."""
    cpus = packages = 0
    cores: set[tuple[str, str]] = set()
    package_ids: set[str] = set()
    for folder in sorted((sysfs / "cpu").glob("cpu[0-9]*")):
        online = folder / "online"
        if online.exists() and online.read_text().strip() == "0":
            continue
        cpus += 1
        package = _text(folder / "topology" / "physical_package_id") or "0"
        package_ids.add(package)
        cores.add((package, _text(folder / "topology" / "core_id") or folder.name))
    cpus = cpus or os.cpu_count() or 1
    packages = max(len(package_ids), 1)
    nodes = max(len(list((sysfs / "node").glob("node[0-9]*"))), 1)
    core_count = max(len(cores), 1)
    mhz = 0
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                mhz = int(float(value))
                break
    except (OSError, ValueError):
        mhz = 0
    return {"cpus": cpus, "mhz": mhz, "nodes": nodes,
            "sockets": max(packages // nodes, 1),
            "cores": max(core_count // packages, 1),
            "threads": max(cpus // core_count, 1)}


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
