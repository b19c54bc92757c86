#!/usr/bin/env python3
"""The cluster's figures (issue 18, docs/cluster.md) on three namespaced hosts.

    python bench/bench_cluster.py ha        [--reps 3]  # host death -> HA VM running elsewhere
    python bench/bench_cluster.py partition [--reps 3]  # self-fence vs the others' claim
    python bench/bench_cluster.py leader    [--reps 3]  # etcd leader SIGKILL: write gap, VMs
    python bench/bench_cluster.py evacuate  [--vms 10]  # cluster evacuate of tiny VMs
    python bench/bench_cluster.py list      [--domains 1000 --runs 5]  # 3 hosts vs 1, virsh
    python bench/bench_cluster.py migrate   [--reps 3]  # shared-dir live migration vs raw QEMU
    python bench/bench_cluster.py all
    python bench/bench_cluster.py report    # markdown tables from results/cluster-*-latest.json

Each measurement makes its own three hosts (tests/real/clusterhosts.py: a daemon and an
etcd member in a network namespace each, a bridge in a fourth), forms the cluster,
measures, and removes everything (daemons, members, guards, QEMUs, namespaces) even when
it fails.  Each holds the shared real-test lock (/tmp/virtkit-real-tests.lock, or
``--lock``) only while it runs.  Times are wall clock; "one run": every figure printed is
from the run that printed it.  The etcd writer and watcher run inside a host's network
namespace (``_probe``, this same file), since the members listen on the hosts' addresses.

Anchors (issue 18): Proxmox restarts an HA VM 2-3 min after its host dies (60 s
watchdog + 120 s lock); Incus restarts none by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))  # tests.real.clusterhosts

import benchlib as bl  # noqa: E402

LOCK = "/tmp/virtkit-real-tests.lock"
OWNERS = "/virtkit/owner/"


# -- helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def real_test_lock(path: str) -> Iterator[None]:
    """The shared real-test lock, held for one measurement only."""
    with open(path, "a") as handle:
        waited = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        print(f"(lock {path} after {time.monotonic() - waited:.1f} s)", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "min": round(min(samples), 3),
            "median": round(statistics.median(samples), 3), "max": round(max(samples), 3),
            "samples": [round(s, 3) for s in samples]}


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # a host restarting answers nothing yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def cluster_rows(handle: Any) -> dict[str, dict[str, Any]]:
    return {str(r["name"]): r for r in handle.client.get("/v1/domains?all=1&cluster=1")}


def define(handle: Any, host: str, spec: dict[str, Any]) -> str:
    return str(handle.client.post(f"/v1/domains?host={host}", {"spec": spec})["uuid"])


def armed(handle: Any, uuid: str) -> bool:
    """The VM's QEMU is in its host's guard arming (refreshed each second)."""
    from tests.real.clusterhosts import qemus_of

    from virtkit.cluster.guard import read_arming
    arming = read_arming(handle.root / "cluster" / "guard")
    pids = qemus_of(uuid)
    return bool(arming and pids and any(t.uuid == uuid and t.pid == pids[0]
                                        for t in arming.targets))


def healthy(handles: dict[str, Any]) -> bool:
    """Every host sees three hosts up, and etcd has three healthy voters and a leader."""
    from tests.real.clusterhosts import up_hosts
    if any(up_hosts(h) != set(handles) for h in handles.values()):
        return False
    status = handles["a"].client.get("/v1/cluster")
    return bool(status["leader"]) and status["healthy"] == 3


def where_running(handles: dict[str, Any], name: str, uuid: str, avoid: str = "") -> str | None:
    """The host that runs ``name`` (one QEMU of it on the machine, a host other than
    ``avoid`` reports it running, and no other host has a local copy left)."""
    from tests.real.clusterhosts import qemus_of
    if len(qemus_of(uuid)) != 1:
        return None
    asker = next(h for n, h in handles.items() if n != avoid)
    row = cluster_rows(asker).get(name)
    if row is None or row["state"] != "running" or row.get("host") == avoid:
        return None
    return str(row["host"])


def settled(handles: dict[str, Any], name: str, uuid: str) -> str | None:
    """Healthy, the VM runs once, no stale copy on another host, and it is armed."""
    if not healthy(handles):
        return None
    host = where_running(handles, name, uuid)
    if host is None:
        return None
    for other, handle in handles.items():
        local = {r["name"] for r in handle.client.get("/v1/domains?all=1")}
        if other != host and name in local:
            return None
    return host if armed(handles[host], uuid) else None


@contextlib.contextmanager
def cluster(tag: str) -> Iterator[dict[str, Any]]:
    from tests.real.clusterhosts import form_cluster, three_hosts
    began = time.monotonic()
    with three_hosts() as handles:
        form_cluster(handles, tag)
        print(f"(cluster formed in {time.monotonic() - began:.1f} s)", flush=True)
        yield handles


def kill_host(handle: Any) -> None:
    """Host death: its daemon, etcd member, guard and QEMUs SIGKILLed at once."""
    from tests.real.clusterhosts import kill_by_pidfile
    pids = handle.qemu_pids()
    handle.process.kill()
    kill_by_pidfile(handle.root / "cluster" / "etcd.pid")
    kill_by_pidfile(handle.root / "cluster" / "guard" / "guard.pid")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    handle.process.wait(10)


def ha_vm(handles: dict[str, Any], name: str, host: str) -> str:
    """A tiny HA VM (64 MiB, no disk, no OS) running on ``host``, armed."""
    handle = handles[host]
    uuid = define(handle, host, {"name": name, "memory": 64, "vcpus": 1})
    handle.cli("ha", "enable", name)
    handle.cli("start", name)
    wait(lambda: armed(handle, uuid), 30, f"{name} armed on {host}")
    return uuid


# -- a probe inside a host's namespace: an etcd writer or watcher -----------------------


class Probe:
    """``python bench_cluster.py _probe`` in ``handle``'s network namespace; its stdout
    is JSON lines, read by a thread."""

    def __init__(self, handle: Any, mode: str, key: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", handle.netns, sys.executable, __file__, "_probe",
             "--root", str(handle.root), "--mode", mode, "--key", key],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait(lambda: any(line.get("ready") for line in self.lines), 20, f"the {mode} probe")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def stop(self) -> list[dict[str, Any]]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._thread.join(5)
        return self.lines


async def _probe(root: Path, mode: str, key: str) -> None:
    from virtkit.cluster.etcd import Etcd, Tls
    config = json.loads((root / "cluster" / "config.json").read_text())
    tls = config.get("tls") or {}
    tls_ = Tls(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"])) if tls else None
    # this host's own member first: a watch stream on a member that is cut off would
    # stall without an error (the partition measurement cuts one host off)
    own = f"//{config['address']}:"
    endpoints = sorted(config["endpoints"], key=lambda e: own not in e)
    async with Etcd(endpoints, tls=tls_, deadline=60) as etcd:
        if mode == "watch":
            async def announce() -> None:
                await asyncio.sleep(0.5)
                print(json.dumps({"ready": True}), flush=True)
            ready = asyncio.create_task(announce())
            async for event in etcd.watch(key):
                print(json.dumps({"t": time.time(), "type": event.type,
                                  "lease": event.kv.lease, "key": event.kv.key}),
                      flush=True)
            ready.cancel()
            return
        await etcd.put(key, "0")
        print(json.dumps({"ready": True, "endpoints": etcd.endpoints}), flush=True)
        count = 0
        while True:  # CAS writes back to back; each success's wall time
            try:
                current = await etcd.get(key)
                assert current is not None
                if await etcd.swap(key, current.mod_revision, str(count)):
                    count += 1
                    print(json.dumps({"t": time.time(), "ep": etcd._current}), flush=True)
            except Exception as exc:
                print(json.dumps({"error": str(exc)[:200], "t": time.time()}), flush=True)


# -- 1. HA restart after host death --------------------------------------------------


def bench_ha(args: argparse.Namespace) -> dict[str, Any]:
    from tests.real.conftest import start_daemon
    reps: list[dict[str, Any]] = []
    with cluster("benchha") as handles:
        uuid = ha_vm(handles, "ha0", "b")
        host = wait(lambda: settled(handles, "ha0", uuid), 60, "ha0 settled")
        for _ in range(args.reps):
            target = handles[host]
            began = time.monotonic()
            kill_host(target)
            killed = time.monotonic() - began
            seen_down = qemu_up = None
            while True:
                now = time.monotonic() - began
                if now > 120:
                    raise RuntimeError("ha0 did not run again within 120 s")
                from tests.real.clusterhosts import qemus_of, up_hosts
                asker = next(h for n, h in handles.items() if n != host)
                if seen_down is None and host not in up_hosts(asker):
                    seen_down = now
                if qemu_up is None and qemus_of(uuid):
                    qemu_up = now
                went = where_running(handles, "ha0", uuid, avoid=host)
                if went:
                    running = time.monotonic() - began
                    break
                time.sleep(0.02)
            reps.append({"killed": host, "restarted_on": went, "kill_took_s": round(killed, 3),
                         "seen_down_s": round(seen_down, 3) if seen_down else None,
                         "qemu_spawned_s": round(qemu_up, 3) if qemu_up else None,
                         "running_s": round(running, 3)})
            print(f"host {host} killed: seen down +{seen_down:.2f} s, QEMU on {went} "
                  f"+{qemu_up:.2f} s, running +{running:.2f} s", flush=True)
            target.process = start_daemon(target.root, target.netns)
            host = wait(lambda: settled(handles, "ha0", uuid), 90, "the cluster healed")
    restarts = [float(r["running_s"]) for r in reps]
    return {"reps": reps, "kill_to_running_s": stats(restarts),
            "kill_to_seen_down_s": stats([r["seen_down_s"] for r in reps]),
            "goal_s": 10, "met": max(restarts) <= 10}


# -- 2. partition: self-fence vs claim ------------------------------------------------


def bench_partition(args: argparse.Namespace) -> dict[str, Any]:
    from tests.real.clusterhosts import ip, qemus_of
    reps: list[dict[str, Any]] = []
    with cluster("benchpart") as handles:
        uuid = ha_vm(handles, "hp0", "b")
        host = wait(lambda: settled(handles, "hp0", uuid), 60, "hp0 settled")
        for _ in range(args.reps):
            target = handles[host]
            watcher_host = next(n for n in handles if n != host)
            probe = Probe(handles[watcher_host], "watch", OWNERS + uuid)
            old = qemus_of(uuid)
            fenced_log = target.root / "cluster" / "guard" / "fenced.log"
            guard_lines = len(fenced_log.read_text().splitlines()) if fenced_log.exists() else 0
            lan, port = target.lan
            leader = handles[watcher_host].client.get("/v1/cluster")["leader"]
            began = time.time()
            ip("-n", lan, "link", "set", port, "down")
            try:
                fenced = wait(lambda o=old: not any(p in qemus_of(uuid) for p in o)
                              and time.time(), 60, "the cut-off host's fence", 0.01)
                went = wait(lambda h=host: where_running(handles, "hp0", uuid, avoid=h), 90,
                            "hp0 running on another host")
            finally:
                ip("-n", lan, "link", "set", port, "up")
                events = probe.stop()
            deleted = next((e["t"] for e in events if e.get("type") == "DELETE"), None)
            claimed = next((e["t"] for e in events if e.get("type") == "PUT"
                            and (deleted is None or e["t"] >= deleted)), None)
            by_guard = fenced_log.exists() and len(
                fenced_log.read_text().splitlines()) > guard_lines
            rep = {"cut_off": host, "etcd_leader": leader, "restarted_on": went,
                   "fence_s": round(fenced - began, 3),
                   "fenced_by": "guard" if by_guard else "daemon",
                   "lease_expired_s": round(deleted - began, 3) if deleted else None,
                   "claim_s": round(claimed - began, 3) if claimed else None,
                   "margin_s": round(claimed - fenced, 3) if claimed else None}
            reps.append(rep)
            print(json.dumps(rep), flush=True)
            host = wait(lambda: settled(handles, "hp0", uuid), 90, "the cluster healed")
    margins = [r["margin_s"] for r in reps if r["margin_s"] is not None]
    return {"reps": reps, "margin_s": stats(margins),
            "fence_s": stats([r["fence_s"] for r in reps]),
            "claim_s": stats([r["claim_s"] for r in reps if r["claim_s"] is not None]),
            "goal_margin_s": 1, "met": bool(margins) and min(margins) >= 1}


# -- 3. etcd leader loss -----------------------------------------------------------------


def _raft(handle: Any) -> tuple[int, int]:
    """The highest raft index and etcd DB size (bytes) among the members."""
    rows = [r for r in handle.client.get("/v1/cluster")["members"] if r.get("healthy")]
    return max(int(r["raft_index"]) for r in rows), max(int(r["db_size"]) for r in rows)


def idle_writes(handle: Any, seconds: float) -> dict[str, Any]:
    """Raft entries per second (writes: heartbeats, summaries; lease keepalives are not
    raft entries) and DB growth of the idle cluster over ``seconds``."""
    index0, size0 = _raft(handle)
    began = time.monotonic()
    time.sleep(seconds)
    index1, size1 = _raft(handle)
    took = time.monotonic() - began
    return {"seconds": round(took, 1), "raft_entries_per_s": round((index1 - index0) / took, 2),
            "db_size_bytes": [size0, size1]}


def bench_leader(args: argparse.Namespace) -> dict[str, Any]:
    from tests.real.clusterhosts import kill_by_pidfile, qemus_of
    reps: list[dict[str, Any]] = []
    with cluster("benchlead") as handles:
        uuids = {f"hl-{h}": ha_vm(handles, f"hl-{h}", h) for h in handles}
        for name, uuid in uuids.items():
            wait(lambda n=name, u=uuid: settled(handles, n, u), 60, f"{name} settled")
        idle = idle_writes(handles["a"], args.idle)
        print(json.dumps({"idle": idle}), flush=True)
        for _ in range(args.reps):
            leader = str(handles["a"].client.get("/v1/cluster")["leader"])
            writer_host = next(n for n in handles if n != leader)
            writer = Probe(handles[writer_host], "write", "/bench/writer")
            before = {u: qemus_of(u) for u in uuids.values()}
            disturbed: list[str] = []
            time.sleep(1.0)
            pidfile = handles[leader].root / "cluster" / "etcd.pid"
            old_member = pidfile.read_text()
            killed = time.time()
            kill_by_pidfile(pidfile)
            deadline = time.monotonic() + 60
            while True:  # the VMs polled until the member is back and quorate
                for uuid, pids in before.items():
                    if qemus_of(uuid) != pids:
                        disturbed.append(f"{uuid} at +{time.time() - killed:.2f} s")
                if pidfile.read_text() != old_member and healthy(handles):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the member was not restarted with quorum")
                time.sleep(0.05)
            back = time.time() - killed
            time.sleep(2.0)
            lines = writer.stop()
            times = [line["t"] for line in lines if "t" in line and "error" not in line]
            errors = [line for line in lines if "error" in line]
            # the longest stretch without a successful write from the kill until the
            # member is back (the kill itself comes a moment after ``killed``)
            window = [t for t in times if t <= killed][-1:] + [
                t for t in times if killed < t <= killed + back + 2.0]
            gaps = [(t1 - t0, t0) for t0, t1 in itertools.pairwise(window)]
            gap, gap_from = max(gaps) if gaps else (None, None)
            after_kill = [t for t in times if t > killed]
            after = {u: qemus_of(u) for u in uuids.values()}
            states = {n: cluster_rows(handles["a"]).get(n, {}).get("state")
                      for n in uuids}
            rep = {"leader": leader, "writer_on": writer_host,
                   "write_gap_s": round(gap, 3) if gap else None,
                   "gap_began_s": round(gap_from - killed, 3) if gap_from else None,
                   "gaps_over_100ms": [round(g, 3) for g, _ in gaps if g > 0.1],
                   "first_write_after_kill_s": round(after_kill[0] - killed, 3)
                   if after_kill else None,
                   "writes": len(times), "write_errors": len(errors),
                   "member_back_quorate_s": round(back, 2),
                   "vms_disturbed": len(disturbed) + sum(before[u] != after[u] for u in before),
                   "vm_states": states}
            reps.append(rep)
            print(json.dumps(rep), flush=True)
            wait(lambda: healthy(handles), 60, "quorum again")
    longest = [float(r["write_gap_s"]) for r in reps if r["write_gap_s"] is not None]
    return {"reps": reps, "write_gap_s": stats(longest), "idle": idle,
            "vms_disturbed": sum(r["vms_disturbed"] for r in reps),
            "goal_gap_s": 2, "met": bool(longest) and max(longest) <= 2
            and all(r["vms_disturbed"] == 0 for r in reps)}


# -- 4. evacuate ------------------------------------------------------------------------


def _shared_pool(handles: dict[str, Any], folder: Path) -> None:
    for index, handle in enumerate(handles.values()):
        handle.cli("pool-define-as", "shd", "shared-dir", "--target", str(folder))
        if index == 0:
            handle.cli("pool-build", "shd")
        handle.cli("pool-start", "shd")


def _log_times(handle: Any, marker: str, since: float) -> list[float]:
    """Wall times of the daemon log lines that contain ``marker``, after ``since``."""
    from virtkit.paths import state_paths
    found = []
    for line in state_paths(handle.root).daemon_log.read_text(errors="replace").splitlines():
        if marker not in line:
            continue
        with contextlib.suppress(ValueError):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= since:
                found.append(stamp)
    return found


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="vk-bench-shared-", dir="/tmp"))
    os.chmod(mount, 0o755)  # noqa: S103 - every host (confined QEMUs) reads it
    try:
        yield mount
    finally:
        shutil.rmtree(mount, ignore_errors=True)


def bench_evacuate(args: argparse.Namespace) -> dict[str, Any]:
    with shared_folder() as mount, cluster("benchevac") as handles:
        a, b = handles["a"], handles["b"]
        _shared_pool(handles, mount / "vms")
        names = [f"ev{i:02d}" for i in range(args.vms)]
        for name in names:
            b.cli("vol-create-as", "shd", f"{name}.raw", "1M", "--format", "raw")
            define(b, "b", {"name": name, "memory": 64, "vcpus": 1,
                            "disks": [{"pool": "shd", "volume": f"{name}.raw"}]})
            b.client.post(b.client.domain_path(name, "/start"))
        wait(lambda: all(cluster_rows(a).get(n, {}).get("state") == "running" for n in names),
             60, "the VMs running in b's summary")
        cli = bl.virtkit_cli()
        began = time.time()
        out = subprocess.run([*cli, "cluster", "evacuate", "b"], env=a.env,
                             capture_output=True, text=True, timeout=900)
        total = time.time() - began
        if out.returncode != 0:
            raise RuntimeError(f"evacuate failed: {out.stdout}{out.stderr}")
        moved = [line for line in out.stdout.splitlines() if "moved" in line]
        done = sorted(_log_times(a, "cluster: evacuate b:", began))
        per_vm = [t1 - t0 for t0, t1 in zip([began, *done], done, strict=False)]
        where = {line.split("'")[1]: line.split()[-1] for line in moved}  # "... to HOST"
        began = time.time()
        back = subprocess.run([*cli, "cluster", "restore", "b"], env=a.env,
                              capture_output=True, text=True, timeout=900)
        restore = time.time() - began
    result = {"vms": args.vms, "memory_mib": 64, "disk": "1 MiB raw on shared-dir",
              "evacuate_total_s": round(total, 3), "per_vm_mean_s": round(total / args.vms, 3),
              "per_vm_s": stats(per_vm), "moved_lines": len(moved),
              "placed": {h: sum(1 for v in where.values() if v == h) for h in ("a", "c")},
              "restore_total_s": round(restore, 3), "restore_ok": back.returncode == 0}
    print(json.dumps(result), flush=True)
    return result


# -- 5. list --all of 1,000 VMs across 3 hosts ------------------------------------------


def bench_list(args: argparse.Namespace) -> dict[str, Any]:
    cli = bl.virtkit_cli()
    n = args.domains
    with cluster("benchlist") as handles:
        a = handles["a"]
        hosts = list(handles)
        began = time.monotonic()
        failures: list[str] = []

        def define_on(host: str) -> None:
            from virtkit.cli.client import Client
            from virtkit.paths import state_paths
            client = Client(state_paths(handles[host].root), timeout=90)
            for i in range(hosts.index(host), n, len(hosts)):
                try:
                    client.post(f"/v1/domains?host={host}", {"spec": {
                        "name": f"vm{i:04d}", "memory": 128, "vcpus": 1}})
                except Exception as exc:
                    failures.append(f"vm{i:04d}: {exc}")
        threads = [threading.Thread(target=define_on, args=(h,)) for h in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        defines = time.monotonic() - began
        if failures:
            raise RuntimeError(f"{len(failures)} defines failed: {failures[:3]}")
        wait(lambda: len(cluster_rows(a)) == n, 60, f"{n} VMs in a's cluster view")

        first, samples = _time_lists(cli, a.env, a.client, "/v1/domains?all=1&cluster=1",
                                     n, args.runs)
        per_host = {h: sum(1 for r in cluster_rows(a).values() if r.get("host") == h)
                    for h in hosts}
    return {"domains": n, "state": "defined, shut off (128 MiB each, never started)",
            "per_host": per_host, "defines_s": round(defines, 2),
            "cli": stats(samples["cli"]), "api": stats(samples["api"]),
            "first_call_s": {k: round(v, 3) for k, v in first.items()}}


def _time_lists(cli: list[str], env: dict[str, str], client: Any, path: str, n: int,
                runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``list --all`` through the CLI and ``path`` through the API, each checked to
    show ``n`` VMs: the first call of each, then ``runs`` more of each."""
    def run_cli() -> float:
        elapsed, out = bl.timed(lambda: subprocess.run(
            [*cli, "list", "--all"], env=env, capture_output=True, text=True))
        rows = out.stdout.count("shut off") + out.stdout.count("shutoff")
        if out.returncode != 0 or rows != n:
            raise RuntimeError(f"list --all: {rows} rows, {out.stderr.strip()}")
        return elapsed

    def run_api() -> float:
        elapsed, rows = bl.timed(lambda: client.get(path))
        assert len(rows) == n
        return elapsed
    first = {"cli": run_cli(), "api": run_api()}
    samples: dict[str, list[float]] = {"cli": [], "api": []}
    for _ in range(runs):
        samples["cli"].append(run_cli())
        samples["api"].append(run_api())
    return first, samples


