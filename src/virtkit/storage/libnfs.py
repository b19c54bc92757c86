"""A small synchronous client of an NFS export through libnfs (ctypes), for netfs pools.

QEMU opens ``nfs://`` images itself (qemu-block-extra's libnfs driver) and qemu-img
creates, converts and resizes them; what neither does is list a folder, remove or
rename a file, or report the export's space.  libnfs (libnfs13, which qemu-block-extra
depends on) does, in user space: no kernel NFS client is needed (this host's kernel has
none).  Every call blocks, so callers run it in a worker thread; a server that stops
answering fails the call after :data:`TIMEOUT_MS` instead of hanging it.

Paths given to :class:`Export` methods are inside the export and start with ``/``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass
from types import TracebackType

from virtkit.errors import HostError, NotFound

TIMEOUT_MS = 30_000
_NF3REG = 1
_ENOENT = 2


class _DirEntry(ctypes.Structure):
    """The leading fields of libnfs's ``struct nfsdirent`` (only these are read)."""


_DirEntry._fields_ = [("next", ctypes.POINTER(_DirEntry)), ("name", ctypes.c_char_p),
                      ("inode", ctypes.c_uint64), ("type", ctypes.c_uint32),
                      ("mode", ctypes.c_uint32), ("size", ctypes.c_uint64)]


class _StatVfs64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
        "f_favail", "f_fsid", "f_flag", "f_namemax")]


class _Stat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("nfs") or "libnfs.so.13"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise HostError(f"libnfs is not installed ({exc})",
                        fix="apt install qemu-block-extra (it brings libnfs13)") from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, args, res in (
            ("nfs_init_context", [], vp), ("nfs_destroy_context", [vp], None),
            ("nfs_set_timeout", [vp, i], None), ("nfs_mount", [vp, cp, cp], i),
            ("nfs_get_error", [vp], cp), ("nfs_unlink", [vp, cp], i),
            ("nfs_rename", [vp, cp, cp], i), ("nfs_mkdir", [vp, cp], i),
            ("nfs_opendir", [vp, cp, ctypes.POINTER(vp)], i),
            ("nfs_readdir", [vp, vp], ctypes.POINTER(_DirEntry)),
            ("nfs_closedir", [vp, vp], None),
            ("nfs_statvfs64", [vp, cp, ctypes.POINTER(_StatVfs64)], i),
            ("nfs_stat64", [vp, cp, ctypes.POINTER(_Stat64)], i)):
        function = getattr(lib, fn)
        function.argtypes, function.restype = args, res
    return lib


@dataclass(frozen=True)
class Entry:
    name: str
    regular: bool
    size: int


class Export:
    """One mounted NFS export (a libnfs context); use as a context manager."""

    def __init__(self, server: str, export: str) -> None:
        self.server, self.export = server, export
        self._lock = threading.Lock()  # a libnfs context is not thread-safe
        lib = _lib()
        self._ctx = lib.nfs_init_context()
        if not self._ctx:
            raise HostError("libnfs could not make a context (out of memory?)")
        lib.nfs_set_timeout(self._ctx, TIMEOUT_MS)
        if lib.nfs_mount(self._ctx, server.encode(), export.encode()) != 0:
            error = self._error()
            self.close()
            raise HostError(f"cannot mount NFS export {server}:{export}: {error}",
                            fix="check the server runs (rpcbind, mountd, nfsd), exports "
                                "that path to this host, and allows it read-write")

    def __enter__(self) -> Export:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx:
            _lib().nfs_destroy_context(self._ctx)
            self._ctx = None

    def _error(self) -> str:
        text = _lib().nfs_get_error(self._ctx)
        return text.decode(errors="replace") if text else "unknown error"

    def _check(self, rc: int, what: str, path: str) -> None:
        if rc == 0:
            return
        where = f"nfs://{self.server}{self.export.rstrip('/')}{path}"
        if rc == -_ENOENT:
            raise NotFound(f"{where} does not exist ({what})")
        raise HostError(f"NFS {what} of {where} failed: {self._error()}")

    def listdir(self, path: str = "/") -> list[Entry]:
        lib = _lib()
        with self._lock:
            handle = ctypes.c_void_p()
            self._check(lib.nfs_opendir(self._ctx, path.encode(), ctypes.byref(handle)),
                        "opendir", path)
            entries = []
            try:
                while True:
                    entry = lib.nfs_readdir(self._ctx, handle)
                    if not entry:
                        break
                    item = entry.contents
                    entries.append(Entry(name=(item.name or b"").decode(errors="replace"),
                                         regular=item.type == _NF3REG, size=int(item.size)))
            finally:
                lib.nfs_closedir(self._ctx, handle)
        return entries

    def stat(self, path: str) -> _Stat64:
        st = _Stat64()
        with self._lock:
            self._check(_lib().nfs_stat64(self._ctx, path.encode(), ctypes.byref(st)),
                        "stat", path)
        return st

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def statvfs(self, path: str = "/") -> tuple[int, int, int]:
        """(capacity, used, available) in bytes."""
        vfs = _StatVfs64()
        with self._lock:
            self._check(_lib().nfs_statvfs64(self._ctx, path.encode(), ctypes.byref(vfs)),
                        "statvfs", path)
        unit = vfs.f_frsize or vfs.f_bsize
        return (vfs.f_blocks * unit, (vfs.f_blocks - vfs.f_bfree) * unit,
                vfs.f_bavail * unit)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check(_lib().nfs_unlink(self._ctx, path.encode()), "unlink", path)

    def rename(self, old: str, new: str) -> None:
        with self._lock:
            self._check(_lib().nfs_rename(self._ctx, old.encode(), new.encode()),
                        "rename", old)
