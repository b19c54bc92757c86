"""REST routes for the guest agent: /v1/domains/{ref}/guest/...

Each handler translates one request into one :class:`GuestService` call.  File
contents travel as raw bytes (``application/octet-stream``) both ways, so the
CLI can pipe them without base64.
"""

from __future__ import annotations

from aiohttp import web

from virtkit.api.common import json_body, json_response, string_list
from virtkit.errors import InvalidSpec
from virtkit.service.guest import FILE_READ_LIMIT, GuestService

routes = web.RouteTableDef()
GUEST = web.AppKey("guest", GuestService)
PREFIX = "/v1/domains/{ref}/guest"


def _guest(request: web.Request) -> GuestService:
    return request.app[GUEST]


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]



def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path.startswith("/"):
        raise InvalidSpec("give the guest file as an absolute path (?path=/etc/hostname)",
                          field="path")
    return path


@routes.get(PREFIX + "/ping")
async def ping(request: web.Request) -> web.Response:
    return json_response(await _guest(request).ping(_ref(request)))


@routes.get(PREFIX + "/info")
async def info(request: web.Request) -> web.Response:
    return json_response(await _guest(request).info(_ref(request)))


@routes.get(PREFIX + "/interfaces")
async def interfaces(request: web.Request) -> web.Response:
    return json_response(await _guest(request).interfaces(_ref(request)))


@routes.post(PREFIX + "/command")
async def command(request: web.Request) -> web.Response:
    body = await json_body(request)
    arguments = body.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise InvalidSpec("arguments must be a JSON object", field="arguments")
    timeout = body.get("timeout", 10)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidSpec("timeout must be a positive number of seconds", field="timeout")
    result = await _guest(request).command(_ref(request), str(body.get("execute", "")),
                                           arguments, timeout=float(timeout))
    return json_response({"return": result})


@routes.get(PREFIX + "/fsfreeze")
async def fsfreeze_status(request: web.Request) -> web.Response:
    return json_response(await _guest(request).fsfreeze_status(_ref(request)))


@routes.post(PREFIX + "/fsfreeze")
async def fsfreeze(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _guest(request).fsfreeze(_ref(request),
                                                        string_list(body, "mountpoints")))


@routes.post(PREFIX + "/fsthaw")
async def fsthaw(request: web.Request) -> web.Response:
    return json_response(await _guest(request).fsthaw(_ref(request)))


@routes.post(PREFIX + "/fstrim")
async def fstrim(request: web.Request) -> web.Response:
    body = await json_body(request)
    minimum = body.get("minimum")
    if minimum is not None and (not isinstance(minimum, int) or minimum < 0):
        raise InvalidSpec("minimum must be a byte count", field="minimum")
    return json_response(await _guest(request).fstrim(_ref(request), minimum))


@routes.post(PREFIX + "/exec")
async def exec_program(request: web.Request) -> web.Response:
    body = await json_body(request)
    stdin = body.get("input")
    if stdin is not None and not isinstance(stdin, str):
        raise InvalidSpec("input must be text", field="input")
    timeout = body.get("timeout", 60)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidSpec("timeout must be a positive number of seconds", field="timeout")
    result = await _guest(request).exec(
        _ref(request), str(body.get("path", "")), string_list(body, "args"),
        env=string_list(body, "env"), stdin=stdin.encode() if stdin else None,
        timeout=float(timeout))
    return json_response(result)


@routes.get(PREFIX + "/file")
async def file_read(request: web.Request) -> web.Response:
    data = await _guest(request).file_read(_ref(request), _path(request))
    return web.Response(body=data, content_type="application/octet-stream")


@routes.put(PREFIX + "/file")
async def file_write(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > FILE_READ_LIMIT:
        raise InvalidSpec(f"guest files are written up to {FILE_READ_LIMIT // 2**20} MiB",
                          fix="copy large files through a shared folder or a disk")
    data = await request.read()
    append = request.query.get("append", "0") not in ("0", "false")
    return json_response(await _guest(request).file_write(_ref(request), _path(request), data,
                                                          append=append))


@routes.post(PREFIX + "/user-password")
async def set_user_password(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response(await _guest(request).set_user_password(
        _ref(request), str(body.get("user", "")), str(body.get("password", "")),
        crypted=bool(body.get("crypted"))))


@routes.get(PREFIX + "/vcpus")
async def vcpus(request: web.Request) -> web.Response:
    return json_response(await _guest(request).vcpus(_ref(request)))


@routes.put(PREFIX + "/vcpus")
async def set_vcpus(request: web.Request) -> web.Response:
    body = await json_body(request)
    count = body.get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        raise InvalidSpec("count must be the number of vCPUs to have online", field="count")
    return json_response(await _guest(request).set_vcpus(_ref(request), count))


@routes.get(PREFIX + "/time")
async def get_time(request: web.Request) -> web.Response:
    return json_response(await _guest(request).time(_ref(request)))


@routes.put(PREFIX + "/time")
async def set_time(request: web.Request) -> web.Response:
    body = await json_body(request)
    seconds = body.get("time")
    if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
        raise InvalidSpec("time must be seconds since the epoch", field="time")
    return json_response(await _guest(request).set_time(
        _ref(request), now=bool(body.get("now")), seconds=seconds))
