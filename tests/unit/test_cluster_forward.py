"""A request carried to the owning host's daemon (service/forward.py): sent once, its
answer as is; 503 when it never arrived, 502 when it arrived and no answer came; over
the network to the owner's cluster API with mutual TLS (api/clusterlisten.py), with
the original caller's standing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from virtkit.api import auth
from virtkit.api.clusterlisten import LISTENER, ClusterListener, peer_host
from virtkit.api.common import PRINCIPAL
from virtkit.host.pathpolicy import remote_caller, remote_may_define_pools
from virtkit.service import clusterpki, forward
from virtkit.service.clusterapi import Listen, url_of
from virtkit.service.clusterpki import ClusterPki
from virtkit.service.forward import (
    CALLER,
    CALLER_PRINCIPAL,
    FORWARDED_BY,
    Owner,
    OwnerNoAnswer,
    OwnerUnreachable,
    forward_headers,
    owner_of,
    send,
)


def test_the_owner_is_reached_at_its_cluster_api_else_its_socket_here(tmp_path: Path) -> None:
    tls = object()
    sock = tmp_path / "d.sock"
    sock.touch()
    api = {"url": "https://192.0.2.12:16516", "socket": str(sock)}
    owner = owner_of("b", api, tls, read_only=False)  # type: ignore[arg-type]
    assert (owner.url, owner.socket, owner.base) == ("https://192.0.2.12:16516", None,
                                                     "https://192.0.2.12:16516")
    # no cluster certificate here (an administrator's etcd): the socket, if it is here
    assert owner_of("b", api, None, read_only=False).socket == str(sock)
    (tmp_path / "ro.sock").touch()
    assert owner_of("b", {"socket": "/x", "socket_ro": str(tmp_path / "ro.sock")}, None,
                    read_only=True).socket == str(tmp_path / "ro.sock")
    with pytest.raises(OwnerUnreachable) as away:
        owner_of("b", {"url": "https://192.0.2.12:16516", "socket": "/nope"}, None,
                 read_only=False)
    assert away.value.http_status == 503 and "host b" in str(away.value)
    assert "https://192.0.2.12:16516" in str(away.value)
    with pytest.raises(OwnerUnreachable) as old:
        owner_of("b", {"socket": str(tmp_path / "nope.sock")}, None, read_only=False)
    assert "host b" in str(old.value) and "no cluster API address" in str(old.value)
    assert url_of("fd00::2", 16516) == "https://[fd00::2]:16516"


def test_a_socket_not_on_this_machine_is_refused_naming_the_host(tmp_path: Path) -> None:
    with pytest.raises(OwnerUnreachable) as away:
        owner_of("b", {"socket": str(tmp_path / "nope.sock")}, None, read_only=False)
    assert away.value.http_status == 503 and "host b" in str(away.value)


def test_hop_headers_are_dropped_and_the_hop_and_caller_are_marked() -> None:
    kept = forward_headers({"Host": "x", "Authorization": "Bearer t", "Accept": "a/b",
                            FORWARDED_BY: "z", CALLER: "local", "Origin": "https://x"},
                           "a", "remote", "token:laptop")
    assert kept == {"Accept": "a/b", FORWARDED_BY: "a", CALLER: "remote",
                    CALLER_PRINCIPAL: "token:laptop"}


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
        reply = await send(Owner("b", socket=path), "POST", "/v1/domains/x/start?y=1",
                            b'{"paused": false}',
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
            await send(Owner("b", socket=str(path)), "POST", "/v1/domains/x/start", b"{}",
                        {})
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
            await send(Owner("b", socket=path), "POST", "/v1/domains/x/destroy", b"{}", {})
    finally:
        server.close()
        await server.wait_closed()
    assert lost.value.http_status == 502 and "may have been carried out" in str(lost.value)
    assert "host b" in str(lost.value) and len(received) == 1


# -- over the network: mutual TLS ------------------------------------------------------


@dataclass
class Pkis:
    a: ClusterPki  # the forwarding host
    b: ClusterPki  # the owner
    stranger: ClusterPki  # a certificate of another CA


def _host(folder: Path, ca: ClusterPki | None, name: str) -> ClusterPki:
    pki = ClusterPki(folder)
    if ca is None:
        pki.make_ca("lab")
    else:
        pki.install_ca(ca.ca.read_text(), ca.ca_key.read_text())
    pki.install_cert(pki.sign(pki.make_csr(name), name, "127.0.0.1"))
    return pki


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    root = tmp_path_factory.mktemp("pki")
    a = _host(root / "a", None, "a")
    return Pkis(a, _host(root / "b", a, "b"), _host(root / "x", None, "a"))


class FakeApi:
    """What the listener asks of service/clusterapi.py."""

    def __init__(self, listen: Listen, members: set[str]) -> None:
        self.on_change: Any = None
        self._listen = listen
        self.members = members

    def listen(self) -> Listen:
        return self._listen

    async def is_member(self, name: str) -> bool:
        return name in self.members


@pytest.fixture
async def owner_b(pkis: Pkis, unused_tcp_port: int) -> AsyncIterator[FakeApi]:
    """Host b's daemon: the auth middleware and a handler that says how it was asked."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"peer": peer_host(request), "remote": remote_caller(),
                                  "pools": remote_may_define_pools(),
                                  "principal": request.get(PRINCIPAL)})

    api = FakeApi(Listen("127.0.0.1", unused_tcp_port, clusterpki.server_context(pkis.b)),
                  {"a"})
    listener = ClusterListener(api)  # type: ignore[arg-type]
    app = web.Application(middlewares=[auth.auth_middleware])
    app[LISTENER] = listener
    app.router.add_get("/v1/domains/x", handler)
    app.router.add_post("/v1/domains/x/start", handler)
    app.router.add_get("/v1/tokens", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    listener.runner = runner
    await listener.refresh()
    try:
        yield api
    finally:
        await listener.stop()
        await runner.cleanup()


def _owner(pki: ClusterPki, port: int) -> Owner:
    return Owner("b", url=f"https://127.0.0.1:{port}", tls=clusterpki.client_context(pki))


async def test_a_member_host_is_served_with_its_callers_standing(
        pkis: Pkis, owner_b: FakeApi) -> None:
    owner = _owner(pkis.a, owner_b.listen().port)
    reply = await send(owner, "POST", "/v1/domains/x/start", b"{}",
                        forward_headers({}, "a", "remote", "token:laptop"))
    assert reply.status == 200, reply.body
    assert json.loads(reply.body) == {"peer": "a", "remote": True, "pools": False,
                                      "principal": "host:a for token:laptop"}
    local = json.loads((await send(owner, "GET", "/v1/domains/x", b"",
                                    forward_headers({}, "a"))).body)
    assert (local["remote"], local["principal"]) == (False, "host:a")


async def test_the_owner_refuses_what_its_caller_could_not_do(
        pkis: Pkis, owner_b: FakeApi) -> None:
    owner = _owner(pkis.a, owner_b.listen().port)
    # a read-only caller's change: refused by the owner as by the read-only socket
    refused = await send(owner, "POST", "/v1/domains/x/start", b"{}",
                          forward_headers({}, "a", "read-only"))
    assert refused.status == 403 and b"read-only" in refused.body
    tokens = await send(owner, "GET", "/v1/tokens", b"", forward_headers({}, "a"))
    assert tokens.status == 403  # token administration stays on the host itself
    owner_b.members.clear()  # a host that left keeps a valid certificate
    gone = await send(owner, "GET", "/v1/domains/x", b"", forward_headers({}, "a"))
    assert gone.status == 403 and b"not a member" in gone.body


async def test_a_certificate_of_another_ca_never_reaches_the_owner(
        pkis: Pkis, owner_b: FakeApi) -> None:
    owner = _owner(pkis.stranger, owner_b.listen().port)
    with pytest.raises(OwnerUnreachable) as refused:
        await send(owner, "GET", "/v1/domains/x", b"", forward_headers({}, "a"))
    assert "host b" in str(refused.value) and "127.0.0.1" in str(refused.value)


async def test_an_owner_that_never_answers_the_handshake_is_unreachable_not_a_hang(
        pkis: Pkis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGSTOPped daemon: its kernel accepts the TCP connection, nothing answers."""
    monkeypatch.setattr(forward, "CONNECT_TIMEOUT", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OwnerUnreachable) as away:
            await asyncio.wait_for(send(_owner(pkis.a, port), "POST", "/v1/domains/x/start",
                                         b"{}", {}), 10)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert f"https://127.0.0.1:{port}" in str(away.value) and "nothing was done" in str(
        away.value)
