"""REST routes of snapshots: /v1/domains/{ref}/snapshots[/{name}[/revert]].

Create, revert and delete can take a while (RAM written to a file, block jobs
merging a chain): when the client sends ``Accept: application/x-ndjson`` the
answer is a stream of ``{"progress": 42.0}`` lines ended by ``{"result": ...}``
or ``{"error": {...}}``, as the storage routes do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from virtkit.api.common import json_body, json_response, progress_response
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
    return await progress_response(request, operation, status)


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
