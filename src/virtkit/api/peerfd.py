"""Take an open file descriptor from the local client at the other end of a request.

``vol-upload`` and ``vol-download`` from a local CLI need not push a volume's bytes
through the socket: the client names one of its own open descriptors, the daemon
duplicates it with ``pidfd_getfd(2)`` (the peer found through ``SO_PEERCRED``, so a
client can only hand over its own descriptors) and copies inside the kernel.  The
duplicate carries the client's open mode, so the daemon can do no more with it
than the client could: a read-only descriptor stays read-only.

Duplicating needs ptrace rights over the client (a root daemon has them); where
they are missing, or the client is remote, :class:`Unsupported` tells it to stream.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from aiohttp import web

from virtkit.errors import InvalidSpec, Unsupported, UnsupportedForClient

_SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 (the generic syscall table)
_libc = ctypes.CDLL(None, use_errno=True)


def peer_pid(request: web.Request) -> int:
    """The PID of the process at the other end of the request's unix socket."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Unsupported("handing over a file descriptor needs a local (unix socket) client",
                          fix="stream the data instead")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def boot_id() -> str:
    """This kernel's boot id: two processes with the same one run on the same host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def take_fd(request: web.Request, number: object, client: dict[str, object] | None = None
            ) -> int:
    """A duplicate of the client's descriptor ``number`` (the caller closes it).

    ``client`` is what the client says of itself (``pid``, ``boot_id``); when given it
    must be the socket's peer on this host.  Over a forwarded socket (virtkit+ssh) the
    peer is sshd, not the client: its descriptors are never taken.
    """
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**31:
        raise InvalidSpec(f"fd must be a descriptor number, not {number!r}", field="fd")
    pid = peer_pid(request)
    if client and (client.get("pid") != pid or client.get("boot_id") != boot_id()):
        raise UnsupportedForClient("the client is not the local process at the other end of "
                                   "the socket (a forwarded connection)",
                                   fix="stream the data instead")
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        raise Unsupported(f"cannot reach the client process {pid}: {exc.strerror}") from None
    try:
        fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, number, 0)
        if fd < 0:
            error = ctypes.get_errno()
            if error == 9:  # EBADF: the client has no such descriptor
                raise InvalidSpec(f"the client has no open file descriptor {number}",
                                  field="fd")
            raise Unsupported(f"cannot take the client's file descriptor: "
                              f"{os.strerror(error)}", fix="stream the data instead")
        return int(fd)
    finally:
        os.close(pidfd)
