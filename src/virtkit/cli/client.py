"""The CLI's API client: HTTP/1.1 over a transport (the local unix socket, an ssh
forward of a remote one, or TLS), stdlib only.

Kept to the standard library so ``virtkit list`` starts fast.  When no local daemon
answers, :func:`connect` starts a per-user one (libvirt's session mode) and says so
on stderr; a remote daemon is never started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from virtkit.cli.transport import (
    URI_ENV,
    Transport,
    local_root,
    parse_uri,
    remote_transport,
)
from virtkit.errors import DaemonUnreachable, InvalidSpec, VirtkitError
from virtkit.paths import StatePaths, state_paths

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DAEMON_START_TIMEOUT = 30.0


class ApiError(VirtkitError):
    """An error the daemon returned, carrying its code and HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", f"HTTP {status}")), fix=body.get("fix"),
                         **body.get("details", {}))
        self.code = str(body.get("error", "error"))
        self.http_status = status


def decode(status: int, content_type: str, data: bytes) -> Any:
    """JSON bodies decoded; errors raised as ApiError with the daemon's message."""
    decoded: Any = json.loads(data) if data and content_type.startswith("application/json") \
        else data
    if status >= 400:
        raise ApiError(status, decoded if isinstance(decoded, dict) else
                       {"message": f"HTTP {status}"})
    return decoded


def _exchange(transport: Transport, request: bytes, timeout: float) -> tuple[int, str, bytes]:
    """One HTTP/1.1 request over a fresh connection: (status, content type, body).

    A dozen lines instead of http.client, whose imports (email, ssl) would cost
    more than the rest of the CLI's start-up together.  The daemon answers JSON
    with a Content-Length, or chunked; both are read here.
    """
    sock = transport.open(timeout)
    try:
        sock.sendall(request)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += _recv(sock)
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(sock, body)
        else:
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += _recv(sock)
        return status, headers.get("content-type", ""), body
    finally:
        sock.close()


def _recv(sock: Any) -> bytes:
    chunk: bytes = sock.recv(65536)
    if not chunk:
        raise DaemonUnreachable("virtkitd closed the connection in the middle of its answer",
                                fix="see the daemon's log; try again")
    return chunk


def _read_chunked(sock: Any, buffer: bytes) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in buffer:
            buffer += _recv(sock)
        size_line, _, buffer = buffer.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buffer) < size + 2:
            buffer += _recv(sock)
        if size == 0:
            return body
        body += buffer[:size]
        buffer = buffer[size + 2:]


class Client:
    """Synchronous calls to one daemon: the local one of ``paths``, or ``transport``'s."""

    def __init__(self, paths: StatePaths | None = None, timeout: float = 600.0, *,
                 transport: Transport | None = None) -> None:
        self.paths = paths or state_paths()
        self.transport = transport or Transport(self.paths.socket)
        self.timeout = timeout

    @property
    def remote(self) -> bool:
        """True when the daemon is on another host (no descriptor hand-over, no autostart)."""
        return not self.transport.local

    def close(self) -> None:
        self.transport.close()

    def websocket(self, path: str) -> Any:
        """A WebSocket to ``path`` over this client's transport."""
        from virtkit.cli.wsclient import WebSocket

        return WebSocket.open(self.transport, path)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                data: bytes | None = None) -> Any:
        """One call: a JSON ``body``, or raw bytes ``data`` (octet-stream)."""
        payload = json.dumps(body).encode() if body is not None else (data or b"")
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.transport.host_header}\r\n"
                f"Connection: close\r\nContent-Length: {len(payload)}\r\n")
        for key, value in self.transport.headers().items():
            head += f"{key}: {value}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        elif data is not None:
            head += "Content-Type: application/octet-stream\r\n"
        try:
            status, content_type, data = _exchange(
                self.transport, head.encode() + b"\r\n" + payload, self.timeout)
        except DaemonUnreachable as exc:
            raise self.transport.diagnose() or exc from None
        except (TimeoutError, ConnectionResetError, BrokenPipeError) as exc:
            raise self.transport.diagnose() or DaemonUnreachable(
                f"{self.transport.label} did not answer {method} {path}: {exc}",
                fix="see the daemon's log") from exc
        return decode(status, content_type, data)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def domain_path(self, ref: str, suffix: str = "") -> str:
        return f"/v1/domains/{quote(ref, safe='')}{suffix}"

    def ping(self) -> bool:
        try:
            self.get("/v1/version")
        except DaemonUnreachable:
            return False
        return True


def start_daemon(paths: StatePaths) -> int:
    """Start a per-user virtkitd for ``paths.root`` and wait until it serves."""
    import subprocess

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
    import select

    with os.fdopen(read_fd, "rb") as ready:
        answered = select.select([ready], [], [], DAEMON_START_TIMEOUT)[0]
        line = ready.readline() if answered else b""
    if line.strip() != b"ready":
        code = process.poll()
        raise DaemonUnreachable(
            f"could not start virtkitd (exit status {code}); see {paths.logs}/virtkitd.stderr",
            fix="run 'virtkitd' in a terminal to see why",
        )
    return process.pid


def connect(root: Path | None = None, *, autostart: bool = True, uri: str | None = None,
            readonly: bool = False, **tls: Any) -> Client:
    """A client for the daemon ``uri`` (--connect; else $VIRTKIT_DEFAULT_URI) names, or the
    local one of ``root``, starting a local one if none answers.

    ``tls`` are the TLS options (token, token_file, ca, fingerprint).
    """
    text = uri or os.environ.get(URI_ENV) or ""
    if text:
        parsed = parse_uri(text)
        if parsed.remote:
            if root is not None:
                raise InvalidSpec("--root names a local daemon: it cannot go with a remote "
                                  "--connect", fix="drop --root, or the remote URI")
            client = Client(state_paths(), transport=remote_transport(parsed, **tls))
            try:
                client.get("/v1/version")
            except BaseException:
                client.close()
                raise
            return client
        root = root or local_root(parsed)
    paths = state_paths(root)
    if readonly or os.environ.get("VIRTKIT_READONLY") == "1":
        client = Client(paths, transport=Transport(paths.socket_ro))
        if not client.ping():
            raise DaemonUnreachable(f"virtkitd's read-only socket {paths.socket_ro} does not "
                                    "answer", fix="start virtkitd (--readonly never starts "
                                    "one), or check that you are in the 'virtkit-ro' group")
        return client
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
