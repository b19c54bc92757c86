"""The cluster on three "hosts" (docs/cluster.md): three daemons, each in its own network
namespace with an etcd member, joined by a bridge in a fourth namespace.  No VM boots.

init on a, join b through a, join c through b (any voter admits), list and status on
each; a daemon SIGKILLed: its host record expires on its lease and the others see it
down, its etcd member keeps the quorum; restarted, it is up again; c leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.clusterhosts import ADDRESSES, ip, qemus_of, three_hosts
from tests.real.conftest import DaemonHandle, start_daemon, wait_for
from virtkit.cli.client import ApiError
from virtkit.cli.wsclient import WebSocket
from virtkit.paths import state_paths


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, DaemonHandle]]:
    with three_hosts() as handles:
        yield handles


def _hosts(handle: DaemonHandle) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in handle.client.get("/v1/cluster/hosts")}


def test_init_join_join_then_list_and_status(hosts: dict[str, DaemonHandle]) -> None:
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    assert a.client.get("/v1/cluster") == {"configured": False}
    made = a.cli("cluster", "init", "--name", "a", "--address", ADDRESSES["a"],
                 "--cluster", "lab")
    assert "Cluster 'lab' created; this host is 'a' (voter)" in made.stdout
    refused = a.cli("cluster", "init", "--name", "a", "--address", ADDRESSES["a"],
                    check=False)
    assert refused.returncode != 0 and "already in a cluster" in refused.stderr
    joined = b.cli("cluster", "join", str(a.root / "virtkitd.sock"), "--name", "b",
                   "--address", ADDRESSES["b"])
    assert "Joined cluster 'lab' as 'b' (voter)" in joined.stdout
    # c joins through b: any voter can admit (it holds the CA key)
    joined = c.cli("cluster", "join", str(b.root / "virtkitd.sock"), "--name", "c",
                   "--address", ADDRESSES["c"])
    assert "Joined cluster 'lab' as 'c' (voter)" in joined.stdout
    for handle in (a, b, c):
        rows = wait_for(lambda h=handle: (r := _hosts(h)) and all(
            row["state"] == "up" for row in r.values()) and len(r) == 3 and r, 15,
            "three hosts up")
        assert {n: (r["role"], r["address"]) for n, r in rows.items()} == {
            n: ("voter", ADDRESSES[n]) for n in ADDRESSES}
        assert all(r["capacity"]["cpus"] >= 1 and r["vms"] == {"defined": 0, "running": 0}
                   for r in rows.values())
        assert {n: r["api"] for n, r in rows.items()} == {
            n: f"https://{ADDRESSES[n]}:16516" for n in ADDRESSES}
        status = handle.client.get("/v1/cluster")
        assert (status["voters"], status["healthy"], status["quorum"]) == (3, 3, 2)
        assert status["has_quorum"] and status["leader"] in ADDRESSES
    table = a.cli("cluster", "list").stdout
    assert "Host" in table and "Last heartbeat" in table and "voter" in table
    assert all(f" {name} " in table for name in ADDRESSES)
    shown = c.cli("cluster", "status").stdout
    assert "Quorum" in shown and "yes" in shown and "3/3 healthy, quorum 2" in shown
    # a name already in the cluster is refused before anything is signed or added
    with pytest.raises(ApiError) as clash:
        a.client.post("/v1/cluster/admit", {"name": "b", "address": "192.0.2.99",
                                            "csr": "not looked at"})
    assert clash.value.http_status == 409 and "already a member" in str(clash.value)


def test_list_all_shows_every_hosts_vms_and_dominfo_names_the_host(
        hosts: dict[str, DaemonHandle]) -> None:
    a, b = hosts["a"], hosts["b"]
    for handle, name in ((a, "vm-on-a"), (b, "vm-on-b")):
        handle.client.post("/v1/domains", {"spec": {"name": name, "memory": 64,
                                                    "vcpus": 1}})
    listing = wait_for(lambda: "vm-on-b" in (out := a.cli("list", "--all").stdout) and out,
                       10, "b's VM in a's list --all")
    lines = {line.split()[1]: line.split() for line in listing.splitlines()[2:] if line}
    assert lines["vm-on-a"][-1] == "a"
    assert lines["vm-on-b"][-1] == "b" and "Host" in listing.splitlines()[0]
    rows = {r["name"]: r for r in a.client.get("/v1/domains?all=1&cluster=1")}
    assert (rows["vm-on-b"]["host"], rows["vm-on-b"]["state"]) == ("b", "shutoff")
    assert (rows["vm-on-b"]["vcpus"], rows["vm-on-b"]["memory_mib"]) == (1, 64)
    json_rows = json.loads(a.cli("list", "--all", "--json").stdout)
    assert {r["name"]: r["host"] for r in json_rows} == {"vm-on-a": "a", "vm-on-b": "b"}
    assert json.loads(a.cli("dominfo", "vm-on-b", "--json").stdout)["host"] == "b"
    # without ?cluster the list is this host's alone, as before
    assert [r["name"] for r in a.client.get("/v1/domains?all=1")] == ["vm-on-a"]
    assert "Host" not in a.cli("list").stdout.splitlines()[0]
    info = b.cli("dominfo", "vm-on-b").stdout
    assert any(line.split() == ["Host:", "b"] for line in info.splitlines()), info
    for handle, name in ((a, "vm-on-a"), (b, "vm-on-b")):
        handle.client.request("DELETE", handle.client.domain_path(name))
    wait_for(lambda: "vm-on-b" not in a.cli("list", "--all").stdout, 10,
             "b's VM gone from a's list")


def _define(handle: DaemonHandle, name: str, memory: int, host: str | None = None) -> Any:
    query = f"?host={host}" if host else ""
    return handle.client.post("/v1/domains" + query,
                              {"spec": {"name": name, "memory": memory, "vcpus": 1}})


def _audited(handle: DaemonHandle, path: str) -> list[tuple[str | None, int]]:
    """Who asked ``handle``'s daemon to change ``path`` (its audit log), and the answer."""
    lines = (handle.root / "log" / "audit.log").read_text().splitlines()
    return [(r["user"], r["status"]) for r in map(json.loads, lines) if r["path"] == path]


