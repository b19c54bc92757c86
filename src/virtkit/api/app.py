"""REST + WebSocket API over the service layer (aiohttp).

Handlers only translate HTTP into service calls and back: they parse the
request, call one service method, and return its result as JSON.  Every
:class:`VirtkitError` becomes a JSON error body with the error's HTTP status;
anything else is a 500 whose message says it is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from virtkit import __version__
from virtkit.api import (
    auth,
    clone_routes,
    cluster_routes,
    device_routes,
    forward,
    guest_routes,
    install_routes,
    limits_routes,
    managedsave_routes,
    migration_routes,
    network_routes,
    snapshot_routes,
    stats_routes,
    storage_routes,
    virsh_routes,
    webui,
)
from virtkit.api.audit import AuditLog, audit_middleware, read_records
from virtkit.api.auth import is_read_only
from virtkit.api.common import json_response, xml_response
from virtkit.api.domain_requests import (
    AuditQuery,
    ConsoleLogQuery,
    ConsoleQuery,
    DomainDefineBody,
    EventsQuery,
    LinkBody,
    PathBody,
    RestoreBody,
    ShutdownBody,
    StartBody,
    UndefineQuery,
    UpdateBody,
)
from virtkit.api.requests import (
    AutostartBody,
    DefineBody,
    DomainListQuery,
    EmptyBody,
    XmlQuery,
    body_of,
    query_of,
)
from virtkit.api.websession import SessionStore
from virtkit.errors import Conflict, Forbidden, InvalidSpec, VirtkitError
from virtkit.service.clones import CloneService
from virtkit.service.cluster import ClusterService
from virtkit.service.devices import DeviceService
from virtkit.service.domains import DomainService
from virtkit.service.guest import GuestService
from virtkit.service.host import HostService
from virtkit.service.hostguests import HostGuestsService
from virtkit.service.install import InstallService
from virtkit.service.limits import LimitsService
from virtkit.service.managedsave import ManagedSaveService
from virtkit.service.migrations import MigrationService
from virtkit.service.networks import NetworkService
from virtkit.service.provision import ProvisionService
from virtkit.service.recovery import RecoveryService
from virtkit.service.snapshots import SnapshotService
from virtkit.service.stats import StatsService
from virtkit.service.storage import StorageService
from virtkit.service.tls import TlsService
from virtkit.service.tokens import TokenService
from virtkit.service.tuning import TuningService
from virtkit.service.virsh import VirshService
from virtkit.service.weblogin import WebLogin
from virtkit.unixsock import connect_unix

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Services:
    """What the API serves: the service objects."""

    domains: DomainService
    host: HostService
    storage: StorageService
    networks: NetworkService
    install: InstallService | None = None
    stats: StatsService | None = None
    tuning: TuningService | None = None
    guest: GuestService | None = None
    devices: DeviceService | None = None
    clones: CloneService | None = None
    migrations: MigrationService | None = None
    snapshots: SnapshotService | None = None
    tokens: TokenService | None = None
    tls: TlsService | None = None
    provision: ProvisionService | None = None
    recovery: RecoveryService | None = None
    virsh: VirshService | None = None
    cluster: ClusterService | None = None
    managedsave: ManagedSaveService | None = None
    guests: HostGuestsService | None = None
    limits: LimitsService | None = None
    consoles: dict[tuple[str, int], web.WebSocketResponse] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
AUDIT = web.AppKey("audit", AuditLog)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VirtkitError as exc:
        return json_response(exc.to_dict(), status=exc.http_status)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("internal error in %s %s", request.method, request.path)
        body = {"error": "internal", "message": f"internal error (a virtkit bug): {exc!r}"}
        return json_response(body, status=500)


def _spec_from(body: DefineBody | UpdateBody) -> dict[str, Any] | str:
    if body.yaml is not None:
        return body.yaml
    if body.spec is not None:
        return body.spec
    raise InvalidSpec("send the domain as {\"spec\": {...}} or {\"yaml\": \"...\"}",
                      field="spec")


def security_info(request: web.Request) -> bool:
    """``?security_info=true``: answer secrets (VNC passwords); refused on the read-only
    socket, which never serves them (libvirt refuses VIR_DOMAIN_XML_SECURE there)."""
    wanted = query_of(request, XmlQuery).security_info
    if wanted and is_read_only(request):
        raise Forbidden("the read-only socket never serves secrets (security_info)",
                        fix="ask on the read-write socket (without --readonly)")
    return wanted


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


routes = web.RouteTableDef()


@routes.get("/v1/openapi.json")
async def get_openapi(request: web.Request) -> web.Response:
    from virtkit.api.openapi import openapi_document  # built on first request (daemon RSS)

    return json_response(openapi_document())


@routes.get("/v1/version")
async def get_version(request: web.Request) -> web.Response:
    return json_response({"version": __version__})


@routes.get("/v1/audit")
async def get_audit(request: web.Request) -> web.Response:
    """The audit log's records, oldest first (?since=EPOCH-SECONDS, ?limit=N: the last N)."""
    query = query_of(request, AuditQuery)
    audit = request.app.get(AUDIT)
    if audit is None:
        return json_response([])
    since, limit = query.since, query.limit
    records = await asyncio.to_thread(lambda: list(read_records(audit.path, since=since)))
    return json_response(records[-limit:])


