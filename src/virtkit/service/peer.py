"""The source daemon's client of a destination daemon's migration API.

Why here and not the CLI's transport: the service layer may not import the CLI
(tests/unit/test_layers.py), and the CLI's client is synchronous stdlib HTTP with
per-user concerns (ssh child processes, token files under ~/.config).  The daemon
already runs aiohttp, whose client does what is needed in a few lines: a unix
socket (a daemon on this host) or HTTPS with an API token (a remote daemon's TLS
listener).  It implements runtime.migration.Destination.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from virtkit.errors import (
    Conflict,
    DaemonUnreachable,
    InvalidSpec,
    NotFound,
    QemuError,
    StateError,
    TimeoutExpired,
    VirtkitError,
)
from virtkit.runtime.migration import MigrationOutcomeUnknown

#: long enough for a QEMU to start on a slow host; a migration stream does not pass here
REQUEST_TIMEOUT = 120.0
_BY_STATUS: dict[int, type[VirtkitError]] = {400: InvalidSpec, 404: NotFound, 409: Conflict,
                                             500: QemuError, 504: TimeoutExpired}


class Peer:
    """One destination daemon: ``{"socket": PATH}`` or ``{"url": "https://host:port",
    "token": T, "ca": PEM}`` (as the request to migrate names it)."""

    def __init__(self, where: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> None:
        self._headers: dict[str, str] = {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        connector: aiohttp.BaseConnector
        if isinstance(where.get("socket"), str) and where["socket"].startswith("/"):
            self.label = f"virtkitd at {where['socket']}"
            self._base = "http://localhost"
            self._socket: str | None = where["socket"]
        elif isinstance(where.get("url"), str) and where["url"].startswith("https://"):
            self.label = where["url"]
            self._base = where["url"].rstrip("/")
            self._socket = None
            token = where.get("token")
            if not isinstance(token, str) or not token:
                raise InvalidSpec("destination.token: a TLS destination needs an API token",
                                  field="destination.token",
                                  fix="create one there with 'virtkit token create'")
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            raise InvalidSpec("destination: give {\"socket\": \"/path/virtkitd.sock\"} or "
                              "{\"url\": \"https://host:16515\", \"token\": ...}",
                              field="destination")
        self._ca = where.get("ca") if isinstance(where.get("ca"), str) else None
        connector = (aiohttp.UnixConnector(path=self._socket) if self._socket
                     else aiohttp.TCPConnector(ssl=self._ssl()))
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              headers=self._headers)

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self._ca) if self._ca \
            else ssl.create_default_context()
        return context

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        try:
            async with self._session.request(method, self._base + path, json=body) as reply:
                data = await reply.json(content_type=None) if reply.content_length != 0 \
                    else {}
                status = reply.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DaemonUnreachable(f"cannot reach the destination {self.label}: {exc}",
                                    fix="check the destination daemon runs and the address")\
                from exc
        if status >= 400:
            error = data if isinstance(data, dict) else {"message": str(data)}
            kind = _BY_STATUS.get(status, StateError if status == 409 else VirtkitError)
            message = f"destination: {error.get('message', f'HTTP {status}')}"
            fix = error.get("fix")
            if kind is InvalidSpec:
                raise InvalidSpec(message, fix=fix)
            raise kind(message, fix=fix)
        return data if isinstance(data, dict) else {"result": data}

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/migrations/incoming", body)

    async def offline(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/migrations/offline", body)

    async def finish(self, migration: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._call("POST", f"/v1/migrations/{migration}/finish", body)
        except DaemonUnreachable as exc:
            raise MigrationOutcomeUnknown(
                f"the destination {self.label} was asked to run the VM and did not answer: "
                "it may be running there", fix="check the destination ('virtkit -c DEST "
                "list'); then destroy or resume the paused copy here") from exc

    async def abort(self, migration: str) -> None:
        await self._call("DELETE", f"/v1/migrations/{migration}")
