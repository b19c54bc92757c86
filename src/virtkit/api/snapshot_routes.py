"""REST routes of snapshots: /v1/domains/{ref}/snapshots[/{name}[/revert]].

Create, revert and delete can take a while (RAM written to a file, block jobs
merging a chain): when the client sends ``Accept: application/x-ndjson`` the
answer is a stream of ``{"progress": 42.0}`` lines ended by ``{"result": ...}``
or ``{"error": {...}}``, as the storage routes do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web

from virtkit.api.common import json_response, progress_response
from virtkit.api.requests import Body, Flag, Query, body_of, query_of
from virtkit.service.models.snapshots import SnapshotCreate
from virtkit.service.snapshots import SnapshotService

SNAPSHOTS = web.AppKey("snapshots", SnapshotService)
routes = web.RouteTableDef()
Operation = Callable[[Callable[[float, float], None]], Awaitable[Any]]


def _service(request: web.Request) -> SnapshotService:
    return request.app[SNAPSHOTS]


#: snapshot-create-as: the service's own input model (service/models/snapshots.py)
CreateBody = SnapshotCreate


class RevertBody(Body):
    start: Literal["running", "paused"] | None = None


class DeleteQuery(Query):
    children: Flag = False
    metadata: Flag = False


async def _with_progress(request: web.Request, operation: Operation,
                         status: int = 200) -> web.StreamResponse:
    """Run ``operation(progress)``; stream NDJSON progress lines if the client asks."""
    return await progress_response(request, operation, status)


@routes.get("/v1/domains/{ref}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    return json_response(_service(request).list(request.match_info["ref"]))


@routes.post("/v1/domains/{ref}/snapshots")
async def create_snapshot(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, CreateBody)
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
    query = query_of(request, DeleteQuery)
    children, metadata = query.children, query.metadata
    return await _with_progress(request, lambda progress: _service(request).delete(
        ref, name, children=children, metadata=metadata, progress=progress))


@routes.post("/v1/domains/{ref}/snapshots/{name}/revert")
async def revert_snapshot(request: web.Request) -> web.StreamResponse:
    start = (await body_of(request, RevertBody)).start
    ref, name = request.match_info["ref"], request.match_info["name"]
    return await _with_progress(request, lambda progress: _service(request).revert(
        ref, name, str(start) if start else None, progress))
