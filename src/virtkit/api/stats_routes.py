"""REST routes for statistics and host tuning (domstats, vcpuinfo, vcpupin, emulatorpin,
host devices, KSM, capacity) and the Prometheus ``/metrics`` page."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response
from virtkit.api.requests import Body, Flag, Query, body_of, query_of
from virtkit.service.stats import StatsService, parse_groups
from virtkit.service.tuning import TuningService

routes = web.RouteTableDef()
STATS = web.AppKey("stats", StatsService)
TUNING = web.AppKey("tuning", TuningService)

#: the content type Prometheus expects for text format 0.0.4
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DomstatsQuery(Query):
    domain: list[str] = Field(default_factory=list)
    groups: str | None = None
    active: Flag = False


class PinBody(Body):
    cpulist: str | None = None
    live: bool = False
    config: bool = False


class VcpupinBody(PinBody):
    vcpu: Annotated[int, Field(ge=0)] | None = None


class KsmBody(Body):
    action: Literal["on", "off"]


class NodedevQuery(Query):
    cap: str | None = None


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]


@routes.get("/v1/domstats")
async def domstats(request: web.Request) -> web.Response:
    """?domain=NAME (repeatable), ?groups=state,cpu-total,..., ?active=1."""
    query = query_of(request, DomstatsQuery)
    groups = parse_groups(query.groups)
    result = await request.app[STATS].domstats(query.domain or None, groups,
                                               active_only=query.active)
    return json_response(result)


@routes.get("/metrics")
async def prometheus_metrics(request: web.Request) -> web.Response:
    text = await request.app[STATS].metrics()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_TYPE})


@routes.get("/v1/host/capacity")
async def host_capacity(request: web.Request) -> web.Response:
    return json_response(request.app[STATS].capacity())


@routes.get("/v1/domains/{ref}/vcpus")
async def vcpuinfo(request: web.Request) -> web.Response:
    return json_response(await request.app[STATS].vcpuinfo(_ref(request)))


@routes.get("/v1/domains/{ref}/vcpupin")
async def get_vcpupin(request: web.Request) -> web.Response:
    return json_response(await request.app[TUNING].pin_table(_ref(request)))


@routes.put("/v1/domains/{ref}/vcpupin")
async def put_vcpupin(request: web.Request) -> web.Response:
    body = await body_of(request, VcpupinBody)
    result = await request.app[TUNING].vcpupin(
        _ref(request), body.vcpu, body.cpulist, live=body.live, config=body.config)
    return json_response(result)


@routes.get("/v1/domains/{ref}/emulatorpin")
async def get_emulatorpin(request: web.Request) -> web.Response:
    return json_response(await request.app[TUNING].emulatorpin(_ref(request), None))


@routes.put("/v1/domains/{ref}/emulatorpin")
async def put_emulatorpin(request: web.Request) -> web.Response:
    body = await body_of(request, PinBody)
    result = await request.app[TUNING].emulatorpin(
        _ref(request), body.cpulist, live=body.live, config=body.config)
    return json_response(result)


@routes.get("/v1/host/ksm")
async def get_ksm(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].ksm))


@routes.put("/v1/host/ksm")
async def put_ksm(request: web.Request) -> web.Response:
    body = await body_of(request, KsmBody)
    return json_response(await asyncio.to_thread(request.app[TUNING].ksm, body.action))


@routes.get("/v1/host/numa")
async def host_numa(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].numa_nodes))


@routes.get("/v1/nodedevs")
async def nodedevs(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].nodedev_list,
                                                 query_of(request, NodedevQuery).cap))