def bench_list_bare(args: argparse.Namespace) -> dict[str, Any]:
    """One host (no cluster) with the cluster measurement's very VMs (128 MiB, no boot
    section: bench_spine's have a kernel and initrd), timed the same way."""
    cli = bl.virtkit_cli()
    n = args.domains
    with bl.VirtkitDaemon() as vk:
        began = time.monotonic()
        for i in range(n):
            vk.client.post("/v1/domains", {"spec": {"name": f"vm{i:04d}", "memory": 128,
                                                    "vcpus": 1}})
        defines = time.monotonic() - began

        first, samples = _time_lists(cli, vk.env, vk.client, "/v1/domains?all=1", n,
                                     args.runs)
    return {"domains": n, "state": "defined, shut off (128 MiB each, no boot section)",
            "defines_s": round(defines, 2), "cli": stats(samples["cli"]),
            "api": stats(samples["api"]),
            "first_call_s": {k: round(v, 3) for k, v in first.items()}}


def bench_list_single(args: argparse.Namespace) -> dict[str, Any]:
    """bench_spine's list (one host, and virsh with 1,000 libvirt domains), reused."""
    import bench_spine
    spine = argparse.Namespace(runs=args.runs, domains=args.domains, no_libvirt=args.no_libvirt,
                               libvirt_as_installed=False)
    return dict(bench_spine.bench_list(spine))