def _local_names(handle: DaemonHandle) -> set[str]:
    return {row["name"] for row in handle.client.get("/v1/domains?all=1")}


@pytest.mark.qemu
def test_placement_forwarding_and_cluster_wide_names(hosts: dict[str, DaemonHandle]) -> None:
    """define without --host lands on the least loaded host; start of b's VM asked on a
    runs it on b; list --all on every host shows every VM with its host; a name another
    host holds is refused with a 409 naming that host."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    assert _define(a, "load-a", 512, host="a")["host"] == "a"
    assert _define(a, "load-c", 256, host="c")["host"] == "c"  # pinned elsewhere: forwarded
    assert "load-c" in _local_names(c) and "load-c" not in _local_names(a)
    placed = _define(a, "placed", 64)  # b has nothing committed: the least loaded
    assert placed["host"] == "b" and "placed" in _local_names(b)
    # a redefinition (the spec names the VM's uuid) goes to the VM's host
    uuid = a.client.get(a.client.domain_path("load-a"))["uuid"]
    assert c.client.post("/v1/domains", {"spec": {
        "name": "load-a", "uuid": uuid, "memory": 384, "vcpus": 1}})["host"] == "a"
    assert a.client.get(a.client.domain_path("load-a"))["memory_mib"] == 384
    # the name is the cluster's: refused on c, pinned or placed, naming b
    for handle, host in ((c, "c"), (c, None), (a, "a")):
        with pytest.raises(ApiError) as clash:
            _define(handle, "placed", 64, host=host)
        assert clash.value.http_status == 409 and "on host b" in str(clash.value)
    assert "placed" not in _local_names(c) and "placed" not in _local_names(a)
    # start of b's VM issued on a: it runs on b (a forwarded once, b's QEMU runs), over
    # the network: b's cluster API at its own address, a's host certificate the caller
    started = a.cli("start", "placed")
    assert "Domain 'placed' started" in started.stdout
    assert _audited(b, "/v1/domains/placed/start") == [("host:a", 200)]
    row = next(r for r in b.client.get("/v1/domains?all=1") if r["name"] == "placed")
    assert row["state"] == "running" and row["pid"]
    info = a.cli("dominfo", "placed").stdout
    assert any(line.split() == ["Host:", "b"] for line in info.splitlines()), info
    # its serial console asked of a: the WebSocket is carried to b's cluster API (wss)
    console = WebSocket.open(a.root / "virtkitd.sock",
                             a.client.domain_path("placed", "/console"))
    console.close()
    for handle in (a, b, c):
        rows = wait_for(lambda h=handle: (r := {x["name"]: x for x in h.client.get(
            "/v1/domains?all=1&cluster=1")}) and r.get("placed", {}).get("state")
            == "running" and {"load-a", "load-c"} <= set(r) and r, 10,
            "b's running VM in every host's list --all")
        assert {n: rows[n]["host"] for n in ("load-a", "load-c", "placed")} == {
            "load-a": "a", "load-c": "c", "placed": "b"}
    listing = c.cli("list", "--all").stdout
    line = next(x.split() for x in listing.splitlines() if " placed " in f" {x} ")
    assert line[-1] == "b" and "running" in line
    # the rest of its life from other hosts too: destroy on c, undefine on a
    c.cli("destroy", "placed")
    assert next(r for r in b.client.get("/v1/domains?all=1")
                if r["name"] == "placed")["state"] == "shutoff"
    a.cli("undefine", "placed")
    assert "placed" not in _local_names(b)
    assert _define(c, "placed", 64, host="c")["host"] == "c"  # the name is free again
    for handle, name in ((a, "load-a"), (c, "load-c"), (c, "placed")):
        handle.client.request("DELETE", handle.client.domain_path(name))
    with pytest.raises(ApiError) as missing:
        a.client.post(a.client.domain_path("nowhere", "/start"))
    assert missing.value.http_status == 404
    # an anti-affinity group spreads over the hosts, and a fourth member finds no room
    spread = {a.client.post("/v1/domains", {"spec": {
        "name": f"g{i}", "memory": 64, "anti_affinity": "grp"}})["host"] for i in range(3)}
    assert spread == {"a", "b", "c"}
    with pytest.raises(ApiError) as full:
        a.client.post("/v1/domains", {"spec": {"name": "g3", "memory": 64,
                                               "anti_affinity": "grp"}})
    assert full.value.http_status == 409 and "anti-affinity group 'grp'" in str(full.value)
    for i in range(3):
        a.cli("undefine", f"g{i}")


@pytest.mark.qemu
def test_install_is_placed_and_a_pinned_host_must_fit(hosts: dict[str, DaemonHandle],
                                                      tmp_path: Path) -> None:
    """install without --host lands where placement says (and is carried there);
    --host NAME installs there, and is refused naming the reason when it cannot fit."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    images = []
    for name in ("inst-c", "inst-any"):
        images.append(tmp_path / f"{name}.img")
        images[-1].write_bytes(b"\0" * 65536)
    common = ("--memory", "64", "--import", "--graphics", "none", "--noautoconsole",
              "--os-variant", "generic", "--network", "none")
    out = a.cli("install", "--name", "inst-c", "--host", "c", "--disk",
                f"{images[0]},format=raw", *common).stdout
    assert "Domain 'inst-c' started on host c" in out, out
    assert "inst-c" in _local_names(c) and "inst-c" not in _local_names(a)
    refused = a.cli("install", "--name", "inst-big", "--host", "b", "--vcpus", "4096",
                    "--disk", f"{images[1]},format=raw", *common, check=False)
    assert refused.returncode != 0
    assert "host b cannot take this VM" in refused.stderr, refused.stderr
    assert "inst-big" not in _local_names(b)
    out = a.cli("install", "--name", "inst-any", "--disk", f"{images[1]},format=raw",
                *common).stdout
    placed = next(line.split("on host ")[1].split()[0] for line in out.splitlines()
                  if "'inst-any' started on host" in line)
    assert placed in ("a", "b") and "inst-any" in _local_names(hosts[placed])
    for name in ("inst-c", "inst-any"):
        a.cli("destroy", name)
        a.cli("undefine", name)


