"""REST routes for device changes: disks, CD media, NICs, vCPUs and memory.

Each body may carry ``live`` and ``config`` (virsh's --live/--config; neither
means the current configuration: live when running, else config).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response
from virtkit.api.requests import Body, Flag, Query, body_of, query_of
from virtkit.service.devices import DeviceService
from virtkit.service.domains import DomainService

routes = web.RouteTableDef()
DEVICES = web.AppKey("devices", DeviceService)
DOMAINS = web.AppKey("device-domains", DomainService)
PREFIX = "/v1/domains/{ref}"


def _devices(request: web.Request) -> DeviceService:
    return request.app[DEVICES]


class Scope(Body):
    """virsh's --live/--config (neither: live when running, else config)."""

    live: bool = False
    config: bool = False

    def scope(self) -> dict[str, bool]:
        return {"live": self.live, "config": self.config}


Text = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(gt=0)]
#: MiB, or a string with its unit ("1G", "524288K")
Size = Positive | Text


class AttachDiskBody(Scope):
    disk: dict[str, Any]


class DetachDiskBody(Scope):
    target: Text


class MediaBody(Scope):
    target: Text
    path: str | None = Field(default=None, description="the medium; null ejects")
    force: bool = False


class AttachInterfaceBody(Scope):
    interface: dict[str, Any]


class DetachInterfaceBody(Scope):
    mac: Text


class VcpusBody(Scope):
    count: Positive
    maximum: bool = False


class MemoryBody(Scope):
    size_mib: Size
    maximum: bool = False


class AttachMemoryBody(Scope):
    size_mib: Size


class DeviceXmlBody(Scope):
    xml: Text


class DisksQuery(Query):
    inactive: Flag = False


@routes.get(PREFIX + "/disks")
async def list_disks(request: web.Request) -> web.Response:
    inactive = query_of(request, DisksQuery).inactive
    return json_response(request.app[DOMAINS].disks(request.match_info["ref"],
                                                    inactive=inactive))


@routes.post(PREFIX + "/disks")
async def attach_disk(request: web.Request) -> web.Response:
    body = await body_of(request, AttachDiskBody)
    return json_response(await _devices(request).attach_disk(
        request.match_info["ref"], body.disk, **body.scope()))


@routes.post(PREFIX + "/disks/detach")
async def detach_disk(request: web.Request) -> web.Response:
    body = await body_of(request, DetachDiskBody)
    return json_response(await _devices(request).detach_disk(
        request.match_info["ref"], body.target, **body.scope()))


@routes.post(PREFIX + "/media")
async def change_media(request: web.Request) -> web.Response:
    body = await body_of(request, MediaBody)
    return json_response(await _devices(request).change_media(
        request.match_info["ref"], body.target, body.path or None, force=body.force,
        **body.scope()))


@routes.post(PREFIX + "/interfaces")
async def attach_interface(request: web.Request) -> web.Response:
    body = await body_of(request, AttachInterfaceBody)
    return json_response(await _devices(request).attach_interface(
        request.match_info["ref"], body.interface, **body.scope()))


@routes.post(PREFIX + "/interfaces/detach")
async def detach_interface(request: web.Request) -> web.Response:
    body = await body_of(request, DetachInterfaceBody)
    return json_response(await _devices(request).detach_interface(
        request.match_info["ref"], body.mac, **body.scope()))


@routes.put(PREFIX + "/vcpus")
async def set_vcpus(request: web.Request) -> web.Response:
    body = await body_of(request, VcpusBody)
    return json_response(await _devices(request).set_vcpus(
        request.match_info["ref"], body.count, maximum=body.maximum, **body.scope()))


@routes.put(PREFIX + "/memory")
async def set_memory(request: web.Request) -> web.Response:
    body = await body_of(request, MemoryBody)
    return json_response(await _devices(request).set_memory(
        request.match_info["ref"], body.size_mib, maximum=body.maximum, **body.scope()))


@routes.post(PREFIX + "/memory")
async def attach_memory(request: web.Request) -> web.Response:
    body = await body_of(request, AttachMemoryBody)
    return json_response(await _devices(request).attach_memory(
        request.match_info["ref"], body.size_mib, **body.scope()))


@routes.post(PREFIX + "/devices/{action:attach|detach}")
async def device_xml(request: web.Request) -> web.Response:
    """virsh attach-device / detach-device: {"xml": "<disk ...>", "live", "config"}."""
    body = await body_of(request, DeviceXmlBody)
    return json_response(await _devices(request).device_xml(
        request.match_info["ref"], body.xml,
        detach=request.match_info["action"] == "detach", **body.scope()))
