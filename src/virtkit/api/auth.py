"""Who may use the API: local clients freely, network clients with an API token.

A request that arrived on the unix socket is local: the socket's file mode (root
and the ``virtkit`` group) is its access control, as for libvirt's socket.  Every
other request (the TLS listener; there is no plain TCP listener) must carry
``Authorization: Bearer <token>``, checked before any handler runs.  The decision
is made from the connection's socket family, not from which listener accepted it,
so a listener added later cannot forget it.

A browser of the web console (:mod:`virtkit.api.webui`) has no token to send: it
logs in once and then carries a session cookie.  A request with that cookie is
accepted when the session is alive and, if it changes anything, carries the
session's CSRF token; a WebSocket handshake with it must come from the console's
own origin (browsers send ``Origin`` and scripts cannot forge it).  The console's
static page and its login are the only paths open without either.

The read-only socket ``virtkitd-ro.sock`` (mode 0660, group ``virtkit-ro``; libvirt's
``libvirt-sock-ro``) serves reads only: GET and HEAD, and not the routes that show
guest data (consoles, guest-agent files, volume downloads) or administer the daemon.

Token and TLS administration (``/v1/tokens``, ``/v1/tls``) is local only: a stolen
token cannot mint itself a successor or replace the certificate.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from virtkit.api import clusterlisten, webui
from virtkit.api.common import PRINCIPAL, json_response
from virtkit.api.requests import Body, body_of
from virtkit.api.websession import COOKIE, CSRF_HEADER
from virtkit.errors import Forbidden, Unauthorized, VirtkitError
from virtkit.service.callers import as_remote_caller
from virtkit.service.forward import CALLER, CALLER_PRINCIPAL, CALLERS
from virtkit.service.tls import TlsService
from virtkit.service.tokens import TokenService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKENS = web.AppKey("tokens", TokenService)
TLS = web.AppKey("tls", TlsService)
LOCAL_ONLY = ("/v1/tokens", "/v1/tls")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _unix_socket(request: web.Request) -> socket.socket | None:
    """The connection's socket when it came over a unix socket of the daemon."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock if sock is not None and sock.family == socket.AF_UNIX else None


def is_local(request: web.Request) -> bool:
    """True when the request came over the unix socket."""
    return _unix_socket(request) is not None


READ_ONLY_SOCKET = "virtkitd-ro.sock"
#: what the read-only socket never serves, even to GET: guest output and input, disk
#: contents, guest files, and the administration of tokens, TLS and the audit log
READ_ONLY_DENIED = ("/console", "/vnc/websocket", "/guest/", "/download", "/v1/tokens",
                    "/v1/tls", "/v1/audit")


def is_read_only(request: web.Request) -> bool:
    """True when the request came over the read-only unix socket (``virtkitd-ro.sock``)."""
    sock = _unix_socket(request)
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        return False
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return isinstance(name, str) and name.endswith(READ_ONLY_SOCKET)


def _check_read_only(request: web.Request) -> None:
    if request.method not in SAFE_METHODS:
        raise Forbidden(f"{request.method} {request.path} changes something: the read-only "
                        "socket only reads", fix="use the read-write socket (members of the "
                        "'virtkit' group), e.g. without --readonly")
    # the route's pattern, not the path: a domain named "console" is not its console
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    if any(part in route for part in READ_ONLY_DENIED):
        raise Forbidden(f"{request.path} is not served on the read-only socket (it reveals "
                        "guest data or administers the daemon)",
                        fix="use the read-write socket (members of the 'virtkit' group)")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_local(request):
        if is_read_only(request):
            try:
                _check_read_only(request)
            except VirtkitError as exc:
                return json_response(exc.to_dict(), status=exc.http_status)
        return await handler(request)
    host = clusterlisten.peer_host(request)
    if host is not None:
        return await _from_cluster_host(request, handler, host)
    try:
        if request.app.get(webui.SESSIONS) is not None and webui.is_public(request.path):
            return await handler(request)
        request[PRINCIPAL] = _network_principal(request)
        if any(request.path == p or request.path.startswith(p + "/") for p in LOCAL_ONLY):
            raise Forbidden("tokens and TLS certificates are managed only on the daemon's "
                            "host", fix="run this command there (or over virtkit+ssh://)")
    except VirtkitError as exc:
        response = json_response(exc.to_dict(), status=exc.http_status)
        if exc.http_status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="virtkit"'
        return response
    # the path policy: pool volumes only (docs/remote.md); a web console session of a
    # local administrator account may also define pools (their folders pass the policy)
    with as_remote_caller(may_define_pools=not str(request[PRINCIPAL]).startswith("token:")):
        return await handler(request)


