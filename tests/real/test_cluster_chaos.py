"""Cluster chaos (docs/cluster.md, "HA and fencing"): three namespaced hosts, each a
daemon + etcd member, four HA VMs: three with their disk on a ``shared-dir`` pool, one
on a ``netfs`` pool (nfs-ganesha on the hosts' LAN, QEMU's libnfs); faults one at a
time while a monitor polls every QEMU on the machine every few milliseconds.

Faults: a host dies (daemon, etcd member, guard and QEMUs SIGKILLed, then the host boots
again), a daemon hangs (SIGSTOP, later SIGCONT), a host is cut off the network (its
cable down, later up again: the partition heals), the etcd leader is killed.

After each fault: no HA VM ever ran on two hosts at once (the monitor), every HA VM runs
again exactly once, and once the fault is healed every host is up and no host keeps a
stale copy (the host that was cut off or hung neither restarts nor resumes its fenced
VMs: the monitor would see two copies; it drops their definitions).  The etcd leader's
death disturbs no VM at all (same QEMUs).  No fault waits for the fence guard to learn
a QEMU's PID: the guard is armed by UUID before every spawn, so a fault may come at
once after a (re)start.

Reported per fault: seconds from the fault to every HA VM running again, from the heal
(the host back) to no stale copy left, and for a fence by the host itself (partition,
hung daemon) the margin between the fence and the first claim of its VMs elsewhere.

CI runs one round of each fault in a seeded order (``VIRTKIT_CLUSTER_CHAOS_SEED``);
``scripts/cluster-chaos.sh`` runs many rounds (``VIRTKIT_CLUSTER_CHAOS_ROUNDS``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

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
from tests.real.nfsserver import nfs_server
from virtkit.cluster.guard import read_arming
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

SEED = int(os.environ.get("VIRTKIT_CLUSTER_CHAOS_SEED", "18"))
ROUNDS = int(os.environ.get("VIRTKIT_CLUSTER_CHAOS_ROUNDS", "1"))
FAULTS = ("host-dies", "daemon-hangs", "partition", "leader-dies")
RECOVERY_TIMEOUT = 90.0
#: the NFS server's address on the hosts' LAN (the bridge's namespace)
NFS_ADDRESS = "192.0.2.20"


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
    """Three hosts in a cluster, each with the pools ``shd`` (shared-dir: a folder all
    see) and ``nfs1`` (netfs: an NFS server on their LAN)."""
    if shutil.which("ganesha.nfsd") is None or shutil.which("rpcbind") is None:
        pytest.fail("nfs-ganesha, nfs-ganesha-vfs and rpcbind are test packages "
                    "(scripts/setup.sh test)")
    mount = Path(tempfile.mkdtemp(prefix="vk-chaos-shared-", dir="/tmp"))
    os.chmod(mount, 0o755)
    try:
        with three_hosts() as handles:
            lan = handles["a"].lan[0]  # type: ignore[attr-defined]
            ip("-n", lan, "addr", "add", f"{NFS_ADDRESS}/24", "dev", "br0")
            with nfs_server(lan, NFS_ADDRESS) as nfs:
                form_cluster(handles, "chaos")
                for host, handle in handles.items():
                    handle.cli("pool-define-as", "shd", "shared-dir", "--target",
                               str(mount / "vms"))
                    handle.cli("pool-define-as", "nfs1", "nfs", "--source-host", nfs.host,
                               "--source-path", str(nfs.export))
                    if host == "a":  # the shared folder is made once
                        handle.cli("pool-build", "shd")
                    for pool in ("shd", "nfs1"):
                        handle.cli("pool-start", pool)
                yield handles
    finally:
        shutil.rmtree(mount, ignore_errors=True)


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
           uuids: dict[str, str]) -> list[str]:
    """The HA VMs whose host's guard is not armed for their UUID (armed before the
    spawn, so this holds at any moment a VM runs: no waiting)."""
    by_name = {name: uuid for uuid, name in uuids.items()}
    missing = []
    for name, host in where.items():
        arming = read_arming(handles[host].root / "cluster" / "guard")
        if arming is None or by_name[name] not in arming.armed:
            missing.append(f"{name} on {host}")
    return missing


def _log_time(line: str) -> float:
    """The wall-clock time of a daemon log line (``%(asctime)s``, local time)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log_lines(handle: DaemonHandle, marker: str, since: float) -> list[tuple[float, str]]:
    log = state_paths(handle.root).daemon_log
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    found = []
    for line in lines:
        if marker in line:
            with_time = _log_time(line) if re.match(r"\d{4}-\d\d-\d\d ", line) else 0.0
            if with_time >= since:
                found.append((with_time, line))
    return found


