"""The CLI's API client: HTTP/1.1 over the daemon's unix socket, stdlib only.

Kept to the standard library so ``virtkit list`` starts fast.  When no daemon
answers, :func:`connect` starts a per-user one (libvirt's session mode) and
says so on stderr.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from virtkit.errors import DaemonUnreachable, VirtkitError
from virtkit.paths import StatePaths, state_paths
from virtkit.unixsock import connect_unix

DAEMON_START_TIMEOUT = 30.0


class ApiError(VirtkitError):
    """An error the daemon returned, carrying its code and HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", f"HTTP {status}")), fix=body.get("fix"),
                         **body.get("details", {}))
        self.code = str(body.get("error", "error"))
        self.http_status = status


def _decode(response: http.client.HTTPResponse, data: bytes) -> Any:
    """JSON bodies decoded; errors raised as ApiError with the daemon's message."""
    if response.getheader("Content-Type", "").startswith("application/json"):
        decoded = json.loads(data) if data else None
    else:
        decoded = data
    if response.status >= 400:
        raise ApiError(response.status, decoded if isinstance(decoded, dict) else
                       {"message": f"HTTP {response.status}"})
    return decoded


@contextmanager
def open_stream(client: Client, method: str, path: str, body: dict[str, Any] | None = None,
                *, accept: str | None = None) -> Iterator[http.client.HTTPResponse]:
    """A response to read incrementally (NDJSON lines, downloads); errors raised first."""
    connection = _UnixConnection(client.paths.socket, client.timeout)
    try:
        headers = {"Accept": accept} if accept else {}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        if response.status >= 400:
            _decode(response, response.read())
        yield response
    finally:
        connection.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, timeout=self.timeout)
        self.sock.settimeout(self.timeout)


class Client:
    """Synchronous calls to one daemon."""

    def __init__(self, paths: StatePaths, timeout: float = 600.0) -> None:
        self.paths = paths
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        connection = _UnixConnection(self.paths.socket, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"virtkitd is not running at {self.paths.socket}",
                                    fix="start it with 'virtkitd'") from exc
        finally:
            connection.close()
        return _decode(response, data)

    def request_stream_body(self, method: str, path: str, chunks: Iterator[bytes],
                            size: int) -> Any:
        """Send ``chunks`` (``size`` bytes in all) as the body; decode the JSON answer."""
        connection = _UnixConnection(self.paths.socket, self.timeout)
        try:
            connection.putrequest(method, path)
            connection.putheader("Content-Length", str(size))
            connection.putheader("Content-Type", "application/octet-stream")
            connection.endheaders()
            try:
                for chunk in chunks:
                    connection.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon refused the upload early: its answer says why
            response = connection.getresponse()
            return _decode(response, response.read())
        finally:
            connection.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def domain_path(self, ref: str, suffix: str = "") -> str:
        return f"/v1/domains/{quote(ref, safe='')}{suffix}"

    def ping(self) -> bool:
        try:
            self.get("/v1/openapi.json")
        except DaemonUnreachable:
            return False
        return True


def start_daemon(paths: StatePaths) -> int:
    """Start a per-user virtkitd for ``paths.root`` and wait until it serves."""
    paths.make()
    read_fd, write_fd = os.pipe()
    log = open(paths.logs / "virtkitd.stderr", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "virtkit.api.daemon", "--root", str(paths.root),
         "--ready-fd", str(write_fd)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[write_fd],
        start_new_session=True,
    )
    os.close(write_fd)
    log.close()
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline()
    if line.strip() != b"ready" or time.monotonic() > deadline:
        code = process.poll()
        raise DaemonUnreachable(
            f"could not start virtkitd (exit status {code}); see {paths.logs}/virtkitd.stderr",
            fix="run 'virtkitd' in a terminal to see why",
        )
    return process.pid


def connect(root: Path | None = None, *, autostart: bool = True) -> Client:
    """A client for the daemon of ``root``, starting one if none answers."""
    paths = state_paths(root)
    client = Client(paths)
    if client.ping():
        return client
    if not autostart or os.environ.get("VIRTKIT_NO_AUTOSTART"):
        raise DaemonUnreachable(f"virtkitd is not running at {paths.socket}",
                                fix="start it with 'virtkitd' (or 'systemctl start virtkitd')")
    pid = start_daemon(paths)
    print(f"virtkit: no daemon was running; started virtkitd (pid {pid}) with state in "
          f"{paths.root}", file=sys.stderr)
    return client
