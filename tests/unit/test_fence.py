"""Self-fencing (cluster/fence.py) and the fence guard (cluster/guard.py).

The targets are real processes that look like QEMU to the identity check (argv[0]
``qemu-system-x86_64`` and ``-uuid U``), so the kill path is the real one; the clock and
the lease renewals are given by the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.cluster import guard as guardmod
from virtkit.cluster.fence import DAEMON_MARGIN, GUARD_MARGIN, Fencer, HaVms
from virtkit.cluster.guard import Arming, FenceTarget, GuardLink, due, is_target_alive
from virtkit.host.procstat import start_ticks

TTL = 5.0


def _fake_qemu(uuid: str) -> subprocess.Popen[bytes]:
    """A sleeping process whose argv reads as the QEMU of ``uuid``."""
    return subprocess.Popen(["qemu-system-x86_64", "-c", "import time; time.sleep(600)",
                             "-uuid", uuid], executable=sys.executable)


def _wait_started(process: subprocess.Popen[bytes]) -> FenceTarget:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # argv is the new one once exec has happened
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        if argv[0] == b"qemu-system-x86_64":
            break
        time.sleep(0.01)
    uuid = process.args[-1]  # type: ignore[index]
    start = start_ticks(process.pid)
    assert start is not None
    return FenceTarget(str(uuid), process.pid, start)


@pytest.fixture
def qemus() -> Iterator[list[FenceTarget]]:
    processes = [_fake_qemu(str(uuidlib.uuid4())) for _ in range(2)]
    try:
        yield [_wait_started(p) for p in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _gone(target: FenceTarget) -> bool:
    deadline = time.monotonic() + 10
    while is_target_alive(target) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not is_target_alive(target)


def _fenced_log(folder: Path) -> list[dict[str, Any]]:
    """The guard's fenced.log (it is written just after the kill)."""
    log = folder / "fenced.log"
    until = time.monotonic() + 10
    while time.monotonic() < until:
        try:
            records = [json.loads(line) for line in log.read_text().splitlines()]
        except (OSError, ValueError):
            records = []
        if records:
            return records
        time.sleep(0.01)
    raise AssertionError("the guard wrote no fenced.log")


class Clock:
    """The last renewal's send time, as HostAgent.renewed gives it."""

    def __init__(self) -> None:
        self.renewed = time.monotonic()


def _ha(targets: list[FenceTarget]) -> HaVms:
    uuids = frozenset(t.uuid for t in targets)
    return HaVms(uuids, tuple(targets), uuids)


def _fencer(tmp_path: Path, clock: Clock, targets: list[FenceTarget],
            fenced: list[list[FenceTarget]] | None = None) -> Fencer:
    return Fencer(lambda: clock.renewed, lambda: _ha(targets), GuardLink(tmp_path / "guard"),
                  ttl=TTL, fenced=fenced.append if fenced is not None else None)


def test_nothing_is_fenced_while_the_lease_is_renewed(tmp_path: Path,
                                                      qemus: list[FenceTarget]) -> None:
    clock = Clock()
    fencer = _fencer(tmp_path, clock, qemus)
    now = clock.renewed + TTL - DAEMON_MARGIN - 0.01
    assert fencer.step(now) == []
    assert fencer.fresh()
    armed = GuardLink(tmp_path / "guard").current()
    assert armed == Arming(clock.renewed + TTL - GUARD_MARGIN, tuple(qemus),
                           frozenset(t.uuid for t in qemus))
    # a renewal moves both deadlines on
    clock.renewed += 10
    assert fencer.step(now + 10) == []
    assert all(is_target_alive(t) for t in qemus)
    assert GuardLink(tmp_path / "guard").current().deadline == clock.renewed + TTL - GUARD_MARGIN


def test_a_late_renewal_fences_the_ha_qemus_before_the_lease_can_expire(
        tmp_path: Path, qemus: list[FenceTarget]) -> None:
    clock, told = Clock(), []
    fencer = _fencer(tmp_path, clock, qemus, told)
    assert fencer.step(clock.renewed + TTL - DAEMON_MARGIN) == qemus
    assert all(_gone(t) for t in qemus)
    assert told == [qemus]
    # the daemon fences first, the guard after it, both before the earliest expiry
    assert clock.renewed + TTL - DAEMON_MARGIN < GuardLink(tmp_path / "guard").current().deadline
    assert GUARD_MARGIN >= 1.0  # the goal: >= 1 s before another host can claim
    assert fencer.step(clock.renewed + TTL) == []  # nothing left to fence, no repeat


