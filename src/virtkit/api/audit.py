"""The audit log: one JSON line per mutating API call (POST, PUT, PATCH, DELETE).

Each line says who asked (the peer's uid, gid and pid, read with ``SO_PEERCRED``
from the unix socket: the kernel's word, not the client's; for a network client the
name of its API token or the web console's logged-in user), what (method, path,
the object named in the path or answered by a define), and how it ended (HTTP
status, duration in milliseconds)::

    {"time": "2026-11-30T09:12:01.123Z", "uid": 0, "gid": 0, "pid": 4242,
     "method": "POST", "path": "/v1/domains/web1/start", "object": "web1",
     "status": 200, "ms": 812.4}

A line is a single ``write`` to a file opened in append mode (a few hundred bytes
to the page cache: it does not stall the event loop).  The file is capped: when
it passes :data:`MAX_BYTES` it is renamed ``audit.log.1`` (older ones shift up to
``audit.log.{BACKUPS}``, the oldest is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from virtkit.api.common import PRINCIPAL

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: path parameters that name the object a call is about, most specific first
_OBJECT_KEYS = ("name", "volume", "ref", "pool", "net")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_credentials(request: web.Request) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a unix socket, else None."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class AuditLog:
    """Append-only JSON lines with size-capped rotation."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        return self._file

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; a failure to log is logged, never raised into a request."""
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        try:
            handle = self._open()
            handle.write(line)
            if handle.tell() >= self.max_bytes:
                self._rotate()
        except OSError:
            log.exception("cannot write the audit log %s", self.path)

    def _rotate(self) -> None:
        self.close()
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_records(path: Path, *, since: float | None = None,
                 backups: int = BACKUPS) -> Iterator[dict[str, Any]]:
    """The records of the log and its rotated files, oldest first (``since``: epoch s)."""
    files = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)] + [path]
    for file in files:
        if not file.exists():
            continue
        with open(file, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                if since is not None and _epoch(record.get("time")) < since:
                    continue
                yield record


def _epoch(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _object_name(request: web.Request, response: web.StreamResponse | None) -> str | None:
    info = request.match_info
    for key in _OBJECT_KEYS:
        if key in info:
            return info[key]
    if isinstance(response, web.Response) and response.content_type == "application/json":
        body = response.body
        if isinstance(body, bytes) and len(body) < 65536:
            with contextlib.suppress(ValueError):
                data = json.loads(body)
                if isinstance(data, dict) and isinstance(data.get("name"), str):
                    return str(data["name"])
    return None


def audit_middleware(audit: AuditLog) -> Callable[[web.Request, Handler],
                                                  Awaitable[web.StreamResponse]]:
    """A middleware that writes each mutating call to ``audit`` once it has an answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in MUTATING:
            return await handler(request)
        started = time.monotonic()
        response: web.StreamResponse | None = None
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer (nginx's code)
            raise
        finally:
            creds = peer_credentials(request)
            record: dict[str, Any] = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"),
                "uid": creds[1] if creds else None,
                "gid": creds[2] if creds else None,
                "pid": creds[0] if creds else None,
                "user": request.get(PRINCIPAL),
                "method": request.method,
                "path": request.path,
                "object": _object_name(request, response),
                "status": status,
                "ms": round((time.monotonic() - started) * 1000, 1),
            }
            audit.write(record)

    return middleware
