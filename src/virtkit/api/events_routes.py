"""The event stream: ``GET /v1/events`` as a WebSocket of JSON text frames."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from virtkit.api.domain_requests import EventsQuery
from virtkit.api.requests import query_of
from virtkit.api.services import services_of

routes = web.RouteTableDef()


@routes.get("/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Stream events as JSON text frames; ``?since=ID`` replays the journal first."""
    since = query_of(request, EventsQuery).since
    domains = services_of(request).domains
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    # a client that goes away mid-send is an ordinary end of the stream, not an error
    with domains.subscribe_events() as queue, contextlib.suppress(ConnectionResetError):
        if since is not None:
            for event in domains.events_since(int(since)):
                await ws.send_json(event)
        reader = asyncio.create_task(ws.receive())
        try:
            while not ws.closed:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    break
                await ws.send_json(getter.result())
        finally:
            reader.cancel()
    return ws
