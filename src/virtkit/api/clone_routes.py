"""REST route for ``virtkit clone`` (virt-clone), with NDJSON progress."""

from __future__ import annotations

from aiohttp import web

from virtkit.api.common import json_body, progress_response, string_list
from virtkit.errors import InvalidSpec
from virtkit.service.clones import CloneService

routes = web.RouteTableDef()
CLONES = web.AppKey("clones", CloneService)



@routes.post("/v1/domains/{ref}/clone")
async def clone_domain(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidSpec("name the clone", field="name", fix="e.g. {\"name\": \"web2\"}")
    clones = request.app[CLONES]
    return await progress_response(request, lambda progress: clones.clone(
        request.match_info["ref"], name, files=string_list(body, "files"),
        auto=bool(body.get("auto")), linked=bool(body.get("linked")),
        force=bool(body.get("force")), macs=string_list(body, "macs"), progress=progress))
