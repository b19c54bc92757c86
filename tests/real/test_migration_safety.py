"""Live migration's safety invariants with two real daemons (docs/migration.md,
"Safety invariants" 2 and 4 of docs/architecture.md):

- one runner per VM: at no instant do both daemons report the VM running;
- nothing stranded: a destination daemon killed mid-way leaves the VM running on the
  source, and after its restart the destination holds no QEMU, no definition and no
  image it created;
- definitions name the files the VM really uses (ping-pong with --disk-path).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, running_daemon, wait_for
from tests.real.test_migration import _booted, _job, _local_disk, _migrate, _names
from virtkit.cli.client import ApiError
from virtkit.errors import VirtkitError
from virtkit.images.tinyguest import TinyGuest

pytestmark = pytest.mark.qemu


@pytest.fixture
def pair(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, DaemonHandle]]:
    with running_daemon(tiny_guest) as source, running_daemon(tiny_guest) as destination:
        yield source, destination


def _state(handle: DaemonHandle, name: str) -> str | None:
    try:
        return handle.state(name)
    except (ApiError, VirtkitError, OSError):
        return None  # not defined there, or the daemon is down


class Poller:
    """Asks both daemons for the domain's state again and again (the destination
    first: it is the one that starts running, so a 'both running' window is seen)."""

    def __init__(self, one: DaemonHandle, other: DaemonHandle, name: str) -> None:
        self.handles, self.name = (one, other), name
        self.samples = 0
        self.both: list[tuple[str | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            second = _state(self.handles[1], self.name)
            first = _state(self.handles[0], self.name)
            self.samples += 1
            if first == second == "running":
                self.both.append((first, second))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_never_both_running_and_the_source_says_paused_migrating(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """Ping-pong a few times while a poller watches both daemons; the source reports
    paused (reason 'migrating') from its vCPUs' stop until it hands over."""
    a, b = pair
    _booted(a, "safe1")
    hosts = [a, b]
    results = []
    with Poller(a, b, "safe1") as poller:
        for hop in range(4):
            source, destination = hosts[hop % 2], hosts[(hop + 1) % 2]
            results.append(_migrate(source, destination, "safe1"))
            wait_for(lambda s=source: _state(s, "safe1") != "running", 10,
                     "the source to let go")
    assert poller.samples > 20 and poller.both == [], (poller.samples, poller.both)
    for result in results:
        assert result["destination"]["state"] == "running"
        # the guest-visible pause: the source's vCPU stop to the destination's cont
        assert result["downtime_ms"] >= result["qemu_downtime_ms"] >= 0, result
    assert "ok-2" in a.console_run("safe1", "echo ok-$((1+1))", "ok-2")
    # a transient copy says so (virsh dominfo: Persistent: no)
    _migrate(a, b, "safe1")
    assert re.search(r"^Persistent:\s+no$", b.cli("dominfo", "safe1").stdout, re.M)
    assert re.search(r"^Persistent:\s+yes$", a.cli("dominfo", "safe1").stdout, re.M)