@pytest.mark.qemu
def test_start_place_moves_a_vm_its_host_cannot_take(hosts: dict[str, DaemonHandle]) -> None:
    """b holds two VMs of one anti-affinity group (the second got its group by a
    redefinition, which is not filtered): a plain start runs it on b anyway (start is
    where it is defined); start --place moves its definition (offline migration) to the
    host placement picks and starts it there."""
    a, b = hosts["a"], hosts["b"]
    _define(b, "grp-1", 64, host="b")
    uuid = _define(b, "grp-2", 64, host="b")["uuid"]
    for name, vm_uuid in (("grp-1", None), ("grp-2", uuid)):
        spec = {"name": name, "memory": 64, "vcpus": 1, "anti_affinity": "g"}
        b.client.post("/v1/domains", {"spec": {**spec, **({"uuid": vm_uuid} if vm_uuid
                                                         else {})}})
    out = a.cli("start", "--place", "grp-2").stdout
    went = out.split("on host ")[1].split()[0]
    assert went in ("a", "c") and "grp-2" not in _local_names(b), out
    row = next(r for r in hosts[went].client.get("/v1/domains?all=1") if r["name"] == "grp-2")
    assert row["state"] == "running" and row["uuid"] == uuid
    assert a.client.get(a.client.domain_path("grp-2"))["host"] == went
    a.cli("destroy", "grp-2")
    for name in ("grp-1", "grp-2"):
        a.cli("undefine", name)


