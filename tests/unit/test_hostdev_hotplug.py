"""PCI host-device hotplug in the runtime (issue 19 item 2): a fresh QEMU id per
device, the driver binding undone when QEMU refuses, the live configuration kept,
and the runtime steps that need the VM's lock checking for it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from virtkit.errors import NotFound, QemuError
from virtkit.model.load import load_domain
from virtkit.model.tuning import HostDev
from virtkit.qemu.qmp import QmpCommands
from virtkit.runtime import hotplug
from virtkit.runtime.lifecycle import Vm, require_lock


class PciMonitor(QmpCommands):
    def __init__(self, present: list[str], refuse: bool = False) -> None:
        self.present = present
        self.refuse = refuse
        self.sent: list[tuple[str, Any]] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      **_: Any) -> Any:
        self.sent.append((command, arguments))
        if command == "query-pci":
            return [{"bus": 0, "devices": [{"qdev_id": i} for i in self.present]}]
        if command == "device_add" and self.refuse:
            raise QemuError("QEMU refused device_add: vfio: no IOMMU group")
        return {}


def _running(monitor: PciMonitor, hostdevs: list[str]) -> Any:
    live = load_domain({"name": "pt", "memory": 64, "machine": "pc",
                        "hostdevs": [{"address": a} for a in hostdevs]})
    return SimpleNamespace(live=live, monitor=monitor, hostdev_drivers={},
                           hostdev_ids=list(range(len(hostdevs))))


@pytest.fixture
def no_sysfs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    released: list[str] = []
    monkeypatch.setattr(hotplug, "bind_devices",
                        lambda devs, _root: {d.address: "e1000e" for d in devs})
    monkeypatch.setattr(hotplug, "release_hostdevs",
                        lambda bound, _root: released.extend(bound))
    return released


def test_a_hot_added_device_gets_an_id_no_device_has(no_sysfs: list[str]) -> None:
    # hostdev0 runs; hostdev1 was detached but the guest has not released it yet
    monitor = PciMonitor(["hostdev0", "hostdev1"])
    running = _running(monitor, ["0000:01:00.0"])
    dev = HostDev(address="0000:02:00.0")
    asyncio.run(hotplug.attach_hostdev(running, dev, Path("/nonexistent")))
    added = [args for command, args in monitor.sent if command == "device_add"]
    assert added == [{"driver": "vfio-pci", "host": "0000:02:00.0", "id": "hostdev2"}]
    assert running.hostdev_ids == [0, 2]
    assert [d.address for d in running.live.hostdevs] == ["0000:01:00.0", "0000:02:00.0"]
    assert running.hostdev_drivers == {"0000:02:00.0": "e1000e"}
    asyncio.run(hotplug.detach_hostdev(running, "0000:02:00.0"))
    assert ("device_del", {"id": "hostdev2"}) in monitor.sent
    assert running.hostdev_ids == [0]


def test_a_refused_device_is_given_back_to_its_driver(no_sysfs: list[str]) -> None:
    monitor = PciMonitor([], refuse=True)
    running = _running(monitor, [])
    with pytest.raises(QemuError):
        asyncio.run(hotplug.attach_hostdev(running, HostDev(address="0000:03:00.0"),
                                           Path("/nonexistent")))
    assert no_sysfs == ["0000:03:00.0"]
    assert running.hostdev_drivers == {} and running.hostdev_ids == []
    assert running.live.hostdevs == []


def test_detaching_a_device_the_run_does_not_have_is_refused() -> None:
    running = _running(PciMonitor([]), [])
    with pytest.raises(NotFound):
        asyncio.run(hotplug.detach_hostdev(running, "0000:04:00.0"))


def test_a_locked_step_without_the_lock_fails_at_once() -> None:
    vm = Vm("u", "vm")
    with pytest.raises(AssertionError, match="needs the lock of domain 'vm'"):
        require_lock(vm, "step")

    async def held() -> None:
        async with vm.lock:
            require_lock(vm, "step")
    asyncio.run(held())