# -- 6. shared-storage live migration vs raw QEMU ---------------------------------------


def bench_migrate(args: argparse.Namespace) -> dict[str, Any]:
    import bench_migration as bm
    from tests.real.clusterhosts import ADDRESSES
    guest = bl.tiny_guest()
    runs: list[dict[str, Any]] = []
    with shared_folder() as mount:
        with cluster("benchmig") as handles:
            _shared_pool(handles, mount / "vms")
            b = handles["b"]
            b.cli("vol-create-as", "shd", "m0.raw", "8M", "--format", "raw")
            spec = {**bl.tiny_spec("mig0", guest, args.memory), "vcpus": 1,
                    "disks": [{"pool": "shd", "volume": "m0.raw"}]}
            uuid = define(b, "b", spec)
            pid = b.client.post(b.client.domain_path("mig0", "/start"))["pid"]
            argv = bl.proc_argv(pid)
            bm._wait_log(b.root / "log" / "domains" / uuid / "serial0.log")
            source, destination = "b", "c"
            for _ in range(args.reps):
                src, dst = handles[source], handles[destination]
                body = {"destination": {"socket": str(dst.root / "virtkitd.sock")},
                        "address": ADDRESSES[destination], "persistent": True,
                        "undefine_source": True, "copy_storage_all": True}
                seconds, result = bl.timed(lambda s=src, d=body: s.client.post(
                    s.client.domain_path("mig0", "/migrate"), d))
                runs.append({"from": source, "to": destination, "seconds": round(seconds, 4),
                             "disk_bytes": result.get("disk_bytes"),
                             "shared_disks": result.get("shared_disks"),
                             "copied_disks": result.get("copied_disks"),
                             "qemu_downtime_ms": result.get("qemu_downtime_ms"),
                             "downtime_ms": result.get("downtime_ms")})
                print(json.dumps(runs[-1]), flush=True)
                source, destination = destination, source
            handles[source].client.post(handles[source].client.domain_path("mig0", "/destroy"))
        raw = []
        for _ in range(args.reps):  # the same argv (the same shared image), by hand
            seconds, down = bm.raw_once(argv)
            raw.append({"seconds": round(seconds, 4),
                        "downtime_ms": down * 1000 if down is not None else None})
            print(json.dumps({"raw": raw[-1]}), flush=True)
    vk_s = stats([r["seconds"] for r in runs])
    raw_s = stats([r["seconds"] for r in raw])
    return {"memory_mib": args.memory, "disk": "8 MiB raw on shared-dir", "virtkit": runs,
            "raw": raw, "virtkit_s": vk_s, "raw_s": raw_s,
            "virtkit_qemu_downtime_ms": stats([float(r["qemu_downtime_ms"]) for r in runs
                                               if r["qemu_downtime_ms"] is not None]),
            "virtkit_downtime_ms": stats([float(r["downtime_ms"]) for r in runs
                                          if r["downtime_ms"] is not None]),
            "raw_downtime_ms": stats([float(r["downtime_ms"]) for r in raw
                                      if r["downtime_ms"] is not None]),
            "disk_bytes": [r["disk_bytes"] for r in runs],
            "ratio": round(vk_s["median"] / raw_s["median"], 2)}


