"""REST routes for virtual networks (virsh's net-*).

Network operations do blocking netlink and process work, so every handler runs
its service call in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from virtkit.api.common import json_response, xml_response
from virtkit.api.requests import (
    AutostartBody,
    Body,
    EmptyBody,
    ListQuery,
    body_of,
    define_body,
    query_of,
)
from virtkit.service.networks import NetworkService

routes = web.RouteTableDef()
NETWORKS = web.AppKey("networks", NetworkService)


def _service(request: web.Request) -> NetworkService:
    return request.app[NETWORKS]


class UpdateBody(Body):
    """net-update: add/delete/modify one entry of a section (ip-dhcp-host ...)."""

    action: str
    section: str
    entry: dict[str, Any]


class ForwardBody(Body):
    action: str
    forward: dict[str, Any]


async def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> web.Response:
    return json_response(await asyncio.to_thread(function, *args, **kwargs))


@routes.get("/v1/networks")
async def list_networks(request: web.Request) -> web.Response:
    inactive = query_of(request, ListQuery).all
    return await _call(_service(request).list_networks, include_inactive=inactive)


@routes.post("/v1/networks")
async def define_network(request: web.Request) -> web.Response:
    body, spec = await define_body(request)
    if body.xml is not None:  # libvirt network XML; the answer has "warnings"
        return await _call(_service(request).define_xml, body.xml, force=body.force)
    return await _call(_service(request).define, spec if spec is not None else {})


@routes.get("/v1/networks/{net}")
async def network_info(request: web.Request) -> web.Response:
    return await _call(_service(request).info, request.match_info["net"])


@routes.get("/v1/networks/{net}/xml")
async def network_xml(request: web.Request) -> web.Response:
    """virsh net-dumpxml: the network as libvirt network XML."""
    text = await asyncio.to_thread(_service(request).dumpxml, request.match_info["net"])
    return xml_response(text)


@routes.delete("/v1/networks/{net}")
async def undefine_network(request: web.Request) -> web.Response:
    return await _call(_service(request).undefine, request.match_info["net"])


@routes.post("/v1/networks/{net}/{action:start|destroy}")
async def network_action(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    service = _service(request)
    operation = service.start if request.match_info["action"] == "start" else service.destroy
    return await _call(operation, request.match_info["net"])


@routes.put("/v1/networks/{net}/autostart")
async def network_autostart(request: web.Request) -> web.Response:
    body = await body_of(request, AutostartBody)
    return await _call(_service(request).set_autostart, request.match_info["net"],
                       body.enabled)


@routes.get("/v1/networks/{net}/leases")
async def network_leases(request: web.Request) -> web.Response:
    return await _call(_service(request).leases, request.match_info["net"])


@routes.post("/v1/networks/{net}/update")
async def network_update(request: web.Request) -> web.Response:
    body = await body_of(request, UpdateBody)
    return await _call(_service(request).update, request.match_info["net"],
                       body.action, body.section, body.entry)


@routes.post("/v1/networks/{net}/forwards")
async def network_forwards(request: web.Request) -> web.Response:
    body = await body_of(request, ForwardBody)
    return await _call(_service(request).port_forward, request.match_info["net"],
                       body.action, body.forward)