@routes.get("/v1/host")
async def get_host(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_services(request).host.info))


@routes.get("/v1/host/check")
async def get_host_check(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_services(request).host.check))


@routes.get("/v1/host/repairs")
async def get_repairs(request: web.Request) -> web.Response:
    """What this daemon repaired at start-up (after a crash of the one before)."""
    recovery = _services(request).recovery
    if recovery is None:
        return json_response({"daemon_started": None, "repairs": [], "unsettled": []})
    return json_response(await asyncio.to_thread(recovery.report))


@routes.get("/v1/domains")
async def list_domains(request: web.Request) -> web.Response:
    query = query_of(request, DomainListQuery)
    rows = _services(request).domains.list_domains(include_inactive=query.all)
    cluster = _services(request).cluster
    if query.cluster and cluster is not None:
        rows = await cluster.with_other_hosts(rows, include_inactive=query.all)
    return json_response(rows)


@routes.post("/v1/domains")
async def define_domain(request: web.Request) -> web.Response:
    body = await body_of(request, DomainDefineBody)
    domains = _services(request).domains
    provision = _services(request).provision
    if body.xml is not None:  # libvirt domain XML; the answer has "warnings"
        result = await asyncio.to_thread(domains.define_xml, body.xml, force=body.force)
    elif body.new_disks is not None and provision is not None:
        result = await provision.define_with_new_disks(_spec_from(body), body.new_disks)
    else:
        result = await asyncio.to_thread(domains.define, _spec_from(body))
    return json_response(result, status=201)


@routes.post("/v1/domains/create")
async def create_domain(request: web.Request) -> web.Response:
    """virsh create: a transient domain, defined and started; gone when it stops."""
    body = await body_of(request, DefineBody)
    domains = _services(request).domains
    if body.xml is not None:
        result = await domains.create(xml=body.xml, force=body.force)
    else:
        result = await domains.create(_spec_from(body))
    return json_response(result, status=201)


@routes.post("/v1/domains/restore")
async def restore_domain(request: web.Request) -> web.Response:
    body = await body_of(request, RestoreBody)
    result = await _services(request).domains.restore(body.path, paused=body.paused)
    return json_response(result)


@routes.get("/v1/domains/{ref}")
async def get_domain(request: web.Request) -> web.Response:
    secrets = security_info(request)
    # a worker thread: the disks' pools are found by resolving their paths (a hung mount)
    info = await asyncio.to_thread(_services(request).domains.info,
                                   request.match_info["ref"], secrets=secrets)
    cluster = _services(request).cluster
    if cluster is not None and cluster.host_name is not None:
        info["host"] = cluster.host_name  # in a cluster, dominfo names the host
    return json_response(info)


@routes.put("/v1/domains/{ref}")
async def update_domain(request: web.Request) -> web.Response:
    body = await body_of(request, UpdateBody)
    # a worker thread: the host checks stat user paths and run qemu-img (never the loop)
    result = await asyncio.to_thread(_services(request).domains.update,
                                     request.match_info["ref"], _spec_from(body), body.version)
    return json_response(result)


@routes.delete("/v1/domains/{ref}")
async def undefine_domain(request: web.Request) -> web.Response:
    query = query_of(request, UndefineQuery)
    nvram, metadata = query.nvram, query.snapshots_metadata
    provision = _services(request).provision
    if query.remove_all_storage and provision is not None:
        return json_response(await provision.undefine_with_storage(
            request.match_info["ref"], nvram=nvram, snapshots_metadata=metadata,
            managed_save=query.managed_save))
    return json_response(await _services(request).domains.undefine(
        request.match_info["ref"], nvram=nvram, snapshots_metadata=metadata,
        managed_save=query.managed_save))


@routes.get("/v1/domains/{ref}/spec")
async def get_spec(request: web.Request) -> web.Response:
    secrets = security_info(request)
    return json_response(_services(request).domains.spec_yaml(request.match_info["ref"],
                                                              secrets=secrets))


@routes.get("/v1/domains/{ref}/xml")
async def get_xml(request: web.Request) -> web.Response:
    """virsh dumpxml: the domain as libvirt domain XML."""
    secrets = security_info(request)
    text = _services(request).domains.dumpxml(request.match_info["ref"], secrets=secrets)
    return xml_response(text)


