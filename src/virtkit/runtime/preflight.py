"""Checks of a domain spec against the host, before it is defined or started.

The model validates what a spec says; these checks validate that the host can
honour it: the files it names exist and are readable, and the memory it asks
for fits in the host.  Each failure names the spec field and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import Forbidden, InvalidSpec, VirtkitError
from virtkit.host.pathpolicy import PathPolicy, remote_caller
from virtkit.model.cpulist import format_cpulist
from virtkit.model.domain import DiskDevice, Domain, parse_cpuset
from virtkit.model.netdisk import is_network_path
from virtkit.model.units import format_mib
from virtkit.storage import qemuimg


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


@dataclass(frozen=True)
class GuestPath:
    """One host path a spec gives its guest (see host/pathpolicy.py)."""

    path: str
    field: str
    #: pathpolicy kind: file, dir, new (created if missing), socket (bound by the daemon)
    kind: str
    #: what QEMU does with it: own (writes), read, rx/rwx (a shared folder)
    access: str
    #: named as pool + volume: the service resolved it (a remote caller may name it)
    volume: bool = False
    #: a disk image whose backing chain QEMU opens too
    image_format: str | None = None


def guest_paths(domain: Domain) -> list[GuestPath]:
    """Every host path the spec names for its guest: disks and CD media, kernel, initrd,
    serial log files, parallel port files, channel sockets, shared folders."""
    found: list[GuestPath] = []
    if domain.boot.kernel:
        found.append(GuestPath(domain.boot.kernel, "boot.kernel", "file", "read"))
    if domain.boot.initrd:
        found.append(GuestPath(domain.boot.initrd, "boot.initrd", "file", "read"))
    for index, disk in enumerate(domain.disks):
        if disk.path is not None and not is_network_path(disk.path):
            found.append(GuestPath(disk.path, f"disks[{index}].path", "file",
                                   "read" if disk.readonly else "own",
                                   volume=disk.pool is not None and disk.volume is not None,
                                   image_format=disk.format or "probe"))
    for index, serial in enumerate(domain.serials):
        if serial.log and serial.log_path:
            found.append(GuestPath(serial.log_path, f"serials[{index}].log_path", "new", "own"))
    for index, port in enumerate(domain.parallels):
        found.append(GuestPath(port.path, f"parallels[{index}].path", "new", "own"))
    for index, channel in enumerate(domain.channels):
        if channel.path:
            found.append(GuestPath(channel.path, f"channels[{index}].path", "socket", "own"))
    for index, fs in enumerate(domain.filesystems):
        found.append(GuestPath(fs.source, f"filesystems[{index}].source", "dir",
                               "rx" if fs.readonly else "rwx"))
    return found


#: deeper chains than this are refused (snapshot chains stay far below)
MAX_CHAIN = 256


def backing_files(path: str, fmt: str | None,
                  check: Callable[[str], str] | None = None) -> list[str]:
    """The backing chain below image ``path`` (real paths, top first; empty for raw),
    read one layer at a time (``qemu-img info`` opens no backing file): ``check`` sees
    each backing file *before* qemu-img opens it, so a FIFO or a forbidden file in a
    chain is refused by name and never opened."""
    chain: list[str] = []
    current = path
    while fmt != "raw" and len(chain) < MAX_CHAIN:
        try:
            info = qemuimg.image_info(current, fmt=fmt)
        except VirtkitError:
            break  # not an image qemu-img reads: QEMU reports it in its own words
        name = info.get("full-backing-filename") or info.get("backing-filename")
        if not name:
            break
        name = str(name)
        if not name.startswith("/"):
            if ":" in name.split("/", 1)[0] and check is not None:
                raise InvalidSpec(f"{path}: backing file {name!r} is not a local file",
                                  field="path", fix="rebase the image onto a local file")
            name = os.path.join(os.path.dirname(current), name)
        layer = check(name) if check is not None else os.path.realpath(name)
        if layer in chain or layer == os.path.realpath(path):
            raise InvalidSpec(f"{path}: its backing chain loops through {layer}",
                              field="path", fix="rebase the image")
        chain.append(layer)
        fmt = info.get("backing-filename-format")
        current = layer
    return chain


def check_paths(domain: Domain, policy: PathPolicy | None, *, remote: bool | None = None,
                trusted: Collection[str] = ()) -> list[tuple[GuestPath, str]]:
    """Every guest path (backing files included) through the path policy: the list of
    (path, real path) when all pass, else the first refusal (InvalidSpec/Forbidden).
    ``remote`` None: as the request's caller is; paths in ``trusted`` (the stored
    definition's) and pool/volume disks are not held to the remote rule.
    Nothing is changed on disk."""
    checked: list[tuple[GuestPath, str]] = []
    if policy is None:
        return checked
    _check_network_disks(domain, remote, trusted)
    for item in guest_paths(domain):
        who = False if item.volume or item.path in trusted else remote
        real = policy.check(item.path, field=item.field, kind=item.kind, remote=who)
        checked.append((item, real))
        if item.image_format is None or not os.path.isfile(real):
            continue
        fmt = None if item.image_format == "probe" else item.image_format
        field = f"{item.field} (backing file)"

        def layer_ok(name: str, field: str = field, who: bool | None = who) -> str:
            return policy.check(name, field=field, kind="file", remote=who)

        for layer in backing_files(real, fmt, layer_ok):
            checked.append((GuestPath(layer, field, "file", "read"), layer))
    return checked


def _check_network_disks(domain: Domain, remote: bool | None, trusted: Collection[str]
                         ) -> None:
    """``nfs://`` disks are no host files (guest_paths leaves them out): a remote caller
    names them as volumes of a netfs pool only, as it does host files (security.md §7)."""
    if not (remote_caller() if remote is None else remote):
        return
    for index, disk in enumerate(domain.disks):
        if is_network_path(disk.path) and disk.volume is None and disk.path not in trusted:
            raise Forbidden(f"disks[{index}].path: {disk.path} is not a pool volume; a "
                            "remote caller names network disks as volumes of a netfs pool",
                            fix="define a netfs pool on that export and give pool and "
                                "volume instead of the URL")


def check_files(domain: Domain, policy: PathPolicy | None = None, *,
                remote: bool | None = None, trusted: Collection[str] = ()) -> None:
    """Every path the spec names passes the path policy (host/pathpolicy.py); every
    kernel, initrd and disk exists and is readable (writable unless read-only)."""
    check_paths(domain, policy, remote=remote, trusted=trusted)
    boot = domain.boot
    if boot.kernel:
        _need_file(boot.kernel, "boot.kernel", "kernel", "fix the path to the kernel image")
    if boot.initrd:
        _need_file(boot.initrd, "boot.initrd", "initrd", "fix the path to the initrd image")
    for index, disk in enumerate(domain.disks):
        if disk.path is None or is_network_path(disk.path):  # QEMU opens those itself
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
