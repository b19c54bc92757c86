"""Self-fencing against real QEMU (docs/cluster.md, "HA and fencing"): a one-host cluster
in a network namespace (its own etcd member), an HA VM and a plain VM running.

- etcd hangs (SIGSTOP): the daemon cannot renew its host lease and kills the HA QEMU
  before the lease could expire; the plain VM keeps running.
- the daemon hangs (SIGSTOP): the guard process kills the HA QEMU in its place.
- the daemon hangs a few milliseconds after it spawned an HA VM's QEMU, before it ever
  told the guard that QEMU's PID (the old one-second window): the guard, armed by UUID
  before the spawn, finds the QEMU in /proc and kills it all the same.

Each kill is checked against the lease: it happens before the lease's earliest expiry
(the last renewal's send time + TTL), which is what keeps another host from starting
the VM while it still runs here.  Once the lease is safe again, the cluster starts the
HA VM again (a new QEMU): this one-host cluster is its only host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.clusterhosts import resume
from tests.real.conftest import (
    OUTSIDE_PEER,
    DaemonHandle,
    TinyGuest,
    daemon_in_netns,
    wait_for,
)
from virtkit.cluster.fence import GUARD_MARGIN
from virtkit.cluster.guard import (
    Arming,
    FenceTarget,
    is_target_alive,
    qemu_uuid,
    read_arming,
)
from virtkit.host.procstat import start_ticks
from virtkit.paths import state_paths
from virtkit.qemu.process import is_our_qemu

pytestmark = pytest.mark.qemu


def _member_pid(root: Path) -> int:
    pid, start = (int(x) for x in (root / "cluster" / "etcd.pid").read_text().split())
    assert start_ticks(pid) == start, "the etcd member is not running"
    return pid


def _guard_pid(root: Path) -> tuple[int, int]:
    pid, start = (int(x) for x in (root / "cluster" / "guard" / "guard.pid").read_text().split())
    return pid, start


@pytest.fixture(scope="module")
def cluster_host(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    with daemon_in_netns(tiny_guest) as handle:
        handle.cli("cluster", "init", "--name", "solo", "--address", OUTSIDE_PEER)
        try:
            yield handle
        finally:
            root = handle.root
            with contextlib.suppress(Exception):
                os.kill(_member_pid(root), signal.SIGKILL)
            with contextlib.suppress(Exception):
                pid, start = _guard_pid(root)
                if start_ticks(pid) == start:
                    os.kill(pid, signal.SIGKILL)


def _armed_for(root: Path, uuid: str) -> Arming:
    """Wait until the guard is armed for ``uuid``'s QEMU."""
    folder = root / "cluster" / "guard"
    return wait_for(lambda: (a := read_arming(folder)) and uuid in {t.uuid for t in a.targets}
                    and a, 15, "the guard armed for the HA VM")


def _qemu(handle: DaemonHandle, name: str) -> tuple[int, int, str]:
    info = handle.info(name)
    target = next(t for t in _armed_for(handle.root, info["uuid"]).targets
                  if t.uuid == info["uuid"])
    return target.pid, target.start, info["uuid"]


def _start_pair(handle: DaemonHandle, ha: str, plain: str) -> None:
    for name in (ha, plain):
        handle.define(name)
    handle.cli("ha", "enable", ha)
    for name in (ha, plain):
        handle.cli("start", name)


def _wait_dead(pid: int, start: int, uuid: str, what: str) -> float:
    wait_for(lambda: not is_our_qemu(pid, start, uuid), 20, what)
    return time.monotonic()


def _wait_running_again(handle: DaemonHandle, name: str, old_pid: int) -> None:
    """Once this host's lease is safe again the cluster starts the fenced HA VM again (a
    new QEMU): this one-host cluster is its only host."""
    wait_for(lambda: (i := handle.info(name))["state"] == "running" and i["pid"] != old_pid,
             60, f"{name} running again after the fence")


def test_ha_enable_needs_a_cluster_and_is_kept_in_the_spec(cluster_host: DaemonHandle) -> None:
    handle = cluster_host
    handle.define("flagged")
    out = handle.cli("ha", "enable", "flagged").stdout
    assert "highly available" in out
    spec = handle.client.domain_path("flagged", "/spec")
    assert "ha: true" in handle.client.get(spec)["yaml"].splitlines()
    handle.cli("ha", "disable", "flagged")
    assert "ha: true" not in handle.client.get(spec)["yaml"].splitlines()
    missing = handle.cli("ha", "enable", "no-such-vm", check=False)
    assert missing.returncode == 1 and "failed to get domain" in missing.stderr
    handle.cli("undefine", "flagged")