@routes.put("/v1/domains/{ref}/autostart")
async def put_autostart(request: web.Request) -> web.Response:
    body = await body_of(request, AutostartBody)
    return json_response(_services(request).domains.set_autostart(request.match_info["ref"],
                                                                  body.enabled))


@routes.post("/v1/domains/{ref}/start")
async def start_domain(request: web.Request) -> web.Response:
    body = await body_of(request, StartBody)
    result = await _services(request).domains.start(request.match_info["ref"],
                                                    paused=body.paused,
                                                    force_boot=body.force_boot)
    return json_response(result)


@routes.post("/v1/domains/{ref}/shutdown")
async def shutdown_domain(request: web.Request) -> web.Response:
    return await _shutdown(request, reboot=False)


@routes.post("/v1/domains/{ref}/reboot")
async def reboot_domain(request: web.Request) -> web.Response:
    return await _shutdown(request, reboot=True)


async def _shutdown(request: web.Request, *, reboot: bool) -> web.Response:
    body = await body_of(request, ShutdownBody)
    result = await _services(request).domains.shutdown(
        request.match_info["ref"], timeout=body.timeout, wait=body.wait, reboot=reboot,
        mode=body.mode or "acpi")
    return json_response(result)


@routes.post("/v1/domains/{ref}/{action:destroy|suspend|resume|reset}")
async def simple_action(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    result = await _services(request).domains.simple(request.match_info["ref"],
                                                     request.match_info["action"])
    return json_response(result)


@routes.post("/v1/domains/{ref}/save")
async def save_domain(request: web.Request) -> web.Response:
    body = await body_of(request, PathBody)
    return json_response(await _services(request).domains.save(request.match_info["ref"],
                                                               body.path))


@routes.get("/v1/domains/{ref}/interfaces")
async def domain_interfaces(request: web.Request) -> web.Response:
    """domiflist and domifaddr: NICs with their tap, MAC and leased addresses."""
    return json_response(await asyncio.to_thread(_services(request).domains.interfaces,
                                                 request.match_info["ref"]))


@routes.post("/v1/domains/{ref}/interfaces/{nic}/link")
async def domain_set_link(request: web.Request) -> web.Response:
    body = await body_of(request, LinkBody)
    result = await _services(request).domains.set_link(request.match_info["ref"],
                                                       request.match_info["nic"], body.state)
    return json_response(result)


@routes.get("/v1/domains/{ref}/vnc")
async def get_vnc(request: web.Request) -> web.Response:
    return json_response(_services(request).domains.vncdisplay(request.match_info["ref"]))


#: what QEMU's VNC server is reached at when it listens on every address
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - maps it away


@routes.get("/v1/domains/{ref}/vnc/websocket")
async def vnc_websocket(request: web.Request) -> web.StreamResponse:
    """Proxy a WebSocket (noVNC's ``binary`` protocol) to the domain's VNC server.

    The browser never reaches QEMU's VNC port itself: it stays on localhost (or
    wherever the spec put it) and this proxy carries the RFB bytes both ways.
    """
    vnc = _services(request).domains.vncdisplay(request.match_info["ref"])
    host = str(vnc.get("host") or "")
    host = _WILDCARD_TO_LOOPBACK.get(host, host)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(vnc["port"])), timeout=5.0)
    except (OSError, TimeoutError) as exc:
        raise Conflict(f"cannot reach the VNC display at {host}:{vnc['port']}: {exc}",
                       fix="check that the domain is still running") from None
    ws = web.WebSocketResponse(heartbeat=30, protocols=("binary",))
    await ws.prepare(request)
    await _pump(ws, reader, writer, b"VNC display closed")
    return ws


async def _pump(ws: web.WebSocketResponse, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, closing: bytes) -> None:
    """Carry bytes between a WebSocket and a stream until either side closes."""

    async def stream_to_client() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)
        await ws.close(message=closing)

    pump = asyncio.create_task(stream_to_client())
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                writer.write(message.data)
            elif message.type == WSMsgType.TEXT:
                writer.write(message.data.encode())
            await writer.drain()
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        writer.close()


@routes.get("/v1/domains/{ref}/console/log")
async def get_console_log(request: web.Request) -> web.StreamResponse:
    query = query_of(request, ConsoleLogQuery)
    services = _services(request)
    info = services.domains.info(request.match_info["ref"])
    port, tail = query.port, query.tail
    path = services.domains.console_log_path(info["uuid"], port)
    data = await asyncio.to_thread(_read_log, path, tail)
    return web.Response(body=data, content_type="application/octet-stream")


