"""Placement around ``install`` and ``start --place`` in a cluster (docs/cluster.md,
"Placement"); called by the cluster middleware (api/forward.py), which carries the
request to the chosen host with its ``_forward``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from virtkit.api.common import json_response
from virtkit.errors import NotFound
from virtkit.service import clusterplace
from virtkit.service.clustervms import ClusterVms
from virtkit.service.evacuate import migrate_via
from virtkit.service.forward import OwnerNoAnswer


async def _answer_with_host(response: web.StreamResponse, host: str | None,
                            **more: Any) -> web.StreamResponse:
    if response.status < 300 and isinstance(response, web.Response) and response.text:
        answer = json.loads(response.text)
        if isinstance(answer, dict):
            return json_response({**answer, "host": host, **more}, status=response.status)
    return response


async def install(request: web.Request, handler: Any, vms: ClusterVms,
                  forwarded: bool) -> web.StreamResponse:
    """``POST /v1/install``: placed (or ``?host=NAME`` checked) and its name reserved
    by CAS, then run here or carried to the chosen host; claimed where it ran."""
    from virtkit.api.forward import _forward

    raw = await request.read()  # cached: the handler reads it again
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    spec = None if forwarded else clusterplace.install_spec(body)
    reservation, target = None, vms.host
    if spec is not None and vms.local(spec["name"]) is None:
        if await vms.locate(spec["name"]) is not None:
            await vms.check_name(spec["name"])  # the 409 naming the host that holds it
        target, reservation = await vms.place(spec, request.query.get("host"))
    try:
        if target != vms.host:
            assert target is not None
            reply = await _forward(request, vms, target, drop_query=("host",))
            if reply.status >= 400 and reservation is not None and spec is not None:
                await vms.unreserve(spec["name"], reservation)
            return reply
        response = await handler(request)
    except (OwnerNoAnswer, asyncio.CancelledError):
        raise  # it may run there: the reservation stays until it goes stale
    except BaseException:
        if reservation is not None and spec is not None:
            await vms.unreserve(spec["name"], reservation)
        raise
    if response.status < 300 and isinstance(response, web.Response) and response.text:
        answer = json.loads(response.text)
        if isinstance(answer, dict) and answer.get("uuid") and not answer.get("dry_run"):
            await vms.defined(answer["uuid"])
    return await _answer_with_host(response, vms.host)


async def start(request: web.Request, handler: Any, vms: ClusterVms, ref: str,
                forwarded: bool) -> web.StreamResponse:
    """``POST /v1/domains/REF/start?place=1`` (service/clusterplace.py decides)."""
    from virtkit.api.forward import _forward

    plan = await clusterplace.plan_start(vms, ref, here_only=forwarded)
    if plan.how == "move":  # its host runs an offline migration to the chosen one
        owner, held = await clusterplace.hand_over(vms, plan)
        try:
            await migrate_via(vms, plan.home, plan.name, plan.host, offline=True,
                              live=False)
        except BaseException:
            await clusterplace.take_back(vms, plan, owner, held)
            raise
    elif plan.how == "claim" and plan.host == vms.host:
        await clusterplace.claim_here(vms, plan)
    if plan.host != vms.host:
        drop = ("place",) if plan.how != "claim" else ()
        reply = await _forward(request, vms, plan.host, drop_query=drop)
        return await _answer_with_host(reply, plan.host, placed=plan.how)
    local = vms.local(plan.uuid)
    if local is None:
        raise NotFound(f"VM {plan.name!r} is not on host {vms.host} after all",
                       fix="see 'virtkit list --all'")
    await vms.may_start(local)
    response = await handler(request)
    if response.status < 300:
        await vms.desired(plan.uuid, "running")
    return await _answer_with_host(response, plan.host, placed=plan.how)
