"""This host's cluster API settings (service/clusterapi.py): where it listens and what
it publishes, which peers are members, and the listener following init/leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from virtkit.api.clusterlisten import ClusterListener
from virtkit.cluster.hosts import MEMBERS
from virtkit.service.clusterapi import ClusterApi
from virtkit.service.clusterpki import ClusterPki


class FakeEtcd:
    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.asked = 0

    async def get(self, key: str) -> object | None:
        self.asked += 1
        return object() if key in self.keys else None


class FakeCluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pki = ClusterPki(folder / "pki")
        self.etcd: Any = None

    def config(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.folder / "config.json").read_text()))
        except OSError:
            return None


def _member(tmp_path: Path, port: int | None = None) -> FakeCluster:
    cluster = FakeCluster(tmp_path)
    pki = cluster.pki
    pki.make_ca("lab")
    pki.install_cert(pki.sign(pki.make_csr("a"), "a", "127.0.0.1"))
    config = {"host": "a", "address": "127.0.0.1", **({"api_port": port} if port else {})}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return cluster


def test_outside_a_cluster_nothing_is_published_or_served(tmp_path: Path) -> None:
    api = ClusterApi(FakeCluster(tmp_path))  # type: ignore[arg-type]
    assert (api.url(), api.listen(), api.client_tls()) == (None, None, None)


def test_a_member_publishes_its_address_and_port(tmp_path: Path) -> None:
    api = ClusterApi(_member(tmp_path))  # type: ignore[arg-type]
    assert api.url() == "https://127.0.0.1:16516"
    assert api.client_tls() is api.client_tls()  # made once
    (tmp_path / "config.json").write_text(json.dumps({"address": "127.0.0.1",
                                                      "api_port": 17000}))
    listen = api.listen()
    assert listen is not None and (listen.host, listen.port) == ("127.0.0.1", 17000)
    # a join under way: its first host record already names the API (not 2 s later)
    (tmp_path / "config.json").unlink()
    assert api.url() is None
    api.pending = {"address": "192.0.2.13"}
    assert api.url() == "https://192.0.2.13:16516"


async def test_membership_is_asked_of_etcd_and_kept_a_while(tmp_path: Path) -> None:
    cluster = _member(tmp_path)
    cluster.etcd = FakeEtcd({MEMBERS + "b"})
    api = ClusterApi(cluster)  # type: ignore[arg-type]
    assert await api.is_member("b") and await api.is_member("b")
    assert cluster.etcd.asked == 1
    assert not await api.is_member("gone")
    cluster.etcd = None  # etcd away: a host never confirmed is refused
    assert not await api.is_member("other")


async def test_the_listener_starts_at_join_and_stops_at_leave(tmp_path: Path,
                                                              unused_tcp_port: int) -> None:
    cluster = _member(tmp_path, unused_tcp_port)
    api = ClusterApi(cluster)  # type: ignore[arg-type]
    listener = ClusterListener(api)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    listener.runner = runner
    try:
        await api.changed()
        assert listener.context is not None and listener.problem is None
        assert len(runner.sites) == 1
        (tmp_path / "config.json").unlink()  # left the cluster
        await api.changed()
        assert listener.context is None and not runner.sites
    finally:
        await runner.cleanup()


async def test_a_member_change_refused_while_a_member_came_back_is_retried(
        monkeypatch: Any) -> None:
    """cluster leave right after a partition healed: etcd says 'unhealthy cluster' for
    5 s; the removal is tried again instead of failing half-way through the leave."""
    from virtkit.cluster.etcd import EtcdError
    from virtkit.service import cluster

    monkeypatch.setattr(cluster.asyncio, "sleep", _no_sleep)
    answers = [EtcdError("etcdserver: unhealthy cluster"), None]

    async def remove() -> str:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return "removed"

    assert await cluster._patiently(remove) == "removed" and not answers

    async def refused() -> str:
        raise EtcdError("etcdserver: member not found")

    try:
        await cluster._patiently(refused)
    except EtcdError as exc:
        assert "not found" in exc.message
    else:
        raise AssertionError("a lasting refusal must not be retried")


async def _no_sleep(_seconds: float) -> None:
    return None