def test_the_destination_daemon_killed_during_the_disk_copy(
        pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    """kill -9 of the destination daemon while disks are copied: the source notices
    (keepalive), cancels and runs on; the restarted destination removes its incoming
    QEMU, the transient definition and the image it created."""
    source, destination = pair
    disk = _local_disk(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    copy = tmp_path / "dst" / "disk.qcow2"
    _booted(source, "safe2", disks=[{"path": str(disk), "format": "qcow2"}])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _migrate(source, destination, "safe2", copy_storage_all=True,
                                         disk_paths={str(disk): str(copy)}, bandwidth=2)
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: _job(source, "safe2").get("disk_processed", 0) > 0, 60,
                 "the disk copy to progress")
        destination.kill9()
        killed = time.monotonic()
    finally:
        thread.join(120)
    assert "error" in outcome, outcome
    assert "outcome unknown" not in str(outcome["error"]), outcome["error"]
    assert time.monotonic() - killed < 30
    info = source.info("safe2")
    assert info["state"] == "running", info
    assert "ok-3" in source.console_run("safe2", "echo ok-$((1+2))", "ok-3")
    destination.restart()
    assert "safe2" not in _names(destination)
    wait_for(lambda: destination.qemu_pids() == [], 15, "no QEMU on the destination")
    assert not copy.exists()
    repairs = destination.client.get("/v1/host/repairs")["repairs"]
    assert any("incoming migration" in r["repair"] for r in repairs), repairs


def test_the_destination_daemon_killed_while_memory_is_sent(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """The stream goes on between the QEMUs without the destination daemon; the
    source must not hand over to a host whose daemon cannot run the VM."""
    source, destination = pair
    _booted(source, "safe3")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _migrate(source, destination, "safe3", bandwidth=2)
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: _job(source, "safe3").get("status") == "active", 60, "the stream")
        destination.kill9()
    finally:
        thread.join(120)
    assert "error" in outcome, outcome
    assert source.info("safe3")["state"] == "running"
    assert "ok-4" in source.console_run("safe3", "echo ok-$((2+2))", "ok-4")
    destination.restart()
    assert "safe3" not in _names(destination)
    wait_for(lambda: destination.qemu_pids() == [], 15, "no QEMU on the destination")


def _answers(handle: DaemonHandle, name: str) -> bool:
    try:
        return "ok-77" in handle.console_run(name, "echo ok-$((70+7))", "ok-77", timeout=5)
    except AssertionError:
        return False


def test_ping_pong_with_disk_path_keeps_the_definition_on_the_real_files(
        pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    """A->B on shared storage, then B->A copying the disk to a new path (the refusal
    suggests --disk-path) without --persistent: A's own definition must name the new
    file, so destroy + start there boots what the guest wrote since."""
    a, b = pair
    disk = _local_disk(tmp_path / "old")
    new = tmp_path / "new" / "disk.qcow2"
    new.parent.mkdir()
    _booted(a, "safe4", disks=[{"path": str(disk), "format": "qcow2"}])
    _migrate(a, b, "safe4")  # shared storage: the same file
    with pytest.raises(ApiError, match="--disk-path"):
        _migrate(b, a, "safe4", copy_storage_all=True)
    _migrate(b, a, "safe4", copy_storage_all=True, disk_paths={str(disk): str(new)})
    spec = a.client.get(a.client.domain_path("safe4"))["spec"]
    assert spec["disks"][0]["path"] == str(new), spec["disks"]
    # domjobinfo of a VM that arrived by migration, during a disk copy: not 'completed'
    copy_back = tmp_path / "again" / "disk.qcow2"
    copy_back.parent.mkdir()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _migrate(a, b, "safe4", copy_storage_all=True, bandwidth=1,
                                         disk_paths={str(new): str(copy_back)})
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        job = wait_for(lambda: (j := _job(a, "safe4")).get("phase") == "copying disks" and j,
                       60, "the disk copy")
        assert job["status"] == "copying disks", job
        a.cli("domjobabort", "safe4")
    finally:
        thread.join(120)
    assert "error" in outcome
    a.console_run("safe4", "echo VKNEWDATA | dd of=/dev/vda bs=512 seek=40000 "
                  "conv=fsync oflag=direct 2>/dev/null; echo wr''ote", "wrote")
    a.client.post(a.client.domain_path("safe4", "/destroy"))
    a.client.post(a.client.domain_path("safe4", "/start"))
    a.wait_booted("safe4", count=2)
    # the shell may drop what is typed the moment it starts: wait until it echoes
    wait_for(lambda: _answers(a, "safe4"), 60, "the shell after the new boot", interval=0.5)
    out = a.console_run("safe4", "dd if=/dev/vda bs=512 skip=40000 count=1 2>/dev/null "
                        "| head -c 9; echo; echo rd''one", "rdone")
    assert "VKNEWDATA" in out, out
    assert not copy_back.exists()
