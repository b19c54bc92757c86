"""Placement for install and ``start --place`` (service/clusterplace.py), a pinned
host checked against the filter, and two placements at once (service/clustervms.py),
against a real etcd-server with fake hosts."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from virtkit.cluster import placement, vms
from virtkit.cluster.etcd import Etcd
from virtkit.cluster.hosts import HOSTS, MEMBERS, encode
from virtkit.errors import Conflict, InvalidSpec
from virtkit.service import clusterplace
from virtkit.service.clustervms import ClusterVms
from virtkit.service.forward import owner_of

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd-server")


# -- pure parts ----------------------------------------------------------------------------


def test_a_machine_type_the_hosts_qemu_lacks_filters_it_out() -> None:
    hosts = placement.candidates({
        "a": {"capacity": {"cpus": 4, "memory_mib": 4096}, "machines": ["q35", "pc"]},
        "b": {"capacity": {"cpus": 4, "memory_mib": 4096}, "machines": ["q35"]},
        "old": {"capacity": {"cpus": 4, "memory_mib": 4096}}}, [])  # says nothing: fits
    need = placement.Need.of({"memory": {"current": 64}, "machine": "pc"})
    assert need.machine == "pc"
    assert placement.refusal(hosts[1], need) == "its QEMU has no machine type pc"
    assert {h.name for h in hosts if placement.refusal(h, need) is None} == {"a", "old"}


def test_a_pinned_host_that_fails_the_filter_is_refused_with_the_reason() -> None:
    hosts = placement.candidates({
        "a": {"capacity": {"cpus": 1, "memory_mib": 1024}},
        "b": {"capacity": {"cpus": 4, "memory_mib": 4096}}}, [])
    need = placement.Need(memory_mib=512, vcpus=2)
    with pytest.raises(Conflict) as refused:
        placement.check_pinned("a", hosts, need)
    assert "host a cannot take this VM: 1 CPUs, the VM has 2 vCPUs" in str(refused.value)
    assert "leave --host out" in str(refused.value)
    with pytest.raises(Conflict, match="host z is not up"):
        placement.check_pinned("z", hosts, need)
    assert placement.check_pinned("b", hosts, need).name == "b"


def test_local_disks_are_those_off_the_shared_pools() -> None:
    spec = {"disks": [{"pool": "shared", "volume": "a.qcow2", "target": "vda"},
                      {"pool": "default", "volume": "b.qcow2", "target": "vdb"},
                      {"path": "/srv/shared/c.img", "target": "vdc"},
                      {"path": "/var/lib/d.img"},
                      {"path": "/iso/x.iso", "device": "cdrom"},
                      {"path": "/var/lib/ro.img", "readonly": True}]}
    shared = {"shared": "/srv/shared"}
    assert placement.local_disks(spec, shared) == ["vdb (pool default)",
                                                   "disk 3 (/var/lib/d.img)"]
    assert placement.local_disks({"disks": []}, shared) == []


def test_install_spec_reads_the_argv_or_the_request() -> None:
    spec = clusterplace.install_spec({"argv": [
        "--name", "w", "--memory", "512", "--vcpus", "2", "--import", "--disk",
        "pool=shared,size=1", "--network", "network=lan", "--machine", "pc",
        "--anti-affinity", "web"]})
    assert spec is not None
    need = placement.Need.of(spec)
    assert (need.memory_mib, need.vcpus, need.pools, need.networks, need.machine,
            need.group) == (512, 2, frozenset({"shared"}), frozenset({"lan"}), "pc", "web")
    # install's own defaults: 1024 MiB without --memory, the default network
    spec = clusterplace.install_spec({"domain": {"name": "x"}, "method": "import",
                                      "default_nic": True})
    assert spec is not None and placement.Need.of(spec).memory_mib == 1024
    assert placement.Need.of(spec).networks == frozenset({"default"})
    assert clusterplace.install_spec({"domain": {"name": "x"}, "dry_run": True}) is None
    assert clusterplace.install_spec({"argv": ["--bogus"]}) is None


# -- against etcd --------------------------------------------------------------------------


def _record(memory: int = 4096, **extra: Any) -> bytes:
    return encode({"capacity": {"cpus": 4, "memory_mib": memory}, "pools": ["shared"],
                   "shared_pools": {"shared": "/srv/shared"}, "networks": [], **extra})


async def _hosts(etcd: Etcd, **memory: int) -> dict[str, int]:
    leases = {}
    for name, mib in memory.items():
        leases[name] = await etcd.lease_grant(30)
        await etcd.put(HOSTS + name, _record(mib), leases[name])
    return leases


class _Store:
    def __init__(self) -> None:
        self.defined: dict[str, dict[str, Any]] = {}

    def find_domain(self, ref: str) -> Any:
        return None if ref not in self.defined else SimpleNamespace(uuid=ref)

    def list_domains(self) -> list[Any]:
        return []

    def list_pools(self) -> list[Any]:
        return []

    def list_objects(self, kind: str) -> list[Any]:
        return []

    def all_runtime(self) -> dict[str, Any]:
        return {}


def _cluster_vms(etcd: Etcd, host: str, lease: int) -> ClusterVms:
    store = _Store()

    def define(spec: dict[str, Any]) -> dict[str, Any]:
        store.defined[spec["uuid"]] = spec
        return spec

    cluster = SimpleNamespace(etcd=etcd, host_name=host,
                              agent=SimpleNamespace(lease=lease, name=host), store=store,
                              api=SimpleNamespace(client_tls=lambda: None))
    return ClusterVms(cluster, SimpleNamespace(define=define))  # type: ignore[arg-type]


def _spec(name: str, memory: int, disk: dict[str, Any] | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory": {"current": memory}, "vcpus": {"current": 1},
            "disks": [disk or {"pool": "shared", "volume": f"{name}.qcow2"}], **extra}


@needs_etcd
async def test_two_placements_at_once_never_both_take_the_last_room(etcd: Etcd) -> None:
    leases = await _hosts(etcd, a=1024, b=1024)
    placer = _cluster_vms(etcd, "a", leases["a"])
    # room for one 768 MiB VM on each host: four at once, two fit
    results = await asyncio.gather(*(placer.place(_spec(f"v{i}", 768)) for i in range(4)),
                                   return_exceptions=True)
    placed = [r[0] for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert sorted(placed) == ["a", "b"] and len(refused) == 2
    assert "a: 256 MiB uncommitted, the VM needs 768 MiB" in str(refused[0])
    # pinned: the filter holds there too
    with pytest.raises(Conflict, match="host b cannot take this VM: 256 MiB"):
        await placer.place(_spec("v9", 768), pinned="b")
    assert (await placer.place(_spec("v9", 128), pinned="b"))[0] == "b"


async def _defined_on(etcd: Etcd, host: str, lease: int, spec: dict[str, Any],
                      desired: str = "shutoff") -> str:
    uuid = f"u-{spec['name']}"
    await vms.claim(etcd, host, lease, vms.Local(spec["name"], uuid, spec, False))
    await vms.set_desired(etcd, uuid, desired)
    return uuid


@needs_etcd
async def test_start_place_starts_where_it_is_defined_when_that_host_can(etcd: Etcd) -> None:
    leases = await _hosts(etcd, a=4096, b=4096)
    await _defined_on(etcd, "a", leases["a"], _spec("web", 3072))
    plan = await clusterplace.plan_start(_cluster_vms(etcd, "b", leases["b"]), "web",
                                         here_only=False)
    assert (plan.how, plan.host) == ("home", "a")  # its own 3072 MiB are not counted twice


@needs_etcd
async def test_start_place_moves_a_vm_whose_host_is_full(etcd: Etcd) -> None:
    leases = await _hosts(etcd, a=4096, b=4096)
    await _defined_on(etcd, "a", leases["a"], _spec("big", 3072))
    await _defined_on(etcd, "a", leases["a"], _spec("web", 2048))
    asker = _cluster_vms(etcd, "a", leases["a"])
    plan = await clusterplace.plan_start(asker, "web", here_only=False)
    assert (plan.how, plan.host, plan.home) == ("move", "b", "a")
    # the keys move first (so b's define of it is b's own), and come back on a failure
    await etcd.put(HOSTS + "b", _record(lease=leases["b"]), leases["b"])
    owner, held = await clusterplace.hand_over(asker, plan)
    moved = await etcd.get(vms.OWNERS + "u-web")
    assert moved is not None and moved.lease == leases["b"]
    assert (await vms.locate(etcd, "web") or {})["host"] == "b"
    await clusterplace.take_back(asker, plan, owner, held)
    back = await etcd.get(vms.OWNERS + "u-web")
    assert back is not None and back.lease == leases["a"]
    assert (await vms.locate(etcd, "web") or {})["host"] == "a"
    # running there (its host's summary says so): never moved, the start answers
    await etcd.put("/virtkit/vms/a", encode({"domains": [
        {"name": "web", "uuid": "u-web", "state": "running"}]}), leases["a"])
    assert (await clusterplace.plan_start(asker, "web", here_only=False)).how == "home"
    await etcd.delete("/virtkit/vms/a")
    # a local disk: it can start nowhere else
    await _defined_on(etcd, "a", leases["a"], _spec("db", 2048, {"pool": "default",
                                                                 "volume": "db.qcow2"}))
    with pytest.raises(Conflict) as local:
        await clusterplace.plan_start(asker, "db", here_only=False)
    assert "db (pool default)" not in str(local.value)  # named by its slot
    assert "disk 0 (pool default) not on shared storage" in str(local.value)


@needs_etcd
async def test_start_place_of_a_vm_whose_host_is_down(etcd: Etcd) -> None:
    """Taken only when the cluster knows it stopped (or it is HA): one host claims it,
    defines it and may start it; the name key says where it came from."""
    leases = await _hosts(etcd, a=4096, b=4096, c=4096)
    await _defined_on(etcd, "a", leases["a"], _spec("off", 512))
    await _defined_on(etcd, "a", leases["a"], _spec("ran", 512), desired="running")
    await etcd.lease_revoke(leases["a"])  # a is down: its record and owner keys go
    on_b = _cluster_vms(etcd, "b", leases["b"])
    with pytest.raises(Conflict) as risky:
        await clusterplace.plan_start(on_b, "ran", here_only=False)
    assert "may still run on host a" in str(risky.value)
    plan = await clusterplace.plan_start(on_b, "off", here_only=False)
    assert plan.how == "claim" and plan.host in ("b", "c") and plan.home == "a"
    on_c = _cluster_vms(etcd, "c", leases["c"])
    here_b = await clusterplace.plan_start(on_b, "off", here_only=True)
    here_c = await clusterplace.plan_start(on_c, "off", here_only=True)
    won = await asyncio.gather(clusterplace.claim_here(on_b, here_b),
                               clusterplace.claim_here(on_c, here_c),
                               return_exceptions=True)
    assert sum(1 for w in won if w is None) == 1  # exactly one host claims it
    winner = "b" if won[0] is None else "c"
    where = await vms.locate(etcd, "off")
    assert where is not None and (where["host"], where["owned"]) == (winner, True)
    held = await etcd.get(vms.NAMES + "off")
    assert held is not None and held.json()["placed_from"] == "a"
    store = (on_b if winner == "b" else on_c).cluster.store
    assert "u-off" in store.defined  # type: ignore[attr-defined]


def test_the_install_parser_knows_anti_affinity(tmp_path: Path) -> None:
    from virtkit.formats.virtinstall import parse_command_line

    request = parse_command_line(["--name", "x", "--memory", "64", "--import", "--disk",
                                  str(tmp_path / "x.img"), "--anti-affinity", "grp"])
    assert request.domain["anti_affinity"] == "grp"


# -- evacuate policies (service/evacuate.py), the hosts' daemons faked -------------------


class _Daemons:
    """What each host's daemon answers evacuate and restore (``_call`` faked)."""

    def __init__(self, running: dict[str, list[str]], *, shuts_down: bool = False) -> None:
        self.vms = {host: {n: "running" for n in names} for host, names in running.items()}
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.shuts_down = shuts_down

    async def call(self, _cvms: Any, host: str, method: str, path: str,
                   body: dict[str, Any] | None = None, **_kw: Any) -> Any:
        from virtkit.errors import TimeoutExpired

        self.calls.append((host, method, path, body))
        if method == "GET":
            return [{"name": n, "uuid": f"u-{n}", "state": s}
                    for n, s in self.vms.get(host, {}).items()]
        name, action = path.split("/")[3], path.split("/")[4]
        if action == "migrate":
            target = next(h for h in self.vms if f"/{h}.sock" == body["destination"]["socket"])
            self.vms[target][name] = self.vms[host].pop(name)
        elif action == "shutdown" and not self.shuts_down:
            raise TimeoutExpired("the guest did not shut down")
        elif action in ("shutdown", "destroy"):
            self.vms[host][name] = "shutoff"
        elif action == "start":
            self.vms[host][name] = "running"
        return {}


