"""Unix sockets that work at any path length.

``sun_path`` holds at most 107 bytes, which a deep ``VIRTKIT_ROOT`` easily
exceeds.  For long paths we open the parent folder and go through
``/proc/self/fd/N/``, a short alias the kernel resolves to the same place.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

_SUN_PATH_MAX = 107


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        yield text
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def bind_unix(path: Path, *, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    """A listening unix socket at ``path`` (replacing a stale one), with ``mode``."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as short:
            sock.bind(short)
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(path: Path, *, timeout: float | None = None) -> socket.socket:
    """A connected stream socket to the unix socket at ``path``.

    With a timeout the socket is non-blocking inside, and a unix socket whose listen
    backlog is full answers ``EAGAIN`` at once instead of waiting (a daemon under a
    connection flood): that is retried until the timeout, like a blocking connect."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with _short_path(path) as short:
                sock.connect(short)
        except BlockingIOError:
            sock.close()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{path}: the listen queue stayed full for {timeout} s"
                                   ) from None
            time.sleep(0.01)
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock
