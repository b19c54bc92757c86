"""Streaming HTTP for the long storage commands: NDJSON progress, uploads, downloads.

These use :mod:`http.client` (incremental reads, chunked bodies); it is imported
only by the commands that stream, so ordinary commands stay fast to start.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from virtkit.cli.client import Client, decode
from virtkit.cli.transport import Transport

SLICE = 8 * 1024 * 1024


class _Connection(http.client.HTTPConnection):
    """http.client over a transport (unix socket, ssh forward or TLS); every request
    carries the transport's headers (the API token)."""

    def __init__(self, transport: Transport, timeout: float) -> None:
        super().__init__(transport.host_header, timeout=timeout)
        self._transport = transport

    def connect(self) -> None:
        self.sock = self._transport.open(self.timeout or 600.0)
        self.sock.settimeout(self.timeout)

    def putrequest(self, method: str, url: str, skip_host: bool = False,
                   skip_accept_encoding: bool = False) -> None:
        super().putrequest(method, url, skip_host=skip_host,
                           skip_accept_encoding=skip_accept_encoding)
        for key, value in self._transport.headers().items():
            self.putheader(key, value)


def _finish(response: http.client.HTTPResponse) -> Any:
    return decode(response.status, response.getheader("Content-Type", ""), response.read())


@contextmanager
def open_stream(client: Client, method: str, path: str, body: dict[str, Any] | None = None,
                *, accept: str | None = None) -> Iterator[http.client.HTTPResponse]:
    """A response to read incrementally (NDJSON lines, downloads); errors raised first."""
    connection = _Connection(client.transport, client.timeout)
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
    connection = _Connection(client.transport, client.timeout)
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