async def _evacuation(etcd: Etcd, monkeypatch: pytest.MonkeyPatch,
                      daemons: _Daemons) -> ClusterVms:
    from virtkit.service import evacuate

    for host in daemons.vms:
        lease = await etcd.lease_grant(30)
        await etcd.put(HOSTS + host, encode({
            "capacity": {"cpus": 4, "memory_mib": 4096}, "pools": ["shared", "default"],
            "shared_pools": {"shared": "/srv/shared"}, "api": {"socket": f"/{host}.sock"}}),
            lease)
        await etcd.put(MEMBERS + host, encode({"address": "127.0.0.1"}))
        for name in daemons.vms[host]:
            disk = {"pool": "default" if name.startswith("local") else "shared",
                    "volume": f"{name}.qcow2", "target": "vda"}
            await vms.claim(etcd, host, lease, vms.Local(name, f"u-{name}",
                                                         _spec(name, 256, disk), True))
    monkeypatch.setattr(evacuate, "_call", daemons.call)
    async def destination(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
        return {"socket": f"/{host}.sock"}
    monkeypatch.setattr(evacuate, "_destination", destination)
    return _cluster_vms(etcd, "a", await etcd.lease_grant(30))


@needs_etcd
async def test_evacuate_refuses_local_disks_under_migrate_and_changes_nothing(
        etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.service import evacuate

    daemons = _Daemons({"b": ["shared1", "local1"], "a": [], "c": []})
    cvms = await _evacuation(etcd, monkeypatch, daemons)
    with pytest.raises(Conflict) as refused:
        await evacuate.evacuate(cvms, "b")
    assert "local1: its disks vda (pool default) are on this host only" in str(refused.value)
    assert "not put in maintenance" in str(refused.value)
    assert await etcd.get(vms.MAINTENANCE + "b") is None
    assert [c[1] for c in daemons.calls] == ["GET"]  # nothing was asked of b but its list
    planned = await evacuate.evacuate(cvms, "b", policy="copy-storage", dry_run=True)
    assert {s["name"]: s["action"] for s in planned["plan"]} == {"shared1": "migrate",
                                                                  "local1": "copy"}


@needs_etcd
async def test_evacuate_copy_and_stop_then_restore_undoes_each(
        etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.service import evacuate

    daemons = _Daemons({"b": ["shared1", "local1"], "a": [], "c": []})
    cvms = await _evacuation(etcd, monkeypatch, daemons)
    done = await evacuate.evacuate(cvms, "b", policy="copy-storage")
    assert {m["name"]: m["how"] for m in done["moved"]} == {"shared1": "migrate",
                                                             "local1": "copy"}
    bodies = {c[2].split("/")[3]: c[3] for c in daemons.calls if c[2].endswith("/migrate")}
    assert bodies["local1"]["copy_storage_all"] is True
    assert "copy_storage_all" not in bodies["shared1"]
    # the two went to different hosts: the second was weighed with the first there
    assert {m["to"] for m in done["moved"]} == {"a", "c"}
    assert await etcd.get(vms.MAINTENANCE + "b") is not None
    # the VMs moved (as their migrations would record it), then restore
    for m in done["moved"]:
        held = await etcd.get(vms.NAMES + m["name"])
        assert held is not None
        await etcd.put(vms.NAMES + m["name"], encode({**held.json(), "host": m["to"]}))
        await etcd.put(vms.OWNERS + m["uuid"], encode({"host": m["to"],
                                                       "name": m["name"]}))
    daemons.calls.clear()
    back = await evacuate.restore(cvms, "b")
    assert {r["name"]: r["how"] for r in back["returned"]} == {"shared1": "migrate",
                                                                "local1": "copy"}
    bodies = {c[2].split("/")[3]: c[3] for c in daemons.calls if c[2].endswith("/migrate")}
    assert bodies["local1"]["copy_storage_all"] is True
    assert set(daemons.vms["b"]) == {"shared1", "local1"}
    assert back["maintenance"] is False and await etcd.get(vms.MAINTENANCE + "b") is None


@needs_etcd
async def test_evacuate_stop_policy_destroys_after_the_timeout_and_restore_starts(
        etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.service import evacuate

    daemons = _Daemons({"b": ["local1", "local2"], "a": []})
    cvms = await _evacuation(etcd, monkeypatch, daemons)
    done = await evacuate.evacuate(cvms, "b", policy="stop", stop_timeout=5,
                                   only=["local1"])
    assert done["stopped"] == [{"name": "local1", "uuid": "u-local1", "how": "destroyed"}]
    assert daemons.vms["b"] == {"local1": "shutoff", "local2": "running"}
    assert done["stayed"] == []  # stopped by the evacuation: not "stays"
    daemons.shuts_down = True
    done = await evacuate.evacuate(cvms, "b", policy="stop", stop_timeout=5)
    assert done["stopped"] == [{"name": "local2", "uuid": "u-local2", "how": "shut down"}]
    back = await evacuate.restore(cvms, "b")
    assert sorted(s["name"] for s in back["started"]) == ["local1", "local2"]
    assert daemons.vms["b"] == {"local1": "running", "local2": "running"}


async def test_evacuate_reaches_a_destination_by_its_cluster_api_when_it_has_one(
        tmp_path: Path) -> None:
    """Hosts on separate machines: the migration's destination is the other host's
    cluster API (mutual TLS with this host's certificate), not a socket this machine
    does not have; the socket is the fallback without a cluster certificate."""
    import ssl

    from virtkit.service import evacuate, peer

    context = ssl.create_default_context()
    socket = tmp_path / "c.sock"
    socket.touch()
    api = {"url": "https://192.0.2.13:16516", "socket": str(socket)}

    def cvms(tls: ssl.SSLContext | None) -> Any:
        async def api_of(host: str) -> dict[str, Any]:
            return api

        async def owner(host: str, *, read_only: bool = False) -> Any:
            return owner_of(host, api, tls, read_only=read_only)
        return SimpleNamespace(owner=owner, api_of=api_of)

    assert await evacuate._destination(cvms(context), "c") == {
        "url": "https://192.0.2.13:16516", "cluster": True}
    assert await evacuate._destination(cvms(None), "c") == {"socket": str(socket)}
    # the source's daemon calls it with the cluster TLS, no API token needed
    peer.use_cluster_tls(lambda: context)
    try:
        destination = peer.Peer({"url": "https://192.0.2.13:16516", "cluster": True})
        assert destination._ssl() is context
        await destination.close()
    finally:
        peer.use_cluster_tls(peer._no_cluster_tls)
    with pytest.raises(InvalidSpec, match="this host has none"):
        peer.Peer({"url": "https://192.0.2.13:16516", "cluster": True})