def _fence_times(handle: DaemonHandle, since: float) -> dict[str, float]:
    """uuid -> when the host fenced it (its daemon's log, its guard's fenced.log)."""
    fenced: dict[str, float] = {}
    for at, line in _log_lines(handle, "fenced the HA VMs", since):
        for uuid in re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", line):
            fenced.setdefault(uuid, at)
    log = handle.root / "cluster" / "guard" / "fenced.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        record = json.loads(line)
        if record["time"] >= since:
            for killed in record["killed"]:
                fenced[killed["uuid"]] = min(fenced.get(killed["uuid"], record["time"]),
                                             record["time"])
    return fenced


def _claim_times(handles: list[DaemonHandle], since: float) -> dict[str, float]:
    """uuid -> when another host claimed it (its log's "claimed here" line)."""
    claimed: dict[str, float] = {}
    for handle in handles:
        for at, line in _log_lines(handle, "claimed here", since):
            for uuid in re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", line):
                claimed[uuid] = min(claimed.get(uuid, at), at)
    return claimed


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


def _start_ha_vms(cluster: dict[str, DaemonHandle]) -> dict[str, str]:
    """ha-a, ha-b, ha-c on the shared-dir pool (one per host) and ha-nfs on the netfs
    pool (on a); uuid -> name."""
    uuids = {}
    for name, host, pool in [*((f"ha-{h}", h, "shd") for h in cluster), ("ha-nfs", "a", "nfs1")]:
        handle = cluster[host]
        handle.cli("vol-create-as", pool, f"{name}.raw", "4M", "--format", "raw")
        uuid = handle.client.post(f"/v1/domains?host={host}", {"spec": {
            "name": name, "memory": 64, "vcpus": 1,
            "disks": [{"pool": pool, "volume": f"{name}.raw"}]}})["uuid"]
        handle.cli("ha", "enable", name)
        handle.cli("start", name)
        uuids[uuid] = name
    return uuids


@dataclass
class Outcome:
    fault: str
    target: str
    recovered: float
    healed: float | None = None
    margin: float | None = None  # fence -> first claim elsewhere (the smallest over VMs)
    moved: list[str] = field(default_factory=list)

    def line(self, round_number: int) -> str:
        parts = [f"round {round_number} {self.fault} of {self.target}: "
                 f"{self.recovered:.1f} s to every HA VM running again"]
        if self.healed is not None:
            parts.append(f"{self.healed:.1f} s from the heal to no stale copy")
        if self.margin is not None:
            parts.append(f"fence -> claim margin {self.margin:.2f} s")
        parts.append(f"moved {self.moved or 'nothing'}")
        return ", ".join(parts)


def _summary(outcomes: list[Outcome]) -> str:
    lines = []
    for fault in FAULTS:
        mine = [o for o in outcomes if o.fault == fault]
        if not mine:
            continue
        times = [o.recovered for o in mine]
        line = (f"{fault}: {len(mine)} x, recovery min {min(times):.1f} / median "
                f"{statistics.median(times):.1f} / max {max(times):.1f} s")
        margins = [o.margin for o in mine if o.margin is not None]
        if margins:
            line += (f"; fence -> claim margin min {min(margins):.2f} / median "
                     f"{statistics.median(margins):.2f} s")
        lines.append(line)
    return "\n".join(lines)


