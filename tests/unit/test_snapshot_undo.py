"""A running external snapshot that QEMU refuses half way: quiesce thawed, every step undone.

The QEMU side is a scripted monitor (the real one is exercised by
tests/real/test_snapshots.py); the overlay files are real, made by qemu-img.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from virtkit.errors import QemuError
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.qemu.qmp import QmpCommands
from virtkit.runtime.lifecycle import Vm
from virtkit.runtime.snapshots import CreateRequest, SnapshotRuntime
from virtkit.store.db import Store

UUID = "6f1c0a52-3b8e-4a43-9c55-2d1f0e6f7a10"


class ScriptedMonitor(QmpCommands):
    """Answers the QMP commands of an external snapshot; refuses ``fail_on``."""

    def __init__(self, disk: str, fail_on: str) -> None:
        self.disk, self.fail_on = disk, fail_on
        self.sent: list[tuple[str, Any]] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      **_: Any) -> Any:
        self.sent.append((command, arguments))
        if command == self.fail_on:
            raise QemuError(f"QEMU refused {command}: scripted failure", command=command)
        if command == "query-block":
            return [{"qdev": "/machine/peripheral/disk0/virtio-backend",
                     "inserted": {"node-name": "drive-disk0", "file": self.disk,
                                  "drv": "qcow2"}}]
        return {}


class Quiesce:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def freeze(self) -> int:
        self.calls.append("freeze")
        return 1

    async def thaw(self) -> int:
        self.calls.append("thaw")
        return 1


class FakeLifecycle:
    def __init__(self, vm: Vm) -> None:
        self._vm = vm

    def vm(self, uuid: str, name: str | None = None) -> Vm:
        return self._vm


@pytest.mark.parametrize("fail_on", ["transaction", "blockdev-add"])
def test_refused_snapshot_thaws_and_undoes_everything(tmp_path: Path, fail_on: str) -> None:
    disk = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    store = Store(tmp_path / "db")
    spec = dump_domain(load_domain({"name": "vm", "uuid": UUID, "memory": 64,
                                    "disks": [{"path": str(disk), "format": "qcow2"}]}))
    store.insert_domain(UUID, "vm", spec)
    monitor = ScriptedMonitor(str(disk), fail_on)
    running: Any = SimpleNamespace(monitor=monitor, confinement=None)
    lifecycle: Any = FakeLifecycle(Vm(UUID, "vm", State.RUNNING, running=running))
    runtime = SnapshotRuntime(lifecycle, store, tmp_path / "mem")
    quiesce = Quiesce()
    request = CreateRequest("s1", kind="external", disk_only=True, quiescer=quiesce)

    with pytest.raises(QemuError):
        asyncio.run(runtime.create(UUID, "vm", request))

    assert quiesce.calls == ["freeze", "thaw"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.qcow2", "db", "db-shm",
                                                           "db-wal"]
    assert store.get_domain(UUID).spec == spec and store.list_snapshots(UUID) == []
    commands = [c for c, _ in monitor.sent]
    assert commands.index("cont") > commands.index("stop")  # the guest runs again
    added = [a["node-name"] for c, a in monitor.sent if c == "blockdev-add" and a]
    deleted = [a["node-name"] for c, a in monitor.sent if c == "blockdev-del" and a]
    if fail_on == "transaction":
        assert sorted(deleted) == sorted(added) and len(added) == 2
    store.close()
