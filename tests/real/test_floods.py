"""Floods: many idle connections or many open WebSockets must not stop another
client's ``list``; past the configured bounds the daemon answers 503 ``busy``
instead of running out of descriptors, and recovers when the flood goes away."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, raw_request, start_daemon, wait_for
from virtkit.cli.client import Client
from virtkit.cli.wsclient import WebSocket
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

LIST_TIMEOUT = 20.0  # generous: this is about answering at all, not about speed


def _list(root: Path) -> list[dict[str, object]]:
    """``list`` from a fresh client (its own connection) with a bounded wait."""
    result: list[dict[str, object]] = Client(state_paths(root), timeout=LIST_TIMEOUT).get(
        "/v1/domains")
    return result


@contextlib.contextmanager
def idle_connections(root: Path, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connected unix sockets that never send a byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(root / "virtkitd.sock"))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def websockets(root: Path, count: int) -> Iterator[list[WebSocket]]:
    opened: list[WebSocket] = []
    try:
        for _ in range(count):
            opened.append(WebSocket.open(root / "virtkitd.sock", "/v1/events"))
        yield opened
    finally:
        for ws in opened:
            with contextlib.suppress(OSError):
                ws.close()


def _raw_get(root: Path, path: str) -> tuple[int, Any]:
    """One GET on a new connection: (status, JSON body); for refusals the client
    classes would raise."""
    status, body = raw_request(
        root / "virtkitd.sock",
        f"GET {path} HTTP/1.1\r\nHost: virtkit\r\nConnection: close\r\n\r\n".encode(),
        timeout=LIST_TIMEOUT)
    return status, json.loads(body or b"{}")


def test_500_idle_connections_do_not_stop_list(daemon: DaemonHandle) -> None:
    daemon.define("flooded")
    with idle_connections(daemon.root, 500) as socks:
        assert [d["name"] for d in _list(daemon.root)] == ["flooded"]
        socks[0].sendall(b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n")  # a flooder speaks
        assert b"200 OK" in socks[0].recv(4096)
        assert [d["name"] for d in _list(daemon.root)] == ["flooded"]


def test_100_open_websockets_do_not_stop_list_or_events(daemon: DaemonHandle) -> None:
    with websockets(daemon.root, 100) as opened:
        assert _list(daemon.root) == []
        daemon.define("seen")  # every subscriber gets the event; none blocks the daemon
        assert [d["name"] for d in _list(daemon.root)] == ["seen"]
        opened[-1].sock.settimeout(LIST_TIMEOUT)
        _opcode, payload = opened[-1].receive()
        assert json.loads(payload)["type"] == "defined"


def test_connections_and_websockets_past_the_bounds_get_503_busy(
        daemon: DaemonHandle) -> None:
    daemon.process.kill()
    daemon.process.wait(10)
    daemon.process = start_daemon(daemon.root, extra=("--max-connections", "50",
                                                      "--max-websockets", "5"))
    with idle_connections(daemon.root, 50):
        wait_for(lambda: _raw_get(daemon.root, "/v1/version")[0] == 503, 10,
                 "the 51st connection to be refused")
        status, body = _raw_get(daemon.root, "/v1/domains")
        assert (status, body["error"]) == (503, "busy")
    # the flood is gone: served again once the daemon has seen the sockets close
    wait_for(lambda: _raw_get(daemon.root, "/v1/domains") == (200, []), 10,
             "list to be served after the flood")
    with websockets(daemon.root, 5) as opened:
        with pytest.raises(Exception, match="websockets open"):
            WebSocket.open(daemon.root / "virtkitd.sock", "/v1/events")
        assert _list(daemon.root) == []  # plain requests still pass
        opened.pop().close()
        wait_for(lambda: _try_ws(daemon.root), 10, "a WebSocket slot to free up")


def _try_ws(root: Path) -> bool:
    try:
        WebSocket.open(root / "virtkitd.sock", "/v1/events").close()
    except Exception:
        return False
    return True
