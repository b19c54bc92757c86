"""Requests for a VM of another cluster host, carried to that host's daemon
(docs/cluster.md, "One view").

Transport: the owner's daemon socket as its live record names it (the hosts of a
cluster on one machine, as in the tests, share a file system).  Each request goes on
a connection of its own and is sent once: a connection that could not be made proves
the owner never saw it (503, nothing was done); a failure after it was sent leaves
the outcome unknown (502: it may have been done there) and is never retried, so a
forwarded request never acts twice.  A request that came in on the read-only socket
goes to the owner's read-only socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import aiohttp

from virtkit.errors import HostError, VirtkitError

#: a forwarded start or install may take as long as a local one
FORWARD_TIMEOUT = 600.0
#: request headers that describe the hop, not the request
_HOP = {"host", "content-length", "connection", "transfer-encoding", "upgrade",
        "authorization", "cookie", "keep-alive", "te", "trailer", "x-virtkit-forwarded-by"}
FORWARDED_BY = "X-Virtkit-Forwarded-By"


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


def socket_of(host: str, api: dict[str, Any], *, read_only: bool) -> str:
    path = api.get("socket_ro" if read_only else "socket")
    if not isinstance(path, str) or not os.path.exists(path):
        raise OwnerUnreachable(
            f"host {host}'s daemon cannot be reached from here (its socket "
            f"{path or '?'} is not on this machine; forwarding over the network is not "
            "built yet)", fix=f"run the command on host {host} (virtkit -c URI)", host=host)
    return path


def session_for(path: str, timeout: float | None = FORWARD_TIMEOUT) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=path, force_close=True),
        timeout=aiohttp.ClientTimeout(total=timeout))


def forward_headers(headers: Any, by: str) -> dict[str, str]:
    kept = {k: v for k, v in headers.items() if k.lower() not in _HOP}
    kept[FORWARDED_BY] = by
    return kept


async def relay(host: str, path: str, method: str, target: str, body: bytes,
                headers: dict[str, str]) -> Reply:
    """Send one request to ``host``'s daemon at socket ``path``; its answer as is."""
    async with session_for(path) as session:
        try:
            async with session.request(method, "http://localhost" + target, data=body or None,
                                       headers=headers) as reply:
                data = await reply.read()
                return Reply(reply.status, reply.headers.get("Content-Type",
                                                             "application/json"), data)
        except aiohttp.ClientConnectorError as exc:
            raise OwnerUnreachable(f"host {host}'s daemon cannot be reached: {exc}; nothing "
                                   "was done there", fix=f"check that virtkitd runs on host "
                                   f"{host} ('virtkit cluster list')", host=host) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OwnerNoAnswer(f"host {host}'s daemon took the request and did not answer "
                                f"({exc or type(exc).__name__}): it may have been carried "
                                "out there", fix="check its state ('virtkit list --all') "
                                "before asking again", host=host) from exc