@pytest.mark.qemu
def test_a_live_migration_moves_the_ownership(hosts: dict[str, DaemonHandle]) -> None:
    """b's running VM live-migrated to c: c became its owner (in the step before it
    resumed it), so every host now reaches it on c, and its name is held by c."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    _define(b, "mover", 64, host="b")
    b.client.post(b.client.domain_path("mover", "/start"))
    result = b.client.post(b.client.domain_path("mover", "/migrate"), {
        "destination": {"socket": str(c.root / "virtkitd.sock")}, "address": ADDRESSES["c"],
        "persistent": True, "undefine_source": True})
    assert result["destination"]["state"] == "running"
    assert "mover" not in _local_names(b) and "mover" in _local_names(c)
    info = a.client.get(a.client.domain_path("mover"))  # forwarded to its owner
    assert (info["host"], info["state"]) == ("c", "running")
    with pytest.raises(ApiError) as clash:
        _define(b, "mover", 64, host="b")
    assert clash.value.http_status == 409 and "on host c" in str(clash.value)
    a.cli("destroy", "mover")
    a.cli("undefine", "mover")
    assert "mover" not in _local_names(c)


def _listed(handle: DaemonHandle, name: str) -> list[str]:
    """The hosts ``list --all`` on ``handle`` shows VM ``name`` on (once per line)."""
    return [line.split()[-1] for line in handle.cli("list", "--all").stdout.splitlines()[2:]
            if line.split()[1:2] == [name]]


@pytest.mark.qemu
def test_offline_migrate_undefinesource_moves_a_stopped_vm(
        hosts: dict[str, DaemonHandle], tmp_path: Path) -> None:
    """b's stopped VM migrated offline with --undefinesource (its disk copied) to c: c
    owns it (the keys moved at c's finish, before its define; the VM was once lost
    here, its define on c undone by the clash with b's name key), every host lists it
    once, on c, and it starts there with its data; a refusal leaves it on b."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    disk, taken, copy = (tmp_path / n for n in ("om-b.img", "om-taken.img", "om-c.img"))
    disk.write_bytes(b"offline-data" + b"\0" * (1 << 20))
    taken.write_bytes(b"")
    b.client.post("/v1/domains?host=b", {"spec": {
        "name": "om", "memory": 64, "vcpus": 1,
        "disks": [{"path": str(disk), "format": "raw", "target": "vda"}]}})
    move = ("migrate", "--offline", "--undefinesource", "--copy-storage-all", "om",
            str(c.root / "virtkitd.sock"), "--listen-address", ADDRESSES["c"])
    refused = b.cli(*move, "--disk-path", f"{disk}={taken}", check=False)
    assert refused.returncode != 0 and "already exists" in refused.stderr, refused.stderr
    for handle in (a, b, c):
        wait_for(lambda h=handle: _listed(h, "om") == ["b"], 15, "om once, on b")
    b.cli(*move, "--disk-path", f"{disk}={copy}")
    assert "om" not in _local_names(b) and "om" in _local_names(c)
    for handle in (a, b, c):
        wait_for(lambda h=handle: _listed(h, "om") == ["c"], 15, "om once, on c")
    assert a.client.get(a.client.domain_path("om"))["host"] == "c"
    a.cli("start", "om")  # forwarded to its owner
    row = next(r for r in c.client.get("/v1/domains?all=1") if r["name"] == "om")
    assert row["state"] == "running" and row["pid"]
    assert copy.read_bytes()[:12] == b"offline-data"
    a.cli("destroy", "om")
    a.cli("undefine", "om")
    wait_for(lambda: _listed(a, "om") == [], 15, "om gone")


@pytest.mark.qemu
def test_evacuate_and_restore_a_host(hosts: dict[str, DaemonHandle], tmp_path: Path) -> None:
    """evacuate b: its running VM live-migrates away, its shut-off one stays, and
    placement skips b while it is in maintenance; restore b: the VM comes back."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    _define(b, "ev-run", 64, host="b")
    _define(b, "ev-off", 64, host="b")
    image = tmp_path / "ev-local.img"  # outside every shared pool: b's alone
    image.write_bytes(b"\0" * 65536)
    b.client.post("/v1/domains?host=b", {"spec": {"name": "ev-local", "memory": 64, "vcpus": 1,
                                                  "disks": [{"path": str(image),
                                                             "format": "raw",
                                                             "target": "vda"}]}})
    for name in ("ev-run", "ev-local"):
        b.client.post(b.client.domain_path(name, "/start"))
    wait_for(lambda: any(r["name"] == "ev-run" and r["state"] == "running" for r in
                         a.client.get("/v1/domains?all=1&cluster=1")), 10, "b's summary")
    # the default policy refuses a VM with a local disk: nothing is done
    refused = a.cli("cluster", "evacuate", "b", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Domain 'ev-local' cannot be evacuated" in refused.stdout
    assert "--policy copy-storage" in refused.stdout and "nothing was done" in refused.stderr
    assert {"ev-run", "ev-local"} <= {r["name"] for r in b.client.get("/v1/domains")}
    out = a.cli("cluster", "evacuate", "b", "--policy", "stop", "--stop-timeout", "0").stdout
    assert "Host 'b' is in maintenance" in out and "Domain 'ev-off' stays" in out, out
    assert "Domain 'ev-local' destroyed" in out, out
    went = next(line.split()[-1] for line in out.splitlines() if "'ev-run' moved" in line)
    assert went in ("a", "c")
    assert "ev-run" not in _local_names(b) and "ev-run" in _local_names(hosts[went])
    assert _define(a, "ev-new", 64)["host"] != "b"  # b is least loaded, but in maintenance
    out = c.cli("cluster", "restore", "b").stdout
    assert f"Domain 'ev-run' moved back from host {went}" in out, out
    assert "Domain 'ev-local' started again" in out, out
    assert "Host 'b' is out of maintenance" in out
    rows = {r["name"]: r for r in b.client.get("/v1/domains?all=1")}
    assert rows["ev-run"]["state"] == rows["ev-local"]["state"] == "running"
    for name in ("ev-run", "ev-local", "ev-off", "ev-new"):
        if name in ("ev-run", "ev-local"):
            a.cli("destroy", name)
        a.cli("undefine", name)


@pytest.mark.qemu  # its start is refused (b is away), but it names the route
def test_a_killed_daemon_is_seen_down_when_its_lease_expires(
        hosts: dict[str, DaemonHandle]) -> None:
    a, b = hosts["a"], hosts["b"]
    assert _hosts(a)["b"]["state"] == "up"
    _define(b, "on-b", 64, host="b")
    _define(b, "off-b", 64, host="b")  # start --place takes it elsewhere once b is down
    killed = time.time()
    os.kill(b.process.pid, signal.SIGKILL)
    b.process.wait(10)
    # a request for b's VM while b's daemon is dead: a clear 503 naming b, nothing done
    with pytest.raises(ApiError) as away:
        a.client.post(a.client.domain_path("on-b", "/start"))
    assert away.value.http_status == 503 and "host b" in str(away.value)
    row = wait_for(lambda: (r := _hosts(a)["b"])["state"] == "down" and r, 20,
                   "b's record to expire")
    with pytest.raises(ApiError) as down:
        a.client.post(a.client.domain_path("on-b", "/start"))
    assert down.value.http_status == 503 and "host b is down" in str(down.value)
    # start --place: b is down and the cluster knows off-b stopped: another host claims it
    out = a.cli("start", "--place", "off-b").stdout
    moved_to = out.split("on host ")[1].split()[0]
    assert moved_to in ("a", "c") and "off-b" in _local_names(hosts[moved_to]), out
    seen = time.time() - killed
    print(f"\nb seen down {seen:.2f} s after its daemon's SIGKILL (lease TTL 5 s); "
          f"a's watch saw the record go {row['down_since'] - killed:.2f} s after it")
    assert row["down_since"] is not None and row["heartbeat"] is None
    # b's etcd member outlives its daemon: the quorum never was at risk
    status = a.client.get("/v1/cluster")
    assert status["healthy"] == 3 and status["has_quorum"]
    assert "down" in a.cli("cluster", "list").stdout
    b.process = start_daemon(b.root, b.netns)
    wait_for(lambda: _hosts(a)["b"]["state"] == "up", 20, "b to be up again")
    # b's owner key (gone with its old lease) is made again on its new lease
    info = wait_for(lambda: (r := a.client.get(a.client.domain_path("on-b"))).get("host")
                    == "b" and r, 20, "b's VM reachable from a again")
    assert info["name"] == "on-b"
    a.client.request("DELETE", a.client.domain_path("on-b"))
    # b's copy of off-b (started elsewhere while b was down) is removed, disks kept
    wait_for(lambda: "off-b" not in _local_names(b), 20, "b's stale copy of off-b gone")
    assert a.client.get(a.client.domain_path("off-b"))["host"] == moved_to
    a.cli("destroy", "off-b")
    a.cli("undefine", "off-b")


@pytest.mark.qemu
def test_an_ha_vm_of_a_dead_host_runs_again_elsewhere_and_never_twice(
        hosts: dict[str, DaemonHandle]) -> None:
    """b's daemon SIGKILLed with an HA VM running: its guard fences the QEMU, and after
    b's lease expired another host claims and restarts the VM; a monitor polling every
    QEMU on the machine never sees two copies.  b back: its stale copy goes."""
    a, b = hosts["a"], hosts["b"]
    uuid = _define(b, "ha-vm", 64, host="b")["uuid"]
    b.cli("ha", "enable", "ha-vm")
    b.cli("start", "ha-vm")
    wait_for(lambda: (b.root / "cluster" / "guard" / "arm.json").exists() and uuid in (
        b.root / "cluster" / "guard" / "arm.json").read_text(), 15, "b's guard armed")
    assert len(qemus_of(uuid)) == 1
    killed = time.monotonic()
    os.kill(b.process.pid, signal.SIGKILL)
    b.process.wait(10)
    copies, fenced_at, running = [], None, None
    deadline = killed + 60
    while time.monotonic() < deadline:
        pids = qemus_of(uuid)
        copies.append(len(pids))
        assert len(pids) <= 1, f"two QEMUs of the HA VM at once: {pids}"
        if not pids and fenced_at is None:
            fenced_at = time.monotonic()
        rows = {r["name"]: r for r in a.client.get("/v1/domains?all=1&cluster=1")}
        row = rows.get("ha-vm")
        if row is not None and row.get("host") != "b" and row["state"] == "running" and pids:
            running = time.monotonic()
            new_host = row["host"]
            break
        time.sleep(0.05)
    if running is None:
        logs = {h: [line for line in state_paths(hosts[h].root).daemon_log.read_text(
            errors="replace").splitlines() if "cluster" in line][-15:] for h in ("a", "c")}
        raise AssertionError(f"the HA VM did not run again (fenced: {fenced_at}): {logs}")
    print(f"\nHA VM fenced {fenced_at - killed:.2f} s after b's daemon was killed, running "
          f"on {new_host} {running - killed:.2f} s after ({len(copies)} polls, never two)")
    assert new_host in ("a", "c")
    # b comes back: its fenced copy (crashed) is not restarted and its definition goes
    b.process = start_daemon(b.root, b.netns)
    wait_for(lambda: "ha-vm" not in _local_names(b), 30, "b's stale copy of ha-vm removed")
    assert len(qemus_of(uuid)) == 1
    owner = hosts[new_host]
    owner.cli("destroy", "ha-vm")
    owner.client.request("DELETE", owner.client.domain_path("ha-vm"))


def test_a_daemon_restart_within_the_ttl_keeps_its_record(
        hosts: dict[str, DaemonHandle]) -> None:
    """A restarted daemon takes its own record back on its saved lease (no 'name taken',
    no down state seen by the others)."""
    a, b = hosts["a"], hosts["b"]
    lease = (b.root / "cluster" / "lease").read_text().strip()
    b.process.send_signal(signal.SIGTERM)
    b.process.wait(10)
    b.process = start_daemon(b.root, b.netns)
    assert (b.root / "cluster" / "lease").read_text().strip() == lease
    assert _hosts(a)["b"]["state"] == "up"
    assert b.client.get("/v1/cluster")["host"] == "b"


def test_a_cut_off_owner_is_a_clear_503_naming_its_address_not_a_hang(
        hosts: dict[str, DaemonHandle]) -> None:
    """b's cable pulled: its record is still there (its lease runs 5 s), so a dials
    b's cluster API, gets no handshake, and answers within the connect timeout."""
    a, b = hosts["a"], hosts["b"]
    _define(b, "cut-b", 64, host="b")
    lan, port = b.lan  # type: ignore[attr-defined]
    ip("-n", lan, "link", "set", port, "down")
    try:
        asked = time.monotonic()
        with pytest.raises(ApiError) as away:
            a.client.get(a.client.domain_path("cut-b"))
        waited = time.monotonic() - asked
    finally:
        ip("-n", lan, "link", "set", port, "up")
    print(f"\na request for a cut-off host's VM answered after {waited:.1f} s: {away.value}")
    assert away.value.http_status == 503 and "host b" in str(away.value)
    assert f"{ADDRESSES['b']}:16516" in str(away.value) or "host b is down" in str(away.value)
    info = wait_for(lambda: (r := _try_get(a, "cut-b")) and r, 30, "b reachable again")
    assert info["host"] == "b"
    b.client.request("DELETE", b.client.domain_path("cut-b"))


def _try_get(handle: DaemonHandle, name: str) -> dict[str, Any] | None:
    try:
        return dict(handle.client.get(handle.client.domain_path(name)))
    except ApiError:
        return None


def test_leave(hosts: dict[str, DaemonHandle]) -> None:
    a, c = hosts["a"], hosts["c"]
    member_pid = int((c.root / "cluster" / "etcd.pid").read_text().split()[0])
    left = c.cli("cluster", "leave")
    assert "Host 'c' left cluster 'lab'" in left.stdout
    assert c.client.get("/v1/cluster") == {"configured": False}
    assert not (c.root / "cluster" / "config.json").exists()
    assert not (c.root / "cluster" / "etcd").exists()
    wait_for(lambda: not Path(f"/proc/{member_pid}").exists()
             or "zombie" in Path(f"/proc/{member_pid}/status").read_text(), 10,
             "c's etcd member to end")
    rows = wait_for(lambda: (r := _hosts(a)) and "c" not in r and r, 10, "c to be gone")
    assert set(rows) == {"a", "b"}
    status = a.client.get("/v1/cluster")
    assert (status["voters"], status["healthy"], status["quorum"]) == (2, 2, 2)
    with pytest.raises(ApiError) as outside:
        c.client.get("/v1/cluster/hosts")
    assert "in no cluster" in str(outside.value)
    shutil.rmtree(c.root / "cluster", ignore_errors=True)
