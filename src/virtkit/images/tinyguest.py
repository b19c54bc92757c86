"""The tiny test guest: a Debian kernel plus a busybox initramfs, built once per machine.

virtkit's real-QEMU tests need a guest that boots in seconds under TCG, needs no
disk image, no network and no internet, and still exercises what a manager cares
about: the serial console, ACPI power-off, virtio disks, the watchdog.  This module
builds such a guest from two Debian packages only:

* the kernel that ``linux-image-amd64`` currently depends on (``apt-get download``),
* ``busybox-static`` (the installed ``/bin/busybox`` if it is static, else downloaded).

The result is a ``vmlinuz`` and a gzip'd newc ``initrd.img`` holding busybox, its
applet symlinks and the few kernel modules the guest needs (dependencies resolved
from each module's own ``.modinfo`` section: Debian's package ships no
``modules.dep``; depmod runs in its postinst).  Modules are stored uncompressed, so
busybox ``insmod`` and kernels without in-kernel decompression can load them.

Guest behaviour (``/etc/init.d/rcS`` run by busybox init):

1. mounts proc, sysfs, devtmpfs, devpts; loads the modules;
2. starts busybox ``acpid``: an ACPI power-button press (QMP ``system_powerdown``)
   syncs, unmounts, prints ``VIRTKIT-GUEST-POWEROFF`` and powers off at once;
3. prints ``VIRTKIT-DISK <name> <bytes>`` for each virtio disk (vd*, and sd* from
   virtio-scsi), then :data:`BOOT_MARKER` on the console;
4. busybox init then respawns a login shell on ``ttyS0`` (prompt ``/ # ``).

Send ``system_powerdown`` only after the marker: acpid is not listening before it,
and an earlier button press is lost (the marker waits until acpid holds the power
button's event device: it opens it only after going to the background).  Under
TCG ``-M microvm`` (no HPET, no ACPI PM timer) append ``tsc_early_khz=<host TSC
kHz>``: calibrating the TSC against the PIT fails when the host is busy and the
kernel then hangs early in boot.

The build lives in ``cache_dir()/tinyguest`` with a ``manifest.json`` that records
the kernel package and version, busybox version, module list and a hash of the
guest recipe.  The directory is assembled in a temporary sibling and renamed into
place, and the manifest is written last, so an interrupted build never looks
complete.  A different recipe (guest files, module list, command line or
``_RECIPE_VERSION``, which must be bumped when the assembly code changes) triggers a
rebuild; a newer kernel in the archive does not (use ``force=True``).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from virtkit.cpio import CpioWriter
from virtkit.errors import HostError

__all__ = [
    "BOOT_MARKER",
    "DISK_MARKER",
    "GUEST_MODULES",
    "POWEROFF_MARKER",
    "RECOMMENDED_CMDLINE",
    "TinyGuest",
    "TinyGuestBuildError",
    "build_tiny_guest",
    "cache_dir",
    "main",
]

BOOT_MARKER = "VIRTKIT-GUEST-READY"
"""Printed alone on a line on the serial console once the guest is fully up."""

DISK_MARKER = "VIRTKIT-DISK"
"""Prefix of the ``VIRTKIT-DISK <name> <size-in-bytes>`` lines printed before the marker."""

POWEROFF_MARKER = "VIRTKIT-GUEST-POWEROFF"
"""Printed on the console when the guest acts on an ACPI power-button press."""

RECOMMENDED_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off"
"""Kernel command line for the tiny guest.

``console=ttyS0`` puts the kernel console and the marker on the first serial port;
``panic=-1`` reboots at once on a panic, which with ``-no-reboot`` makes QEMU exit
instead of hanging; ``quiet loglevel=3`` keeps the console to the essentials;
``mitigations=off`` saves a little time under TCG.
"""

GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "virtio_scsi",
    "sd_mod",
    "button",
    "evdev",
    "i6300esb",
    "e1000",
    "8139cp",
    "crc32c_generic",
    "ext4",
    "ahci",
    "sr_mod",
    "isofs",
    "9pnet_virtio",
    "9p",
    "virtiofs",
)
"""Modules the guest loads, in this order, each after its dependencies.

