"""Cluster chaos (docs/cluster.md, "HA and fencing"): three namespaced hosts, each a
daemon + etcd member, three HA VMs; faults one at a time while a monitor polls every
QEMU on the machine every few milliseconds.

Faults: a host dies (daemon, etcd member, guard and QEMUs SIGKILLed, then the host boots
again), a daemon hangs (SIGSTOP, later SIGCONT), a host is cut off the network (its
cable down, later up again), the etcd leader is killed.

After each fault: no HA VM ever ran on two hosts at once (the monitor), every HA VM runs
again exactly once, and once the fault is healed every host is up and no host keeps a
stale copy.  The etcd leader's death disturbs no VM at all (same QEMUs).

CI runs one round of each fault in a seeded order (``VIRTKIT_CLUSTER_CHAOS_SEED``);
``scripts/cluster-chaos.sh`` runs many rounds (``VIRTKIT_CLUSTER_CHAOS_ROUNDS``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.real.clusterhosts import (
    form_cluster,
    ip,
    kill_by_pidfile,
    qemus_of,
    resume,
    three_hosts,
    up_hosts,
)
from tests.real.conftest import DaemonHandle, start_daemon, wait_for
from virtkit.cluster.guard import read_arming
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

SEED = int(os.environ.get("VIRTKIT_CLUSTER_CHAOS_SEED", "18"))
ROUNDS = int(os.environ.get("VIRTKIT_CLUSTER_CHAOS_ROUNDS", "1"))
FAULTS = ("host-dies", "daemon-hangs", "partition", "leader-dies")
RECOVERY_TIMEOUT = 90.0


@dataclass
class Monitor:
    """Polls every QEMU of the watched UUIDs; remembers the worst it saw."""

    uuids: dict[str, str]  # uuid -> name
    polls: int = 0
    doubles: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for uuid, name in self.uuids.items():
                pids = qemus_of(uuid)
                if len(pids) > 1:
                    self.doubles.append(f"{name}: QEMUs {pids} at {time.monotonic():.3f}")
            self.polls += 1
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, DaemonHandle]]:
    with three_hosts() as handles:
        form_cluster(handles, "chaos")
        yield handles


def _rows(handle: DaemonHandle) -> dict[str, dict[str, object]]:
    return {str(r["name"]): r for r in handle.client.get("/v1/domains?all=1&cluster=1")}


def _healthy(handles: dict[str, DaemonHandle], names: list[str]) -> dict[str, str] | None:
    """{vm: host} when every host is up, every HA VM runs once and no host has a stale
    copy; else None."""
    a = handles["a"]
    try:
        if any(up_hosts(h) != set(handles) for h in handles.values()):
            return None
        rows = _rows(a)
        where = {n: str(rows[n]["host"]) for n in names
                 if n in rows and rows[n]["state"] == "running"}
        if len(where) != len(names):
            return None
        for host, handle in handles.items():
            local = {r["name"] for r in handle.client.get("/v1/domains?all=1")}
            if any(n in local and where[n] != host for n in names):
                return None  # a stale copy is still defined there
    except Exception:  # a host restarting: not healthy yet
        return None
    return where


def _running_once(handles: dict[str, DaemonHandle], uuids: dict[str, str],
                  survivors: list[str]) -> bool:
    """Every HA VM has one QEMU and a survivor reports it running."""
    if any(len(qemus_of(uuid)) != 1 for uuid in uuids):
        return False
    try:
        rows = _rows(handles[survivors[0]])
    except Exception:
        return False
    return all(rows.get(name, {}).get("state") == "running" for name in uuids.values())


def _diagnose(handle: DaemonHandle) -> str:
    """What the target host's guard and daemon said (for a failed wait)."""
    guard = handle.root / "cluster" / "guard"
    parts = []
    for path in (guard / "arm.json", guard / "fenced.log", guard / "guard.log",
                 guard / "guard.pid"):
        parts.append(f"{path.name}: {path.read_text()[-1500:] if path.exists() else '-'}")
    log = state_paths(handle.root).daemon_log
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    parts.append("daemon: " + "\n".join(line for line in lines if "cluster" in line)[-2500:])
    return "\n".join(parts)


def _armed(handles: dict[str, DaemonHandle], where: dict[str, str],
           uuids: dict[str, str]) -> bool:
    """Every HA VM's QEMU is in its host's guard arming (the daemon refreshes it each
    second: a VM is not fenced in the first second after it starts, docs/cluster.md)."""
    by_name = {name: uuid for uuid, name in uuids.items()}
    for name, host in where.items():
        arming = read_arming(handles[host].root / "cluster" / "guard")
        pids = qemus_of(by_name[name])
        if arming is None or not pids or not any(
                t.uuid == by_name[name] and t.pid == pids[0] for t in arming.targets):
            return False
    return True


def _recovered(handles: dict[str, DaemonHandle], uuids: dict[str, str],
               survivors: list[str], fenced: dict[str, list[int]]) -> bool:
    """The target's HA QEMUs are gone (fenced) and every HA VM runs once again."""
    return not any(pid in qemus_of(uuid) for uuid, pids in fenced.items() for pid in pids) \
        and _running_once(handles, uuids, survivors)


