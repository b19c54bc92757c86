"""Web console sessions: expiry, CSRF, login throttling, and how the API's auth
middleware treats a browser (fast, on a plain-HTTP test server with a fake login)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from virtkit.api import auth, webui
from virtkit.api.common import PRINCIPAL
from virtkit.api.websession import COOKIE, FAILURES_BEFORE_LOCKOUT, SessionStore
from virtkit.errors import Forbidden, Unauthorized


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("virtkit.api.websession.time.monotonic", fake)
    return fake


def test_a_session_lives_while_used_and_ends_when_idle(clock: Clock) -> None:
    store = SessionStore(idle_seconds=60, max_seconds=600)
    sid, _ = store.create("alice", "password")
    for _ in range(5):
        clock.now += 50
        assert store.check(sid).user == "alice"  # each use restarts the idle clock
    clock.now += 61
    with pytest.raises(Unauthorized, match="expired"):
        store.check(sid)
    with pytest.raises(Unauthorized):
        store.check(sid)  # and it is gone for good


def test_a_session_ends_at_its_maximum_age_even_when_busy(clock: Clock) -> None:
    store = SessionStore(idle_seconds=60, max_seconds=120)
    sid, _ = store.create("alice", "password")
    clock.now += 59
    store.check(sid)
    clock.now += 59
    store.check(sid)
    clock.now += 5
    with pytest.raises(Unauthorized):
        store.check(sid)


def test_csrf_token_must_match_and_logout_ends_the_session(clock: Clock) -> None:
    store = SessionStore()
    sid, session = store.create("bob", "token")
    SessionStore.check_csrf(session, session.csrf)
    for bad in (None, "", session.csrf[:-1], session.csrf + "x"):
        with pytest.raises(Forbidden, match="CSRF"):
            SessionStore.check_csrf(session, bad)
    store.end(sid)
    with pytest.raises(Unauthorized):
        store.check(sid)
    with pytest.raises(Unauthorized, match="log in"):
        store.check(None)


def test_repeated_failed_logins_lock_the_address_out_for_a_while(clock: Clock) -> None:
    store = SessionStore()
    for _ in range(FAILURES_BEFORE_LOCKOUT):
        store.check_throttle("10.0.0.9")
        store.record_failure("10.0.0.9")
    with pytest.raises(Forbidden, match="too many failed logins"):
        store.check_throttle("10.0.0.9")
    store.check_throttle("10.0.0.10")  # others are not affected
    clock.now += 61
    store.check_throttle("10.0.0.9")


class FakeLogin:
    def with_token(self, token: str) -> str:
        if token != "good":
            raise Unauthorized("bad token")
        return "token:t"

    async def with_password(self, user: str, password: str) -> str:
        if password != "pw":
            raise Unauthorized("wrong user name or password")
        return user


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=[auth.auth_middleware])

    async def thing(request: web.Request) -> web.Response:
        return web.json_response({"who": request[PRINCIPAL]})

    app.router.add_get("/v1/thing", thing)
    app.router.add_post("/v1/thing", thing)
    app[webui.SESSIONS] = SessionStore()
    app[webui.LOGIN] = FakeLogin()  # type: ignore[assignment]
    app.add_routes(webui.routes)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def _login(client: TestClient[Any, Any], **body: str) -> tuple[str, str]:
    response = await client.post("/web/login", json=body)
    assert response.status == 200, await response.text()
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Strict"
    return cookie.value, (await response.json())["csrf"]


async def test_browser_requests_need_the_session_and_for_changes_its_csrf_token(
        client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/thing")).status == 401
    assert (await client.get("/")).status == 200  # the page itself is public
    sid, csrf = await _login(client, username="alice", password="pw")
    jar = {"Cookie": f"{COOKIE}={sid}"}
    got = await client.get("/v1/thing", headers=jar)
    assert got.status == 200 and (await got.json())["who"] == "alice"
    assert (await client.post("/v1/thing", headers=jar)).status == 403
    assert (await client.post("/v1/thing", headers={**jar, "X-CSRF-Token": "x"})).status == 403
    ok = await client.post("/v1/thing", headers={**jar, "X-CSRF-Token": csrf})
    assert ok.status == 200
    foreign = {**jar, "X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    assert (await client.post("/v1/thing", headers=foreign)).status == 403
    socket = {**jar, "Upgrade": "websocket", "Connection": "Upgrade"}
    assert (await client.get("/v1/thing", headers=socket)).status == 403  # no Origin
    assert (await client.post("/web/logout", headers=jar)).status == 403  # forged logout
    assert (await client.post("/web/logout", headers={**jar, "X-CSRF-Token": csrf})).status == 200
    assert (await client.get("/v1/thing", headers=jar)).status == 401


async def test_login_refusals_and_token_login(client: TestClient[Any, Any]) -> None:
    bad = await client.post("/web/login", json={"username": "alice", "password": "no"})
    assert bad.status == 401 and "wrong user name" in (await bad.json())["message"]
    assert (await client.post("/web/login", json={"username": 5})).status == 400
    assert (await client.post("/web/login", json={"token": "nope"})).status == 401
    sid, _ = await _login(client, token="good")
    got = await client.get("/v1/thing", headers={"Cookie": f"{COOKIE}={sid}"})
    assert (await got.json())["who"] == "token:t"
    assert (await client.get("/ui/%2e%2e/%2e%2e/etc/passwd")).status != 200
    assert (await client.get("/ui/js/main.js")).headers["Content-Type"].startswith(
        "text/javascript")
