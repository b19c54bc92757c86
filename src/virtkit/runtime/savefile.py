"""The format of ``virtkit save`` files: a header with the spec, then QEMU's stream.

Layout: the magic line, an 8-byte big-endian header length, the JSON header
(``{"spec": {...}, "running": bool, "saved": time, "layout": {...}}``, the
layout only after hotplug), zero padding to a
4 KiB boundary, then QEMU's migration stream.  QEMU reads and writes the
stream through a file descriptor positioned after the header, as libvirt does.
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import IO, Any, TypeAlias

from virtkit.errors import InvalidSpec

MAGIC = b"VIRTKIT-SAVE-1\n"
ALIGN = 4096

#: the save file's JSON header: ``spec`` (the definition), ``running`` (whether the
#: vCPUs run after a restore), ``layout`` (devlayout's hot-added devices), ``saved``;
#: written and read by this module only, so it stays a plain JSON object
Header: TypeAlias = dict[str, Any]


def write_header(stream: IO[bytes], spec: dict[str, Any], *, running: bool,
                 layout: dict[str, Any] | None = None) -> None:
    """Write the header and padding; the stream is left where QEMU's data starts.
    ``layout``: where the run's hot-added devices were (runtime/devlayout.py)."""
    header: dict[str, Any] = {"spec": spec, "running": running, "saved": time.time()}
    if layout is not None:
        header["layout"] = layout
    body = json.dumps(header).encode()
    head = MAGIC + struct.pack(">Q", len(body)) + body
    padding = (-len(head)) % ALIGN
    stream.write(head + b"\0" * padding)
    stream.flush()


def read_header(fd: int, path: str) -> Header:
    """Read the header from ``fd`` and leave its offset at QEMU's data."""
    magic = os.read(fd, len(MAGIC))
    if magic != MAGIC:
        raise InvalidSpec(f"{path} is not a virtkit save file",
                          fix="pass a file written by 'virtkit save'")
    raw_length = os.read(fd, 8)
    if len(raw_length) != 8:
        raise InvalidSpec(f"{path} has a corrupt header (cut short)")
    (length,) = struct.unpack(">Q", raw_length)
    if length > 16 * 1024 * 1024:
        raise InvalidSpec(f"{path} has a corrupt header (length {length})")
    body = os.read(fd, length)
    consumed = len(MAGIC) + 8 + len(body)
    os.lseek(fd, consumed + (-consumed) % ALIGN, os.SEEK_SET)
    try:
        header: dict[str, Any] = json.loads(body)
    except ValueError:
        raise InvalidSpec(f"{path} has a corrupt header") from None
    if not isinstance(header, dict) or not isinstance(header.get("spec"), dict):
        raise InvalidSpec(f"{path} has a corrupt header (no domain spec)")
    return header


def rewrite_header(path: str, header: Header) -> None:
    """Replace the header of the save file at ``path`` (managedsave-define), keeping
    QEMU's stream.  A header that fits the old one's 4 KiB-aligned room is written in
    place; a longer one goes into a new file (header, then the stream copied) that
    replaces the old one by rename, so a crash leaves the old file or the new one."""
    body = json.dumps(header).encode()
    head = MAGIC + struct.pack(">Q", len(body)) + body
    fd = os.open(path, os.O_RDWR)
    try:
        read_header(fd, path)
        data_start = os.lseek(fd, 0, os.SEEK_CUR)
        if len(head) <= data_start:
            os.pwrite(fd, head + b"\0" * (data_start - len(head)), 0)
            os.fsync(fd)
            return
        info = os.fstat(fd)
        temporary = f"{path}.new"
        out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, info.st_mode & 0o777)
        try:
            os.fchown(out, info.st_uid, info.st_gid)
            os.write(out, head + b"\0" * ((-len(head)) % ALIGN))
            remaining = info.st_size - data_start
            while remaining > 0:
                copied = os.copy_file_range(fd, out, min(remaining, 1 << 30))
                if copied == 0:
                    break
                remaining -= copied
            os.fsync(out)
        except BaseException:
            os.close(out)
            os.unlink(temporary)
            raise
        os.close(out)
        os.replace(temporary, path)
    finally:
        os.close(fd)
