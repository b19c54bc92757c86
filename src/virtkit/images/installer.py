"""A small unattended OS installer on an ISO, built from Debian packages, for install tests.

It plays the part of a distribution's installer end to end, in a few seconds under
TCG: the tiny guest's kernel boots with an initrd that holds an install script, the
system to install (the tiny guest's kernel and initramfs) and extlinux.  The script
reads a kickstart-like answer file, named on the kernel command line as
``vk.ks=/PATH`` (the ISO's GRUB entry names the built-in ``/answers.cfg``;
``--extra-args`` with ``--initrd-inject`` give another), then:

1. writes an MBR partition table with one bootable Linux partition,
2. makes an ext2 file system on it and copies a root file system onto it,
3. installs a boot loader (extlinux in the partition, syslinux's MBR code in front),
   whose entry boots the installed kernel with ``vk.installed=HOSTNAME``,
4. powers off.

Answer file lines: ``disk vda``, ``hostname NAME``, ``append KERNEL-ARGS``.  The
console shows ``VK-INSTALLER-DONE`` or ``VK-INSTALLER-FAILED: why``.

The ISO is made by ``grub-mkrescue`` (BIOS boot from CD) and also has Debian's
layout (``install.amd/vmlinuz``, ``install.amd/initrd.gz``), so both ``--cdrom`` and
``--location`` install from it.  Host packages needed: grub-pc-bin, grub-common,
xorriso, mtools, extlinux, syslinux-common.  Built once per machine and cached beside
the tiny guest.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from virtkit.cpio import CpioWriter
from virtkit.images.buildcache import build_once
from virtkit.images.tinyguest import (
    RECOMMENDED_CMDLINE,
    TinyGuest,
    TinyGuestBuildError,
    build_tiny_guest,
    cache_dir,
)

DONE_MARKER = "VK-INSTALLER-DONE"
FAILED_MARKER = "VK-INSTALLER-FAILED"
INSTALLED_ARG = "vk.installed"
DEFAULT_HOSTNAME = "cdinstalled"
_VERSION = 1
_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
_EXTLINUX = Path("/usr/bin/extlinux")
_LIBS = (Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/ld-linux-x86-64.so.2"))

_INITTAB = """\
::sysinit:/etc/init.d/rcS
::once:/bin/vk-install
ttyS0::respawn:-/bin/sh
::shutdown:/bin/sync
"""

_INSTALL_SCRIPT = r"""#!/bin/sh
# virtkit test installer: read the answer file, partition, format, copy, boot loader.
ks=$(sed -n 's/.*vk\.ks=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$ks" ] || exit 0
fail() { echo "@FAILED@: $*" >/dev/console; exit 1; }
[ -r "$ks" ] || fail "no answer file $ks"
disk=vda; hostname=installed; append=""
while read -r key value; do
    case "$key" in
        disk) disk=$value ;;
        hostname) hostname=$value ;;
        append) append=$value ;;
        ''|'#'*) ;;
        *) fail "unknown answer '$key'" ;;
    esac
done <"$ks"
dev=/dev/$disk
[ -b "$dev" ] || fail "no disk $dev"
sectors=$(cat /sys/block/$disk/size)
[ "$sectors" -gt 65536 ] || fail "disk $dev is too small ($sectors sectors)"
byte() { printf "\\$(printf %o $(( $1 & 255 )))"; }
le32() { byte $1; byte $(( $1 >> 8 )); byte $(( $1 >> 16 )); byte $(( $1 >> 24 )); }
dd if=/dev/zero of=$dev bs=512 count=2048 2>/dev/null
{ printf '\200\376\377\377\203\376\377\377'; le32 2048; le32 $(( sectors - 2048 )); } |
    dd of=$dev bs=1 seek=446 conv=notrunc 2>/dev/null