async def _from_cluster_host(request: web.Request, handler: Handler,
                             host: str) -> web.StreamResponse:
    """A request another cluster host's daemon carried here (api/clusterlisten.py):
    served with the standing of its original caller as that host declared it."""
    caller = request.headers.get(CALLER, "local")
    original = request.headers.get(CALLER_PRINCIPAL)
    request[PRINCIPAL] = f"host:{host}" + (f" for {original}" if original else "")
    try:
        listener = request.app[clusterlisten.LISTENER]
        if not await listener.api.is_member(host):
            raise Forbidden(f"host {host} is not a member of this cluster",
                            fix="join it to the cluster first (virtkit cluster join)")
        if caller not in CALLERS:
            raise Forbidden(f"{CALLER}: {caller!r} is none of {', '.join(CALLERS)}")
        if any(request.path == p or request.path.startswith(p + "/") for p in LOCAL_ONLY):
            raise Forbidden("tokens and TLS certificates are managed only on the daemon's "
                            "host", fix="run this command there")
        if caller == "read-only":
            _check_read_only(request)
    except VirtkitError as exc:
        return json_response(exc.to_dict(), status=exc.http_status)
    if caller.startswith("remote"):
        with as_remote_caller(may_define_pools=caller == "remote-pools"):
            return await handler(request)
    return await handler(request)


def _network_principal(request: web.Request) -> str:
    """Who sent a network request: its API token's name or its session's user."""
    header = request.headers.get("Authorization")
    sessions = request.app.get(webui.SESSIONS)
    if header is None and sessions is not None and COOKIE in request.cookies:
        session = sessions.check(request.cookies.get(COOKIE))
        if request.method not in SAFE_METHODS:
            sessions.check_csrf(session, request.headers.get(CSRF_HEADER))
        _check_origin(request)
        return session.user
    tokens = request.app.get(TOKENS)
    if tokens is None:
        raise Unauthorized("this daemon accepts no network clients")
    return f"token:{tokens.authenticate(header).name}"


def _check_origin(request: web.Request) -> None:
    """Forbidden when a browser says the request comes from another site's page.

    Browsers send ``Origin`` on WebSocket handshakes and on cross-origin (and most
    same-origin) requests; it must name this very host and port.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise Forbidden("a WebSocket from a browser must say where it comes from",
                            fix="open the web console's own page")
        return
    if origin != f"https://{request.host}":
        raise Forbidden(f"a request from another site ({origin}) was refused",
                        fix="use the web console's own page")


routes = web.RouteTableDef()


@routes.get("/v1/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    return json_response(request.app[TOKENS].list())


class TokenBody(Body):
    name: str | None = None
    expires_days: float | None = None


class TlsSetupBody(Body):
    hostnames: list[str] = []
    force: bool = False


@routes.post("/v1/tokens")
async def create_token(request: web.Request) -> web.Response:
    body = await body_of(request, TokenBody)
    return json_response(request.app[TOKENS].create(body.name, body.expires_days),
                         status=201)


@routes.delete("/v1/tokens/{name}")
async def revoke_token(request: web.Request) -> web.Response:
    return json_response(request.app[TOKENS].revoke(request.match_info["name"]))


@routes.get("/v1/tls")
async def tls_info(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[TLS].info))


@routes.post("/v1/tls/setup")
async def tls_setup(request: web.Request) -> web.Response:
    body = await body_of(request, TlsSetupBody)
    result = await asyncio.to_thread(request.app[TLS].setup, body.hostnames,
                                     force=body.force)
    return json_response(result, status=201)


def install(app: web.Application, tokens: TokenService, tls: TlsService) -> None:
    """Serve the token and TLS routes (the middleware is in the app's list already)."""
    app[TOKENS] = tokens
    app[TLS] = tls
    app.add_routes(routes)
