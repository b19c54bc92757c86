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

import pytest

from virtkit.cluster import guard as guardmod
from virtkit.cluster.fence import DAEMON_MARGIN, GUARD_MARGIN, Fencer
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


class Clock:
    """The last renewal's send time, as HostAgent.renewed gives it."""

    def __init__(self) -> None:
        self.renewed = time.monotonic()


def _fencer(tmp_path: Path, clock: Clock, targets: list[FenceTarget],
            fenced: list[list[FenceTarget]] | None = None) -> Fencer:
    return Fencer(lambda: clock.renewed, lambda: list(targets), GuardLink(tmp_path / "guard"),
                  ttl=TTL, fenced=fenced.append if fenced is not None else None)


def test_nothing_is_fenced_while_the_lease_is_renewed(tmp_path: Path,
                                                      qemus: list[FenceTarget]) -> None:
    clock = Clock()
    fencer = _fencer(tmp_path, clock, qemus)
    now = clock.renewed + TTL - DAEMON_MARGIN - 0.01
    assert fencer.step(now) == []
    assert fencer.fresh()
    armed = GuardLink(tmp_path / "guard").current()
    assert armed == Arming(clock.renewed + TTL - GUARD_MARGIN, tuple(qemus))
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
    clock = Clock()
    wrong_start = [FenceTarget(t.uuid, t.pid, t.start + 1) for t in qemus]
    wrong_uuid = [FenceTarget(str(uuidlib.uuid4()), t.pid, t.start) for t in qemus]
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
    fencer = Fencer(lambda: 0.0, list, link, ttl=TTL)
    assert fencer.basis == pytest.approx(earlier)
    # with no guard file at all the lease counts as already too old
    assert not Fencer(lambda: 0.0, list, GuardLink(tmp_path / "none"), ttl=TTL).fresh()


def test_due_takes_only_armed_late_untried_targets() -> None:
    a, b = FenceTarget("a", 1, 1), FenceTarget("b", 2, 2)
    armed = Arming(100.0, (a, b))
    assert due(None, 200.0, set()) == []
    assert due(Arming(100.0, ()), 200.0, set()) == []
    assert due(armed, 99.9, set()) == []
    assert due(armed, 100.0, set()) == [a, b]
    assert due(armed, 100.0, {a}) == [b]


def test_the_arm_file_round_trips_and_bad_content_is_no_arming(tmp_path: Path) -> None:
    arming = Arming(12.5, (FenceTarget("u", 10, 20),))
    guardmod.write_arming(tmp_path, arming)
    assert guardmod.read_arming(tmp_path) == arming
    for bad in (b"", b"{", b'{"deadline": 1}', b'{"deadline": "x", "targets": []}',
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
        records = [json.loads(line) for line in (folder / "fenced.log").read_text().splitlines()]
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
