"""The web console's own routes: its static page, login, logout and session.

Everything else the page does goes through the ordinary v1 API (see
:mod:`virtkit.api.auth` for how a browser session is accepted there).  The page
and its scripts are static files inside the package (``virtkit/web/static``), built
at development time; no Node.js runs on the host.

Login takes a local account's password (PAM, service ``virtkit``; root and members
of the ``virtkit`` group may log in) or an API token (``virtkit token create``).
"""

from __future__ import annotations

import functools
import mimetypes
from importlib import resources
from pathlib import Path

from aiohttp import web

from virtkit.api.common import json_response
from virtkit.api.requests import Body, body_of
from virtkit.api.websession import COOKIE, SessionStore
from virtkit.errors import InvalidSpec, NotFound, Unauthorized
from virtkit.service.weblogin import WebLogin

SESSIONS = web.AppKey("web_sessions", SessionStore)
LOGIN = web.AppKey("web_login", WebLogin)
#: paths a browser may fetch before logging in
PUBLIC_PREFIXES = ("/ui/",)
PUBLIC_PATHS = frozenset({"/", "/web/login", "/favicon.ico"})
#: a browser may not be framed, sniff types, or leak the URL; scripts only from here
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

routes = web.RouteTableDef()


@functools.cache
def static_root() -> Path:
    """The folder of the built web assets inside the installed package (resolved once:
    every asset request checks that its path stays inside it)."""
    return Path(str(resources.files("virtkit") / "web" / "static")).resolve()


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _serve(path: Path) -> web.StreamResponse:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix in (".js", ".mjs"):
        content_type = "text/javascript"
    headers = {**SECURITY_HEADERS, "Content-Type": content_type,
               "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    return _serve(static_root() / "index.html")


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.StreamResponse:
    return _serve(static_root() / "favicon.svg")


@routes.get("/ui/{path:.+}")
async def asset(request: web.Request) -> web.StreamResponse:
    root = static_root()
    path = (root / request.match_info["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"no such file in the web console: {request.match_info['path']}")
    return _serve(path)


def _client_address(request: web.Request) -> str:
    return request.remote or "unknown"


class LoginBody(Body):
    token: str | None = None
    username: str | None = None
    password: str | None = None


@routes.post("/web/login")
async def login(request: web.Request) -> web.Response:
    """``{"username", "password"}`` or ``{"token"}`` -> a session cookie and its CSRF token."""
    sessions = request.app[SESSIONS]
    address = _client_address(request)
    sessions.check_throttle(address)
    body = await body_of(request, LoginBody)
    token, user, password = body.token, body.username, body.password
    login = request.app[LOGIN]
    try:
        if token is not None:
            if not isinstance(token, str):
                raise InvalidSpec("token must be a string", field="token")
            principal, method = login.with_token(token), "token"
        else:
            if not isinstance(user, str) or not isinstance(password, str) or not user:
                raise InvalidSpec("give a user name and password, or an API token",
                                  field="username")
            principal, method = await login.with_password(user, password), "password"
    except Unauthorized:
        sessions.record_failure(address)
        raise
    sessions.record_success(address)
    session_id, session = sessions.create(principal, method)
    response = json_response(session.public())
    response.set_cookie(COOKIE, session_id, httponly=True, secure=True, samesite="Strict",
                        path="/")
    return response


@routes.post("/web/logout")
async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = json_response({"logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


@routes.get("/web/session")
async def session_info(request: web.Request) -> web.Response:
    """Who is logged in, and the CSRF token the page must send (a reload keeps both)."""
    return json_response(request.app[SESSIONS].check(request.cookies.get(COOKIE)).public())


def install(app: web.Application, sessions: SessionStore, login: WebLogin) -> None:
    """Serve the web console on this app (its listener is started by the daemon)."""
    app[SESSIONS] = sessions
    app[LOGIN] = login
    app.add_routes(routes)
