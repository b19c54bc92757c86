"""A request carried to the owning host's daemon (service/forward.py): sent once, its
answer as is; 503 when it never arrived, 502 when it arrived and no answer came."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiohttp import web

from virtkit.service.forward import (
    FORWARDED_BY,
    OwnerNoAnswer,
    OwnerUnreachable,
    forward_headers,
    relay,
    socket_of,
)


def test_a_socket_not_on_this_machine_is_refused_naming_the_host(tmp_path: Path) -> None:
    with pytest.raises(OwnerUnreachable) as away:
        socket_of("b", {"socket": str(tmp_path / "nope.sock")}, read_only=False)
    assert away.value.http_status == 503 and "host b" in str(away.value)
    (tmp_path / "ro.sock").touch()
    assert socket_of("b", {"socket": "/x", "socket_ro": str(tmp_path / "ro.sock")},
                     read_only=True) == str(tmp_path / "ro.sock")


def test_hop_headers_are_dropped_and_the_hop_is_marked() -> None:
    kept = forward_headers({"Host": "x", "Authorization": "Bearer t", "Accept": "a/b",
                            FORWARDED_BY: "z"}, "a")
    assert kept == {"Accept": "a/b", FORWARDED_BY: "a"}


async def test_the_answer_is_passed_on_as_is(tmp_path: Path) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs} {await request.text()} "
                    f"{request.headers.get(FORWARDED_BY)}")
        return web.json_response({"message": "busy"}, status=409)

    app = web.Application()
    app.router.add_post("/v1/domains/x/start", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "d.sock")
    await web.UnixSite(runner, path).start()
    try:
        reply = await relay("b", path, "POST", "/v1/domains/x/start?y=1", b'{"paused": false}',
                            {"Content-Type": "application/json", FORWARDED_BY: "a"})
    finally:
        await runner.cleanup()
    assert (reply.status, reply.body) == (409, b'{"message": "busy"}')
    assert seen == ['POST /v1/domains/x/start?y=1 {"paused": false} a']


async def test_nobody_listening_is_503_nothing_done(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # bound, never listening: connections are refused
    try:
        with pytest.raises(OwnerUnreachable) as away:
            await relay("b", str(path), "POST", "/v1/domains/x/start", b"{}", {})
    finally:
        dead.close()
    assert away.value.http_status == 503 and "nothing was done there" in str(away.value)


async def test_a_lost_answer_is_502_and_never_sent_again(tmp_path: Path) -> None:
    received = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.close()  # took the request, died before answering

    path = str(tmp_path / "flaky.sock")
    server = await asyncio.start_unix_server(swallow, path)
    try:
        with pytest.raises(OwnerNoAnswer) as lost:
            await relay("b", path, "POST", "/v1/domains/x/destroy", b"{}", {})
    finally:
        server.close()
        await server.wait_closed()
    assert lost.value.http_status == 502 and "may have been carried out" in str(lost.value)
    assert "host b" in str(lost.value) and len(received) == 1