def _read_log(path: Path, tail: int) -> bytes:
    """A console log (its last ``tail`` bytes when ``tail`` > 0; b"" when there is none)."""
    if not path.exists():
        return b""
    with open(path, "rb") as log_file:
        if tail > 0:
            log_file.seek(max(0, path.stat().st_size - tail))
        return log_file.read()


@routes.get("/v1/domains/{ref}/console")
async def console(request: web.Request) -> web.StreamResponse:
    """Proxy a WebSocket to the domain's serial port socket (binary frames both ways)."""
    query = query_of(request, ConsoleQuery)
    services = _services(request)
    port = query.port
    name, sock_path = services.domains.console_socket(request.match_info["ref"], port)
    key = (name, port)
    previous = services.consoles.get(key)
    if previous is not None and not previous.closed:
        if not query.force:
            raise Conflict(f"the console of '{name}' is in use by another client",
                           fix="use --force to take it over")
        await previous.close(message=b"console taken over by another client")
    sock = connect_unix(sock_path, timeout=5.0)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    services.consoles[key] = ws
    try:
        await _pump(ws, reader, writer, b"guest console closed")
    finally:
        if services.consoles.get(key) is ws:
            del services.consoles[key]
    return ws


@routes.get("/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Stream events as JSON text frames; ``?since=ID`` replays the journal first."""
    since = query_of(request, EventsQuery).since
    domains = _services(request).domains
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    # a client that goes away mid-send is an ordinary end of the stream, not an error
    with domains.subscribe_events() as queue, contextlib.suppress(ConnectionResetError):
        if since is not None:
            for event in domains.events_since(int(since)):
                await ws.send_json(event)
        reader = asyncio.create_task(ws.receive())
        try:
            while not ws.closed:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    break
                await ws.send_json(getter.result())
        finally:
            reader.cancel()
    return ws


#: the largest request body read whole (JSON); volume uploads stream past it
MAX_BODY = 4 * 1024 * 1024


def create_app(services: Services, audit: AuditLog | None = None,
               web_sessions: SessionStore | None = None) -> web.Application:
    """The aiohttp application serving the v1 API; ``audit`` logs every mutating call;
    ``web_sessions`` (when the daemon serves the web console) adds the console's page
    and login, and lets its browser sessions use the API."""
    # auth before everything but the audit: a network request without a valid token
    # reaches nothing else (and the audit log records the refusal)
    middlewares: list[Any] = [auth.auth_middleware, error_middleware]
    if audit is not None:  # outermost: it sees the status error_middleware answered
        middlewares.insert(0, audit_middleware(audit))
    # A 1 MiB read buffer: uploads stream whole volumes; aiohttp's 64 KiB default
    # pauses the socket every 128 KiB.
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY,
                          handler_args={"read_bufsize": 1024 * 1024})
    app[SERVICES] = services
    if audit is not None:
        app[AUDIT] = audit
    app[storage_routes.STORAGE] = services.storage
    app[network_routes.NETWORKS] = services.networks
    app.add_routes(routes)
    app.add_routes(storage_routes.routes)
    app.add_routes(network_routes.routes)
    if services.tokens is not None and services.tls is not None:
        auth.install(app, services.tokens, services.tls)
        if web_sessions is not None:
            webui.install(app, web_sessions, WebLogin(services.tokens))
    mounts: list[tuple[web.RouteTableDef, list[tuple[web.AppKey[Any], Any]]]] = [
        (snapshot_routes.routes, [(snapshot_routes.SNAPSHOTS, services.snapshots)]),
        (install_routes.routes, [(install_routes.INSTALL, services.install)]),
        (guest_routes.routes, [(guest_routes.GUEST, services.guest)]),
        (device_routes.routes, [(device_routes.DEVICES, services.devices),
                                (device_routes.DOMAINS, services.domains)]),
        (clone_routes.routes, [(clone_routes.CLONES, services.clones)]),
        (migration_routes.routes, [(migration_routes.MIGRATIONS, services.migrations)]),
        (stats_routes.routes, [(stats_routes.STATS, services.stats),
                               (stats_routes.TUNING, services.tuning)]),
        (virsh_routes.routes, [(virsh_routes.VIRSH, services.virsh)]),
        (cluster_routes.routes, [(cluster_routes.CLUSTER, services.cluster)]),
        (managedsave_routes.routes, [(managedsave_routes.MANAGED, services.managedsave),
                                     (managedsave_routes.GUESTS, services.guests)]),
        (limits_routes.routes, [(limits_routes.LIMITS, services.limits)]),
    ]
    for table, needs in mounts:  # a container without a service serves none of its routes
        if all(service is not None for _key, service in needs):
            for key, service in needs:
                app[key] = service
            app.add_routes(table)
    forward.install(app, services)  # the cluster: forwarding, placement, VM records
    return app