def test_a_hung_etcd_makes_the_daemon_fence_only_its_ha_vm(cluster_host: DaemonHandle) -> None:
    handle = cluster_host
    _start_pair(handle, "ha-1", "plain-1")
    pid, start, uuid = _qemu(handle, "ha-1")
    plain = handle.info("plain-1")
    member = _member_pid(handle.root)
    armed = read_arming(handle.root / "cluster" / "guard")
    assert armed is not None
    os.kill(member, signal.SIGSTOP)
    try:
        killed_at = _wait_dead(pid, start, uuid, "the HA QEMU fenced while etcd hangs")
        # the lease was renewed at the latest when the guard was last armed: it cannot
        # expire before that renewal + TTL, and the fence came before it
        last = read_arming(handle.root / "cluster" / "guard")
        assert last is not None
        assert killed_at < last.deadline + GUARD_MARGIN, "fenced after the lease could expire"
        log = state_paths(handle.root).daemon_log.read_text(errors="replace")
        assert "fenced the HA VMs" in log and uuid in log
        # the plain VM was not touched
        assert handle.state("plain-1") == "running"
        assert handle.info("plain-1")["pid"] == plain["pid"]
    finally:
        os.kill(member, signal.SIGCONT)
    _wait_running_again(handle, "ha-1", pid)
    for name in ("ha-1", "plain-1"):
        handle.cli("destroy", name, check=False)
        handle.cli("undefine", name)


def test_a_hung_daemon_is_fenced_by_the_guard(cluster_host: DaemonHandle) -> None:
    handle = cluster_host
    _start_pair(handle, "ha-2", "plain-2")
    pid, start, uuid = _qemu(handle, "ha-2")
    guard_pid, _ = _guard_pid(handle.root)
    os.kill(handle.process.pid, signal.SIGSTOP)
    try:
        _wait_dead(pid, start, uuid, "the HA QEMU fenced by the guard while the daemon hangs")
        log = handle.root / "cluster" / "guard" / "fenced.log"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert uuid in {k["uuid"] for r in records for k in r["killed"]}
        assert records[-1]["late_s"] < 1.0
        assert start_ticks(guard_pid) is not None  # the guard lives on
    finally:
        resume(handle)
    _wait_running_again(handle, "ha-2", pid)
    assert handle.state("plain-2") == "running"
    for name in ("ha-2", "plain-2"):
        handle.cli("destroy", name, check=False)
        handle.cli("undefine", name)


def _fenced_pids(folder: Path) -> set[int]:
    try:
        lines = (folder / "fenced.log").read_text().splitlines()
        return {k["pid"] for line in lines for k in json.loads(line)["killed"]}
    except (OSError, ValueError):
        return set()


def _spawned(uuid: str, timeout: float) -> tuple[int, int] | None:
    """Poll /proc (about every millisecond) for the QEMU of ``uuid``: (pid, start)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(
                    errors="replace").split("\0")
            except OSError:
                continue
            start = start_ticks(int(entry))
            if qemu_uuid(argv) == uuid and start is not None:
                return int(entry), start
        time.sleep(0.001)
    return None


def test_a_daemon_hung_right_after_an_ha_spawn_is_fenced_by_the_guard(
        cluster_host: DaemonHandle) -> None:
    """The daemon is SIGSTOPped the moment the HA VM's QEMU appears (its start still
    under way), so the guard was never told that QEMU's PID: it must find it by UUID
    and kill it before the lease can expire.  Tried again in the rare case the daemon's
    once-a-second look had already recorded the PID (then the guard kills it too)."""
    handle = cluster_host
    handle.define("ha-3")
    handle.cli("ha", "enable", "ha-3")
    uuid = handle.info("ha-3")["uuid"]
    folder = handle.root / "cluster" / "guard"
    told = True
    for _attempt in range(5):
        # a fresh lease (the arming's deadline well ahead): the start is not refused
        wait_for(lambda: (a := read_arming(folder)) and a.deadline - time.monotonic() > 2.5,
                 30, "a freshly renewed lease")
        starting = subprocess.Popen([*handle.cli_argv(), "start", "ha-3"], env=handle.env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            found = _spawned(uuid, 60)
            assert found is not None, "the HA VM's QEMU never appeared"
            os.kill(handle.process.pid, signal.SIGSTOP)
            pid, start = found
            armed = read_arming(folder)
            assert armed is not None and uuid in armed.uuids, \
                "the guard was not armed by UUID before the spawn"
            told = pid in {t.pid for t in armed.targets}
            # the process found may still be QEMU's confining wrapper (it execs QEMU
            # in the same PID): alive while it is either, by PID, start time and -uuid
            target = FenceTarget(uuid, pid, start)
            wait_for(lambda t=target: not is_target_alive(t), 20,
                     "the guard killed the HA QEMU of the hung daemon")
            killed_at = time.monotonic()
            # the lease was renewed at the latest when the arming was last written: it
            # cannot expire before that renewal + TTL
            assert killed_at < armed.deadline + GUARD_MARGIN, "fenced after the lease could expire"
            wait_for(lambda p=pid: p in _fenced_pids(folder), 10, "the kill in fenced.log")
        finally:
            resume(handle)
            starting.wait(120)
        handle.cli("destroy", "ha-3", check=False)
        wait_for(lambda: handle.state("ha-3") != "running", 60, "ha-3 down")
        if not told:
            break
    assert not told, "the daemon recorded the QEMU's PID before it could be stopped, 5 times"
    handle.cli("ha", "disable", "ha-3")
    handle.cli("undefine", "ha-3")
