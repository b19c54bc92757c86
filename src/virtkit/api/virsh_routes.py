"""REST routes of virsh's smaller commands (service/virsh.py): screenshot, send-key,
vcpucount, domblkinfo, desc, and the host documents and node statistics."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from virtkit.api.common import json_body, json_response
from virtkit.errors import InvalidSpec
from virtkit.service.virsh import VirshService

routes = web.RouteTableDef()
VIRSH = web.AppKey("virsh", VirshService)


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]


def _int(value: Any, key: str, *, default: int | None = None) -> int | None:
    """A whole number from JSON or a query string, or InvalidSpec naming ``key``."""
    if value is None:
        return default
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) < 10:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidSpec(f"{key} must be a whole number", field=key)


def _text(request: web.Request, key: str) -> str | None:
    value = request.query.get(key)
    return value if value else None


# POST, not GET: a screenshot shows guest output, which the read-only socket never serves
@routes.post("/v1/domains/{ref}/screenshot")
async def screenshot(request: web.Request) -> web.Response:
    """The display as an image (image/png, or image/x-portable-pixmap on an old QEMU)."""
    body = await json_body(request)
    data, mime = await request.app[VIRSH].screenshot(_ref(request),
                                                     _int(body.get("screen"), "screen"))
    return web.Response(body=data, content_type=mime)


@routes.post("/v1/domains/{ref}/send-key")
async def send_key(request: web.Request) -> web.Response:
    """{"keys": ["KEY_LEFTCTRL", "KEY_C"], "codeset": "linux", "holdtime": MS}"""
    body = await json_body(request)
    keys = body.get("keys")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise InvalidSpec("keys must be a list of key names or numbers (strings)",
                          field="keys")
    codeset = body.get("codeset", "linux")
    if not isinstance(codeset, str):
        raise InvalidSpec("codeset must be a string", field="codeset")
    result = await request.app[VIRSH].send_key(
        _ref(request), keys, codeset=codeset, holdtime=_int(body.get("holdtime"), "holdtime"))
    return json_response(result)


@routes.get("/v1/domains/{ref}/vcpucount")
async def vcpucount(request: web.Request) -> web.Response:
    return json_response(request.app[VIRSH].vcpucount(_ref(request)))


@routes.get("/v1/domains/{ref}/blkinfo")
async def blkinfo(request: web.Request) -> web.Response:
    return json_response(await request.app[VIRSH].blkinfo(_ref(request)))


@routes.put("/v1/domains/{ref}/description")
async def put_description(request: web.Request) -> web.Response:
    """{"text": "...", "title": false}: replace the description (or title); "" removes."""
    body = await json_body(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise InvalidSpec("text must be a string (\"\" removes it)", field="text")
    return json_response(request.app[VIRSH].set_description(
        _ref(request), text, title=body.get("title") is True))


@routes.get("/v1/domains/{ref}/description")
async def get_description(request: web.Request) -> web.Response:
    """?title=1 for the title."""
    return json_response(request.app[VIRSH].set_description(
        _ref(request), None, title=request.query.get("title") in ("1", "true")))


@routes.get("/v1/domains/{ref}/metadata")
async def get_metadata(request: web.Request) -> web.Response:
    """?uri=NAMESPACE: the element of that namespace, shown without its prefix."""
    uri = _text(request, "uri")
    if uri is None:
        raise InvalidSpec("?uri= names the metadata's namespace", field="uri")
    return json_response(request.app[VIRSH].metadata(_ref(request), uri))


@routes.put("/v1/domains/{ref}/metadata")
async def put_metadata(request: web.Request) -> web.Response:
    """{"uri": NAMESPACE, "key": PREFIX, "xml": "<foo/>"}; "xml": null removes it."""
    body = await json_body(request)
    uri, key, xml = body.get("uri"), body.get("key"), body.get("xml")
    if not isinstance(uri, str) or not uri:
        raise InvalidSpec("uri names the metadata's namespace", field="uri")
    if key is not None and not isinstance(key, str):
        raise InvalidSpec("key must be a string (the namespace prefix)", field="key")
    if xml is not None and not isinstance(xml, str):
        raise InvalidSpec("xml must be one XML element as a string, or null", field="xml")
    return json_response(request.app[VIRSH].metadata(_ref(request), uri, key=key, xml=xml,
                                                     remove=xml is None))


@routes.get("/v1/host/memstats")
async def memstats(request: web.Request) -> web.Response:
    return json_response(request.app[VIRSH].memstats())


@routes.get("/v1/host/cpustats")
async def cpustats(request: web.Request) -> web.Response:
    """?cpu=N for one host CPU."""
    return json_response(request.app[VIRSH].cpustats(_int(request.query.get("cpu"), "cpu")))


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/xml")


@routes.get("/v1/host/sysinfo")
async def sysinfo(request: web.Request) -> web.Response:
    return _xml(request.app[VIRSH].sysinfo())


@routes.get("/v1/host/capabilities")
async def capabilities(request: web.Request) -> web.Response:
    return _xml(await asyncio.to_thread(request.app[VIRSH].capabilities))


@routes.get("/v1/host/domcapabilities")
async def domcapabilities(request: web.Request) -> web.Response:
    """?machine=, ?virttype=, ?arch=, ?emulatorbin= as virsh domcapabilities takes them."""
    virsh = request.app[VIRSH]
    text = await asyncio.to_thread(
        lambda: virsh.domcapabilities(machine=_text(request, "machine"),
                                      virttype=_text(request, "virttype"),
                                      arch=_text(request, "arch"),
                                      emulator=_text(request, "emulatorbin")))
    return _xml(text)