def _hosting(handles: dict[str, DaemonHandle], names: list[str]) -> dict[str, list[str]]:
    where = _healthy(handles, names) or {}
    found: dict[str, list[str]] = {h: [] for h in handles}
    for name, host in where.items():
        found[host].append(name)
    return found


def _quorate(handle: DaemonHandle) -> bool:
    status = handle.client.get("/v1/cluster")
    return bool(status["leader"]) and status["healthy"] == 3


def _leader(handle: DaemonHandle) -> str:
    leader = handle.client.get("/v1/cluster")["leader"]
    assert leader, "no etcd leader"
    return str(leader)


def test_faults_never_run_an_ha_vm_twice_and_every_ha_vm_runs_again(
        cluster: dict[str, DaemonHandle]) -> None:
    rng = random.Random(SEED)
    names = [f"ha-{host}" for host in cluster]
    uuids = {}
    for name, (host, handle) in zip(names, cluster.items(), strict=True):
        uuid = handle.client.post(f"/v1/domains?host={host}", {
            "spec": {"name": name, "memory": 64, "vcpus": 1}})["uuid"]
        handle.cli("ha", "enable", name)
        handle.cli("start", name)
        uuids[uuid] = name
    where = wait_for(lambda: _healthy(cluster, names), 60, "three HA VMs running")
    wait_for(lambda: _armed(cluster, where, uuids), 30, "every HA VM in its guard's arming")
    monitor = Monitor(uuids)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    report = []
    try:
        for round_number in range(ROUNDS):
            for fault in rng.sample(FAULTS, len(FAULTS)):
                hosting = _hosting(cluster, names)
                if fault == "leader-dies":
                    target = _leader(cluster["a"])
                else:
                    target = rng.choice(sorted(h for h, vms in hosting.items() if vms))
                survivors = [h for h in cluster if h != target]
                handle = cluster[target]
                before = {uuid: qemus_of(uuid) for uuid in uuids}
                fenced = {uuid: before[uuid] for uuid, name in uuids.items()
                          if name in hosting.get(target, [])}
                began = time.monotonic()
                try:
                    if fault == "host-dies":
                        pids = handle.qemu_pids()
                        handle.process.kill()
                        handle.process.wait(10)
                        kill_by_pidfile(handle.root / "cluster" / "etcd.pid")
                        kill_by_pidfile(handle.root / "cluster" / "guard" / "guard.pid")
                        for pid in pids:
                            os.kill(pid, signal.SIGKILL)
                        wait_for(lambda s=survivors, f=fenced: _recovered(cluster, uuids, s, f),
                                 RECOVERY_TIMEOUT, f"HA VMs running again after {target} died")
                        recovered = time.monotonic() - began
                        handle.process = start_daemon(handle.root, handle.netns)
                    elif fault == "daemon-hangs":
                        os.kill(handle.process.pid, signal.SIGSTOP)
                        try:
                            wait_for(lambda s=survivors, f=fenced: _recovered(cluster, uuids, s, f),
                                     RECOVERY_TIMEOUT, f"HA VMs running again after {target} hung")
                            recovered = time.monotonic() - began
                        finally:
                            resume(handle)
                    elif fault == "partition":
                        lan, port = handle.lan  # type: ignore[attr-defined]
                        ip("-n", lan, "link", "set", port, "down")
                        try:
                            wait_for(lambda s=survivors, f=fenced: _recovered(cluster, uuids, s, f),
                                     RECOVERY_TIMEOUT, f"HA VMs running again, {target} cut off")
                            recovered = time.monotonic() - began
                        finally:
                            ip("-n", lan, "link", "set", port, "up")
                    else:  # leader-dies: the daemon restarts its member; no VM is disturbed
                        pidfile = handle.root / "cluster" / "etcd.pid"
                        old_member = pidfile.read_text()
                        kill_by_pidfile(pidfile)
                        wait_for(lambda s=survivors, p=pidfile, o=old_member: p.read_text() != o
                                 and _quorate(cluster[s[0]]), 60,
                                 "the member restarted and three healthy voters with a leader")
                        recovered = time.monotonic() - began
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{target}'s side:\n{_diagnose(handle)}") from exc
                where = wait_for(lambda: _healthy(cluster, names), RECOVERY_TIMEOUT,
                                 f"the cluster healed after {fault} of {target}")
                wait_for(lambda w=where: _armed(cluster, w, uuids), 30,
                         "every HA VM in its guard's arming again")
                if fault == "leader-dies":
                    after = {uuid: qemus_of(uuid) for uuid in uuids}
                    assert after == before, f"the leader's death disturbed VMs: {before} {after}"
                moved = [n for n in hosting.get(target, []) if where[n] != target]
                report.append(f"round {round_number + 1} {fault} of {target}: "
                              f"{recovered:.1f} s to recover, moved {moved or 'nothing'}")
                assert not monitor.doubles, monitor.doubles
    finally:
        monitor.stop()
        thread.join(5)
    print("\n" + "\n".join(report) + f"\nmonitor: {monitor.polls} polls, never two copies "
          f"(seed {SEED})")
    assert not monitor.doubles, monitor.doubles
    assert monitor.polls > 100
