"""NFS pools without a kernel mount (``netfs``, alias ``nfs``): a folder on an NFS
export, reached in user space.

Volumes are files in that folder, named as the volume; their "path" is an
``nfs://SERVER/FOLDER/NAME`` URL, which QEMU opens through qemu-block-extra's libnfs
driver (an ``nfs`` blockdev, qemu/argv.py) and qemu-img creates, converts, resizes and
reads.  Listing, removing and renaming files and the export's space go through libnfs
itself (storage/libnfs.py).  No host needs the kernel's NFS client (this one has none).

As a dir pool: names are confined (the same name rule: no '/', no '..'), new volumes
are written under a hidden ``.NAME.partial`` and renamed when complete, and formats are
those virtkit makes (raw, qcow2).  Unlike a dir pool there are no xattrs over NFSv3, so
a volume's format is probed as libvirt's netfs pool does; the pool is *shared*: every
host that defines it sees the same images, so a live migration copies none of them.
The folder is the NFS server's export (or a folder the server lets clients mount):
``pool-build`` checks it can be mounted and never creates or removes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from virtkit.errors import Conflict, InvalidSpec, NotFound, VirtkitError
from virtkit.model.netdisk import nfs_url
from virtkit.model.pool import Pool
from virtkit.storage import qemuimg
from virtkit.storage.base import (
    PoolCapacity,
    Progress,
    VolumeInfo,
    checked_volume_name,
    refuse_while_holding,
)
from virtkit.storage.libnfs import Export

PARTIAL_SUFFIX = ".partial"


class NetfsPool:
    """A :class:`~virtkit.storage.base.PoolBackend` over one folder of an NFS server."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.server, self.folder = pool.netfs_source()

    def _export(self) -> Export:
        return Export(self.server, self.folder)

    def _url(self, name: str) -> str:
        return nfs_url(self.server, f"{self.folder.rstrip('/')}/{name}")

    # --- the pool ---------------------------------------------------------------------

    def build(self) -> None:
        """Nothing to create: the export is the server's.  Checks it can be mounted."""
        with self._export():
            pass

    def exists(self) -> bool:
        try:
            with self._export():
                return True
        except VirtkitError:
            return False

    def delete(self) -> None:
        """Refuses while volumes remain; the export itself stays (it is the server's)."""
        refuse_while_holding(self.pool.name, self.list_volumes())

    def capacity(self) -> PoolCapacity:
        with self._export() as export:
            total, used, available = export.statvfs("/")
        return PoolCapacity(capacity=total, allocation=used, available=available)

    # --- looking at volumes -----------------------------------------------------------

    def list_volumes(self) -> list[VolumeInfo]:
        with self._export() as export:
            names = sorted(e.name for e in export.listdir("/")
                           if e.regular and not e.name.startswith("."))
        return [self._describe(name) for name in names]

    def volume(self, name: str) -> VolumeInfo:
        checked_volume_name(name)
        with self._export() as export:
            if not export.exists(f"/{name}"):
                raise NotFound(f"volume {name!r} not found in pool {self.pool.name!r}",
                               fix=f"virtkit vol-list {self.pool.name}")
        return self._describe(name)

    def volume_path(self, name: str) -> str:
        """``nfs://SERVER/FOLDER/NAME``, after checking the name."""
        return self._url(checked_volume_name(name))

    def _describe(self, name: str) -> VolumeInfo:
        url = self._url(name)
        try:
            info = qemuimg.image_info(url)
        except VirtkitError:
            return VolumeInfo(name=name, path=url, format="unknown", capacity=0, allocation=0)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        return VolumeInfo(name=name, path=url, format=str(info.get("format", "raw")),
                          capacity=int(info.get("virtual-size", 0)),
                          allocation=int(info.get("actual-size", 0)),
                          backing=str(backing) if backing else None)

    # --- writing volumes --------------------------------------------------------------

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo:
        """A new empty volume (raw or qcow2), or a qcow2 overlay on a volume of this pool."""
        qemuimg.check_format(fmt)
        base: VolumeInfo | None = None
        if backing is not None:
            if fmt != "qcow2" or prealloc:
                raise InvalidSpec("an overlay is a qcow2 volume without preallocation",
                                  field="format", fix="create it with format qcow2")
            base = self.volume(backing.name)
            if base.path != backing.path:
                raise InvalidSpec(f"backing volume {backing.path} is not in pool "
                                  f"{self.pool.name!r}", field="backing")
            capacity = capacity or base.capacity
        elif capacity <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
        with self._staging(name) as temp:
            qemuimg.create(temp, fmt, capacity, prealloc=prealloc,
                           backing=base.path if base else None,
                           backing_fmt=base.format if base else None)
        return self.volume(name)

    def delete_volume(self, name: str) -> None:
        """Remove a volume.  Whether a VM uses it is the service's rule; NFS carries
        no lock qemu-img could test from here, so a running user is refused there."""
        self.volume(name)
        with self._export() as export:
            export.unlink(f"/{name}")

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo:
        qemuimg.resize_volume(self.volume(name), capacity, shrink=shrink)
        return self.volume(name)

    def wipe_volume(self, name: str) -> None:
        """Recreate the volume empty at the same size and format."""
        info = self.volume(name)
        if info.format not in qemuimg.CREATE_FORMATS or info.backing:
            raise InvalidSpec(f"volume {name!r} ({info.format}) cannot be wiped here",
                              fix="delete and recreate it instead")
        qemuimg.create(info.path, info.format, info.capacity)

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo:
        """A full copy (qemu-img convert over NFS) or, ``linked``, a qcow2 overlay."""
        src = self.volume(source)
        if linked:
            if fmt not in (None, "qcow2"):
                raise InvalidSpec("a linked clone is a qcow2 overlay", field="format",
                                  fix="omit the format or use qcow2")
            return self.create_volume(name, 0, "qcow2", backing=src)
        target_fmt = fmt or src.format
        qemuimg.check_format(target_fmt)
        with self._staging(name) as temp:
            qemuimg.convert(src.path, src.format, temp, target_fmt, progress=progress)
        return self.volume(name)

    def import_volume(self, name: str, source_path: str, fmt: str, *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Convert a host image (vmdk, vdi, vhdx, qcow2, raw ...) into a new volume."""
        qemuimg.check_format(fmt)
        source = qemuimg.local_source(source_path)
        src_fmt = source_fmt or qemuimg.detect_format(source)
        with self._staging(name) as temp:
            qemuimg.convert(source, src_fmt, temp, fmt, progress=progress)
        return self.volume(name)

    # --- staging ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self, name: str) -> Iterator[str]:
        """Yield the URL of the hidden temp for new volume ``name``; rename it to its
        name on success, remove it on failure."""
        checked_volume_name(name)
        temp = f".{name}{PARTIAL_SUFFIX}"
        with self._export() as export:
            if export.exists(f"/{name}"):
                raise Conflict(f"volume {name!r} already exists in pool {self.pool.name!r}",
                               fix="choose another name or delete the volume first")
            if export.exists(f"/{temp}"):
                raise Conflict(f"volume {name!r} of pool {self.pool.name!r} is being "
                               "written by another operation (or one was cut off: "
                               f"remove {temp} on the server)", fix="wait for it to finish")
        try:
            yield self._url(temp)
            with self._export() as export:
                if export.exists(f"/{name}"):
                    raise Conflict(f"volume {name!r} appeared in pool {self.pool.name!r} "
                                   "while it was being written", fix="choose another name")
                export.rename(f"/{temp}", f"/{name}")
        except BaseException:
            with contextlib.suppress(VirtkitError), self._export() as export:
                if export.exists(f"/{temp}"):
                    export.unlink(f"/{temp}")
            raise
