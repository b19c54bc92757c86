"""Directory pools: each volume is a file named exactly as the volume, in one folder.

What libvirt's ``dir`` pool does, with three extra guarantees:

* a volume path never leaves the folder (names are validated; symlinks and
  anything whose real path is elsewhere are refused);
* create, clone and import write to a hidden ``.NAME.partial`` and publish it
  under its name only when complete, so a full disk, a failed conversion or a
  killed daemon never leaves a half-written volume that looks usable;
* writes go through qemu-img without force-share, so a disk a running VM holds is
  a Conflict rather than being changed under the guest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from virtkit.errors import Conflict, InvalidSpec, NotFound, VirtkitError
from virtkit.model.pool import Pool
from virtkit.storage import qemuimg
from virtkit.storage.base import (
    PoolCapacity,
    Progress,
    VolumeInfo,
    checked_volume_name,
    refuse_while_holding,
)

PARTIAL_SUFFIX = ".partial"
#: the format a volume was created in, kept with the file (see declared_format).
FORMAT_XATTR = "user.virtkit.format"


def declared_format(path: str) -> str | None:
    """The format virtkit created ``path`` in, from its ``user.virtkit.format`` xattr.

    Probing a raw disk is unsafe: a guest can write a qcow2 header into it, naming
    any host file as backing, and a probe would then call the volume qcow2 (and a
    linked clone of it would read that file).  So files made here carry their
    format; files made elsewhere, or on file systems without user xattrs, are probed
    as libvirt's dir pool does.
    """
    try:
        value = os.getxattr(path, FORMAT_XATTR, follow_symlinks=False).decode()
    except OSError:
        return None
    return value if value in qemuimg.CREATE_FORMATS else None


def _record_format(path: str, fmt: str) -> None:
    with contextlib.suppress(OSError):  # no user xattrs here: the format will be probed
        os.setxattr(path, FORMAT_XATTR, fmt.encode(), follow_symlinks=False)


def _in_use(name: str, pool: str) -> Conflict:
    return Conflict(f"volume {name!r} of pool {pool!r} is in use by a running VM",
                    fix="shut the VM down or detach the disk, then try again")


class DirPool:
    """A :class:`~virtkit.storage.base.PoolBackend` over one folder (``pool.target``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.root = os.path.normpath(pool.target)

    # --- the pool ---------------------------------------------------------------------

    def build(self) -> None:
        """Create the folder (and its parents); an existing folder is fine, a file is not."""
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise Conflict(f"pool {self.pool.name!r}: {self.root} exists and is not a folder",
                           fix="choose another target folder or move that file away")
        os.makedirs(self.root, mode=0o755, exist_ok=True)

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def delete(self) -> None:
        """Remove the folder; refuses while it holds volumes (or any other file)."""
        self._require()
        refuse_while_holding(self.pool.name, self.list_volumes())
        self._remove_stale_partials()
        try:
            os.rmdir(self.root)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            left = sorted(os.listdir(self.root))
            raise Conflict(f"pool folder {self.root} is not empty: it holds {', '.join(left)}",
                           fix="move those files away, then delete the pool") from exc

    def capacity(self) -> PoolCapacity:
        """Numbers of the file system under the folder, as libvirt reports them:
        allocation is what is used (blocks - free), available what an unprivileged
        writer can still get (which excludes root-reserved blocks)."""
        self._require()
        fs = os.statvfs(self.root)
        return PoolCapacity(capacity=fs.f_blocks * fs.f_frsize,
                            allocation=(fs.f_blocks - fs.f_bfree) * fs.f_frsize,
                            available=fs.f_bavail * fs.f_frsize)

    # --- looking at volumes -----------------------------------------------------------

    def list_volumes(self) -> list[VolumeInfo]:
        """Every regular file in the folder but hidden ones (and ``.NAME.partial`` temps)."""
        self._require()
        with os.scandir(self.root) as entries:
            files = sorted(e.name for e in entries
                           if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        return [self._describe(name, os.path.join(self.root, name)) for name in files]

    def volume(self, name: str) -> VolumeInfo:
        return self._describe(name, self._existing(name))

    def volume_path(self, name: str) -> str:
        """``<folder>/<name>``, after checking the name and that the path stays inside."""
        checked_volume_name(name)
        path = os.path.join(self.root, name)
        if os.path.islink(path):
            raise InvalidSpec(
                f"volume {name!r} in pool {self.pool.name!r} is a symbolic link "
                f"(to {os.readlink(path)}); pool volumes must be real files",
                field="name", fix="replace the link by the file itself (or use vol-import)")
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.root):
            raise InvalidSpec(f"volume {name!r} resolves outside pool folder {self.root}",
                              field="name", fix="use a plain file name")
        return path

    def _require(self) -> None:
        if not os.path.isdir(self.root):
            raise NotFound(f"folder {self.root} of pool {self.pool.name!r} does not exist",
                           fix=f"virtkit pool-build {self.pool.name}")

    def _existing(self, name: str) -> str:
        """The path of an existing volume file, or NotFound naming the pool."""
        self._require()
        path = self.volume_path(name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise NotFound(f"volume {name!r} not found in pool {self.pool.name!r}",
                           fix=f"virtkit vol-list {self.pool.name}") from None
        if not stat.S_ISREG(mode):
            raise InvalidSpec(f"{path} in pool {self.pool.name!r} is not a regular file",
                              field="name")
        return path

    def _describe(self, name: str, path: str) -> VolumeInfo:
        """A VolumeInfo from qemu-img info (-U: reading a running VM's disk is fine)."""
        st = os.lstat(path)
        try:
            info = qemuimg.image_info(path, fmt=declared_format(path))
        except VirtkitError:
            return VolumeInfo(name=name, path=path, format="unknown", capacity=st.st_size,
                              allocation=st.st_blocks * 512)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        return VolumeInfo(name=name, path=path, format=str(info.get("format", "raw")),
                          capacity=int(info.get("virtual-size", st.st_size)),
                          allocation=st.st_blocks * 512,
                          backing=str(backing) if backing else None)

    # --- writing volumes --------------------------------------------------------------

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo:
        """A new empty volume (raw or qcow2), or a qcow2 overlay on ``backing``.

        ``backing`` must be a volume of this pool; capacity 0 takes its size.  The
        overlay records the backing's absolute path and format (never probed again).
        """
        self._require()
        qemuimg.check_format(fmt)
        base: VolumeInfo | None = None
        if backing is not None:
            base = self._backing_volume(backing, fmt, prealloc)
            capacity = capacity or base.capacity
            if capacity < base.capacity:
                raise InvalidSpec(f"an overlay ({capacity} bytes) cannot be smaller than its "
                                  f"backing volume {base.name!r} ({base.capacity} bytes)",
                                  field="capacity", fix="omit the capacity or make it larger")
        elif capacity <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
        with self._staging(name, fmt) as temp:
            qemuimg.create(temp, fmt, capacity, prealloc=prealloc,
                           backing=base.path if base else None,
                           backing_fmt=base.format if base else None)
        return self.volume(name)

    def _backing_volume(self, backing: VolumeInfo, fmt: str, prealloc: bool) -> VolumeInfo:
        """The fresh info of ``backing``, checked to be this pool's and not being written."""
        if fmt != "qcow2":
            raise InvalidSpec("only a qcow2 volume can have a backing volume", field="format",
                              fix="create the overlay with format qcow2")
        if prealloc:
            raise InvalidSpec("preallocation and a backing volume exclude each other",
                              field="prealloc", fix="drop prealloc for an overlay")
        base = self.volume(backing.name)
        if os.path.realpath(base.path) != os.path.realpath(backing.path):
            raise InvalidSpec(f"backing volume {backing.path} is not in pool "
                              f"{self.pool.name!r}", field="backing",
                              fix="import or clone the base into this pool first")
        if base.format not in ("raw", "qcow2"):
            raise InvalidSpec(f"backing volume {base.name!r} is {base.format}; overlays need "
                              "a raw or qcow2 base", field="backing",
                              fix="convert the base first (vol-clone --format qcow2)")
        if qemuimg.image_locks(base.path).writer:
            raise Conflict(f"volume {base.name!r} of pool {self.pool.name!r} is being written "
                           "by a running VM; an overlay on it would see a moving disk",
                           fix="shut the VM down first (or make a full clone)")
        return base

    def delete_volume(self, name: str) -> None:
        """Remove a volume; refuses one a running QEMU holds (its image lock).

        Whether other volumes are backed by it, or domains use it, is the
        service's rule (it can be overridden there with --force).
        """
        path = self._existing(name)
        if qemuimg.image_locks(path).in_use:
            raise _in_use(name, self.pool.name)
        os.unlink(path)

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo:
        """Change the virtual size; a shrink must be asked for (it discards data)."""
        qemuimg.resize_volume(self.volume(name), capacity, shrink=shrink)
        return self.volume(name)

    def wipe_volume(self, name: str) -> None:
        """Make the volume read as zeros: raw is overwritten with zeros in place; qcow2 is
        recreated empty at the same size with the same backing (libvirt's vol-wipe)."""
        info = self.volume(name)
        if info.format == "raw":
            qemuimg.write_zeros(info.path, os.path.getsize(info.path))
        elif info.format == "qcow2":
            raw = qemuimg.image_info(info.path, fmt="qcow2")
            backing = raw.get("full-backing-filename")
            qemuimg.create(info.path, "qcow2", info.capacity,
                           backing=str(backing) if backing else None,
                           backing_fmt=raw.get("backing-filename-format") or
                           (qemuimg.detect_format(str(backing)) if backing else None),
                           cluster_size=raw.get("cluster-size"))
        else:
            raise InvalidSpec(f"volume {name!r} is {info.format}; wipe handles raw and qcow2",
                              fix="delete and recreate it instead")

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo:
        """A full copy (qemu-img convert, flattening any backing chain) or, ``linked``,
        a qcow2 overlay whose backing is the source (instant; the source must then
        stay unchanged)."""
        src = self.volume(source)
        if linked:
            if fmt not in (None, "qcow2"):
                raise InvalidSpec("a linked clone is a qcow2 overlay", field="format",
                                  fix="omit the format or use qcow2")
            return self.create_volume(name, 0, "qcow2", backing=src)
        target_fmt = fmt or src.format
        qemuimg.check_format(target_fmt)
        with self._staging(name, target_fmt) as temp:
            qemuimg.convert(src.path, src.format, temp, target_fmt, progress=progress)
        return self.volume(name)

    def import_volume(self, name: str, source_path: str, fmt: str, *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Convert any image qemu-img reads (vmdk, vdi, vhdx, qcow2, raw ...) into a new
        ``fmt`` volume; the source is left untouched."""
        self._require()
        qemuimg.check_format(fmt)
        source = qemuimg.local_source(source_path)
        src_fmt = source_fmt or qemuimg.detect_format(source)
        with self._staging(name, fmt) as temp:
            qemuimg.convert(source, src_fmt, temp, fmt, progress=progress)
        return self.volume(name)

    # --- staging ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self, name: str, fmt: str) -> Iterator[str]:
        """Yield the hidden temp path for new volume ``name``; publish it on success
        (with its format recorded, see :func:`declared_format`).

        The temp is flock()ed for the whole operation: a second writer of the same
        name gets a Conflict, and a temp left by a killed process (no lock held) is
        simply reused.  On any failure the temp is removed.
        """
        self._require()
        final = self.volume_path(name)
        if os.path.lexists(final):
            raise Conflict(f"volume {name!r} already exists in pool {self.pool.name!r}",
                           fix="choose another name or delete the volume first")
        temp = os.path.join(self.root, f".{name}{PARTIAL_SUFFIX}")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(f"volume {name!r} of pool {self.pool.name!r} is being "
                               "written by another operation", fix="wait for it to finish"
                               ) from None
            os.ftruncate(fd, 0)
            try:
                yield temp
                _record_format(temp, fmt)
                self._publish(name, temp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        finally:
            os.close(fd)

    def _publish(self, name: str, temp: str, final: str) -> None:
        """Give the finished temp its name without ever replacing an existing file."""
        try:
            os.link(temp, final)
        except FileExistsError:
            raise Conflict(f"volume {name!r} appeared in pool {self.pool.name!r} while it "
                           "was being written", fix="choose another name") from None
        except OSError as exc:  # a file system without hard links (vfat, some FUSE)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            if os.path.lexists(final):
                raise Conflict(f"volume {name!r} already exists in pool {self.pool.name!r}",
                               fix="choose another name") from exc
            os.rename(temp, final)
        else:
            os.unlink(temp)
        _fsync_dir(self.root)

    def _remove_stale_partials(self) -> None:
        self.remove_stale_partials(skip_busy=False)

    def remove_stale_partials(self, *, skip_busy: bool = True) -> list[str]:
        """Remove ``.NAME.partial`` temps no operation holds (left by a killed process);
        return their names.  A temp being written (its flock held) is skipped, or with
        ``skip_busy=False`` a Conflict."""
        removed: list[str] = []
        for entry in sorted(os.listdir(self.root)):
            if not (entry.startswith(".") and entry.endswith(PARTIAL_SUFFIX)):
                continue
            path = os.path.join(self.root, entry)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
                removed.append(entry)
            except BlockingIOError:
                if not skip_busy:
                    raise Conflict(f"pool {self.pool.name!r} has a volume being written "
                                   f"({entry})", fix="wait for the operation to finish"
                                   ) from None
            finally:
                os.close(fd)
        return removed


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
