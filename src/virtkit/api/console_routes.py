"""The byte proxies: a domain's serial console and its VNC display as WebSockets,
and the serial console's log file.

The browser and the CLI never reach QEMU's sockets themselves: these handlers carry
the bytes both ways (:func:`pump`).  One client at a time holds a console; a second
one is refused unless it takes the console over (``?force=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiohttp import WSMsgType, web

from virtkit.api.domain_requests import ConsoleLogQuery, ConsoleQuery
from virtkit.api.requests import query_of
from virtkit.api.services import services_of
from virtkit.errors import Conflict
from virtkit.unixsock import connect_unix

routes = web.RouteTableDef()

#: what QEMU's VNC server is reached at when it listens on every address
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - maps it away


@routes.get("/v1/domains/{ref}/vnc/websocket")
async def vnc_websocket(request: web.Request) -> web.StreamResponse:
    """Proxy a WebSocket (noVNC's ``binary`` protocol) to the domain's VNC server.

    The browser never reaches QEMU's VNC port itself: it stays on localhost (or
    wherever the spec put it) and this proxy carries the RFB bytes both ways.
    """
    vnc = services_of(request).domains.vncdisplay(request.match_info["ref"])
    host = vnc.host or ""
    host = _WILDCARD_TO_LOOPBACK.get(host, host)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, vnc.port), timeout=5.0)
    except (OSError, TimeoutError) as exc:
        raise Conflict(f"cannot reach the VNC display at {host}:{vnc.port}: {exc}",
                       fix="check that the domain is still running") from None
    ws = web.WebSocketResponse(heartbeat=30, protocols=("binary",))
    await ws.prepare(request)
    await pump(ws, reader, writer, b"VNC display closed")
    return ws


async def pump(ws: web.WebSocketResponse, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, closing: bytes) -> None:
    """Carry bytes between a WebSocket and a stream until either side closes."""

    async def stream_to_client() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)
        await ws.close(message=closing)

    task = asyncio.create_task(stream_to_client())
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                writer.write(message.data)
            elif message.type == WSMsgType.TEXT:
                writer.write(message.data.encode())
            await writer.drain()
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        writer.close()


@routes.get("/v1/domains/{ref}/console/log")
async def get_console_log(request: web.Request) -> web.StreamResponse:
    query = query_of(request, ConsoleLogQuery)
    services = services_of(request)
    info = services.domains.info(request.match_info["ref"])
    port, tail = query.port, query.tail
    path = services.domains.console_log_path(info.uuid, port)
    data = await asyncio.to_thread(_read_log, path, tail)
    return web.Response(body=data, content_type="application/octet-stream")


def _read_log(path: Path, tail: int) -> bytes:
    """A console log (its last ``tail`` bytes when ``tail`` > 0; b"" when there is none)."""
    if not path.exists():
        return b""
    with open(path, "rb") as log_file:
        if tail > 0:
            log_file.seek(max(0, path.stat().st_size - tail))
        return log_file.read()


@routes.get("/v1/domains/{ref}/console")
async def console(request: web.Request) -> web.StreamResponse:
    """Proxy a WebSocket to the domain's serial port socket (binary frames both ways)."""
    query = query_of(request, ConsoleQuery)
    services = services_of(request)
    port = query.port
    name, sock_path = services.domains.console_socket(request.match_info["ref"], port)
    key = (name, port)
    previous = services.consoles.get(key)
    if previous is not None and not previous.closed:
        if not query.force:
            raise Conflict(f"the console of '{name}' is in use by another client",
                           fix="use --force to take it over")
        await previous.close(message=b"console taken over by another client")
    sock = connect_unix(sock_path, timeout=5.0)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    services.consoles[key] = ws
    try:
        await pump(ws, reader, writer, b"guest console closed")
    finally:
        if services.consoles.get(key) is ws:
            del services.consoles[key]
    return ws
