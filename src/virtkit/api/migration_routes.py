"""REST routes of live migration (docs/migration.md): the source's ``migrate`` and the
destination's incoming/finish/abort, which the source daemon calls."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_body, json_response
from virtkit.api.requests import (
    Body,
    IncomingBody,
    OfflineIncomingBody,
    body_of,
    validate_body,
)
from virtkit.service.migrations import MigrationService

routes = web.RouteTableDef()
MIGRATIONS = web.AppKey("migrations", MigrationService)


class MigrateBody(Body):
    """virsh migrate (the CLI's body; see docs/migration.md).  Typed and closed here;
    the service reads the same fields from the dict."""

    destination: dict[str, Any]
    address: str | None = None
    live: bool = True
    offline: bool = False
    persistent: bool = False
    undefine_source: bool = False
    auto_converge: bool = False
    copy_storage_all: bool = False
    copy_storage_inc: bool = False
    postcopy: bool = False
    postcopy_after_precopy: bool = False
    suspend: bool = False
    disk_paths: dict[str, str] | None = None
    bandwidth: Annotated[int, Field(ge=0)] | None = None
    downtime_limit: Annotated[int, Field(ge=0)] | None = None
    postcopy_bandwidth: Annotated[int, Field(ge=0)] | None = None
    timeout: Annotated[int, Field(ge=0)] | None = None


class FinishBody(Body):
    persistent: bool = False
    paused: bool = False


@routes.post("/v1/domains/{ref}/migrate")
async def migrate(request: web.Request) -> web.Response:
    body = await json_body(request)
    validate_body(body, MigrateBody)
    return json_response(await request.app[MIGRATIONS].migrate(request.match_info["ref"],
                                                               body))


@routes.post("/v1/migrations/incoming")
async def incoming(request: web.Request) -> web.Response:
    body = await body_of(request, IncomingBody)
    return json_response(await request.app[MIGRATIONS].incoming(
        body.model_dump(exclude_none=True)), status=201)


@routes.post("/v1/migrations/offline")
async def incoming_offline(request: web.Request) -> web.Response:
    body = await body_of(request, OfflineIncomingBody)
    return json_response(await request.app[MIGRATIONS].incoming_offline(
        body.model_dump(exclude_none=True)), status=201)


@routes.get("/v1/migrations/{id}")
async def status(request: web.Request) -> web.Response:
    """The source's keepalive: is the incoming migration still here and waiting?"""
    return json_response(request.app[MIGRATIONS].status(request.match_info["id"]))


@routes.post("/v1/migrations/{id}/finish")
async def finish(request: web.Request) -> web.Response:
    body = await body_of(request, FinishBody)
    return json_response(await request.app[MIGRATIONS].finish(
        request.match_info["id"], persistent=body.persistent, paused=body.paused))


@routes.delete("/v1/migrations/{id}")
async def abort(request: web.Request) -> web.Response:
    return json_response(await request.app[MIGRATIONS].abort(request.match_info["id"]))


@routes.get("/v1/domains/{ref}/job")
async def job_info(request: web.Request) -> web.Response:
    return json_response(await request.app[MIGRATIONS].job_info(request.match_info["ref"]))


@routes.delete("/v1/domains/{ref}/job")
async def job_abort(request: web.Request) -> web.Response:
    return json_response(await request.app[MIGRATIONS].job_abort(request.match_info["ref"]))


@routes.post("/v1/domains/{ref}/job/postcopy")
async def job_postcopy(request: web.Request) -> web.Response:
    return json_response(await request.app[MIGRATIONS].job_postcopy(
        request.match_info["ref"]))