def test_a_reused_pid_is_never_killed(tmp_path: Path, qemus: list[FenceTarget]) -> None:
    """A target whose PID now belongs to another process (another start time, or the
    QEMU of another VM) is not killed: only QEMUs of an armed UUID are."""
    clock = Clock()
    other = str(uuidlib.uuid4())
    wrong_start = [FenceTarget(other, t.pid, t.start + 1) for t in qemus]
    wrong_uuid = [FenceTarget(other, t.pid, t.start) for t in qemus]
    for targets in (wrong_start, wrong_uuid):
        fencer = _fencer(tmp_path, clock, targets)
        assert fencer.step(clock.renewed + TTL) == []
    assert all(is_target_alive(t) for t in qemus)


def test_a_new_daemon_counts_from_the_deadline_the_guard_holds(tmp_path: Path) -> None:
    """Started while etcd is away, a daemon cannot know when the lease was renewed: it
    takes the previous daemon's word (the guard's deadline), not a fresh budget."""
    link = GuardLink(tmp_path / "guard")
    earlier = time.monotonic() - 1.0
    link.arm(Arming(earlier + TTL - GUARD_MARGIN, ()))
    fencer = Fencer(lambda: 0.0, HaVms, link, ttl=TTL)
    assert fencer.basis == pytest.approx(earlier)
    # with no guard file at all the lease counts as already too old
    assert not Fencer(lambda: 0.0, HaVms, GuardLink(tmp_path / "none"), ttl=TTL).fresh()


def test_due_needs_something_armed_and_the_deadline_passed() -> None:
    a = FenceTarget("a", 1, 1)
    assert not due(None, 200.0)
    assert not due(Arming(100.0, ()), 200.0)
    assert not due(Arming(100.0, (a,)), 99.9)
    assert due(Arming(100.0, (a,)), 100.0)
    assert due(Arming(100.0, (), frozenset({"b"})), 100.0)  # armed by UUID alone


def test_the_arm_file_round_trips_and_bad_content_is_no_arming(tmp_path: Path) -> None:
    arming = Arming(12.5, (FenceTarget("u", 10, 20),), frozenset({"u", "v"}))
    guardmod.write_arming(tmp_path, arming)
    assert guardmod.read_arming(tmp_path) == arming
    # the file of a daemon from before the UUID arming (no "uuids") still reads
    (tmp_path / guardmod.ARM_FILE).write_bytes(b'{"deadline": 1, "targets": []}')
    assert guardmod.read_arming(tmp_path) == Arming(1.0, ())
    for bad in (b"", b"{", b'{"deadline": 1}', b'{"deadline": "x", "targets": []}',
                b'{"deadline": 1, "targets": [], "uuids": "u"}',
                b'{"deadline": 1, "targets": [{"uuid": "u"}]}'):
        (tmp_path / guardmod.ARM_FILE).write_bytes(bad)
        assert guardmod.read_arming(tmp_path) is None


def test_the_guard_process_kills_when_the_daemon_stops_renewing(
        tmp_path: Path, qemus: list[FenceTarget]) -> None:
    """The real guard process: armed with a deadline that passes, it kills the targets and
    logs them; a second link adopts the same guard; stop ends it."""
    folder = tmp_path / "guard"
    link = GuardLink(folder)
    pid = link.ensure()
    try:
        assert GuardLink(folder).ensure() == pid  # adopted, not a second guard
        link.arm(Arming(time.monotonic() + 0.3, (qemus[0],)))
        assert _gone(qemus[0]), "the guard did not kill the target after its deadline"
        assert is_target_alive(qemus[1])  # not armed for it
        records = _fenced_log(folder)
        assert [r["killed"][0]["uuid"] for r in records] == [qemus[0].uuid]
        assert records[0]["late_s"] >= 0
    finally:
        link.stop()
    assert link.pid() is None


def test_ha_enable_outside_a_cluster_is_refused_and_disable_is_not(tmp_path: Path) -> None:
    from virtkit.errors import StateError
    from virtkit.service.cluster import ClusterService
    from virtkit.store.db import Store

    store = Store(tmp_path / "state.db")
    try:
        store.insert_domain(str(uuidlib.uuid4()), "vm", {"name": "vm", "memory": 64})
        service = ClusterService(store, tmp_path / "cluster")
        with pytest.raises(StateError, match="HA needs a cluster"):
            service.set_ha("vm", True)
        assert service.set_ha("vm", False) == {"name": "vm", "ha": False}
        assert store.get_domain("vm").spec["ha"] is False
    finally:
        store.close()


