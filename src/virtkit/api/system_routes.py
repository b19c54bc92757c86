"""The daemon's own routes: the OpenAPI document, the version, the audit log, the
host's facts and checks, and what the daemon repaired at start-up."""

from __future__ import annotations

import asyncio

from aiohttp import web

from virtkit import __version__
from virtkit.api.audit import read_records
from virtkit.api.common import json_response
from virtkit.api.domain_requests import AuditQuery
from virtkit.api.requests import query_of
from virtkit.api.services import AUDIT, services_of
from virtkit.service.recovery import RecoveryService

routes = web.RouteTableDef()

#: mounted only when the daemon has a recovery service (api/app.py)
recovery_routes = web.RouteTableDef()
RECOVERY = web.AppKey("recovery", RecoveryService)


@routes.get("/v1/openapi.json")
async def get_openapi(request: web.Request) -> web.Response:
    from virtkit.api.openapi import openapi_document  # built on first request (daemon RSS)

    return json_response(openapi_document())


@routes.get("/v1/version")
async def get_version(request: web.Request) -> web.Response:
    return json_response({"version": __version__})


@routes.get("/v1/audit")
async def get_audit(request: web.Request) -> web.Response:
    """The audit log's records, oldest first (?since=EPOCH-SECONDS, ?limit=N: the last N);
    none when the daemon keeps no audit log."""
    query = query_of(request, AuditQuery)
    audit = request.app.get(AUDIT)
    if audit is None:
        return json_response([])
    since, limit = query.since, query.limit
    records = await asyncio.to_thread(lambda: list(read_records(audit.path, since=since)))
    return json_response(records[-limit:])


@routes.get("/v1/host")
async def get_host(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(services_of(request).host.info))


@routes.get("/v1/host/check")
async def get_host_check(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(services_of(request).host.check))


@recovery_routes.get("/v1/host/repairs")
async def get_repairs(request: web.Request) -> web.Response:
    """What this daemon repaired at start-up (after a crash of the one before)."""
    return json_response(await asyncio.to_thread(request.app[RECOVERY].report))