# -- driver ---------------------------------------------------------------------------

BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ha": bench_ha, "partition": bench_partition, "leader": bench_leader,
    "evacuate": bench_evacuate, "list": bench_list, "list-single": bench_list_single,
    "list-bare": bench_list_bare,
    "migrate": bench_migrate}


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with real_test_lock(args.lock):
        context = {"load_before": bl.loadavg(), "other_qemus": bl.foreign_qemu_count(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        began = time.monotonic()
        result = BENCHES[name](args)
        context.update(load_after=bl.loadavg(), took_s=round(time.monotonic() - began, 1))
    data = {"benchmark": f"cluster-{name}", "context": context,
            "commit": os.environ.get("VIRTKIT_BENCH_COMMIT") or bl.git_commit(),
            "command": " ".join([sys.executable, *sys.argv]), "result": result}
    print(f"== cluster {name}: {json.dumps(result, default=str)[:1500]}", flush=True)
    print("results:", bl.write_results(f"cluster-{name}", data), flush=True)
    return data


def report() -> None:
    for name in BENCHES:
        path = bl.RESULTS_DIR / f"cluster-{name}-latest.json"
        if path.exists():
            data = json.loads(path.read_text())
            print(f"\n### {name} ({data['context']['started']}, load "
                  f"{data['context']['load_before']})\n")
            print("```\n" + json.dumps(data["result"], indent=1)[:4000] + "\n```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*BENCHES, "all", "report", "_probe"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", type=int, default=256, help="MiB of the migrated VM")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds the leader measurement samples the idle write rate")
    parser.add_argument("--no-libvirt", action="store_true")
    parser.add_argument("--lock", default=LOCK)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--mode", choices=["watch", "write"])
    parser.add_argument("--key")
    args = parser.parse_args()
    # a SIGTERM (timeout(1), a CI cancel) unwinds like ^C: every host is cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.what == "_probe":
        asyncio.run(_probe(args.root, args.mode, args.key))
    elif args.what == "report":
        report()
    elif args.what == "all":
        for name in BENCHES:
            run(name, args)
    else:
        run(args.what, args)


if __name__ == "__main__":
    main()