def test_faults_never_run_an_ha_vm_twice_and_every_ha_vm_runs_again(
        cluster: dict[str, DaemonHandle]) -> None:
    rng = random.Random(SEED)
    uuids = _start_ha_vms(cluster)
    names = list(uuids.values())
    where = wait_for(lambda: _healthy(cluster, names), 60, "the HA VMs running")
    monitor = Monitor(uuids)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    outcomes: list[Outcome] = []
    report = []
    try:
        for round_number in range(ROUNDS):
            for fault in rng.sample(FAULTS, len(FAULTS)):
                # no wait for the guard: it is armed by UUID before every spawn
                assert not _armed(cluster, where, uuids), _armed(cluster, where, uuids)
                outcome = _fault(cluster, rng, fault, names, uuids)
                where = wait_for(lambda: _healthy(cluster, names), RECOVERY_TIMEOUT,
                                 f"the cluster healed after {fault} of {outcome.target}")
                if outcome.healed is not None:  # seconds from the heal to no stale copy
                    outcome.healed = time.monotonic() - outcome.healed
                outcome.moved = [n for n, h in where.items() if h != outcome.target
                                 and n in outcome.moved]
                outcomes.append(outcome)
                report.append(outcome.line(round_number + 1))
                assert not monitor.doubles, monitor.doubles
    finally:
        monitor.stop()
        thread.join(5)
    print("\n" + "\n".join(report) + "\n" + _summary(outcomes)
          + f"\nmonitor: {monitor.polls} polls, never two copies (seed {SEED})")
    assert not monitor.doubles, monitor.doubles
    assert monitor.polls > 100
    margins = [o.margin for o in outcomes if o.margin is not None]
    assert all(m > 0 for m in margins), f"a VM was claimed before its fence: {margins}"


def _fault(cluster: dict[str, DaemonHandle], rng: random.Random, fault: str,
           names: list[str], uuids: dict[str, str]) -> Outcome:
    """Inject ``fault``, wait until every HA VM runs again (and the fault is healed:
    the host back); what it took."""
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
    began, wall = time.monotonic(), time.time()
    outcome = Outcome(fault, target, 0.0, moved=list(hosting.get(target, [])))

    def recovered(what: str) -> None:
        wait_for(lambda: _recovered(cluster, uuids, survivors, fenced), RECOVERY_TIMEOUT,
                 f"HA VMs running again after {what}")
        outcome.recovered = time.monotonic() - began

    try:
        if fault == "host-dies":
            pids = handle.qemu_pids()
            handle.process.kill()
            handle.process.wait(10)
            kill_by_pidfile(handle.root / "cluster" / "etcd.pid")
            kill_by_pidfile(handle.root / "cluster" / "guard" / "guard.pid")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            recovered(f"{target} died")
            handle.process = start_daemon(handle.root, handle.netns)
            outcome.healed = time.monotonic()
        elif fault == "daemon-hangs":
            os.kill(handle.process.pid, signal.SIGSTOP)
            try:
                recovered(f"{target} hung")
            finally:
                resume(handle)
            outcome.healed = time.monotonic()
        elif fault == "partition":
            lan, port = handle.lan  # type: ignore[attr-defined]
            ip("-n", lan, "link", "set", port, "down")
            try:
                recovered(f"{target} was cut off")
            finally:
                ip("-n", lan, "link", "set", port, "up")
            outcome.healed = time.monotonic()
        else:  # leader-dies: the daemon restarts its member; no VM is disturbed
            pidfile = handle.root / "cluster" / "etcd.pid"
            old_member = pidfile.read_text()
            kill_by_pidfile(pidfile)
            wait_for(lambda: pidfile.read_text() != old_member
                     and _quorate(cluster[survivors[0]]), 60,
                     "the member restarted and three healthy voters with a leader")
            outcome.recovered = time.monotonic() - began
            after = {uuid: qemus_of(uuid) for uuid in uuids}
            assert after == before, f"the leader's death disturbed VMs: {before} {after}"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{target}'s side:\n{_diagnose(handle)}") from exc
    if fault in ("partition", "daemon-hangs") and fenced:
        fences = _fence_times(handle, wall)
        claims = _claim_times([cluster[h] for h in survivors], wall)
        gaps = [claims[u] - fences[u] for u in fenced if u in fences and u in claims]
        outcome.margin = min(gaps) if gaps else None
    return outcome
