"""ISO pools: a folder of install media (CD/DVD images) offered to VMs as cdroms.

The folder rules are the dir pool's (names confined, hidden ``.partial`` temps while
copying in).  Volumes are never created, resized or cloned here; they arrive by
``import`` (a byte copy of a local file) and are listed with the ISO 9660 volume
label, which is what users recognise ("Debian 12.5.0 amd64 n").
"""

from __future__ import annotations

import os
from typing import NoReturn

from virtkit.errors import InvalidSpec
from virtkit.storage import qemuimg
from virtkit.storage.base import Progress, VolumeInfo
from virtkit.storage.dirpool import DirPool

SECTOR = 2048
#: volume descriptors start at sector 16 and end with a terminator (type 255).
_FIRST_DESCRIPTOR = 16
_MAX_DESCRIPTORS = 64
_PRIMARY, _TERMINATOR = 1, 255
_COPY_CHUNK = 64 * 1024 * 1024


def read_iso_label(path: str) -> str | None:
    """The volume identifier of the ISO 9660 primary volume descriptor, or None.

    Descriptors are 2048-byte sectors from sector 16 on: type byte, "CD001",
    version; the primary one (type 1) carries the 32-byte, space-padded volume
    identifier at offset 40.  A boot record may precede it, so all are walked.
    """
    try:
        with open(path, "rb") as image:
            for index in range(_FIRST_DESCRIPTOR, _FIRST_DESCRIPTOR + _MAX_DESCRIPTORS):
                image.seek(index * SECTOR)
                sector = image.read(SECTOR)
                if len(sector) < SECTOR or sector[1:6] != b"CD001":
                    return None
                if sector[0] == _PRIMARY:
                    label = sector[40:72].decode("ascii", errors="replace")
                    return label.rstrip(" \x00") or None
                if sector[0] == _TERMINATOR:
                    return None
    except OSError:
        return None
    return None


def _refuse(action: str) -> NoReturn:
    raise InvalidSpec(f"cannot {action} in an iso pool: iso pools hold install media",
                      fix="upload an ISO with vol-upload (or vol-import a local one)")


class IsoPool(DirPool):
    """A :class:`~virtkit.storage.base.PoolBackend` over a folder of install media."""

    def _describe(self, name: str, path: str) -> VolumeInfo:
        size = os.lstat(path).st_size
        return VolumeInfo(name=name, path=path, format="iso", capacity=size, allocation=size,
                          label=read_iso_label(path))

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo:
        _refuse("create a volume")

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo:
        _refuse("resize a volume")

    def wipe_volume(self, name: str) -> None:
        _refuse("wipe a volume")

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo:
        _refuse("clone a volume")

    def import_volume(self, name: str, source_path: str, fmt: str = "iso", *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Copy a local ISO (or other install image) in, byte for byte.

        ``progress(bytes_done, bytes_total)``; the copy is fsynced before it gets
        its name, so a crash never leaves a short ISO under the real name.
        """
        if fmt not in ("iso", "raw"):
            raise InvalidSpec(f"an iso pool stores images as they are, not as {fmt}",
                              field="format", fix="use format iso")
        source = qemuimg.local_source(source_path)
        self._require()
        with self._staging(name, "iso") as temp:
            _copy(source, temp, progress)
            os.chmod(temp, 0o644)
        return self.volume(name)


def _copy(source: str, target: str, progress: Progress | None) -> None:
    """Copy ``source`` over ``target`` and fsync it; ``progress(bytes_done, total)``.

    copy_file_range lets the kernel copy (a reflink on btrfs/xfs); where it cannot
    (old kernels across file systems) this falls back to read/write.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    dst = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        total = os.fstat(src).st_size
        done = 0
        kernel_copy = True
        if progress is not None:
            progress(0.0, float(total))
        while done < total:
            if kernel_copy:
                try:
                    copied = os.copy_file_range(src, dst, _COPY_CHUNK)
                except OSError:
                    kernel_copy = False
                    continue
            else:
                chunk = os.read(src, 1024 * 1024)
                copied = len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            if copied == 0:
                break  # the source shrank while being copied
            done += copied
            if progress is not None:
                progress(float(done), float(total))
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
