"""The etcd gateway client (cluster/etcd.py) against real etcd servers (Debian's
etcd-server): keys, compare-and-swap txns, leases, watches, failover, TLS.

Each server runs on 127.0.0.1 with free ports and its own data folder, and is ended
by PID at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtkit.cluster.etcd import (
    Compare,
    Etcd,
    EtcdUnavailable,
    Op,
    Tls,
    WatchEvent,
    prefix_end,
)
from virtkit.errors import InvalidSpec
from virtkit.service.clusterpki import ClusterPki

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs etcd (Debian's etcd-server)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    client_url: str
    peer_url: str

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def start_servers(folder: Path, count: int, scheme: str = "http",
                  tls: list[str] | None = None) -> list[Server]:
    ports = [(free_port(), free_port()) for _ in range(count)]
    names = [f"m{i}" for i in range(count)]
    initial = ",".join(f"{n}={scheme}://127.0.0.1:{p}" for n, (_c, p) in zip(names, ports,
                                                                             strict=True))
    servers = []
    for name, (client, peer) in zip(names, ports, strict=True):
        client_url, peer_url = f"{scheme}://127.0.0.1:{client}", f"{scheme}://127.0.0.1:{peer}"
        log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - the child's stderr
        process = subprocess.Popen(
            ["etcd", "--name", name, "--data-dir", str(folder / name),
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--logger", "zap", "--log-outputs", "stderr", *(tls or [])],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        servers.append(Server(name, process, client_url, peer_url))
    return servers


async def wait_ready(client: Etcd, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.put("/ready", "1")
            return
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def servers(folder: Path, count: int, scheme: str = "http",
            tls: list[str] | None = None) -> Iterator[list[Server]]:
    started = start_servers(folder, count, scheme, tls)
    try:
        yield started
    finally:
        for server in started:
            server.kill()


def test_prefix_end() -> None:
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


async def test_put_get_range_delete(etcd: Etcd) -> None:
    assert await etcd.get("/t/missing") is None
    first = await etcd.put("/t/a", b"1")
    await etcd.put("/t/b", '{"x": 2}')
    await etcd.put("/u/c", "3")
    got = await etcd.get("/t/a")
    assert got is not None and got.value == b"1" and got.mod_revision == first
    assert got.version == 1
    assert [kv.key for kv in await etcd.range("/t/")] == ["/t/a", "/t/b"]
    assert (await etcd.range("/t/"))[1].json() == {"x": 2}
    assert await etcd.delete("/t/", prefix=True) == 2
    assert await etcd.range("/t/") == [] and await etcd.get("/u/c") is not None


async def test_compare_and_swap(etcd: Etcd) -> None:
    assert await etcd.create("/cas", "first")
    assert not await etcd.create("/cas", "second")  # exists: version is not 0
    current = await etcd.get("/cas")
    assert current is not None and current.value == b"first"
    assert await etcd.swap("/cas", current.mod_revision, "third")
    # a writer that read before that change loses
    assert not await etcd.swap("/cas", current.mod_revision, "lost update")
    assert (await etcd.get("/cas")).value == b"third"  # type: ignore[union-attr]
    # a failed txn runs its failure branch, and answers what it read
    done = await etcd.txn([Compare.value("/cas", "=", b"nope")], [Op.delete("/cas")],
                          [Op.get("/cas"), Op.put("/other", "x")])
    assert not done.succeeded and done.ranges[0][0].value == b"third"
    assert (await etcd.get("/other")) is not None and await etcd.get("/cas") is not None


async def test_two_racing_creators_one_wins(etcd: Etcd) -> None:
    results = await asyncio.gather(*(etcd.create("/race", f"writer-{i}") for i in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_lease_keeps_a_key_until_it_expires_or_is_revoked(etcd: Etcd) -> None:
    lease = await etcd.lease_grant(2)
    await etcd.put("/leased", "x", lease=lease)
    assert (await etcd.get("/leased")).lease == lease  # type: ignore[union-attr]
    for _ in range(3):  # renewed past its TTL: the key stays
        assert await etcd.lease_keepalive(lease) == 2
        await asyncio.sleep(1.0)
    assert await etcd.get("/leased") is not None
    deadline = time.monotonic() + 10
    while await etcd.get("/leased") is not None:  # no renewal: etcd removes it
        assert time.monotonic() < deadline, "the leased key outlived its lease"
        await asyncio.sleep(0.1)
    assert await etcd.lease_keepalive(lease) == 0
    assert await etcd.lease_ttl(lease) == -1
    other = await etcd.lease_grant(30)
    await etcd.put("/leased2", "y", lease=other)
    await etcd.lease_revoke(other)
    assert await etcd.get("/leased2") is None
    await etcd.lease_revoke(other)  # twice is fine


async def _collect(etcd: Etcd, prefix: str, count: int, start: int = 0) -> list[WatchEvent]:
    events = []
    async for event in etcd.watch(prefix, start):
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_watch_streams_puts_and_deletes(etcd: Etcd) -> None:
    watcher = asyncio.create_task(_collect(etcd, "/w/", 3))
    await asyncio.sleep(0.3)  # the watch is set up (its first answer pins "now")
    await etcd.put("/w/a", "1")
    await etcd.put("/elsewhere", "no")
    await etcd.put("/w/a", "2")
    await etcd.delete("/w/a")
    events = await asyncio.wait_for(watcher, 10)
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", "/w/a", b"1"), ("PUT", "/w/a", b"2"), ("DELETE", "/w/a", b"")]


async def test_watch_from_a_revision_replays_history(etcd: Etcd) -> None:
    first = await etcd.put("/h/x", "1")
    await etcd.put("/h/x", "2")
    events = await asyncio.wait_for(_collect(etcd, "/h/", 2, start=first), 10)
    assert [e.kv.value for e in events] == [b"1", b"2"]


async def test_a_watch_from_compacted_history_goes_on_from_now(etcd: Etcd) -> None:
    """Members compact hourly: a watch that resumes from a revision older than that
    is cancelled by etcd (compact_revision); it must go on with new events, not loop
    on the cancel or end."""
    first = await etcd.put("/c/x", "old")
    latest = await etcd.put("/c/x", "older")
    await etcd.call("/v3/kv/compaction", {"revision": str(latest), "physical": True})
    watcher = asyncio.create_task(_collect(etcd, "/c/", 1, start=first))
    await asyncio.sleep(1.0)  # the cancel came and the watch is set up again from now
    await etcd.put("/c/x", "new")
    events = await asyncio.wait_for(watcher, 10)
    assert [e.kv.value for e in events] == [b"new"]


async def test_failover_skips_a_dead_endpoint_and_all_dead_is_an_error(
        tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with servers(tmp_path, 1) as (server,):
        async with Etcd([dead, server.client_url], deadline=5) as client:
            await wait_ready(client)
            assert await client.create("/f", "1")
            assert client.endpoints[client._current] == server.client_url
    async with Etcd([dead], deadline=0.5) as client:
        with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered") as failed:
            await client.get("/f")
        assert dead in str(failed.value)


async def test_three_members_survive_the_leader_kill(tmp_path: Path) -> None:
    """The cluster and the client together: SIGKILL of the leader, writes come back
    through the other endpoints (an election takes about a second)."""
    with servers(tmp_path, 3) as members:
        async with Etcd([m.client_url for m in members], deadline=15) as client:
            await wait_ready(client)
            status = await client.endpoint_status(members[0].client_url)
            listed = await client.members()
            leader = next(m for m in members
                          if any(x["ID"] == status["leader"] and x["name"] == m.name
                                 for x in listed))
            client._current = members.index(leader)  # talk to the leader first
            assert await client.create("/before", "1")
            leader.kill()
            started = time.monotonic()
            assert await client.create("/after", "2")
            back = time.monotonic() - started
            print(f"writes back {back:.2f} s after the leader's SIGKILL")
            assert (await client.get("/before")) is not None


async def test_tls_with_client_certificates(tmp_path: Path) -> None:
    pki = ClusterPki(tmp_path / "pki")
    pki.make_ca("test")
    pki.install_cert(pki.sign(pki.make_csr("m0"), "m0", "127.0.0.1"))
    flags = ["--cert-file", str(pki.cert), "--key-file", str(pki.key), "--trusted-ca-file",
             str(pki.ca), "--client-cert-auth", "--peer-cert-file", str(pki.cert),
             "--peer-key-file", str(pki.key), "--peer-trusted-ca-file", str(pki.ca),
             "--peer-client-cert-auth"]
    with servers(tmp_path, 1, "https", flags) as (server,):
        async with Etcd([server.client_url], tls=Tls(pki.ca, pki.cert, pki.key),
                        deadline=10) as client:
            await wait_ready(client)
            assert await client.create("/secure", "yes")
        # without a client certificate the server refuses the handshake
        async with Etcd([server.client_url], tls=Tls(pki.ca), deadline=1) as anonymous:
            with pytest.raises(EtcdUnavailable):
                await anonymous.get("/secure")


# -- the host agent (cluster/hosts.py) on a real etcd --------------------------------------

async def test_host_agent_registers_renews_and_refuses_a_second_live_host(
        etcd: Etcd, tmp_path: Path) -> None:
    from virtkit.cluster.hosts import HOSTS, HostAgent, host_table
    from virtkit.errors import Conflict

    report = {"state": "up", "capacity": {"cpus": 2, "memory_mib": 1024},
              "vms": {"defined": 1, "running": 0}}
    agent = HostAgent(etcd, "h1", lambda: report, tmp_path / "lease", ttl=2, refresh=0)
    await agent.register()
    record = await etcd.get(HOSTS + "h1")
    assert record is not None and record.lease == agent.lease
    assert record.json()["vms"] == {"defined": 1, "running": 0}
    # the same name on another lease (another daemon) is refused
    other = HostAgent(etcd, "h1", lambda: report, tmp_path / "other-lease", ttl=2)
    with pytest.raises(Conflict, match="already in the cluster"):
        await other.register()
    # a restarted daemon (same lease file) takes its record back
    again = HostAgent(etcd, "h1", lambda: report, tmp_path / "lease", ttl=2, refresh=0)
    await again.register()
    assert again.lease == agent.lease
    report["vms"] = {"defined": 1, "running": 1}
    await again.beat()  # renews and rewrites (CAS on mod_revision)
    assert (await etcd.get(HOSTS + "h1")).json()["vms"]["running"] == 1  # type: ignore[union-attr]
    # renewals stop: the record goes with the lease; the table shows the member down
    await etcd.put("/virtkit/members/h1", '{"name": "h1", "role": "voter"}')
    deadline = time.monotonic() + 10
    while await etcd.get(HOSTS + "h1") is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    rows = await host_table(etcd, {"h1": 123.0})
    assert [(r["name"], r["state"], r["down_since"]) for r in rows] == [("h1", "down", 123.0)]
    # the next beat notices the expired lease and registers on a new one
    await again.beat()
    assert again.lease != agent.lease
    assert (await host_table(etcd))[0]["state"] == "up"
    await again.stop(revoke=True)
    assert await etcd.get(HOSTS + "h1") is None


async def test_a_cas_whose_answer_was_lost_recognises_its_own_write(
        etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt is applied but its answer lost (OutcomeUnknown): the retry
    fails its compare, sees our value on the key, and reports success; a foreign value
    is still a failure."""
    from virtkit.cluster import etcd as module

    real = module.Etcd.txn
    calls = {"n": 0}

    async def lose_first_answer(self: Etcd, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        result = await real(self, *args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] == 1:
            raise module.OutcomeUnknown("answer lost")
        return result

    monkeypatch.setattr(module.Etcd, "txn", lose_first_answer)
    assert await etcd.create("/ambiguous", "mine")
    assert calls["n"] == 2
    calls["n"] = 0
    await etcd.put("/taken", "theirs")
    assert not await etcd.create("/taken", "mine")  # no loss: a plain failure


def test_member_argv_requires_client_certificates_on_both_ports(tmp_path: Path) -> None:
    from virtkit.cluster.member import MemberConfig, etcd_argv

    argv = etcd_argv(MemberConfig(
        name="a", address="192.0.2.1", data_dir=tmp_path / "d",
        initial_cluster="a=https://192.0.2.1:2380", state="new", ca=tmp_path / "ca.pem",
        cert=tmp_path / "c.pem", key=tmp_path / "k.pem"))
    assert argv[0] == "etcd"
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--listen-client-urls"] == "https://192.0.2.1:2379"
    assert pairs["--initial-advertise-peer-urls"] == "https://192.0.2.1:2380"
    assert pairs["--auto-compaction-mode"] == "periodic"  # history does not fill the quota
    assert pairs["--quota-backend-bytes"] == str(8 * 1024**3)
    v6 = MemberConfig(name="b", address="2001:db8::1", data_dir=tmp_path, initial_cluster="",
                      state="existing", ca=tmp_path, cert=tmp_path, key=tmp_path)
    assert v6.client_url == "https://[2001:db8::1]:2379"


async def test_an_agent_that_could_not_register_at_start_registers_on_its_next_beat(
        etcd: Etcd, tmp_path: Path) -> None:
    from virtkit.cluster.hosts import HOSTS, VMS, HostAgent

    agent = HostAgent(etcd, "late", lambda: {"state": "up"}, tmp_path / "lease", ttl=5,
                      domains=lambda: [{"name": "vm1", "uuid": "u1", "state": "shutoff"}])
    assert agent.lease == 0  # as after a daemon start while etcd was away
    await agent.beat()
    record = await etcd.get(HOSTS + "late")
    assert record is not None and record.lease == agent.lease
    published = await etcd.get(VMS + "late")  # the VM summary, on the same lease
    assert published is not None and published.lease == agent.lease
    assert published.json()["domains"][0]["name"] == "vm1"
    await agent.stop(revoke=True)
    assert await etcd.get(VMS + "late") is None


@pytest.mark.parametrize("bad", ["tm\udb6e\udfc9p", "`", "", "ftp://h:1", "http://h",
                                 "https://h:2379/path", "https://u@h:2379", "http://:80",
                                 "https://h:99999"])
def test_an_endpoint_that_is_no_url_is_a_400_naming_it(bad: str) -> None:
    """The API fuzzer's find: such an endpoint reached aiohttp and came back a 500."""
    from virtkit.cluster.etcd import endpoint_url

    with pytest.raises(InvalidSpec, match="etcd endpoint"):
        endpoint_url(bad)
    assert endpoint_url("https://10.0.0.1:2379/") == "https://10.0.0.1:2379"
