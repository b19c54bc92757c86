"""The undo stack of a QEMU start (runtime/launcher.py) and of QEMU's end
(runtime/teardown.after_exit, Lifecycle._conclude_exit): whichever step fails, every
other one still runs, and the error the caller sees is the start's own.

QEMU is stood in for by ``sleep`` (a real process, so its kill is real); the
confiner, virtiofsd and the host devices are fakes that record, or raise.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from virtkit.errors import QemuError
from virtkit.host.pathpolicy import PathPolicy
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.paths import StatePaths
from virtkit.qemu.process import QemuProcess
from virtkit.runtime import launcher, teardown
from virtkit.runtime.events import EventBus
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.operation import Operation, OpKind
from virtkit.store.db import Store

UUID = "0b7f6a3e-5d2c-4e1a-9f8b-7c6d5e4f3a21"


class Broken(Exception):
    """A teardown step that fails."""


class FakeConf:
    uid = gid = 4242

    def spawn_options(self) -> dict[str, object]:
        return {}

    def joined(self, pid: int) -> None:
        pass


class FakeConfiner:
    def __init__(self, root: Path, fail: bool) -> None:
        self.fail = fail
        self.policy = PathPolicy.for_root(root)
        self.released: list[Any] = []

    def prepare(self, domain: Domain, caps: HostCaps, **_: Any) -> FakeConf:
        return FakeConf()

    def release(self, conf: Any) -> None:
        self.released.append(conf)
        if self.fail:
            raise Broken("release failed")


class FakeHelper:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        if self.fail:
            raise Broken("kill failed")

    def wait(self, timeout: float | None = None) -> int:
        return -9


STEPS = ["confinement", "hostdevs", "helpers", "qemu", "none"]


@pytest.mark.parametrize("failing", STEPS)
async def test_failed_start_undoes_every_step_even_when_one_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    paths = StatePaths(tmp_path / "root")
    channel = tmp_path / "guestfs.sock"
    domain = load_domain({"name": "vm", "uuid": UUID, "memory": 64,
                          "channels": [{"name": "org.libguestfs.channel.0",
                                        "path": str(channel)}]})
    confiner = FakeConfiner(paths.root, failing == "confinement")
    helper = FakeHelper(failing == "helpers")
    released: list[Any] = []
    spawned: list[QemuProcess] = []

    async def start_virtiofsd(*_: Any, **__: Any) -> list[Any]:
        return [helper]

    def release_hostdevs(drivers: dict[str, str | None]) -> None:
        released.append(drivers)
        if failing == "hostdevs":
            raise Broken("rebind failed")

    async def handshake(*_: Any) -> Any:
        assert channel.exists() and paths.run_dir(UUID).is_dir()
        raise QemuError("QEMU failed to start domain 'vm': scripted")

    end = launcher._end

    async def end_qemu(process: QemuProcess) -> None:
        if failing == "qemu":
            raise Broken("kill failed")
        await end(process)

    monkeypatch.setattr(launcher, "start_virtiofsd", start_virtiofsd)
    monkeypatch.setattr(launcher, "release_hostdevs", release_hostdevs)
    monkeypatch.setattr(launcher, "build_argv", lambda *_: ["sleep", "60"])
    monkeypatch.setattr(launcher, "_handshake", handshake)
    monkeypatch.setattr(launcher, "_end", end_qemu, raising=False)
    caps = HostCaps(accel="tcg")
    try:
        with pytest.raises(QemuError, match="scripted") as info:  # the start's own error
            await launcher.launch(domain, paths, lambda _d: (caps, "qemu"),
                                  confiner=confiner,  # type: ignore[arg-type]
                                  on_spawn=spawned.append)
        assert "stderr" in info.value.details
        (process,) = spawned
        assert not paths.run_dir(UUID).exists()
        assert not channel.exists()
        assert len(confiner.released) == 1 and isinstance(confiner.released[0], FakeConf)
        assert released == [{}]
        assert helper.killed
        if failing != "qemu":
            assert process.popen is not None and process.popen.poll() is not None
    finally:
        for process in spawned:
            if process.popen is not None and process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(timeout=10)


def fake_running(tmp_path: Path, failing: str, calls: list[str]) -> Any:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "qmp.sock").touch()
    channel = tmp_path / "chan.sock"
    channel.touch()

    def record(what: str) -> Any:
        def call(*_: Any) -> None:
            calls.append(what)
            if failing == what:
                raise Broken(what)
        return call

    async def closed(what: str) -> None:
        record(what)()

    return SimpleNamespace(
        process=SimpleNamespace(close=record("pidfd"), exit_status=lambda: 0),
        monitor=SimpleNamespace(close=lambda: closed("monitor")),
        agent=SimpleNamespace(close=lambda: closed("agent")),
        run_dir=run_dir,
        live=SimpleNamespace(channels=[SimpleNamespace(path=str(channel))]),
        helpers=[object()], stop_helpers=record("helpers"),
        hostdev_drivers={"0000:00:1f.0": None}, release_hostdevs=record("hostdevs"),
        confinement=FakeConf())


AFTER_EXIT = ["pidfd", "monitor", "agent", "helpers", "hostdevs", "confinement"]


@pytest.mark.parametrize("failing", [*AFTER_EXIT, "sockets", "none"])
async def test_after_exit_runs_every_step_even_when_one_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    calls: list[str] = []
    running = fake_running(tmp_path, failing, calls)
    confiner = FakeConfiner(tmp_path, failing == "confinement")
    if failing == "sockets":
        monkeypatch.setattr(teardown, "unlink_sockets", lambda _paths: calls.append(
            "sockets") or (_ for _ in ()).throw(Broken("sockets")))
    tasks: list[Awaitable[Any]] = []
    teardown.after_exit(running, confiner, tasks.append)  # type: ignore[arg-type]
    await asyncio.gather(*tasks, return_exceptions=True)
    assert set(calls) >= set(AFTER_EXIT) - {"confinement"}  # that one is the confiner's
    assert calls[0] == "pidfd"  # in the order of the start's undo: QEMU's first
    assert len(confiner.released) == 1 and running.confinement is None
    if failing != "sockets":
        assert not (running.run_dir / "qmp.sock").exists()
        assert not (tmp_path / "chan.sock").exists()


async def test_exit_is_recorded_when_the_release_fails(tmp_path: Path) -> None:
    """A confinement release that raises at QEMU's end used to leave the domain
    'running' with nobody told (destroy then waited for an exit that never came)."""
    store = Store(tmp_path / "db")
    domain = load_domain({"name": "vm", "uuid": UUID, "memory": 64})
    store.insert_domain(UUID, "vm", dump_domain(domain))
    confiner = FakeConfiner(tmp_path, fail=True)
    life = Lifecycle(store, EventBus(store), StatePaths(tmp_path / "root"),
                     lambda _d: (HostCaps(accel="tcg"), "qemu"), lambda _uuid: domain,
                     confiner=confiner)  # type: ignore[arg-type]
    vm = life.vm(UUID, "vm")
    vm.state = State.RUNNING
    calls: list[str] = []
    running = fake_running(tmp_path, "none", calls)
    vm.running = running
    vm.op = Operation.stop("destroyed")
    life._conclude_exit(vm, running)
    assert (vm.state, vm.reason, vm.running) == (State.SHUTOFF, "destroyed", None)
    assert vm.exited.is_set()
    assert vm.op.kind is OpKind.NONE
    assert store.get_runtime(UUID).state == "shutoff"
    assert len(confiner.released) == 1
    await life.close()


def test_helpers_of_a_failed_start_are_killed() -> None:
    helper = subprocess.Popen(["sleep", "60"])
    teardown.kill_helpers([helper])
    assert helper.poll() is not None