``sd_mod`` comes after ``virtio_scsi`` so that SCSI disks exist before the disk lines
are printed; ``button`` + ``evdev`` give busybox acpid the power-button input device;
``ext4`` (which also mounts ext2) lets tests and the test installer use file systems
on disks (it asks the crypto API for crc32c at mount time, a dependency modules.dep
does not list, hence ``crc32c_generic`` before it); ``ahci``, ``sr_mod`` and ``isofs``
read CD-ROMs on q35's SATA (install media, cloud-init seeds); ``9pnet_virtio``, ``9p``
and ``virtiofs`` mount shared folders; ``e1000`` and ``8139cp`` drive
the emulated NICs (models ``e1000`` and ``rtl8139``; QEMU's rtl8139 is a revision
0x20 RTL-8139C+, which ``8139too`` declines in favour of ``8139cp``: ``8139too`` only
serves older chips).
"""

_MODULE_PARAMS: dict[str, str] = {
    # Scan SCSI hosts synchronously: virtio-scsi disks are present when insmod returns.
    "scsi_mod": "scan=sync",
}

_RECIPE_VERSION = 8
_GUEST_DIR = "tinyguest"
_MANIFEST = "manifest.json"
_KERNEL_META_PACKAGE = "linux-image-amd64"
_BUSYBOX_PACKAGE = "busybox-static"
_HOST_BUSYBOX = Path("/bin/busybox")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

Progress = Callable[[str], None]

# The build lock's fd, handed to every helper process: if the builder is killed, an
# orphaned dpkg-deb keeps the lock until it exits, so the next builder cannot delete
# (and race with) its half-written directory.
_LOCK_FD: contextvars.ContextVar[int | None] = contextvars.ContextVar("_LOCK_FD", default=None)


class TinyGuestBuildError(HostError):
    """The tiny guest could not be built (apt, dpkg-deb or the packages misbehaved)."""

    code = "tinyguest-build"


@dataclass(frozen=True)
class TinyGuest:
    """A built tiny guest: boot it with ``-kernel kernel -initrd initrd -append cmdline``."""

    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str
    marker: str


# --------------------------------------------------------------------------- guest files

_INITTAB = """\
# virtkit tiny guest: busybox init runs rcS once, then keeps a shell on ttyS0.
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
"""

_RCS = f"""\
#!/bin/sh
# virtkit tiny guest: mount, load modules, start acpid, report disks, print the marker.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log
mount -t devpts devpts /dev/pts
hostname virtkit-guest
cd "/lib/modules/$(uname -r)" || exit 1
while read -r mod args; do
    insmod "$mod" $args || echo "virtkit: insmod $mod failed"
done </etc/virtkit/modules >>/run/virtkit-modules.log 2>&1
cd /
for port in /sys/class/virtio-ports/*; do  # what udev would do: name the virtio-serial ports
    [ -r "$port/name" ] || continue
    mkdir -p /dev/virtio-ports
    ln -sf "../${{port##*/}}" "/dev/virtio-ports/$(cat "$port/name")"
done
ip link set lo up 2>/dev/null
acpid -l /run/acpid.log
# acpid opens the power button's event device only after it went to the background:
# wait until it holds it (at most 5 s), or a press right after the marker is lost
tries=0
while [ "$tries" -lt 250 ]; do
    pid=$(pidof acpid)
    [ -n "$pid" ] && ls -l "/proc/$pid/fd" 2>/dev/null | grep -q /dev/input/event && break
    usleep 20000
    tries=$((tries + 1))
done
echo  # the line before may hold terminal-reset escapes: give the marker lines their own
for dev in /sys/block/vd* /sys/block/sd*; do
    [ -r "$dev/size" ] || continue
    echo "{DISK_MARKER} ${{dev##*/}} $(( $(cat "$dev/size") * 512 ))"
