"""Streaming HTTP for the long storage commands: NDJSON progress, uploads, downloads.

These use :mod:`http.client` (incremental reads, chunked bodies); it is imported
only by the commands that stream, so ordinary commands stay fast to start.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from virtkit.cli.client import Client, decode
from virtkit.unixsock import connect_unix

SLICE = 8 * 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, timeout=self.timeout)
        self.sock.settimeout(self.timeout)


def _finish(response: http.client.HTTPResponse) -> Any:
    return decode(response.status, response.getheader("Content-Type", ""), response.read())


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
            _finish(response)
        yield response
    finally:
        connection.close()


def send_file(client: Client, method: str, path: str, source: BinaryIO, size: int,
              progress: Callable[[int], None]) -> Any:
    """Send ``size`` bytes of ``source`` as the body (sendfile: no copy through Python).

    ``progress(bytes sent)`` is called after every slice; the daemon's JSON answer is
    decoded (an early refusal included: its answer says why).
    """
    connection = _UnixConnection(client.paths.socket, client.timeout)
    try:
        connection.putrequest(method, path)
        connection.putheader("Content-Length", str(size))
        connection.putheader("Content-Type", "application/octet-stream")
        connection.endheaders()
        assert connection.sock is not None
        sent = 0
        try:
            while sent < size:
                sent += connection.sock.sendfile(source, sent, min(SLICE, size - sent))
                progress(sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused the upload early: its answer says why
        return _finish(connection.getresponse())
    finally:
        connection.close()
