"""Requests for a VM of another cluster host, carried to that host's daemon
(docs/cluster.md, "One view").

Transport: the owner's **cluster API** (``https://ADDRESS:16516``, its live record's
``api.url``) over mutual TLS: this daemon shows its host certificate, the owner's
certificate must be the cluster CA's and name the address (api/clusterlisten.py is
the other end).  The caller's standing goes along (:data:`CALLER`): the owner applies
the same limits as here (read-only, a network caller's path policy), and records the
principal with the hop in its audit log.  Where this host has no cluster certificate
(a cluster on an administrator's etcd) or the owner publishes no URL, the owner's
daemon socket is used when it is on this machine (hosts that share a file system).

Each request goes on a connection of its own and is sent once: a connection that
could not be made (refused, no route, TLS refused, or no handshake within
``CONNECT_TIMEOUT``) proves the owner never saw it (503, nothing was done); a failure
after it was sent leaves the outcome unknown (502: it may have been done there) and
is never retried, so a forwarded request never acts twice.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from virtkit.errors import HostError, VirtkitError

#: a forwarded start or install may take as long as a local one
FORWARD_TIMEOUT = 600.0
#: a read (dominfo, dumpxml, a list) that has not answered by then will not
READ_TIMEOUT = 60.0
#: the TCP connect and TLS handshake: an owner that does not answer within this is
#: unreachable (a hung daemon's kernel still accepts the connection)
CONNECT_TIMEOUT = 5.0
#: the port of the cluster API listener (api/clusterlisten.py)
CLUSTER_API_PORT = 16516
FORWARDED_BY = "X-Virtkit-Forwarded-By"
#: the standing of the original caller: ``local``, ``read-only``, ``remote`` (the path
#: policy: pool volumes only) or ``remote-pools`` (remote, may define pools)
CALLER = "X-Virtkit-Caller"
CALLERS = ("local", "read-only", "remote", "remote-pools")
#: who the original caller was (a token's or web user's name), for the owner's audit log
CALLER_PRINCIPAL = "X-Virtkit-Principal"
#: request headers that describe the hop, not the request
_HOP = {"host", "content-length", "connection", "transfer-encoding", "upgrade",
        "authorization", "cookie", "keep-alive", "te", "trailer", "origin",
        FORWARDED_BY.lower(), CALLER.lower(), CALLER_PRINCIPAL.lower()}


class OwnerUnreachable(HostError):
    """The owning host's daemon could not be reached: it never saw the request."""

    code = "host-unreachable"
    http_status = 503


class OwnerNoAnswer(VirtkitError):
    """The owning host's daemon took the request and did not answer."""

    code = "host-no-answer"
    http_status = 502


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Owner:
    """How to reach one host's daemon: its cluster API URL with this host's TLS, or
    its socket on this machine."""

    host: str
    url: str | None = None
    tls: ssl.SSLContext | None = None
    socket: str | None = None

    @property
    def where(self) -> str:
        return self.url or self.socket or "?"

    @property
    def base(self) -> str:
        return self.url.rstrip("/") if self.url else "http://localhost"

    def session(self, timeout: float | None = FORWARD_TIMEOUT) -> aiohttp.ClientSession:
        """A session whose one connection is closed after its request."""
        connector: aiohttp.BaseConnector = (
            aiohttp.TCPConnector(ssl=self.tls or True, force_close=True) if self.url
            else aiohttp.UnixConnector(path=self.socket or "", force_close=True))
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=timeout, connect=CONNECT_TIMEOUT))

    def unreachable(self, exc: BaseException | str) -> OwnerUnreachable:
        return OwnerUnreachable(
            f"host {self.host}'s daemon cannot be reached at {self.where}: "
            f"{exc or type(exc).__name__}; nothing was done there",
            fix=f"check that virtkitd runs on host {self.host} and that this host reaches "
                f"{self.where} ('virtkit cluster list')", host=self.host, address=self.where)


def owner_of(host: str, api: dict[str, Any], tls: ssl.SSLContext | None, *,
             read_only: bool) -> Owner:
    """Where ``host``'s daemon answers, from the ``api`` of its live record: its
    cluster API when it publishes one and this host has its cluster certificate,
    else its (read-only) socket when that is on this machine."""
    url = api.get("url")
    if isinstance(url, str) and url.startswith("https://") and tls is not None:
        return Owner(host, url=url, tls=tls)
    path = api.get("socket_ro" if read_only else "socket")
    if isinstance(path, str) and os.path.exists(path):
        return Owner(host, socket=path)
    if isinstance(url, str):
        raise OwnerUnreachable(
            f"host {host}'s daemon is at {url}, and this host has no cluster certificate "
            "to call it with", fix=f"run the command on host {host} (virtkit -c URI)",
            host=host, address=url)
    raise OwnerUnreachable(
        f"host {host}'s daemon cannot be reached from here (it publishes no cluster API "
        f"address, and its socket {path or '?'} is not on this machine: an older virtkit?)",
        fix=f"upgrade virtkit on host {host}, or run the command there (virtkit -c URI)",
        host=host)


def forward_headers(headers: Any, by: str, caller: str = "local",
                    principal: str | None = None) -> dict[str, str]:
    """The request's own headers, without those of the hop, and the hop's: who
    forwarded it and with which caller's standing."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _HOP}
    kept[FORWARDED_BY] = by
    kept[CALLER] = caller
    if principal:
        kept[CALLER_PRINCIPAL] = principal
    return kept


async def send(owner: Owner, method: str, target: str, body: bytes,
               headers: dict[str, str], timeout: float | None = None) -> Reply:
    """Send one request to ``owner``'s daemon; its answer as is."""
    if timeout is None:
        timeout = READ_TIMEOUT if method in ("GET", "HEAD") else FORWARD_TIMEOUT
    async with owner.session(timeout) as session:
        try:
            async with session.request(method, owner.base + target, data=body or None,
                                       headers=headers) as reply:
                data = await reply.read()
                return Reply(reply.status, reply.headers.get("Content-Type",
                                                             "application/json"), data)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise owner.unreachable(exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OwnerNoAnswer(f"host {owner.host}'s daemon ({owner.where}) took the "
                                f"request and did not answer ({exc or type(exc).__name__})"
                                ": it may have been carried out there",
                                fix="check its state ('virtkit list --all') before asking "
                                    "again", host=owner.host, address=owner.where) from exc
