"""Bounds on floods: open connections and open WebSockets.

Idle connections are already closed after the idle timeout and every connection
is a coroutine of its own, so many clients do not slow each other down; what a
flood can still exhaust is file descriptors (each connection is one, and QEMU
starts, volume copies and the store need theirs).  So:

* at most ``max_connections`` connections are open on the unix socket at once;
  one more gets an immediate ``503`` JSON answer (``error: busy``) and is closed;
* at most ``max_websockets`` WebSockets (event streams, consoles) are open at
  once, since they are long-lived and not cut by the idle timeout; one more
  upgrade request is answered ``503 busy`` instead of being upgraded.

The soft ``RLIMIT_NOFILE`` is raised to the hard limit at start, so the bounds,
not the descriptor table, are what a flood meets.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

#: defaults; virtkitd --max-connections / --max-websockets change them
MAX_CONNECTIONS = 1024
MAX_WEBSOCKETS = 256
#: the unix socket's listen queue: a burst of connects waits there until accepted
BACKLOG = 1024
#: seconds a refused connection is kept for the client to read its 503
REFUSE_LINGER = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _busy_body(what: str, limit: int) -> bytes:
    return json.dumps({"error": "busy", "message": f"the daemon has {limit} {what} open, "
                       "its limit", "fix": "close idle connections, or raise virtkitd's "
                       f"--max-{what}"}).encode()


class _Refuse(asyncio.Protocol):
    """A connection over the limit: one 503 answer, the write side shut, closed when
    the client closes or after :data:`REFUSE_LINGER` s.  Closing at once, with the
    client's request still unread, would make the kernel reset the connection and the
    client would never read the answer."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        body = _busy_body("connections", self._limit)
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                        b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        """The request is read and dropped (see the class notes)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class BoundedSockSite(web.SockSite):
    """aiohttp's SockSite, but the protocol factory refuses connections over a limit."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, *,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(runner, sock, backlog=BACKLOG)
        self._max_connections = max_connections

    def open_connections(self) -> int:
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        limit = self._max_connections

        def factory() -> asyncio.Protocol:
            if len(server.connections) >= limit:
                return _Refuse(limit)
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, sock=self._sock,
                                                backlog=self._backlog)


def websocket_limit(limit: int = MAX_WEBSOCKETS) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that answers 503 to a WebSocket upgrade while ``limit`` are open."""
    open_now = 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal open_now
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await handler(request)
        if open_now >= limit:
            return web.Response(status=503, body=_busy_body("websockets", limit),
                                content_type="application/json")
        open_now += 1
        try:
            return await handler(request)
        finally:
            open_now -= 1

    return middleware


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


__all__ = ["MAX_CONNECTIONS", "MAX_WEBSOCKETS", "BoundedSockSite", "raise_nofile_limit",
           "websocket_limit"]
