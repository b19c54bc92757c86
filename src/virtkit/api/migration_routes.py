"""REST routes of live migration (docs/migration.md): the source's ``migrate`` and the
destination's incoming/finish/abort, which the source daemon calls."""

from __future__ import annotations

from aiohttp import web

from virtkit.api.common import json_response
from virtkit.api.requests import Body, IncomingBody, OfflineIncomingBody, body_of
from virtkit.service.migrations import MigrationService
from virtkit.service.models.migrations import MigrateRequest

routes = web.RouteTableDef()
MIGRATIONS = web.AppKey("migrations", MigrationService)


#: virsh migrate (the CLI's body; see docs/migration.md): the service's own input model
MigrateBody = MigrateRequest


class FinishBody(Body):
    persistent: bool = False
    paused: bool = False


@routes.post("/v1/domains/{ref}/migrate")
async def migrate(request: web.Request) -> web.Response:
    body = await body_of(request, MigrateBody)
    return json_response(await request.app[MIGRATIONS].migrate(request.match_info["ref"],
                                                               body))


@routes.post("/v1/migrations/incoming")
async def incoming(request: web.Request) -> web.Response:
    body = await body_of(request, IncomingBody)
    return json_response(await request.app[MIGRATIONS].incoming(body), status=201)


@routes.post("/v1/migrations/offline")
async def incoming_offline(request: web.Request) -> web.Response:
    body = await body_of(request, OfflineIncomingBody)
    return json_response(await request.app[MIGRATIONS].incoming_offline(body), status=201)


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
