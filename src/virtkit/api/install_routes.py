"""REST routes for installs (``virtkit install``, the web wizard) and the OS database."""

from __future__ import annotations

import asyncio

from aiohttp import web

from virtkit.api.common import json_body, json_response
from virtkit.api.requests import Query, query_of
from virtkit.service.install import InstallService

routes = web.RouteTableDef()
INSTALL = web.AppKey("install", InstallService)


@routes.post("/v1/install")
async def install(request: web.Request) -> web.Response:
    """Run an install request (see formats.virtinstall.InstallRequest); 201 with the VM.

    ``{"argv": [...]}`` sends virt-install's own options instead (what the web
    console's wizard does, so it can show the equivalent command line); they are
    parsed here exactly as ``virtkit install`` parses them.
    """
    body = await json_body(request)
    result = await request.app[INSTALL].install(body)
    return json_response(result, status=200 if result.get("dry_run") else 201)


class OsinfoQuery(Query):
    filter: str = ""


@routes.get("/v1/osinfo")
async def list_os_variants(request: web.Request) -> web.Response:
    """The OS variants of the osinfo database, optionally filtered (osinfo-query os)."""
    text = query_of(request, OsinfoQuery).filter
    return json_response(await asyncio.to_thread(request.app[INSTALL].os_variants, text))
