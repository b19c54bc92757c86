"""Checks of a domain spec against the host, before it is defined or started.

The model validates what a spec says; these checks validate that the host can
honour it: the files it names exist and are readable, and the memory it asks
for fits in the host.  Each failure names the spec field and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.errors import InvalidSpec
from virtkit.model.cpulist import format_cpulist
from virtkit.model.domain import DiskDevice, Domain, parse_cpuset
from virtkit.model.units import format_mib


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Total host RAM in MiB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def _need_file(path: str, field: str, what: str, fix: str) -> None:
    if not os.path.exists(path):
        raise InvalidSpec(f"{field}: {what} {path} does not exist", field=field, fix=fix)
    if os.path.isdir(path):
        raise InvalidSpec(f"{field}: {path} is a folder, not a {what}", field=field,
                          fix=f"name the {what} file itself")
    if not os.access(path, os.R_OK):
        raise InvalidSpec(f"{field}: {what} {path} is not readable", field=field,
                          fix="fix its permissions")


def check_files(domain: Domain) -> None:
    """Every kernel, initrd and disk path the spec names must exist and be readable."""
    boot = domain.boot
    if boot.kernel:
        _need_file(boot.kernel, "boot.kernel", "kernel", "fix the path to the kernel image")
    if boot.initrd:
        _need_file(boot.initrd, "boot.initrd", "initrd", "fix the path to the initrd image")
    for index, disk in enumerate(domain.disks):
        if disk.path is None:
            continue
        if disk.device is DiskDevice.CDROM:
            fix = "fix the path to the ISO image, or leave the cdrom empty"
        else:
            fix = f"create it (qemu-img create -f qcow2 {disk.path} 10G) or fix the path"
        _need_file(disk.path, f"disks[{index}].path", "disk image", fix)
        if not disk.readonly and not os.access(disk.path, os.W_OK):
            raise InvalidSpec(f"disks[{index}].path: {disk.path} is not writable",
                              field=f"disks[{index}].path",
                              fix="fix its permissions, or set readonly: true")
    for index, fs in enumerate(domain.filesystems):
        if not os.path.isdir(fs.source):
            raise InvalidSpec(f"filesystems[{index}].source: {fs.source} is not a folder",
                              field=f"filesystems[{index}].source",
                              fix="create it, or share an existing folder")


#: where Debian and Fedora install virtiofsd (the Rust one, then QEMU's C one)
VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")


def virtiofsd_binary() -> str | None:
    """The host's virtiofsd, if installed."""
    return next((path for path in VIRTIOFSD_PATHS if os.access(path, os.X_OK)), None)


def resolve_filesystems(domain: Domain) -> None:
    """Give every ``driver: auto`` share its driver on this host (virtiofs where virtiofsd
    is installed and the share allows it, else 9p); refuse virtiofs without virtiofsd."""
    binary = virtiofsd_binary()
    for index, fs in enumerate(domain.filesystems):
        if fs.driver == "auto":
            able = binary is not None and not fs.readonly and fs.accessmode == "passthrough"
            fs.driver = "virtiofs" if able else "9p"
        elif fs.driver == "virtiofs" and binary is None:
            raise InvalidSpec(f"filesystems[{index}]: virtiofsd is not installed",
                              field=f"filesystems[{index}].driver",
                              fix="apt-get install virtiofsd (or qemu-system-common), or "
                                  "use driver: 9p")


def check_cpuset(domain: Domain, host_cpus: set[int] | None = None) -> None:
    """A vCPU pinning set must name CPUs this host has (and may use)."""
    if domain.vcpus.cpuset is None:
        return
    usable = os.sched_getaffinity(0) if host_cpus is None else host_cpus
    missing = parse_cpuset(domain.vcpus.cpuset) - usable
    if missing:
        raise InvalidSpec(f"vcpus.cpuset: this host has no CPU {format_cpulist(missing)[:60]} "
                          f"(usable: {format_cpulist(usable)})", field="vcpus.cpuset",
                          fix=f"pick CPUs from {format_cpulist(usable)}")


def check_memory(domain: Domain, host_mib: int | None = None) -> None:
    """The VM's memory (its maximum, if hot-add is allowed) must fit in the host."""
    total = host_memory_mib() if host_mib is None else host_mib
    wanted = domain.memory.max or domain.memory.current
    if wanted > total:
        field = "memory.max" if domain.memory.max else "memory"
        raise InvalidSpec(
            f"{field}: {format_mib(wanted)} is more than the host's {format_mib(total)}",
            field=field, fix=f"ask for at most {format_mib(total)}",
        )


def duplicate_paths(domain: Domain) -> None:
    """Two writable disks on one image would corrupt it."""
    seen: dict[str, int] = {}
    for index, disk in enumerate(domain.disks):
        if disk.path is None:
            continue
        real = os.path.realpath(disk.path)
        if real in seen and not disk.readonly:
            raise InvalidSpec(
                f"disks[{index}].path: {disk.path} is already disks[{seen[real]}]",
                field=f"disks[{index}].path", fix="attach each image once",
            )
        seen[real] = index
