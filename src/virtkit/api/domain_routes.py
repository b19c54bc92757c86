"""REST routes of domains: define, list, info, spec/XML, lifecycle, interfaces.

Every handler parses its request with one model of api/domain_requests.py or
api/requests.py, calls one service method, and answers its result as JSON.
The console and VNC proxies are in api/console_routes.py, the event stream in
api/events_routes.py, device changes in api/device_routes.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from virtkit.api.auth import is_read_only
from virtkit.api.common import json_response, xml_response
from virtkit.api.domain_requests import (
    DomainDefineBody,
    LinkBody,
    PathBody,
    RestoreBody,
    ShutdownBody,
    StartBody,
    UndefineQuery,
    UpdateBody,
)
from virtkit.api.requests import (
    AutostartBody,
    DefineBody,
    DomainListQuery,
    EmptyBody,
    XmlQuery,
    body_of,
    query_of,
)
from virtkit.api.services import services_of
from virtkit.errors import Forbidden, InvalidSpec
from virtkit.service import domainpolicy

routes = web.RouteTableDef()


def _spec_from(body: DefineBody | UpdateBody) -> dict[str, Any] | str:
    if body.yaml is not None:
        return body.yaml
    if body.spec is not None:
        return body.spec
    raise InvalidSpec("send the domain as {\"spec\": {...}} or {\"yaml\": \"...\"}",
                      field="spec")


def security_info(request: web.Request) -> bool:
    """``?security_info=true``: answer secrets (VNC passwords); refused on the read-only
    socket, which never serves them (libvirt refuses VIR_DOMAIN_XML_SECURE there)."""
    wanted = query_of(request, XmlQuery).security_info
    if wanted and is_read_only(request):
        raise Forbidden("the read-only socket never serves secrets (security_info)",
                        fix="ask on the read-write socket (without --readonly)")
    return wanted


@routes.get("/v1/domains")
async def list_domains(request: web.Request) -> web.Response:
    query = query_of(request, DomainListQuery)
    services = services_of(request)
    return json_response(await domainpolicy.list_domains(
        services.domains, services.cluster, include_inactive=query.all,
        cluster_wide=query.cluster))


@routes.post("/v1/domains")
async def define_domain(request: web.Request) -> web.Response:
    body = await body_of(request, DomainDefineBody)
    services = services_of(request)
    result = await domainpolicy.define(
        services.domains, services.provision, xml=body.xml, force=body.force,
        spec=None if body.xml is not None else _spec_from(body), new_disks=body.new_disks)
    return json_response(result, status=201)


@routes.post("/v1/domains/create")
async def create_domain(request: web.Request) -> web.Response:
    """virsh create: a transient domain, defined and started; gone when it stops."""
    body = await body_of(request, DefineBody)
    domains = services_of(request).domains
    if body.xml is not None:
        result = await domains.create(xml=body.xml, force=body.force)
    else:
        result = await domains.create(_spec_from(body))
    return json_response(result, status=201)


@routes.post("/v1/domains/restore")
async def restore_domain(request: web.Request) -> web.Response:
    body = await body_of(request, RestoreBody)
    result = await services_of(request).domains.restore(body.path, paused=body.paused)
    return json_response(result)


@routes.get("/v1/domains/{ref}")
async def get_domain(request: web.Request) -> web.Response:
    secrets = security_info(request)
    services = services_of(request)
    # a worker thread: the disks' pools are found by resolving their paths (a hung mount)
    return json_response(await asyncio.to_thread(
        domainpolicy.info, services.domains, services.cluster, request.match_info["ref"],
        secrets=secrets))


@routes.put("/v1/domains/{ref}")
async def update_domain(request: web.Request) -> web.Response:
    body = await body_of(request, UpdateBody)
    # a worker thread: the host checks stat user paths and run qemu-img (never the loop)
    result = await asyncio.to_thread(services_of(request).domains.update,
                                     request.match_info["ref"], _spec_from(body), body.version)
    return json_response(result)


@routes.delete("/v1/domains/{ref}")
async def undefine_domain(request: web.Request) -> web.Response:
    query = query_of(request, UndefineQuery)
    services = services_of(request)
    return json_response(await domainpolicy.undefine(
        services.domains, services.provision, request.match_info["ref"], nvram=query.nvram,
        snapshots_metadata=query.snapshots_metadata, managed_save=query.managed_save,
        remove_all_storage=query.remove_all_storage))


@routes.get("/v1/domains/{ref}/spec")
async def get_spec(request: web.Request) -> web.Response:
    secrets = security_info(request)
    return json_response(services_of(request).domains.spec_yaml(request.match_info["ref"],
                                                                secrets=secrets))


@routes.get("/v1/domains/{ref}/xml")
async def get_xml(request: web.Request) -> web.Response:
    """virsh dumpxml: the domain as libvirt domain XML."""
    secrets = security_info(request)
    text = services_of(request).domains.dumpxml(request.match_info["ref"], secrets=secrets)
    return xml_response(text)


@routes.put("/v1/domains/{ref}/autostart")
async def put_autostart(request: web.Request) -> web.Response:
    body = await body_of(request, AutostartBody)
    return json_response(services_of(request).domains.set_autostart(
        request.match_info["ref"], body.enabled))


@routes.post("/v1/domains/{ref}/start")
async def start_domain(request: web.Request) -> web.Response:
    body = await body_of(request, StartBody)
    result = await services_of(request).domains.start(request.match_info["ref"],
                                                      paused=body.paused,
                                                      force_boot=body.force_boot)
    return json_response(result)


@routes.post("/v1/domains/{ref}/shutdown")
async def shutdown_domain(request: web.Request) -> web.Response:
    return await _shutdown(request, reboot=False)


@routes.post("/v1/domains/{ref}/reboot")
async def reboot_domain(request: web.Request) -> web.Response:
    return await _shutdown(request, reboot=True)


async def _shutdown(request: web.Request, *, reboot: bool) -> web.Response:
    body = await body_of(request, ShutdownBody)
    result = await services_of(request).domains.shutdown(
        request.match_info["ref"], timeout=body.timeout, wait=body.wait, reboot=reboot,
        mode=body.mode or "acpi")
    return json_response(result)


@routes.post("/v1/domains/{ref}/{action:destroy|suspend|resume|reset}")
async def simple_action(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    result = await services_of(request).domains.simple(request.match_info["ref"],
                                                       request.match_info["action"])
    return json_response(result)


@routes.post("/v1/domains/{ref}/save")
async def save_domain(request: web.Request) -> web.Response:
    body = await body_of(request, PathBody)
    return json_response(await services_of(request).domains.save(request.match_info["ref"],
                                                                 body.path))


@routes.get("/v1/domains/{ref}/interfaces")
async def domain_interfaces(request: web.Request) -> web.Response:
    """domiflist and domifaddr: NICs with their tap, MAC and leased addresses."""
    return json_response(await asyncio.to_thread(services_of(request).domains.interfaces,
                                                 request.match_info["ref"]))


@routes.post("/v1/domains/{ref}/interfaces/{nic}/link")
async def domain_set_link(request: web.Request) -> web.Response:
    body = await body_of(request, LinkBody)
    result = await services_of(request).domains.set_link(request.match_info["ref"],
                                                         request.match_info["nic"], body.state)
    return json_response(result)


@routes.get("/v1/domains/{ref}/vnc")
async def get_vnc(request: web.Request) -> web.Response:
    return json_response(services_of(request).domains.vncdisplay(request.match_info["ref"]))
