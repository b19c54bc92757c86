"""REST route for ``virtkit clone`` (virt-clone), with NDJSON progress."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from virtkit.api.common import progress_response
from virtkit.api.requests import Body, body_of
from virtkit.service.clones import CloneService

routes = web.RouteTableDef()
CLONES = web.AppKey("clones", CloneService)



class CloneBody(Body):
    """virt-clone: the new name, its files (or auto), new MACs."""

    name: str = Field(min_length=1)
    files: list[str] = Field(default_factory=list)
    auto: bool = False
    linked: bool = False
    force: bool = False
    macs: list[str] = Field(default_factory=list)


@routes.post("/v1/domains/{ref}/clone")
async def clone_domain(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, CloneBody)
    clones = request.app[CLONES]
    return await progress_response(request, lambda progress: clones.clone(
        request.match_info["ref"], body.name, files=body.files, auto=body.auto,
        linked=body.linked, force=body.force, macs=body.macs, progress=progress))
