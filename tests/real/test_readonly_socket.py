"""The daemon's two unix sockets (issue 9, API access): ``virtkitd.sock`` for the
``virtkit`` group, ``virtkitd-ro.sock`` (reads only) for the ``virtkit-ro`` group.

A forked child of the test drops to a new unprivileged account in ``virtkit-ro`` (it
keeps the already-loaded Python: this machine's interpreter lives under /root, which
other users cannot read) and tries both sockets with raw HTTP.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import (
    DaemonHandle,
    raw_request,
    running_daemon,
    temporary_account,
)
from virtkit.images.tinyguest import TinyGuest

pytestmark = pytest.mark.qemu


@contextlib.contextmanager
def read_only_account() -> Iterator[tuple[int, int]]:
    """(uid, gid of virtkit-ro) of a new account in the virtkit-ro group; removed after."""
    with temporary_account("virtkit-ro") as (_user, uid, gid):
        assert gid is not None
        yield uid, gid


def _http(path: str, method: str, target: str) -> int | str:
    """The HTTP status of one request over the unix socket at ``path``, or the error."""
    try:
        return raw_request(Path(path), f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
                           "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())[0]
    except OSError as exc:
        return type(exc).__name__


def _as_user(uid: int, gid: int, probes: list[tuple[str, str, str]]) -> list[Any]:
    """Run the probes in a forked child with only ``uid`` and the group ``gid``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            answers = [_http(*probe) for probe in probes]
            os.write(write_fd, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    return list(json.loads(data))


@pytest.fixture
def ro_daemon(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, int, int]]:
    with read_only_account() as (uid, gid), running_daemon(tiny_guest) as daemon:
        os.chmod(daemon.root, 0o711)  # mkdtemp's 0700 would hide both sockets
        yield daemon, uid, gid


def test_read_only_group_reads_through_its_socket_and_nothing_more(
        ro_daemon: tuple[DaemonHandle, int, int]) -> None:
    daemon, uid, gid = ro_daemon
    daemon.define("ro1")
    daemon.define("console")  # a name, not the console route
    rw, ro = str(daemon.root / "virtkitd.sock"), str(daemon.root / "virtkitd-ro.sock")
    assert grp.getgrgid(os.stat(ro).st_gid).gr_name == "virtkit-ro"
    answers = _as_user(uid, gid, [
        (rw, "GET", "/v1/domains"),                    # not in the virtkit group
        (ro, "GET", "/v1/domains"),
        (ro, "GET", "/v1/domains/ro1"),
        (ro, "POST", "/v1/domains/ro1/start"),
        (ro, "DELETE", "/v1/domains/ro1"),
        (ro, "GET", "/v1/domains/ro1/console/log"),    # guest output
        (ro, "GET", "/v1/tokens"),
        (ro, "GET", "/v1/audit"),
        (ro, "GET", "/v1/domains/console"),
        (ro, "GET", "/v1/domains/console/console/log"),
    ])
    assert answers == ["PermissionError", 200, 200, 403, 403, 403, 403, 403, 200, 403]
    assert daemon.state("ro1") == "shutoff"  # nothing changed
    assert sorted(d["name"] for d in daemon.client.get("/v1/domains")) == ["console", "ro1"]