printf '\125\252' | dd of=$dev bs=1 seek=510 conv=notrunc 2>/dev/null
blockdev --rereadpt $dev || fail "cannot re-read the partition table"
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b ${dev}1 ] && break; sleep 0.2; done
[ -b ${dev}1 ] || fail "${dev}1 did not appear"
mke2fs -q ${dev}1 || fail "mke2fs"
mkdir -p /mnt && mount -t ext4 ${dev}1 /mnt || fail "mount ${dev}1"  # ext4 mounts ext2
for d in bin etc lib root usr; do cp -a /$d /mnt/ || fail "copy /$d"; done
rm -f /mnt/bin/vk-install /mnt/etc/inittab.installer
mkdir -p /mnt/boot/extlinux /mnt/dev /mnt/proc /mnt/sys /mnt/tmp /mnt/run /mnt/mnt
cp /payload/vmlinuz /payload/initrd.img /mnt/boot/ || fail "copy the kernel"
echo "$hostname" >/mnt/etc/hostname
cat >/mnt/boot/extlinux/extlinux.conf <<EOF
DEFAULT installed
LABEL installed
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND @CMDLINE@ @INSTALLED@=$hostname $append
EOF
extlinux --install /mnt/boot/extlinux >/dev/null 2>&1 || fail "extlinux"
dd if=/usr/lib/syslinux/mbr.bin of=$dev bs=440 count=1 conv=notrunc 2>/dev/null
sync
umount /mnt || fail "umount"
echo "@DONE@ $hostname" >/dev/console
poweroff -f
"""


@dataclass(frozen=True)
class Installer:
    """The built installer: the ISO, and its kernel and initrd for direct boot."""

    iso: Path
    kernel: Path
    initrd: Path
    cmdline: str  # what the ISO's GRUB entry boots with (names /answers.cfg)


def _script() -> str:
    return (_INSTALL_SCRIPT.replace("@FAILED@", FAILED_MARKER).replace("@DONE@", DONE_MARKER)
            .replace("@CMDLINE@", RECOMMENDED_CMDLINE).replace("@INSTALLED@", INSTALLED_ARG))


def answer_file(hostname: str, disk: str = "vda", append: str = "") -> str:
    """The text of an answer file for this installer."""
    lines = [f"disk {disk}", f"hostname {hostname}"]
    if append:
        lines.append(f"append {append}")
    return "\n".join(lines) + "\n"


def _recipe(guest: TinyGuest) -> str:
    parts = [str(_VERSION), _script(), _INITTAB, hashlib.sha256(guest.initrd.read_bytes())
             .hexdigest(), hashlib.sha256(guest.kernel.read_bytes()).hexdigest()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _installer_initrd(guest: TinyGuest) -> bytes:
    """The tiny guest's initramfs plus an archive with the installer and its payload."""
    for needed in (_MBR, _EXTLINUX, *_LIBS):
        if not needed.is_file():
            raise TinyGuestBuildError(f"the test installer needs {needed}",
                                      fix="apt-get install extlinux syslinux-common")
    extra = CpioWriter()
    for folder in ("payload", "lib64", "lib/x86_64-linux-gnu", "usr/lib", "usr/lib/syslinux"):
        extra.directory(folder)
    extra.file("etc/inittab", _INITTAB.encode())
    extra.file("bin/vk-install", _script().encode(), 0o755)
    extra.file("bin/extlinux", _EXTLINUX.read_bytes(), 0o755)
    for lib in _LIBS:
        extra.file(str(lib).lstrip("/"), lib.read_bytes(), 0o755)
    extra.file("usr/lib/syslinux/mbr.bin", _MBR.read_bytes())
    extra.file("payload/vmlinuz", guest.kernel.read_bytes())
    extra.file("payload/initrd.img", guest.initrd.read_bytes())
    extra.file("answers.cfg", answer_file(DEFAULT_HOSTNAME).encode())
    base = guest.initrd.read_bytes()
    return base + b"\0" * (-len(base) % 4) + gzip.compress(extra.finish(), mtime=0)


def _grub_cfg(cmdline: str) -> str:
    return ("set timeout=0\nset default=0\n"
            f"menuentry 'virtkit test installer' {{\n"
            f"  linux /install.amd/vmlinuz {cmdline}\n"
            "  initrd /install.amd/initrd.gz\n}\n")


def build_installer(cache: Path | None = None) -> Installer:
    """The installer ISO, built (once per machine and recipe) from the tiny guest."""
    guest = build_tiny_guest()
    root = (cache or cache_dir()) / "installer"
    cmdline = f"{RECOMMENDED_CMDLINE} vk.ks=/answers.cfg"
    build_once(root, _recipe(guest), "installer.iso",
               lambda staging: _build(staging, guest, cmdline))
    return Installer(root / "installer.iso", root / "vmlinuz", root / "initrd.gz", cmdline)


def _build(staging: Path, guest: TinyGuest, cmdline: str) -> None:
    """The ISO (grub-mkrescue over a Debian-like tree) and its kernel and initrd."""
    tree = staging / "tree"
    (tree / "install.amd").mkdir(parents=True)
    (tree / "boot" / "grub").mkdir(parents=True)
    shutil.copyfile(guest.kernel, tree / "install.amd" / "vmlinuz")
    (tree / "install.amd" / "initrd.gz").write_bytes(_installer_initrd(guest))
    (tree / "boot" / "grub" / "grub.cfg").write_text(_grub_cfg(cmdline))
    done = subprocess.run(["grub-mkrescue", "-o", str(staging / "installer.iso"), str(tree)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise TinyGuestBuildError(f"grub-mkrescue failed: {done.stderr.strip()[-400:]}",
                                  fix="apt-get install grub-pc-bin grub-common xorriso mtools")
    shutil.copyfile(tree / "install.amd" / "vmlinuz", staging / "vmlinuz")
    shutil.copyfile(tree / "install.amd" / "initrd.gz", staging / "initrd.gz")
    shutil.rmtree(tree)


if __name__ == "__main__":
    built = build_installer()
    print(f"ISO={built.iso}\nKERNEL={built.kernel}\nINITRD={built.initrd}")
