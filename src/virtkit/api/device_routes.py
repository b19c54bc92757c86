"""REST routes for device changes: disks, CD media, NICs, vCPUs and memory.

Each body may carry ``live`` and ``config`` (virsh's --live/--config; neither
means the current configuration: live when running, else config).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from virtkit.api.common import json_body, json_response, required_text
from virtkit.errors import InvalidSpec
from virtkit.service.devices import DeviceService
from virtkit.service.domains import DomainService

routes = web.RouteTableDef()
DEVICES = web.AppKey("devices", DeviceService)
DOMAINS = web.AppKey("device-domains", DomainService)
PREFIX = "/v1/domains/{ref}"


def _devices(request: web.Request) -> DeviceService:
    return request.app[DEVICES]


def _scope(body: dict[str, Any]) -> dict[str, bool]:
    return {"live": bool(body.get("live")), "config": bool(body.get("config"))}


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise InvalidSpec(f"send the {key} as {{\"{key}\": {{...}}}}", field=key)
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidSpec(f"{key} must be a positive whole number", field=key)
    return value


def _size(body: dict[str, Any]) -> int | str:
    """size_mib: MiB, or a string with its unit ("1G", "524288K")."""
    value = body.get("size_mib")
    if isinstance(value, str) and value:
        return value
    return _count(body, "size_mib")



@routes.get(PREFIX + "/disks")
async def list_disks(request: web.Request) -> web.Response:
    inactive = request.query.get("inactive", "0") not in ("0", "false")
    return json_response(request.app[DOMAINS].disks(request.match_info["ref"],
                                                    inactive=inactive))


@routes.post(PREFIX + "/disks")
async def attach_disk(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).attach_disk(
        request.match_info["ref"], _object(body, "disk"), **_scope(body)))


@routes.post(PREFIX + "/disks/detach")
async def detach_disk(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).detach_disk(
        request.match_info["ref"], required_text(body, "target"), **_scope(body)))


@routes.post(PREFIX + "/media")
async def change_media(request: web.Request) -> web.Response:
    body = await json_body(request)
    path = body.get("path")
    if path is not None and not isinstance(path, str):
        raise InvalidSpec("path must be the medium's path, or null to eject", field="path")
    return json_response(await _devices(request).change_media(
        request.match_info["ref"], required_text(body, "target"), path or None,
        force=bool(body.get("force")), **_scope(body)))


@routes.post(PREFIX + "/interfaces")
async def attach_interface(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).attach_interface(
        request.match_info["ref"], _object(body, "interface"), **_scope(body)))


@routes.post(PREFIX + "/interfaces/detach")
async def detach_interface(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).detach_interface(
        request.match_info["ref"], required_text(body, "mac"), **_scope(body)))


@routes.put(PREFIX + "/vcpus")
async def set_vcpus(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).set_vcpus(
        request.match_info["ref"], _count(body, "count"), maximum=bool(body.get("maximum")),
        **_scope(body)))


@routes.put(PREFIX + "/memory")
async def set_memory(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).set_memory(
        request.match_info["ref"], _size(body), maximum=bool(body.get("maximum")),
        **_scope(body)))


@routes.post(PREFIX + "/memory")
async def attach_memory(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _devices(request).attach_memory(
        request.match_info["ref"], _size(body), **_scope(body)))


@routes.post(PREFIX + "/devices/{action:attach|detach}")
async def device_xml(request: web.Request) -> web.Response:
    """virsh attach-device / detach-device: {"xml": "<disk ...>", "live", "config"}."""
    body = await json_body(request)
    return json_response(await _devices(request).device_xml(
        request.match_info["ref"], required_text(body, "xml"),
        detach=request.match_info["action"] == "detach", **_scope(body)))
