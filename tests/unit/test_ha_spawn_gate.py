"""No HA VM is ever unguarded (docs/cluster.md, "HA and fencing"): the fence guard finds
the QEMUs of armed UUIDs in /proc (only in its own network namespace), decides from the
arm file as it is at the moment of fencing, and the launcher arms the guard for an HA
VM before it spawns its QEMU, or refuses the start when the host's lease is stale.

/proc is a fake tree here (``<pid>/cmdline``, ``<pid>/stat``, ``<pid>/ns/net`` as a
symlink, ``self``), and the kill a recorder: no real process is touched.  The launcher
runs for real up to the spawn, which a fake stands in for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from virtkit.cluster.fence import GUARD_MARGIN, Fencer
from virtkit.cluster.guard import (
    Arming,
    FenceTarget,
    qemu_uuid,
    qemus_here,
    read_arming,
    sweep,
)
from virtkit.errors import StateError
from virtkit.model.host import HostCaps
from virtkit.model.load import dump_domain, load_domain
from virtkit.paths import StatePaths
from virtkit.runtime import launcher
from virtkit.runtime.events import EventBus
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service.cluster import ClusterService
from virtkit.store.db import Store

OURS, THEIRS = "net:[4026531840]", "net:[4026532999]"
HA = "6f1c2d3e-4b5a-4697-8a8b-9c0d1e2f3a4b"
OTHER = "0b7f6a3e-5d2c-4e1a-9f8b-7c6d5e4f3a21"
QEMU = "/usr/bin/qemu-system-x86_64"


class FakeProc:
    """A /proc tree: add processes, see what a sweep kills."""

    def __init__(self, root: Path, netns: str = OURS) -> None:
        self.root = root
        (root / "self" / "ns").mkdir(parents=True)
        (root / "self" / "ns" / "net").symlink_to(netns)
        self.killed: list[int] = []

    def add(self, pid: int, argv: list[str], *, netns: str = OURS, start: int = 1000) -> None:
        folder = self.root / str(pid)
        (folder / "ns").mkdir(parents=True)
        (folder / "ns" / "net").symlink_to(netns)  # readlink works on a dangling link
        (folder / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
        (folder / "stat").write_text(f"{pid} (x y) {' '.join(fields)}\n")

    def kill(self, pid: int, _signal: int) -> None:
        self.killed.append(pid)


def qemu(uuid: str) -> list[str]:
    return [QEMU, "-name", "guest=vm", "-uuid", uuid, "-machine", "q35"]


def test_qemu_uuid_reads_qemu_and_its_confining_wrapper_only() -> None:
    assert qemu_uuid(qemu(HA)) == HA
    assert qemu_uuid(["setpriv", "--reuid=4242", "sh", "-c", "exec \"$@\"", "x",
                      *qemu(HA)]) == HA  # before the wrapper's exec: the same PID
    assert qemu_uuid(["grep", "-uuid", HA]) is None
    assert qemu_uuid([QEMU, "-name", "vm"]) is None
    assert qemu_uuid([]) is None


def test_the_proc_scan_finds_qemus_in_our_network_namespace_only(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(100, qemu(HA))
    proc.add(101, qemu(HA), netns=THEIRS)  # another test host's copy: never ours
    proc.add(102, qemu(OTHER))
    proc.add(103, ["python3", "monitor.py", "-uuid", HA])  # not a QEMU
    proc.add(104, ["setpriv", "--reuid=4242", *qemu(HA)], start=2000)
    (tmp_path / "105").mkdir()  # a process that ended while we looked
    (tmp_path / "net").mkdir()  # not a process
    found = qemus_here(tmp_path)
    assert sorted(found, key=lambda t: t.pid) == [
        FenceTarget(HA, 100, 1000), FenceTarget(OTHER, 102, 1000), FenceTarget(HA, 104, 2000)]
    # from the other namespace, the other side
    assert qemus_here(tmp_path, THEIRS) == [FenceTarget(HA, 101, 1000)]


def test_a_sweep_kills_every_qemu_of_an_armed_uuid_once_the_deadline_passed(
        tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(100, qemu(HA))
    proc.add(101, qemu(HA), netns=THEIRS)
    proc.add(102, qemu(OTHER))
    armed = Arming(50.0, (), frozenset({HA}))
    _read, killed = sweep(lambda: armed, lambda: 49.9, proc=tmp_path, kill=proc.kill)
    assert killed == [] and proc.killed == []  # not yet
    _read, killed = sweep(lambda: armed, lambda: 50.0, proc=tmp_path, kill=proc.kill)
    assert [t.pid for t in killed] == proc.killed == [100]
    # a target told by PID whose PID now runs another QEMU is not hit
    told = Arming(50.0, (FenceTarget("a-vm-that-ended", 102, 999),))
    assert sweep(lambda: told, lambda: 60.0, proc=tmp_path, kill=proc.kill)[1] == []


def test_a_sweep_decides_from_the_file_as_it_is_when_it_fences(tmp_path: Path) -> None:
    """The order that makes the arm file's state at the moment of fencing decide: the
    QEMUs are listed first, the file is read after.  A renewal written meanwhile stops
    the fence; a UUID armed meanwhile (its QEMU was spawned after the arming, so it is
    in the list) is fenced."""
    proc = FakeProc(tmp_path)
    proc.add(100, qemu(HA))
    late = Arming(50.0, (), frozenset({OTHER}))
    renewed = Arming(80.0, (), frozenset({HA}))
    reads = iter([renewed])
    assert sweep(lambda: next(reads), lambda: 60.0, proc=tmp_path, kill=proc.kill)[1] == []
    reads = iter([Arming(50.0, (), frozenset({OTHER, HA}))])  # armed before its spawn
    assert [t.pid for t in sweep(lambda: next(reads), lambda: 60.0, proc=tmp_path,
                                 kill=proc.kill)[1]] == [100]
    # a QEMU that appears after the list is the next pass's: never one the file did
    # not arm when it was listed
    proc.killed.clear()

    def spawn_after_listing() -> Arming:
        proc.add(101, qemu(OTHER))
        return late

    assert sweep(spawn_after_listing, lambda: 60.0, proc=tmp_path, kill=proc.kill)[1] == []
    assert [t.pid for t in sweep(lambda: late, lambda: 60.0, proc=tmp_path,
                                 kill=proc.kill)[1]] == [101]


# -- the launcher: armed before spawn, refused on a stale lease ---------------------------


class Spawned(Exception):
    """The fake spawn stops the start here (what the arm file said is recorded)."""


class Clock:
    def __init__(self, age: float) -> None:
        self.renewed = time.monotonic() - age


def _host(tmp_path: Path, age: float, *, ha: bool) -> tuple[Lifecycle, ClusterService, Store]:
    store = Store(tmp_path / "state.db")
    domain = load_domain({"name": "vm", "uuid": HA, "memory": 64, "ha": ha})
    store.insert_domain(HA, "vm", dump_domain(domain))
    cluster = ClusterService(store, tmp_path / "cluster")
    cluster.folder.mkdir()
    cluster.config_file.write_text(json.dumps({"cluster": "lab", "host": "a"}))
    clock = Clock(age)
    cluster.fencer = Fencer(lambda: clock.renewed, cluster._ha_vms, cluster.guard, ttl=5.0)
    life = Lifecycle(store, EventBus(store), StatePaths(tmp_path / "root"),
                     lambda _d: (HostCaps(accel="tcg"), "qemu"),
                     lambda _uuid: load_domain(store.get_domain(HA).spec))
    life.spawn_gate = cluster.spawn_gate
    return life, cluster, store


def _fake_spawn(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[Arming | None]:
    seen: list[Arming | None] = []

    def spawn(argv: list[str], **_: Any) -> Any:
        seen.append(read_arming(folder))
        raise Spawned(" ".join(argv))

    monkeypatch.setattr(launcher.QemuProcess, "spawn", spawn)
    monkeypatch.setattr(launcher, "build_argv", lambda domain, *_: qemu(domain.uuid))
    return seen


async def test_the_guard_file_names_an_ha_vm_before_its_qemu_is_spawned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    life, cluster, store = _host(tmp_path, 0.2, ha=True)
    seen = _fake_spawn(monkeypatch, cluster.guard.folder)
    try:
        with pytest.raises(Spawned):
            await life.start(HA, "vm")
        (arming,) = seen
        assert arming is not None and HA in arming.armed
        assert arming.deadline > time.monotonic()
        assert cluster.fencer is not None
        assert arming.deadline == pytest.approx(cluster.fencer.basis + 5.0 - GUARD_MARGIN)
    finally:
        await life.close()
        store.close()


async def test_an_ha_vm_is_not_spawned_on_a_stale_lease(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    life, cluster, store = _host(tmp_path, 2.8, ha=True)
    seen = _fake_spawn(monkeypatch, cluster.guard.folder)
    try:
        with pytest.raises(StateError, match=r"cannot start HA VM 'vm' here: this host's "
                                             r"cluster lease was last renewed 2\.8 s ago"):
            await life.start(HA, "vm")
        assert seen == []  # never spawned
        assert store.get_runtime(HA).state == "shutoff"
    finally:
        await life.close()
        store.close()


async def test_a_vm_that_is_not_ha_starts_whatever_the_lease(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    life, cluster, store = _host(tmp_path, 30.0, ha=False)
    seen = _fake_spawn(monkeypatch, cluster.guard.folder)
    try:
        with pytest.raises(Spawned):
            await life.start(HA, "vm")
        assert seen == [None]  # spawned, nothing armed
    finally:
        await life.close()
        store.close()


async def test_an_ha_vm_waits_for_the_fencer_of_a_daemon_in_a_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    life, cluster, store = _host(tmp_path, 0.0, ha=True)
    cluster.fencer = None  # the cluster part has not started yet
    seen = _fake_spawn(monkeypatch, cluster.guard.folder)
    try:
        with pytest.raises(StateError, match="fencing has not started"):
            await life.start(HA, "vm")
        assert seen == []
    finally:
        await life.close()
        store.close()


async def test_a_migration_in_of_an_ha_vm_is_refused_on_a_stale_lease(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The incoming QEMU goes through the same gate: a host whose lease is stale does not
    take an HA VM in (the source keeps it)."""
    life, cluster, store = _host(tmp_path, 2.8, ha=True)
    seen = _fake_spawn(monkeypatch, cluster.guard.folder)
    try:
        vm = life.vm(HA, "vm")
        async with vm.lock:
            with pytest.raises(StateError, match=r"last renewed 2\.8 s ago"):
                await life.start_incoming(vm, load_domain(store.get_domain(HA).spec))
        assert seen == []
    finally:
        await life.close()
        store.close()
