"""A small Debian cloud image (debootstrap + cloud-init + the QEMU guest agent).

Used by the ``--cloud-init`` test and by the guest-agent and hotplug tests.

Built once per machine from Debian's packages and cached beside the tiny guest: a
minimal bookworm with systemd, the Debian kernel and cloud-init (NoCloud data source
only), as an ext4 file system image made with ``mke2fs -d`` (no loop device, no
mount).  It boots by direct kernel boot (``root=/dev/vda``) with its own kernel and
initramfs, and offers a login on the serial console.  Root has no password until
cloud-init sets one from the seed.

Needs debootstrap, e2fsprogs and qemu-img on the host, and root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from virtkit.images.buildcache import build_once
from virtkit.images.tinyguest import TinyGuestBuildError, cache_dir

SUITE = "bookworm"
#: what debootstrap installs (the base system) ...
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "login", "passwd", "e2fsprogs")
#: ... and what apt installs in the new system afterwards (debootstrap's own resolver
#: cannot configure cloud-init's Python dependencies in one pass)
PACKAGES = ("linux-image-amd64", "cloud-init", "openssh-server", "qemu-guest-agent", "dbus")
IMAGE_SIZE = "2G"
CMDLINE = "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 net.ifnames=0"
_VERSION = 4
#: online hot-added vCPUs and memory at once, as cloud images do (the kernel leaves
#: them offline; without this a hotplug is visible only after a manual echo 1)
_HOTADD_RULES = """\
SUBSYSTEM=="cpu", ACTION=="add", TEST=="online", ATTR{online}=="0", ATTR{online}="1"
SUBSYSTEM=="memory", ACTION=="add", TEST=="state", ATTR{state}=="offline", ATTR{state}="online"
"""
_CLOUD_CFG = """\
# virtkit test image: only the NoCloud seed (a CD labelled cidata), never a network source
datasource_list: [NoCloud, None]
# minbase generates no locales: keep the C one (cloud-init's default en_US.UTF-8 fails)
locale: C.UTF-8
"""


@dataclass(frozen=True)
class DebianCloud:
    image: Path  # qcow2; use a copy or an overlay per VM
    kernel: Path
    initrd: Path
    cmdline: str


def _mirror() -> str:
    """The Debian mirror apt uses on this host (so a local mirror or proxy is honoured)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        match = re.search(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M)
        if match:
            return match.group(1)
        match = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def _run(argv: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)
    if done.returncode != 0:
        raise TinyGuestBuildError(f"{' '.join(argv[:3])} ... failed: "
                                  f"{(done.stderr or done.stdout).strip()[-600:]}",
                                  fix="apt-get install debootstrap; check apt can reach Debian")


def build_debian_cloud(cache: Path | None = None) -> DebianCloud:
    """The cached image, built first if missing or from an older recipe."""
    root = (cache or cache_dir()) / "debian-cloud"
    build_once(root, f"{_VERSION}-{SUITE}", "debian.qcow2", _build)
    return DebianCloud(root / "debian.qcow2", root / "vmlinuz", root / "initrd.img", CMDLINE)


def _build(staging: Path) -> None:
    """debootstrap, install, configure, then an ext4 image of it and its kernel."""
    rootfs = staging / "rootfs"
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
          SUITE, str(rootfs), _mirror()])
    _install_in(rootfs, PACKAGES)
    _configure(rootfs)
    boot = rootfs / "boot"
    shutil.copyfile(sorted(boot.glob("vmlinuz-*"))[-1], staging / "vmlinuz")
    shutil.copyfile(sorted(boot.glob("initrd.img-*"))[-1], staging / "initrd.img")
    raw = staging / "debian.raw"
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(rootfs), str(raw), IMAGE_SIZE])
    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
          str(staging / "debian.qcow2")])
    raw.unlink()
    shutil.rmtree(rootfs)


def _install_in(rootfs: Path, packages: tuple[str, ...]) -> None:
    """apt-get install in the new system (chroot, /proc mounted, no service started)."""
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    proc = rootfs / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)])
    try:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C"}
        _run(["chroot", str(rootfs), "apt-get", "install", "-y", "-q",
              "--no-install-recommends", *packages], env=env)
        _run(["chroot", str(rootfs), "apt-get", "clean"], env=env)
    finally:
        subprocess.run(["umount", str(proc)], capture_output=True, check=False)
        policy.unlink(missing_ok=True)


def _configure(rootfs: Path) -> None:
    """fstab, hostname, cloud-init's data source, and nothing that waits for a network."""
    (rootfs / "etc" / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (rootfs / "etc" / "hostname").write_text("debian-cloud\n")
    (rootfs / "etc" / "cloud" / "cloud.cfg.d" / "90-virtkit.cfg").write_text(_CLOUD_CFG)
    (rootfs / "etc" / "udev" / "rules.d" / "80-hotadd.rules").write_text(_HOTADD_RULES)
    wants = rootfs / "etc" / "systemd" / "system" / "getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "serial-getty@ttyS0.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/serial-getty@.service")


if __name__ == "__main__":
    built = build_debian_cloud()
    print(f"IMAGE={built.image}\nKERNEL={built.kernel}\nINITRD={built.initrd}")
