"""Running code and commands inside a named network namespace.

Everything in the network layer takes an optional ``netns`` name (as made by
``ip netns add NAME``, i.e. a file under ``/run/netns``).  ``None`` means the
namespace of the calling process -- the real host in production.  Tests pass a
namespace they made themselves, so bridges, addresses, nft tables, sysctls and
dnsmasq all live there and nothing on the real host changes.

Python code enters a namespace in a short-lived thread: ``setns(2)`` with
``CLONE_NEWNET`` moves only the calling *thread*, so the rest of the process
(an event loop, other requests) is never affected.  Whatever that thread opens
-- a netlink socket, ``/dev/net/tun``, a ``/proc/sys/net`` file -- belongs to the
namespace for its whole life.  External programs run under ``ip netns exec``,
which execs the program (its pid is the program's, not a wrapper's).
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from virtkit.errors import HostError, InvalidSpec, NotFound

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

T = TypeVar("T")


def netns_path(netns: str) -> Path:
    """The bind-mounted namespace file for ``netns``; NotFound if there is none."""
    if not _NAME.fullmatch(netns) or netns in (".", ".."):
        raise InvalidSpec(f"network namespace name {netns!r} is not valid",
                          fix="use letters, digits, '.', '_' and '-' (as ip netns does)")
    path = NETNS_RUN_DIR / netns
    if not path.exists():
        raise NotFound(f"network namespace {netns!r} does not exist",
                       fix=f"create it with 'ip netns add {netns}' or pass another name")
    return path


def command_prefix(netns: str | None) -> list[str]:
    """Argv prefix that runs a program in ``netns`` (empty for the caller's namespace)."""
    if netns is None:
        return []
    netns_path(netns)
    return ["ip", "netns", "exec", netns]


def _setns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise HostError(f"cannot enter network namespace {netns!r}: {os.strerror(errno)}",
                            fix="run virtkit as root (entering a namespace needs CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def run_in(netns: str | None, function: Callable[[], T]) -> T:
    """Call ``function`` with the calling thread in ``netns`` and return its result.

    With ``netns=None`` the function simply runs here.  Otherwise it runs in a
    fresh thread that entered the namespace; exceptions are re-raised here.
    """
    if netns is None:
        return function()
    netns_path(netns)
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _setns(netns)
            result.append(function())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write ``/proc/sys/<key with dots as slashes>`` inside ``netns``.

    ``/proc/sys/net`` shows the namespace of the thread that opens it, so the
    file is opened by a thread that entered the namespace.
    """
    path = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        try:
            path.write_text(value)
        except OSError as exc:
            raise HostError(f"cannot set {key}={value}: {exc.strerror}",
                            fix="run virtkit as root") from None

    run_in(netns, write)


def read_sysctl(netns: str | None, key: str) -> str:
    """Read a sysctl value as seen inside ``netns``."""
    path = Path("/proc/sys") / key.replace(".", "/")
    return run_in(netns, lambda: path.read_text().strip())
