"""Who may use the web console (issue 7): a real virtkitd with --web, PAM accounts,
Debian's Chromium, and hand-made hostile requests.

Refused: a wrong password, an account outside the virtkit group, an expired session,
a forged cross-site request (from another origin's page, without the CSRF token,
with a foreign Origin), a WebSocket opened from another site.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.real.browser import Account, chromium, load, log_in, new_page, web_account
from tests.real.conftest import DaemonHandle, free_port, running_daemon
from virtkit.images.tinyguest import TinyGuest

IDLE = 4.0  # the daemon's session idle limit in these tests, seconds


@pytest.fixture(scope="module")
def web(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, str]]:
    port = free_port()
    with running_daemon(tiny_guest, ("--web", f"127.0.0.1:{port}",
                                     "--web-session-idle", str(IDLE))) as daemon:
        yield daemon, f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    with web_account() as acc:
        yield acc


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the daemon's self-signed certificate
    return context


async def _session(base: str, account: Account) -> tuple[aiohttp.ClientSession, str]:
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_insecure()),
                                   cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with client.post(base + "/web/login", json={"username": account.user,
                                                       "password": account.password}) as r:
        assert r.status == 200, await r.text()
        csrf = (await r.json())["csrf"]
    return client, csrf


def test_wrong_password_and_outsider_are_refused_in_the_page(
        web: tuple[DaemonHandle, str], account: Account) -> None:
    _, base = web
    with chromium() as browser, web_account(in_group=False) as outsider:
        page = new_page(browser)
        load(page, base + "/")
        page.fill("input[name=username]", account.user)
        page.fill("input[name=password]", account.password + "x")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#login-error:not([hidden])")
        assert "wrong user name or password" in page.inner_text("#login-error")
        assert page.is_hidden("#app")
        page.fill("input[name=username]", outsider.user)
        page.fill("input[name=password]", outsider.password)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector(f"#login-error:has-text('{outsider.user}')")
        assert "virtkit' group" in page.inner_text("#login-error")
        assert page.is_hidden("#app")


def test_an_expired_session_is_refused(web: tuple[DaemonHandle, str],
                                       account: Account) -> None:
    _, base = web
    with chromium() as browser:
        page = new_page(browser)
        log_in(page, base, account)
        cookies = page.context.cookies()
        session = next(c for c in cookies if c["name"] == "virtkit_session")
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
        time.sleep(IDLE + 1)
        page.evaluate("location.hash = '#/vms'")  # (or the host page's next refresh)
        page.wait_for_selector("#login:not([hidden])")
        assert "session has ended" in page.inner_text("#login-error")

    async def api_with_old_cookie() -> int:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_insecure()),
                                         cookie_jar=jar) as client:
            jar.update_cookies({"virtkit_session": session["value"]})
            async with client.get(base + "/v1/domains") as response:
                return response.status
    assert asyncio.run(api_with_old_cookie()) == 401  # (outside Playwright's event loop)


def test_forged_cross_site_requests_are_refused(web: tuple[DaemonHandle, str],
                                                account: Account) -> None:
    daemon, base = web

    async def attempts() -> dict[str, int]:
        client, csrf = await _session(base, account)
        spec = {"spec": {"name": "forged", "mode": "isolated"}}
        out: dict[str, int] = {}
        async with client:
            async with client.post(base + "/v1/networks", json=spec) as r:
                out["no csrf token"] = r.status
            async with client.post(base + "/v1/networks", json=spec,
                                   headers={"X-CSRF-Token": "guess"}) as r:
                out["wrong csrf token"] = r.status
            async with client.post(base + "/v1/networks", json=spec, headers={
                    "X-CSRF-Token": csrf, "Origin": "https://evil.example"}) as r:
                out["foreign origin"] = r.status
            try:
                async with client.ws_connect(base.replace("https", "wss") + "/v1/events",
                                             origin="https://evil.example"):
                    out["foreign websocket"] = 101
            except aiohttp.WSServerHandshakeError as exc:
                out["foreign websocket"] = exc.status
            async with client.get(base + "/v1/domains") as r:
                out["own read"] = r.status
        return out

    assert asyncio.run(attempts()) == {"no csrf token": 403, "wrong csrf token": 403,
                                       "foreign origin": 403, "foreign websocket": 403,
                                       "own read": 200}
    assert daemon.client.get("/v1/networks") == []


class _EvilPage(http.server.BaseHTTPRequestHandler):
    """Another site's page that tries to define a network on the console's daemon."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><script>
          fetch("{self.target}/v1/networks", {{method: "POST", credentials: "include",
            mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
            body: JSON.stringify({{spec: {{name: "evil", mode: "isolated"}}}})}})
          .then(() => document.title = "sent", () => document.title = "sent");
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_logged_in_browser_visiting_another_site_is_not_used(
        web: tuple[DaemonHandle, str], account: Account) -> None:
    daemon, base = web
    _EvilPage.target = base
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with chromium() as browser:
            page = new_page(browser)
            log_in(page, base, account)
            evil = page.context.new_page()
            evil.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            evil.wait_for_function("document.title === 'sent'")
            time.sleep(0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert daemon.client.get("/v1/networks") == []
    records = daemon.client.get("/v1/audit")
    forged = [r for r in records if r.get("path") == "/v1/networks"]
    assert forged and all(r["status"] in (401, 403) for r in forged)