done
echo "{BOOT_MARKER}"
"""

_POWER_BUTTON = f"""\
#!/bin/sh
# virtkit tiny guest: ACPI power button -> clean, immediate power-off.
echo "{POWEROFF_MARKER}" >/dev/console
sync
umount -a -r 2>/dev/null
poweroff -f
"""

_PROFILE = """\
export PATH=/bin HOME=/root TERM="${TERM:-vt100}"
PS1='\\w \\$ '
"""

_STATIC_FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (_INITTAB, 0o644),
    "etc/init.d/rcS": (_RCS, 0o755),
    "etc/acpi/PWRF/00000080": (_POWER_BUTTON, 0o755),
    "etc/profile": (_PROFILE, 0o644),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\n", 0o644),
    "etc/hostname": ("virtkit-guest\n", 0o644),
}


def _recipe_hash() -> str:
    """Hash of everything that shapes the guest, so a changed recipe forces a rebuild."""
    recipe = {
        "version": _RECIPE_VERSION,
        "files": _STATIC_FILES,
        "modules": GUEST_MODULES,
        "params": _MODULE_PARAMS,
        "cmdline": RECOMMENDED_CMDLINE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- public API


def cache_dir() -> Path:
    """Where built images live: ``$VIRTKIT_IMAGE_CACHE``, else the XDG cache directory.

    That is ``$XDG_CACHE_HOME/virtkit/images`` or ``~/.cache/virtkit/images`` (for root,
    ``/root/.cache/virtkit/images``).  It is outside any checkout on purpose: the guest
    is built once per machine and shared by every worktree and CI run on it.
    """
    env = os.environ.get("VIRTKIT_IMAGE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "virtkit" / "images"


def build_tiny_guest(
    cache: Path | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> TinyGuest:
    """Return the tiny guest, building it first if this machine has no current build.

    Idempotent and safe to call concurrently (a lock file serialises builders; the
    others then find the finished build).  ``force`` rebuilds even a valid cache, e.g.
    to pick up a newer kernel.  ``progress`` receives one human-readable line per step.
    Raises :class:`TinyGuestBuildError` when apt or dpkg-deb fail.
    """
    report: Progress = progress or (lambda _line: None)
    root = (cache or cache_dir()).expanduser().resolve()
    final = root / _GUEST_DIR
    if not force and (guest := _load_cached(final)) is not None:
        return guest
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".tinyguest.lock"):
        if not force and (guest := _load_cached(final)) is not None:
            report(f"cached build found in {final}")
            return guest
        _remove_stale_builds(root)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=".tinyguest-build-", dir=root))
        staging.chmod(0o755)  # mkdtemp makes it 0700; QEMU may run as another user
        try:
            _build_into(staging, report)
            _swap_into_place(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        report(f"built in {time.monotonic() - started:.1f} s")
    guest = _load_cached(final)
    if guest is None:
        raise TinyGuestBuildError(f"the tiny guest build in {final} did not validate")
    return guest


# --------------------------------------------------------------------------- cache


def _load_cached(directory: Path) -> TinyGuest | None:
    """The guest described by ``directory/manifest.json`` if complete and current."""
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("recipe") != _recipe_hash():
        return None
    kernel = directory / str(manifest.get("kernel", ""))
    initrd = directory / str(manifest.get("initrd", ""))
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return TinyGuest(
        kernel=kernel,
        initrd=initrd,
        cmdline=str(manifest.get("cmdline", RECOMMENDED_CMDLINE)),
        kernel_version=str(manifest.get("kernel_version", "")),
        marker=BOOT_MARKER,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        token = _LOCK_FD.set(handle.fileno())
        try:
            yield
        finally:
            _LOCK_FD.reset(token)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(root: Path) -> None:
    """Delete leftovers of killed builds (only called while holding the build lock)."""
    for leftover in root.glob(".tinyguest-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(staging: Path, final: Path) -> None:
    """Rename the finished build to ``final``, moving any previous build aside first."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".tinyguest-old-{os.getpid()}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- build steps


def _build_into(out: Path, report: Progress) -> None:
    """Download, extract and assemble the guest into the empty directory ``out``."""
    work = out / "work"
    work.mkdir()
    package = _resolve_kernel_package(report)
    report(f"downloading {package}")
    deb = _apt_download(package, work)
    package_version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    report(f"extracting {deb.name}")
    kernel_root = work / "kernel"
    _run(["dpkg-deb", "-x", str(deb), str(kernel_root)])
    deb.unlink()
    kernel_version, vmlinuz, moddir = _locate_kernel(kernel_root)
    busybox, busybox_version = _obtain_busybox(work, report)
    modules, builtin = _resolve_modules(GUEST_MODULES, moddir)
    report(f"modules: {len(modules)} loadable, built in: {', '.join(builtin) or 'none'}")
    image = _assemble_initramfs(busybox, kernel_version, modules)
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    (out / "initrd.img").write_bytes(image)
    shutil.rmtree(work)
    sizes = {name: (out / name).stat().st_size / 2**20 for name in ("vmlinuz", "initrd.img")}
    report(", ".join(f"{name}: {size:.1f} MiB" for name, size in sizes.items()))
    manifest = {
        "recipe": _recipe_hash(),
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": RECOMMENDED_CMDLINE,
        "kernel_version": kernel_version,
        "kernel_package": package,
        "kernel_package_version": package_version,
        "busybox": busybox_version,
        "modules": [name for name, _data in modules],
        "builtin_modules": builtin,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 600) -> str:
    """Run a host command and return its stdout; failures become TinyGuestBuildError."""
    lock_fd = _LOCK_FD.get()
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
            pass_fds=() if lock_fd is None else (lock_fd,),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TinyGuestBuildError(f"{argv[0]} failed: {exc}", command=list(argv)) from exc
    if done.returncode != 0:
        raise TinyGuestBuildError(
            f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}",
            fix="check that apt can reach the Debian archive (apt-get update)",
            command=list(argv),
        )
    return done.stdout


