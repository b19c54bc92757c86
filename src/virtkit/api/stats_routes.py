"""REST routes for statistics and host tuning (domstats, vcpuinfo, vcpupin, emulatorpin,
host devices, KSM, capacity) and the Prometheus ``/metrics`` page."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from virtkit.api.common import json_body, json_response
from virtkit.errors import InvalidSpec
from virtkit.service.stats import StatsService, parse_groups
from virtkit.service.tuning import TuningService

routes = web.RouteTableDef()
STATS = web.AppKey("stats", StatsService)
TUNING = web.AppKey("tuning", TuningService)

#: the content type Prometheus expects for text format 0.0.4
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "yes")


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]


@routes.get("/v1/domstats")
async def domstats(request: web.Request) -> web.Response:
    """?domain=NAME (repeatable), ?groups=state,cpu-total,..., ?active=1."""
    refs = request.query.getall("domain", [])
    groups = parse_groups(request.query.get("groups"))
    result = await request.app[STATS].domstats(refs or None, groups,
                                               active_only=_flag(request.query.get("active")))
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


def _cpulist(body: dict[str, Any]) -> str | None:
    value = body.get("cpulist")
    if value is not None and not isinstance(value, str):
        raise InvalidSpec("cpulist must be a string such as '0-1'", field="cpulist")
    return value


@routes.get("/v1/domains/{ref}/vcpupin")
async def get_vcpupin(request: web.Request) -> web.Response:
    return json_response(await request.app[TUNING].pin_table(_ref(request)))


@routes.put("/v1/domains/{ref}/vcpupin")
async def put_vcpupin(request: web.Request) -> web.Response:
    body = await json_body(request)
    vcpu = body.get("vcpu")
    if vcpu is not None and (isinstance(vcpu, bool) or not isinstance(vcpu, int)):
        raise InvalidSpec("vcpu must be a vCPU number", field="vcpu")
    result = await request.app[TUNING].vcpupin(
        _ref(request), vcpu, _cpulist(body), live=_flag(body.get("live")),
        config=_flag(body.get("config")))
    return json_response(result)


@routes.get("/v1/domains/{ref}/emulatorpin")
async def get_emulatorpin(request: web.Request) -> web.Response:
    return json_response(await request.app[TUNING].emulatorpin(_ref(request), None))


@routes.put("/v1/domains/{ref}/emulatorpin")
async def put_emulatorpin(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await request.app[TUNING].emulatorpin(
        _ref(request), _cpulist(body), live=_flag(body.get("live")),
        config=_flag(body.get("config")))
    return json_response(result)


@routes.get("/v1/host/ksm")
async def get_ksm(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].ksm))


@routes.put("/v1/host/ksm")
async def put_ksm(request: web.Request) -> web.Response:
    body = await json_body(request)
    action = body.get("action")
    if action not in ("on", "off"):
        raise InvalidSpec("send {\"action\": \"on\"} or {\"action\": \"off\"}", field="action")
    return json_response(await asyncio.to_thread(request.app[TUNING].ksm, str(action)))


@routes.get("/v1/host/numa")
async def host_numa(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].numa_nodes))


@routes.get("/v1/nodedevs")
async def nodedevs(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TUNING].nodedev_list,
                                                 request.query.get("cap")))
