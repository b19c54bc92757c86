"""Copy between open files inside the kernel (copy_file_range), with progress.

Used by vol-upload/vol-download when the client hands over its file descriptor:
no byte passes through Python.  Uploads also start the write-back of each slice as
soon as it is copied (``sync_file_range`` from a second thread), so the final fsync,
which makes the new volume durable before it is renamed into place, has little left
to wait for.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import queue
import stat
import threading

from virtkit.errors import InvalidSpec
from virtkit.storage.base import Progress

SLICE = 64 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def check_mode(fd: int, *, write: bool, what: str) -> int:
    """Refuse a descriptor opened the wrong way or not on a file; return its size."""
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    wanted = (os.O_WRONLY, os.O_RDWR) if write else (os.O_RDONLY, os.O_RDWR)
    if mode not in wanted:
        raise InvalidSpec(f"{what} was not opened for {'writing' if write else 'reading'}",
                          field="fd")
    info = os.fstat(fd)
    if not (stat.S_ISREG(info.st_mode) or (not write and stat.S_ISBLK(info.st_mode))):
        raise InvalidSpec(f"{what} is not a regular file", field="fd")
    return os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(info.st_mode) else info.st_size


def _copy_slice(src: int, dst: int, offset: int, count: int) -> int:
    try:
        return os.copy_file_range(src, dst, count, offset, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    data = os.pread(src, min(count, 8 * 1024 * 1024), offset)  # another file system
    return os.pwrite(dst, data, offset) if data else 0


def copy_fd(src: int, dst: int, size: int, progress: Progress | None = None, *,
            write_behind: bool = False) -> int:
    """Copy ``size`` bytes from offset 0 of ``src`` to offset 0 of ``dst``; bytes copied.

    ``write_behind`` starts the write-back of each copied slice from a second thread,
    so the copy never waits for the disk's queue and the caller's fsync finds little
    left to write.
    """
    with contextlib.suppress(OSError):  # bigger read-ahead, as cp asks for
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    slices: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    writer = threading.Thread(target=_write_back, args=(dst, slices), daemon=True) \
        if write_behind else None
    if writer is not None:
        writer.start()
    done = 0
    try:
        while done < size:
            copied = _copy_slice(src, dst, done, min(SLICE, size - done))
            if copied == 0:
                raise InvalidSpec(f"the source ended after {done} of {size} bytes (it shrank)")
            if writer is not None:
                slices.put((done, copied))
            done += copied
            if progress is not None:
                progress(done, size)
    finally:
        if writer is not None:
            slices.put(None)
            writer.join()
    return done


def _write_back(fd: int, slices: queue.SimpleQueue[tuple[int, int] | None]) -> None:
    """Start (not wait for) the write-back of each slice as it is copied."""
    while (item := slices.get()) is not None:
        _libc.sync_file_range(fd, item[0], item[1], _SYNC_FILE_RANGE_WRITE)