def _kernel_dependency() -> str | None:
    """The linux-image-*-amd64 package the meta package depends on, None if unknown."""
    try:
        text = _run(["apt-cache", "depends", _KERNEL_META_PACKAGE])
    except TinyGuestBuildError:
        return None
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key.lstrip("|") == "Depends" and value.startswith("linux-image-"):
            return value
    return None


def _resolve_kernel_package(report: Progress) -> str:
    """Name the current Debian amd64 kernel package, running apt-get update if needed."""
    report(f"resolving the kernel package behind {_KERNEL_META_PACKAGE}")
    package = _kernel_dependency()
    if package is None:
        report("package lists look empty: running apt-get update")
        _run(["apt-get", "update"])
        package = _kernel_dependency()
    if package is None:
        raise TinyGuestBuildError(
            f"apt-cache knows no kernel package behind {_KERNEL_META_PACKAGE}",
            fix="run apt-get update as root",
        )
    return package


def _apt_download(package: str, directory: Path) -> Path:
    """``apt-get download`` one package into ``directory`` and return the .deb path."""
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # apt drops to user _apt for downloads, which cannot write to our private dir.
        argv += ["-o", "APT::Sandbox::User=root"]
    _run([*argv, package], cwd=directory)
    debs = sorted(directory.glob(f"{package}_*.deb"))
    if not debs:
        raise TinyGuestBuildError(f"apt-get download {package} produced no .deb")
    return debs[-1]


def _locate_kernel(root: Path) -> tuple[str, Path, Path]:
    """Find (kernel version, vmlinuz, module directory) in an extracted kernel package."""
    moddirs = [d for d in sorted((root / "lib" / "modules").glob("*")) if d.is_dir()]
    if len(moddirs) != 1:
        raise TinyGuestBuildError(f"expected one module directory in the kernel, got {moddirs}")
    version = moddirs[0].name
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise TinyGuestBuildError(f"the kernel package has no {vmlinuz.name}")
    return version, vmlinuz, moddirs[0]


def _obtain_busybox(work: Path, report: Progress) -> tuple[Path, str]:
    """A static busybox binary and its version line: the host's, else a downloaded one."""
    candidate = _HOST_BUSYBOX
    if not (candidate.is_file() and _is_static_elf(candidate.read_bytes())):
        report(f"downloading {_BUSYBOX_PACKAGE}")
        deb = _apt_download(_BUSYBOX_PACKAGE, work)
        _run(["dpkg-deb", "-x", str(deb), str(work / "busybox")])
        candidate = work / "busybox" / "bin" / "busybox"
        if not (candidate.is_file() and _is_static_elf(candidate.read_bytes())):
            raise TinyGuestBuildError(f"{_BUSYBOX_PACKAGE} holds no static bin/busybox")
    else:
        report(f"using the host's static {candidate}")
    version = _run([str(candidate)]).splitlines()[0].strip()
    return candidate, version


# --------------------------------------------------------------------------- ELF and modules


def _elf_sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit ELF file (kernel modules are ELF64 here)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise TinyGuestBuildError("not a 64-bit ELF file")
    order = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            order + "IIQQQQ", data, shoff + index * shentsize
        )
        return name, offset, size

    _, strtab, _ = header(shstrndx)
    sections: dict[str, bytes] = {}
    for index in range(shnum):
        name_offset, offset, size = header(index)
        start = strtab + name_offset
        name = data[start : data.index(b"\0", start)].decode("ascii", "replace")
        sections[name] = data[offset : offset + size]
    return sections


