"""REST routes of snapshots: /v1/domains/{ref}/snapshots[/{name}[/revert]].

Create, revert and delete can take a while (RAM written to a file, block jobs
merging a chain): when the client sends ``Accept: application/x-ndjson`` the
answer is a stream of ``{"progress": 42.0}`` lines ended by ``{"result": ...}``
or ``{"error": {...}}``, as the storage routes do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from virtkit.api.common import json_body, json_response
from virtkit.errors import VirtkitError
from virtkit.service.snapshots import SnapshotService

SNAPSHOTS = web.AppKey("snapshots", SnapshotService)
routes = web.RouteTableDef()
Operation = Callable[[Callable[[float, float], None]], Awaitable[Any]]


def _service(request: web.Request) -> SnapshotService:
    return request.app[SNAPSHOTS]


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) in ("1", "true", "yes")


async def _with_progress(request: web.Request, operation: Operation,
                         status: int = 200) -> web.StreamResponse:
    """Run ``operation(progress)``; stream NDJSON progress lines if the client asks."""
    queue: asyncio.Queue[float] = asyncio.Queue()

    def progress(done: float, total: float) -> None:
        queue.put_nowait(100.0 * done / total if total else 0.0)

    if "application/x-ndjson" not in request.headers.get("Accept", ""):
        return json_response(await operation(progress), status=status)
    task = asyncio.ensure_future(operation(progress))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    last = -1.0
    while not task.done():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done() and getter.result() - last >= 0.5:
            last = getter.result()
            await response.write(json.dumps({"progress": round(last, 1)}).encode() + b"\n")
        elif not getter.done():
            getter.cancel()
    try:
        line: dict[str, Any] = {"result": task.result()}
    except VirtkitError as exc:
        line = {"error": {**exc.to_dict(), "status": exc.http_status}}
    await response.write(json.dumps(line, default=str).encode() + b"\n")
    await response.write_eof()
    return response


@routes.get("/v1/domains/{ref}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    return json_response(_service(request).list(request.match_info["ref"]))


@routes.post("/v1/domains/{ref}/snapshots")
async def create_snapshot(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    ref = request.match_info["ref"]
    return await _with_progress(
        request, lambda progress: _service(request).create(ref, body, progress), status=201)


@routes.get("/v1/domains/{ref}/snapshots/current")
async def current_snapshot(request: web.Request) -> web.Response:
    return json_response(_service(request).current(request.match_info["ref"]))


@routes.get("/v1/domains/{ref}/snapshots/{name}")
async def snapshot_info(request: web.Request) -> web.Response:
    return json_response(_service(request).info(request.match_info["ref"],
                                                request.match_info["name"]))


@routes.delete("/v1/domains/{ref}/snapshots/{name}")
async def delete_snapshot(request: web.Request) -> web.StreamResponse:
    ref, name = request.match_info["ref"], request.match_info["name"]
    children, metadata = _flag(request, "children"), _flag(request, "metadata")
    return await _with_progress(request, lambda progress: _service(request).delete(
        ref, name, children=children, metadata=metadata, progress=progress))


@routes.post("/v1/domains/{ref}/snapshots/{name}/revert")
async def revert_snapshot(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    ref, name = request.match_info["ref"], request.match_info["name"]
    start = body.get("start")
    return await _with_progress(request, lambda progress: _service(request).revert(
        ref, name, str(start) if start else None, progress))
