"""A small blocking WebSocket client (RFC 6455) over any transport (unix socket, ssh
forward, TLS).

The console and the event stream need a WebSocket; this client does only what
they use (one connection, binary and text frames, ping/pong, close) with the
standard library, so neither pulls an HTTP framework into the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from virtkit.cli.transport import Transport

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocket:
    """One client WebSocket connection."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self._buffer = leftover
        self.closed = False

    @classmethod
    def open(cls, where: Path | Transport, path: str) -> WebSocket:
        """Connect (to a local socket path, or over a transport) and upgrade; an HTTP
        error answer is raised with the daemon's message."""
        transport = where if isinstance(where, Transport) else Transport(where)
        sock = transport.open(10.0)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in transport.headers().items())
        request = (f"GET {path} HTTP/1.1\r\nHost: {transport.host_header}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        status = header.split(b" ", 2)[1] if b" " in header else b"000"
        if status != b"101":
            sock.close()
            _raise_http_error(int(status), header, rest)
        sock.settimeout(None)
        return cls(sock, rest)

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def pending(self) -> bool:
        """True if a frame is already buffered (select() on the socket would miss it)."""
        pending = getattr(self.sock, "pending", None)  # bytes TLS decrypted but not read
        return bool(self._buffer) or bool(pending is not None and pending() > 0)

    def receive(self) -> tuple[int, bytes]:
        """The next data frame as (opcode, payload); answers pings; OP_CLOSE at the end."""
        while True:
            first, second = self._read_exact(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read_exact(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read_exact(8))
            mask = self._read_exact(4) if second & 0x80 else b""
            payload = self._read_exact(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == OP_PING:
                self.send(payload, OP_PONG)
                continue
            if opcode == OP_CLOSE:
                self.closed = True
            return opcode, payload

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.send(struct.pack(">H", 1000), OP_CLOSE)
        self.closed = True
        self.sock.close()


def _raise_http_error(status: int, header: bytes, rest: bytes) -> None:
    from virtkit.cli.client import ApiError

    try:
        body: dict[str, Any] = json.loads(rest.decode() or "{}")
    except ValueError:
        body = {"message": header.decode(errors="replace").splitlines()[0]}
    raise ApiError(status, body)
