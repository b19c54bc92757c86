"""REST routes for the guest agent: /v1/domains/{ref}/guest/...

Each handler translates one request into one :class:`GuestService` call.  File
contents travel as raw bytes (``application/octet-stream``) both ways, so the
CLI can pipe them without base64.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response
from virtkit.api.requests import Body, EmptyBody, Flag, Query, body_of, query_of
from virtkit.errors import InvalidSpec
from virtkit.service.guest import FILE_READ_LIMIT, GuestService

routes = web.RouteTableDef()
GUEST = web.AppKey("guest", GuestService)
PREFIX = "/v1/domains/{ref}/guest"


def _guest(request: web.Request) -> GuestService:
    return request.app[GUEST]


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]



Seconds = Annotated[float, Field(gt=0)]


class CommandBody(Body):
    execute: str = Field(min_length=1)
    arguments: dict[str, Any] | None = None
    timeout: Seconds = 10


class MountpointsBody(Body):
    mountpoints: list[str] = Field(default_factory=list)


class FstrimBody(Body):
    minimum: Annotated[int, Field(ge=0)] | None = None


class ExecBody(Body):
    path: str
    args: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)
    input: str | None = None
    timeout: Seconds = 60


class PasswordBody(Body):
    user: str = Field(min_length=1)
    password: str
    crypted: bool = False


class CountBody(Body):
    count: int


class TimeBody(Body):
    time: Annotated[float, Field(ge=0)] | None = None
    now: bool = False



class FileQuery(Query):
    path: str = ""
    append: Flag = False


def _path(request: web.Request) -> str:
    path = query_of(request, FileQuery).path
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
    body = await body_of(request, CommandBody)
    result = await _guest(request).command(_ref(request), body.execute, body.arguments,
                                           timeout=float(body.timeout))
    return json_response({"return": result})


@routes.get(PREFIX + "/fsfreeze")
async def fsfreeze_status(request: web.Request) -> web.Response:
    return json_response(await _guest(request).fsfreeze_status(_ref(request)))


@routes.post(PREFIX + "/fsfreeze")
async def fsfreeze(request: web.Request) -> web.Response:
    body = await body_of(request, MountpointsBody)
    return json_response(await _guest(request).fsfreeze(_ref(request), body.mountpoints))


@routes.post(PREFIX + "/fsthaw")
async def fsthaw(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    return json_response(await _guest(request).fsthaw(_ref(request)))


@routes.post(PREFIX + "/fstrim")
async def fstrim(request: web.Request) -> web.Response:
    body = await body_of(request, FstrimBody)
    return json_response(await _guest(request).fstrim(_ref(request), body.minimum))


@routes.post(PREFIX + "/exec")
async def exec_program(request: web.Request) -> web.Response:
    body = await body_of(request, ExecBody)
    result = await _guest(request).exec(
        _ref(request), body.path, body.args, env=body.env,
        stdin=body.input.encode() if body.input else None, timeout=float(body.timeout))
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
    append = query_of(request, FileQuery).append
    return json_response(await _guest(request).file_write(_ref(request), _path(request), data,
                                                          append=append))


@routes.post(PREFIX + "/user-password")
async def set_user_password(request: web.Request) -> web.Response:
    body = await body_of(request, PasswordBody)
    return json_response(await _guest(request).set_user_password(
        _ref(request), body.user, body.password, crypted=body.crypted))


@routes.get(PREFIX + "/vcpus")
async def vcpus(request: web.Request) -> web.Response:
    return json_response(await _guest(request).vcpus(_ref(request)))


@routes.put(PREFIX + "/vcpus")
async def set_vcpus(request: web.Request) -> web.Response:
    body = await body_of(request, CountBody)
    return json_response(await _guest(request).set_vcpus(_ref(request), body.count))


@routes.get(PREFIX + "/time")
async def get_time(request: web.Request) -> web.Response:
    return json_response(await _guest(request).time(_ref(request)))


@routes.put(PREFIX + "/time")
async def set_time(request: web.Request) -> web.Response:
    body = await body_of(request, TimeBody)
    return json_response(await _guest(request).set_time(
        _ref(request), now=body.now, seconds=body.time))