def test_the_fencer_kills_a_qemu_of_an_armed_uuid_it_has_no_pid_of(
        tmp_path: Path) -> None:
    """The old gap: a QEMU spawned after the fencer's last look at the store (refreshed
    each second) had no PID in the arming and outlived the fence.  Armed by UUID, it is
    found in /proc and killed; a QEMU of a UUID not armed is left alone."""
    clock = Clock()
    ha, plain = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    fencer = Fencer(lambda: clock.renewed, lambda: HaVms(frozenset({ha})),
                    GuardLink(tmp_path / "guard"), ttl=TTL)
    assert fencer.step(clock.renewed) == []  # looked: nothing of it runs yet
    processes = [_fake_qemu(ha), _fake_qemu(plain)]
    try:
        spawned, other = (_wait_started(p) for p in processes)
        killed = fencer.step(clock.renewed + TTL - DAEMON_MARGIN)
        assert killed == [spawned]
        assert _gone(spawned) and is_target_alive(other)
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_admit_arms_the_uuid_before_it_returns_and_refuses_a_stale_lease(
        tmp_path: Path) -> None:
    from virtkit.errors import StateError

    clock = Clock()
    link = GuardLink(tmp_path / "guard")
    fencer = Fencer(lambda: clock.renewed, HaVms, link, ttl=TTL)
    fencer.admit("u-1", "vm-1")
    arming = link.current()
    assert arming is not None and arming.uuids == {"u-1"}
    assert arming.deadline == clock.renewed + TTL - GUARD_MARGIN
    late = time.monotonic() - 2.6  # past TTL - DAEMON_MARGIN - START_MARGIN
    stale_link = GuardLink(tmp_path / "stale")
    stale = Fencer(lambda: late, HaVms, stale_link, ttl=TTL)
    with pytest.raises(StateError, match=r"'vm-2' here: this host's cluster lease was "
                                         r"last renewed 2\.6 s ago") as info:
        stale.admit("u-2", "vm-2", late + 2.6)
    assert "cluster status" in (info.value.fix or "")
    assert stale_link.current() is None and not stale.armed
    never = Fencer(lambda: 0.0, HaVms, GuardLink(tmp_path / "other"), ttl=TTL)
    with pytest.raises(StateError, match="not been renewed by this daemon yet"):
        never.admit("u-3", "vm-3")


def test_an_admitted_uuid_stays_armed_until_the_store_shows_it(tmp_path: Path) -> None:
    clock = Clock()
    known = [HaVms()]
    fencer = Fencer(lambda: clock.renewed, lambda: known[0], GuardLink(tmp_path / "g"),
                    ttl=TTL, refresh=0.0)
    now = clock.renewed
    fencer.admit("u-1", "vm", now)
    fencer.step(now + 0.1)  # the store does not show it yet: still armed
    assert fencer.armed == {"u-1"}
    fencer.step(now + 10)  # a start that failed: no QEMU, no definition
    assert fencer.armed == frozenset()
    fencer.admit("u-2", "vm", now)
    known[0] = HaVms(frozenset(), (), frozenset({"u-2"}))  # its QEMU runs: kept
    fencer.step(now + 10)
    assert fencer.armed == {"u-2"}
    known[0] = HaVms(frozenset({"u-2"}), (), frozenset({"u-2"}))  # defined as HA
    fencer.step(now + 10)
    assert fencer.armed == {"u-2"} and fencer._pending == {}


def test_the_guard_process_kills_a_qemu_spawned_after_it_was_armed_by_uuid(
        tmp_path: Path) -> None:
    """The real guard, armed by UUID only (as the daemon arms before a spawn), kills a
    QEMU that appeared after the arming once the deadline passes, and leaves the QEMU
    of another UUID alone."""
    folder = tmp_path / "guard"
    link = GuardLink(folder)
    link.ensure()
    ha, plain = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    processes = []
    try:
        deadline = time.monotonic() + 1.0
        link.arm(Arming(deadline, (), frozenset({ha})))
        processes = [_fake_qemu(ha), _fake_qemu(plain)]
        spawned, other = (_wait_started(p) for p in processes)
        assert _gone(spawned), "the guard did not kill the QEMU armed by UUID"
        assert time.monotonic() >= deadline
        assert is_target_alive(other)
        records = _fenced_log(folder)
        assert [k["pid"] for r in records for k in r["killed"]] == [spawned.pid]
    finally:
        link.stop()
        for process in processes:
            process.kill()
            process.wait()
