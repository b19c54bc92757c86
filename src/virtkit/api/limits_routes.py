"""REST routes of the resource limits (service/limits.py): virsh schedinfo, memtune,
blkiotune, blkdeviotune.  GET shows (``?config=true``: the stored values), POST sets."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response
from virtkit.api.requests import Body, Flag, Query, body_of, query_of
from virtkit.service.limits import Limits, LimitsService
from virtkit.service.models.tuning import BlkioDeviceChange

routes = web.RouteTableDef()
LIMITS = web.AppKey("limits", LimitsService)
KINDS = ("schedinfo", "memtune", "blkiotune")

Value = Annotated[int, Field(ge=-1, le=2**63 - 1)]


class ShowQuery(Query):
    config: Flag = False


#: one host block device's values for blkiotune: the service's input model
BlkioDeviceBody = BlkioDeviceChange


class LimitsBody(Body):
    """The values to set, by virsh's names; ``live``/``config`` as virsh's flags;
    ``devices``: blkiotune's per device weights and throttles."""

    values: dict[str, Value] = Field(max_length=8)
    devices: list[BlkioDeviceBody] | None = Field(default=None, max_length=64)
    live: bool = False
    config: bool = False


def _call(request: web.Request, values: dict[str, int], live: bool, config: bool,
          devices: list[BlkioDeviceChange] | None = None) -> Limits:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise web.HTTPNotFound()
    return request.app[LIMITS].set_limits(kind, request.match_info["ref"], values,
                                          live=live, config=config, devices=devices)


@routes.get("/v1/domains/{ref}/limits/{kind}")
async def show_limits(request: web.Request) -> web.Response:
    query = query_of(request, ShowQuery)
    return json_response(_call(request, {}, False, query.config))


@routes.post("/v1/domains/{ref}/limits/{kind}")
async def set_limits(request: web.Request) -> web.Response:
    body = await body_of(request, LimitsBody)
    return json_response(_call(request, body.values, body.live, body.config, body.devices))


@routes.get("/v1/domains/{ref}/disks/{disk}/iotune")
async def show_iotune(request: web.Request) -> web.Response:
    query = query_of(request, ShowQuery)
    return json_response(await request.app[LIMITS].blkdeviotune(
        request.match_info["ref"], request.match_info["disk"], {}, config=query.config))


@routes.post("/v1/domains/{ref}/disks/{disk}/iotune")
async def set_iotune(request: web.Request) -> web.Response:
    body = await body_of(request, LimitsBody)
    return json_response(await request.app[LIMITS].blkdeviotune(
        request.match_info["ref"], request.match_info["disk"], body.values, live=body.live,
        config=body.config))
