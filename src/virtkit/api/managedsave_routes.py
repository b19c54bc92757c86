"""REST routes of virsh managedsave (service/managedsave.py) and of the host's guest
policy at daemon stop and start (service/hostguests.py, libvirt-guests' settings)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import Field

from virtkit.api.auth import is_read_only
from virtkit.api.common import dumps, json_response, progress_response, xml_response
from virtkit.api.requests import Body, XmlQuery, body_of, query_of
from virtkit.errors import Forbidden, VirtkitError
from virtkit.service.hostguests import HostGuestsService
from virtkit.service.managedsave import ManagedSaveService
from virtkit.service.models.hostguests import GuestsPolicyChange

routes = web.RouteTableDef()
MANAGED = web.AppKey("managedsave", ManagedSaveService)
GUESTS = web.AppKey("guests", HostGuestsService)


class ManagedSaveBody(Body):
    """virsh managedsave: ``resume`` true (--running) / false (--paused) / null (as now);
    ``bypass_cache`` drops the image from the page cache once written."""

    resume: bool | None = None
    bypass_cache: bool = False


class ManagedSaveDefineBody(Body):
    """virsh managedsave-define: the image's new definition (libvirt domain XML);
    ``running`` true (--running) / false (--paused) / null (as saved)."""

    xml: str = Field(max_length=4 * 1024 * 1024)
    running: bool | None = None


#: the host guests policy's change: the service's input model (fields left out keep
#: their value)
GuestsPolicyBody = GuestsPolicyChange


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]


@routes.post("/v1/domains/{ref}/managedsave")
async def managedsave(request: web.Request) -> web.StreamResponse:
    """Save the domain's memory to its managed image and stop it (NDJSON progress)."""
    body = await body_of(request, ManagedSaveBody)
    service, ref = request.app[MANAGED], _ref(request)
    return await progress_response(request, lambda progress: service.save(
        ref, resume=body.resume, bypass_cache=body.bypass_cache, progress=progress))


@routes.delete("/v1/domains/{ref}/managedsave")
async def managedsave_remove(request: web.Request) -> web.Response:
    return json_response(request.app[MANAGED].remove(_ref(request)))


@routes.get("/v1/domains/{ref}/managedsave/xml")
async def managedsave_dumpxml(request: web.Request) -> web.Response:
    """The definition stored in the managed save image, as libvirt XML
    (``?security_info=1``: with the VNC password)."""
    secrets = query_of(request, XmlQuery).security_info
    if secrets and is_read_only(request):
        raise Forbidden("the read-only socket never serves secrets (security_info)",
                        fix="ask on the read-write socket (without --readonly)")
    text = await request.app[MANAGED].dumpxml(_ref(request), secrets=secrets)
    return xml_response(text)


@routes.put("/v1/domains/{ref}/managedsave/xml")
async def managedsave_define(request: web.Request) -> web.Response:
    """Replace the definition stored in the managed save image (host-side changes)."""
    body = await body_of(request, ManagedSaveDefineBody)
    return json_response(await request.app[MANAGED].define(_ref(request), body.xml,
                                                            running=body.running))


@routes.get("/v1/host/guests")
async def guests_policy(request: web.Request) -> web.Response:
    return json_response(request.app[GUESTS].status())


@routes.put("/v1/host/guests")
async def set_guests_policy(request: web.Request) -> web.Response:
    body = await body_of(request, GuestsPolicyBody)
    return json_response(request.app[GUESTS].set_policy(body))


@routes.post("/v1/host/guests/shutdown")
async def host_shutdown_guests(request: web.Request) -> web.StreamResponse:
    """The ON_SHUTDOWN policy now (the host is going down): NDJSON, one
    ``{"guest": NAME, "message": TEXT}`` line per step, then ``{"result": ...}`` (the
    guests handled and failed) or ``{"error": ...}``."""
    service = request.app[GUESTS]
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    task = asyncio.ensure_future(service.host_shutdown(
        lambda name, message: queue.put_nowait((name, message))))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def send(line: dict[str, Any]) -> None:
        await response.write(dumps(line).encode() + b"\n")

    while not task.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            name, message = getter.result()
            await send({"guest": name, "message": message})
        else:
            getter.cancel()
    try:
        await send({"result": task.result()})
    except VirtkitError as exc:
        await send({"error": {**exc.to_dict(), "status": exc.http_status}})
    await response.write_eof()
    return response
