"""REST route for ``virtkit clone`` (virt-clone), with NDJSON progress."""

from __future__ import annotations

from aiohttp import web

from virtkit.api.common import progress_response
from virtkit.api.requests import body_of
from virtkit.service.clones import CloneService
from virtkit.service.models.clones import CloneRequest

routes = web.RouteTableDef()
CLONES = web.AppKey("clones", CloneService)

#: virt-clone's request: the service's own input model (service/models/clones.py)
CloneBody = CloneRequest


@routes.post("/v1/domains/{ref}/clone")
async def clone_domain(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, CloneBody)
    clones = request.app[CLONES]
    return await progress_response(request, lambda progress: clones.clone(
        request.match_info["ref"], body, progress=progress))
