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
from collections.abc import Callable, Mapping
from urllib.parse import quote

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
from virtkit.runtime.migration import MigrationOutcomeUnknown, RequestNotDelivered
from virtkit.service.models.documents import PeerAnswer, PeerBody

#: long enough for a QEMU to start on a slow host; a migration stream does not pass here
REQUEST_TIMEOUT = 120.0
#: one keepalive ask (runtime/migration.py keepalive)
STATUS_TIMEOUT = 3.0
_BY_STATUS: dict[int, type[VirtkitError]] = {400: InvalidSpec, 404: NotFound, 409: Conflict,
                                             500: QemuError, 504: TimeoutExpired}


#: the TLS this host calls the other cluster hosts' cluster API with (set by the cluster
#: service: service/clusterapi.py; None outside a cluster)
def _no_cluster_tls() -> ssl.SSLContext | None:
    return None


_cluster_tls: Callable[[], ssl.SSLContext | None] = _no_cluster_tls


def use_cluster_tls(provider: Callable[[], ssl.SSLContext | None]) -> None:
    """Let ``{"url": ..., "cluster": true}`` destinations use ``provider``'s TLS."""
    global _cluster_tls
    _cluster_tls = provider


class Peer:
    """One destination daemon: ``{"socket": PATH}``, ``{"url": "https://host:port",
    "token": T, "ca": PEM}`` (as the request to migrate names it), or another cluster
    host's cluster API, ``{"url": "https://host:16516", "cluster": true}``: called
    with this host's cluster certificate (mutual TLS, verified against the cluster's
    CA, so only a cluster member answers), as evacuate and restore do."""

    def __init__(self, where: Mapping[str, object], timeout: float = REQUEST_TIMEOUT, *,
                 what: str = "destination") -> None:
        self.what = what  # what the errors call this daemon
        self._cluster: ssl.SSLContext | None = None
        self._headers: dict[str, str] = {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        socket, url = where.get("socket"), where.get("url")
        if isinstance(socket, str) and socket.startswith("/"):
            self.label = f"virtkitd at {socket}"
            self._base = "http://localhost"
            self._socket: str | None = socket
        elif isinstance(url, str) and url.startswith("https://") and where.get("cluster"):
            self.label = f"cluster host at {url}"
            self._base = url.rstrip("/")
            self._socket = None
            self._cluster = _cluster_tls()
            if self._cluster is None:
                raise InvalidSpec("destination: a cluster host is reached with this host's "
                                  "cluster certificate, and this host has none",
                                  field="destination.cluster",
                                  fix="join this host to the cluster, or give the "
                                      "destination's URL with an API token")
        elif isinstance(url, str) and url.startswith("https://"):
            self.label = url
            self._base = url.rstrip("/")
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
        ca = where.get("ca")
        self._ca = ca if isinstance(ca, str) else None
        self._session = self._new_session()

    def _new_session(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        """A client session; ``fresh``: every request on a new connection (so that a
        failed connect proves the request was never delivered)."""
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self._socket, force_close=fresh) if self._socket
            else aiohttp.TCPConnector(ssl=self._ssl(), force_close=fresh))
        return aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                     headers=self._headers)

    def _ssl(self) -> ssl.SSLContext:
        if self._cluster is not None:
            return self._cluster
        context = ssl.create_default_context(cadata=self._ca) if self._ca \
            else ssl.create_default_context()
        return context

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: PeerBody | None = None, *,
                    session: aiohttp.ClientSession | None = None,
                    timeout: float | None = None) -> PeerAnswer:
        """One request; RequestNotDelivered when no connection could be made (the
        destination cannot have seen it), DaemonUnreachable for any other failure."""
        limit = self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with (session or self._session).request(
                    method, self._base + path, json=body, timeout=limit) as reply:
                data = await reply.json(content_type=None) if reply.content_length != 0 \
                    else {}
                status = reply.status
        except aiohttp.ClientConnectorError as exc:  # refused, no socket, TLS handshake
            raise RequestNotDelivered(f"cannot reach the {self.what} {self.label}: {exc}",
                                      fix=f"check the {self.what} daemon runs and the "
                                          "address") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DaemonUnreachable(f"cannot reach the {self.what} {self.label}: {exc}",
                                    fix=f"check the {self.what} daemon runs and the address")\
                from exc
        if status >= 400:
            error = data if isinstance(data, dict) else {"message": str(data)}
            kind = _BY_STATUS.get(status, StateError if status == 409 else VirtkitError)
            message = f"{self.what}: {error.get('message', f'HTTP {status}')}"
            fix = error.get("fix")
            if kind is InvalidSpec:
                raise InvalidSpec(message, fix=fix)
            raise kind(message, fix=fix)
        return data if isinstance(data, dict) else {"result": data}

    async def incoming(self, body: PeerBody) -> PeerAnswer:
        return await self._call("POST", "/v1/migrations/incoming", body)

    async def offline(self, body: PeerBody) -> PeerAnswer:
        return await self._call("POST", "/v1/migrations/offline", body)

    async def status(self, migration: str) -> PeerAnswer:
        return await self._call("GET", f"/v1/migrations/{migration}",
                                timeout=STATUS_TIMEOUT)

    async def finish(self, migration: str, body: PeerBody) -> PeerAnswer:
        """Run the VM there.  On a connection of its own: a refused connect proves the
        request never arrived (RequestNotDelivered: the VM goes on here); a failure
        after that leaves the outcome unknown (MigrationOutcomeUnknown)."""
        session = self._new_session(fresh=True)
        try:
            return await self._call("POST", f"/v1/migrations/{migration}/finish", body,
                                    session=session)
        except RequestNotDelivered:
            raise
        except DaemonUnreachable as exc:
            raise MigrationOutcomeUnknown(
                f"the destination {self.label} was asked to run the VM and did not answer: "
                "it may be running there", fix="check the destination ('virtkit -c DEST "
                "list'); then destroy or resume the paused copy here") from exc
        finally:
            await session.close()

    async def cluster_admit(self, body: PeerBody) -> PeerAnswer:
        """Ask this member daemon to admit the calling host into its cluster."""
        return await self._call("POST", "/v1/cluster/admit", body)

    async def pool(self, name: str) -> PeerAnswer:
        """A pool of that daemon (pool-info): is it there, shared, at which folder."""
        return await self._call("GET", f"/v1/pools/{quote(name, safe='')}")

    async def abort(self, migration: str) -> PeerAnswer:
        return await self._call("DELETE", f"/v1/migrations/{migration}")
