"""The cluster around the domain routes (docs/cluster.md): a middleware that

- forwards a request for a VM another host owns to that host's daemon (HTTP and
  WebSocket: ``start``, ``shutdown``, ``dominfo``, ``dumpxml``, ``console``, ...), at
  its cluster API over mutual TLS (service/forward.py), with the caller's standing;
- places a new VM (``POST /v1/domains`` without ``?host``) and forwards its define to
  the chosen host, or defines it here; ``?host=NAME`` pins it;
- keeps etcd in step after local defines, undefines, starts and stops, and moves a
  VM's ownership on a migration's destination before the guest resumes.

Outside a cluster it passes every request through untouched.  Installed by
:func:`install` (one line in api/app.py); it is the innermost middleware, so
authentication and the error body come from the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

from virtkit.api import cluster_place
from virtkit.api.auth import is_read_only
from virtkit.api.common import PRINCIPAL, json_response
from virtkit.errors import Conflict, VirtkitError
from virtkit.service.callers import remote_caller, remote_may_define_pools
from virtkit.service.clustervms import ClusterVms
from virtkit.service.forward import (
    FORWARDED_BY,
    Owner,
    OwnerNoAnswer,
    Reply,
    forward_headers,
    send,
)

log = logging.getLogger(__name__)

VMS = web.AppKey("cluster_vms", ClusterVms)
_DOMAIN = re.compile(r"^/v1/domains/(?P<ref>[^/]+)(?P<rest>/.*)?$")
_FINISH = re.compile(r"^/v1/migrations/(?P<id>[^/]+)/finish$")
#: collection routes under /v1/domains/ (not a VM's name)
_COLLECTION = {"create", "restore"}
_DESIRED = {"/start": "running", "/resume": "running", "/shutdown": "shutoff",
            "/destroy": "shutoff"}


def install(app: web.Application, services: Any) -> None:
    """Add the middleware when the daemon can be in a cluster."""
    if getattr(services, "cluster", None) is None:
        return
    vms = ClusterVms(services.cluster, services.domains)
    services.cluster.vms = vms
    if getattr(services, "migrations", None) is not None:
        vms.offline_incoming = services.migrations.offline.has
    app[VMS] = vms
    app.middlewares.append(cluster_middleware)


@web.middleware
async def cluster_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    vms = request.app.get(VMS)
    if vms is None or not vms.active:
        return await handler(request)  # type: ignore[no-any-return]
    forwarded = FORWARDED_BY in request.headers
    path, method = request.path, request.method
    if method == "POST" and path in ("/v1/domains", "/v1/domains/create"):
        return await _define(request, handler, vms, forwarded)
    if method == "POST" and path == "/v1/install":
        return await cluster_place.install(request, handler, vms, forwarded)
    match = _DOMAIN.match(path)
    if match and match["ref"] not in _COLLECTION:
        ref, rest = match["ref"], match["rest"] or ""
        if method == "POST" and rest == "/start" and request.query.get("place"):
            return await cluster_place.start(request, handler, vms, ref, forwarded)
        local = vms.local(ref)
        if local is None:
            where = None if forwarded else await vms.locate(ref)
            if where is not None and where["host"] != vms.host:
                return await _forward(request, vms, where["host"])
            return await handler(request)  # type: ignore[no-any-return]
        pinned = request.query.get("host")
        if pinned and pinned != vms.host and rest == "/start":
            raise Conflict(f"VM {local.name!r} is on host {vms.host}, not {pinned}",
                           fix=f"migrate it to {pinned} first, or start it without --host")
        if method == "POST" and rest == "/start" and not local.running:
            await vms.may_start(local)
        response = await handler(request)
        if response.status < 300:
            await _after(vms, local, method, rest)
        return response  # type: ignore[no-any-return]
    finish = _FINISH.match(path)
    if finish and method == "POST":
        return await _finish(request, handler, vms, finish["id"])
    return await handler(request)  # type: ignore[no-any-return]


async def _after(vms: ClusterVms, vm: Any, method: str, rest: str) -> None:
    if method == "DELETE" and rest == "":
        await vms.undefined(vm)
    elif method == "PUT" and rest in ("", "/ha", "/autostart"):  # the spec changed
        await vms.defined(vm.uuid)
    elif method == "POST" and rest in _DESIRED:
        await vms.desired(vm.uuid, _DESIRED[rest])


async def _define(request: web.Request, handler: Any, vms: ClusterVms,
                  forwarded: bool) -> web.StreamResponse:
    """Place (or take the pinned host), then define there; claim after a local define."""
    pinned = request.query.get("host") or (vms.host if forwarded else None)
    raw = await request.read()  # cached: the handler reads it again
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    spec = vms.spec_of(body) if isinstance(body, dict) else None
    reservation = None
    target = pinned
    if target is None and spec is not None:
        # a redefinition (the spec names the VM's uuid) goes to the VM's host; a new
        # VM is placed; a new VM with another host's VM's name is refused there
        existing = None if vms.local(spec["name"]) is None else {"host": vms.host}
        existing = existing or await vms.locate(spec["name"])
        if existing is None:
            target, reservation = await vms.place(spec)
        elif existing["host"] == vms.host or (
                spec["given_uuid"] and existing.get("uuid") == spec["uuid"]):
            target = existing["host"]
        else:
            await vms.check_name(spec["name"])
    elif spec is not None and not forwarded and vms.local(spec["name"]) is None \
            and await vms.locate(spec["name"]) is None:  # a new VM: the host must fit
        target, reservation = await vms.place(spec, pinned)
    elif spec is not None:
        await vms.check_name(spec["name"])
    try:
        if target is not None and target != vms.host:
            reply = await _forward(request, vms, target, drop_query=("host",))
            if reply.status >= 400 and reservation is not None:
                await vms.unreserve(spec["name"], reservation)  # type: ignore[index]
            return reply
        response = await handler(request)
    except (OwnerNoAnswer, asyncio.CancelledError):
        raise  # it may be defined there: the reservation stays until it goes stale
    except BaseException:
        if reservation is not None:
            await vms.unreserve(spec["name"], reservation)  # type: ignore[index]
        raise
    if response.status < 300 and isinstance(response, web.Response) and response.text:
        answer = json.loads(response.text)
        if isinstance(answer, dict) and answer.get("uuid"):
            await vms.defined(answer["uuid"])
            return json_response({**answer, "host": vms.host}, status=response.status)
    return response  # type: ignore[no-any-return]


async def _finish(request: web.Request, handler: Any, vms: ClusterVms,
                  uuid: str) -> web.StreamResponse:
    """A migration's destination: ownership first (one txn moves the owner and name
    keys from the source to us, conditioned on both being as read), then the guest
    resumes here, or (offline) it is defined here; a finish that fails gives them
    back.  The source undefines its copy only on this answer's success, so the VM is
    never defined nowhere, and only its owner may start it."""
    arriving = vms.offline_incoming(uuid)
    if arriving:
        vms.arriving.add(uuid)
    try:
        previous = await vms.take_over(uuid, arriving=arriving)
        try:
            response = await handler(request)
        except BaseException:
            if previous is not None:
                await vms.give_back(uuid, previous)
            raise
        if response.status >= 300 and previous is not None:
            await vms.give_back(uuid, previous)
        elif response.status < 300 and previous is None:
            try:
                await vms.defined(uuid)  # from a host outside the cluster: ours now
            except VirtkitError:
                if vms.local(uuid) is None:  # its define was undone: the source keeps it
                    raise
                log.exception("cluster: VM %s migrated here is not recorded", uuid)
        elif response.status < 300 and arriving:
            await vms.record(uuid)
    finally:
        vms.arriving.discard(uuid)
    return response  # type: ignore[no-any-return]


def _caller(request: web.Request) -> str:
    """The standing of this request's caller, for the owner to apply (service/forward.py
    CALLER): as the auth middleware (and a cluster peer's declaration) set it here."""
    if is_read_only(request):
        return "read-only"
    if remote_caller():
        return "remote-pools" if remote_may_define_pools() else "remote"
    return "local"


async def _forward(request: web.Request, vms: ClusterVms, host: str, *,
                   drop_query: tuple[str, ...] = ()) -> web.StreamResponse:
    owner = await vms.owner(host, read_only=is_read_only(request))
    query = [(k, v) for k, v in request.query.items() if k not in drop_query]
    target = request.path + ("?" + urlencode(query) if query else "")
    principal = request.get(PRINCIPAL)
    headers = forward_headers(request.headers, vms.host or "", _caller(request),
                              str(principal) if principal else None)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _forward_websocket(request, owner, target, headers)
    reply: Reply = await send(owner, request.method, target, await request.read(), headers)
    log.info("cluster: %s %s forwarded to host %s (%s): %s", request.method, request.path,
             host, owner.where, reply.status)
    response = web.Response(status=reply.status, body=reply.body)
    response.headers["Content-Type"] = reply.content_type
    return response


async def _forward_websocket(request: web.Request, owner: Owner, target: str,
                             headers: dict[str, str]) -> web.StreamResponse:
    """A console (or VNC) WebSocket carried to the owner's daemon, frames both ways."""
    host = owner.host
    session = owner.session(timeout=None)
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                      .split(",") if p.strip())
    base = owner.base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    try:
        upstream = await session.ws_connect(
            base + target, protocols=protocols,
            headers={k: v for k, v in headers.items() if not k.lower().startswith("sec-")})
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise Conflict(f"host {host} refused the connection: {exc.message}",
                       host=host) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        raise owner.unreachable(exc) from exc
    ws = web.WebSocketResponse(heartbeat=30, protocols=protocols)
    await ws.prepare(request)

    async def down() -> None:
        async for message in upstream:
            if message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
        await ws.close(message=b"closed on host " + host.encode())

    pump = asyncio.create_task(down())
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                await upstream.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await upstream.send_str(message.data)
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        await upstream.close()
        await session.close()
    return ws