def _is_static_elf(data: bytes) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader) segment."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    order = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] != pt_interp
        for i in range(phnum)
    )


def _modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``key=value`` entries of a module's ``.modinfo`` section, grouped by key."""
    info: dict[str, list[str]] = {}
    for entry in _elf_sections(data).get(".modinfo", b"").split(b"\0"):
        key, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _module_name(path: str) -> str:
    """Canonical module name of a module file path: basename, no suffix, ``-`` -> ``_``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressing .xz/.gz/.zst (busybox insmod wants plain ELF)."""
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):  # no zstd in the 3.11 standard library
        try:
            return subprocess.run(
                ["zstd", "-dc"], input=raw, capture_output=True, check=True, timeout=60
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise TinyGuestBuildError(
                f"cannot decompress {path.name}: {exc}", fix="apt-get install zstd"
            ) from exc
    return raw


def _resolve_modules(
    wanted: Sequence[str], moddir: Path
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Loadable modules in load order (dependencies first) and the wanted built-in ones."""
    index: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        if path.name.endswith(_MODULE_SUFFIXES):
            index[_module_name(path.name)] = path
    builtin_file = moddir / "modules.builtin"
    lines = builtin_file.read_text().split() if builtin_file.exists() else []
    builtin = {_module_name(line) for line in lines}
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, required: bool) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name not in index:
            if required:
                raise TinyGuestBuildError(f"kernel module {name} is neither loadable nor built in")
            return
        done.add(name)
        data = _read_module(index[name])
        info = _modinfo(data)
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep, True)
        for softdep in info.get("softdep", []):
            for token in softdep.split("post:")[0].split():
                if token != "pre:":  # noqa: S105 - a word of a kernel command line, no password
                    visit(token, False)
        ordered.append((name, data))

    for module in wanted:
        visit(module, True)
    return ordered, sorted(n for n in wanted if n.replace("-", "_") in builtin)


# --------------------------------------------------------------------------- initramfs


def _assemble_initramfs(
    busybox: Path, kernel_version: str, modules: Sequence[tuple[str, bytes]]
) -> bytes:
    """Build the gzip'd newc initramfs: busybox, applet links, guest files, modules."""
    archive = CpioWriter()
    moddir = f"lib/modules/{kernel_version}"
    dirs = ["bin", "dev", "etc", "etc/init.d", "etc/acpi", "etc/acpi/PWRF", "etc/virtkit",
            "lib", "lib/modules", moddir, "proc", "root", "run", "sys", "tmp", "usr", "var"]
    for directory in dirs:
        archive.directory(directory)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in sorted(set(_run([str(busybox), "--list"]).split()) - {"busybox"}):
        archive.symlink(f"bin/{applet}", "busybox")
    for link, target in (("sbin", "bin"), ("usr/bin", "../bin"), ("usr/sbin", "../bin"),
                         ("init", "bin/busybox")):
        archive.symlink(link, target)
    for path, (text, perm) in _STATIC_FILES.items():
        archive.file(path, text.encode(), perm)
    load_list = "".join(f"{name}.ko {_MODULE_PARAMS.get(name, '')}".rstrip() + "\n"
                        for name, _data in modules)
    archive.file("etc/virtkit/modules", load_list.encode())
    for name, data in modules:
        archive.file(f"{moddir}/{name}.ko", data)
    return gzip.compress(archive.finish(), compresslevel=9, mtime=0)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m virtkit.images.tinyguest [--out DIR] [--force]``.

    Progress goes to stderr; stdout gets shell-quoted ``KERNEL=``, ``INITRD=``,
    ``CMDLINE=`` and ``KERNEL_VERSION=`` lines, so ``eval "$(...)"`` works.
    """
    parser = argparse.ArgumentParser(
        prog="python3 -m virtkit.images.tinyguest",
        description="Build (once) the tiny busybox test guest from Debian packages.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help=f"image cache directory (default: {cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    try:
        guest = build_tiny_guest(args.out, force=args.force, progress=progress)
    except TinyGuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"KERNEL={shlex.quote(str(guest.kernel))}")
    print(f"INITRD={shlex.quote(str(guest.initrd))}")
    print(f"CMDLINE={shlex.quote(guest.cmdline)}")
    print(f"KERNEL_VERSION={shlex.quote(guest.kernel_version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
