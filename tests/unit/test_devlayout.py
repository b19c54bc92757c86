"""A QEMU rebuilt for a run with hot-added disks and NICs (save/restore, memory
snapshots, migration): the argv puts them where QEMU had them, with their ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from virtkit.errors import InvalidSpec
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.load import load_domain
from virtkit.qemu.argv import Layout, build_argv
from virtkit.qemu.qmp import QmpCommands
from virtkit.runtime import devlayout

SPEC = {"name": "hot", "memory": 256, "disks": [{"path": "/images/boot.qcow2"}],
        "nics": [{"type": "user"}]}


def _live(**more: Any) -> Domain:
    disks = [{"path": "/images/boot.qcow2", "target": "vda"},
             {"path": "/images/hot.qcow2", "target": "vdb", "serial": "HOT"}]
    nics = [{"type": "user"}, {"type": "user", "mac": "52:54:00:00:00:02"}]
    return load_domain({**SPEC, "disks": disks, "nics": nics, **more})


def _argv(domain: Domain, layout: Layout | None) -> list[str]:
    caps = HostCaps(accel="tcg", machine_aliases={"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"})
    files = LaunchFiles("/run/x", "/log/x", {"qmp": 3, "serial0": 4, "agent": 5}, nvram=None,
                        incoming="defer")
    return build_argv(domain, caps, files, "qemu", layout)


def _devices(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]


LAYOUT = {"boot_disks": 1, "boot_nics": 1, "disk_ids": [0, 2], "nic_ids": [0, 1],
          "placement": {"disk2": {"bus": "pci.3", "addr": "0x0"},
                        "nic1": {"bus": "pci.4", "addr": "0x0"}}}


def test_hot_added_devices_keep_their_ids_and_root_ports() -> None:
    live = _live()
    argv = _argv(live, Layout.from_dict(LAYOUT, live))
    devices = _devices(argv)
    ports = [d["id"] for d in devices if d["driver"] == "pcie-root-port"]
    # the boot part's ports only (1 disk, 1 NIC, 4 free), as the first start had them
    assert ports == _ports_of_boot_part()
    hot = devices[-2:]
    assert hot[0] == {"driver": "virtio-blk-pci", "id": "disk2", "drive": "drive-disk2",
                      "serial": "HOT", "bus": "pci.3", "addr": "0x0"}
    assert hot[1]["id"] == "nic1" and hot[1]["netdev"] == "net1" and hot[1]["bus"] == "pci.4"
    assert "user,id=net1,restrict=on" in argv
    nodes = [json.loads(argv[i + 1])["node-name"] for i, a in enumerate(argv)
             if a == "-blockdev"]
    assert "drive-disk2" in nodes and "drive-disk1" not in nodes
    assert argv[-2:] == ["-incoming", "defer"]


def _ports_of_boot_part() -> list[str]:
    devices = _devices(_argv(load_domain(SPEC), None))
    return [d["id"] for d in devices if d["driver"] == "pcie-root-port"]


def test_without_layout_the_argv_is_the_plain_one() -> None:
    live = _live()
    assert [d["id"] for d in _devices(_argv(live, None)) if d.get("driver") ==
            "virtio-blk-pci"] == ["disk0", "disk1"]


def test_pc_slot_addresses_are_kept() -> None:
    live = _live(machine="pc")
    layout = {**LAYOUT, "placement": {"disk2": {"addr": "0x7"}, "nic1": {"addr": "0x9"}}}
    hot = _devices(_argv(live, Layout.from_dict(layout, live)))[-2:]
    assert (hot[0]["addr"], hot[1]["addr"]) == ("0x7", "0x9")
    assert "bus" not in hot[0]


@pytest.mark.parametrize("bad", [
    {**LAYOUT, "disk_ids": [0]},                                  # does not fit the disks
    {**LAYOUT, "disk_ids": [1, 2]},                               # boot part renumbered
    {**LAYOUT, "placement": {"disk2": {"bus": "pci.3"}}},          # a placement missing
    {**LAYOUT, "placement": {**LAYOUT["placement"], "disk2": {"bus": "x,drive=y"}}},
    {**LAYOUT, "placement": {**LAYOUT["placement"], "disk2": {"romfile": "/etc/x"}}},
    {**LAYOUT, "boot_disks": True},
    {**LAYOUT, "extra": 1},
    "layout",
])
def test_a_recorded_layout_is_parsed_strictly(bad: Any) -> None:
    with pytest.raises(InvalidSpec):
        devlayout.parse(bad, _live(), "the save file's device layout")


class FakeMonitor(QmpCommands):
    """Answers query-pci only (through the typed facade)."""

    def __init__(self, pci: list[dict[str, Any]]) -> None:
        self.pci = pci

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = 30.0) -> Any:
        assert command == "query-pci"
        return self.pci


class FakeRunning:
    def __init__(self, pci: list[dict[str, Any]], **fields: Any) -> None:
        self.monitor = FakeMonitor(pci)
        self.live = _live()
        self.layout_changed = True
        self.boot_disks, self.boot_nics = 1, 1
        self.disk_ids, self.nic_ids = [0, 2], [0, 1]
        self.unplugging: set[str] = set()
        self.__dict__.update(fields)


def _port(port: str, slot: int, child: str | None) -> dict[str, Any]:
    devices = [{"slot": 0, "function": 0, "qdev_id": child}] if child else []
    return {"slot": slot, "function": 0, "qdev_id": port,
            "pci_bridge": {"devices": devices}}


PCI = [{"bus": 0, "devices": [
    {"slot": 0, "function": 0, "qdev_id": ""},
    _port("pci.1", 1, "disk0"), _port("pci.2", 2, "nic0"), _port("pci.3", 3, "disk2"),
    _port("pci.4", 4, "nic1"), _port("pci.5", 5, None)]}]


def test_capture_reads_where_qemu_put_the_hot_added_devices() -> None:
    layout = asyncio.run(devlayout.capture(FakeRunning(PCI)))  # type: ignore[arg-type]
    assert layout is not None and layout.to_dict() == LAYOUT


@pytest.mark.parametrize(("fields", "why"), [
    ({"disk_ids": [2, 3], "boot_disks": 2}, "a device it was started with is gone"),
    ({"boot_disks": None}, "before this daemon recorded"),
    ({"unplugging": {"disk2"}}, "removal of disk2 pending"),
])
def test_capture_refuses_what_a_fresh_qemu_could_not_rebuild(fields: dict[str, Any],
                                                             why: str) -> None:
    running = FakeRunning(PCI, **fields)
    with pytest.raises(devlayout.NotRebuildable, match=why):
        asyncio.run(devlayout.capture(running))  # type: ignore[arg-type]


def test_capture_refuses_a_device_qemu_still_holds() -> None:
    pci = [{"bus": 0, "devices": [*PCI[0]["devices"], _port("pci.6", 6, "disk1")]}]
    with pytest.raises(devlayout.NotRebuildable, match="disk1"):
        asyncio.run(devlayout.capture(FakeRunning(pci)))  # type: ignore[arg-type]


def test_nothing_hot_added_needs_no_layout() -> None:
    running = FakeRunning(PCI, layout_changed=False)
    assert asyncio.run(devlayout.capture(running)) is None  # type: ignore[arg-type]


# -- vCPUs hot-added with device_add (setvcpus --live) --------------------------------

HOT_VCPU = {"id": "vcpu-1-0-0-0", "driver": "max-x86_64-cpu",
            "props": {"socket-id": 1, "core-id": 0, "thread-id": 0}}


def test_hot_added_vcpus_are_rebuilt_as_devices_on_a_smaller_smp() -> None:
    live = load_domain({**SPEC, "vcpus": {"current": 2, "max": 2}})
    layout = Layout.from_dict({**Layout.unchanged(live).to_dict(), "vcpus": [HOT_VCPU]}, live)
    argv = _argv(live, layout)
    assert argv[argv.index("-smp") + 1].startswith("1,maxcpus=2,")
    assert {"driver": "max-x86_64-cpu", "id": "vcpu-1-0-0-0", "socket-id": 1,
            "core-id": 0, "thread-id": 0} in _devices(argv)
    assert Layout.from_dict(layout.to_dict(), live) == layout  # as a save file keeps it
    plain = _argv(live, None)  # without the layout: both vCPUs on -smp
    assert plain[plain.index("-smp") + 1].startswith("2,maxcpus=2,")


@pytest.mark.parametrize("vcpus", [
    [HOT_VCPU, HOT_VCPU],                                          # the same one twice
    [{**HOT_VCPU, "driver": "max,x=y-x86_64-cpu"}],               # not a CPU type name
    [{**HOT_VCPU, "id": "cpu1"}],                                  # not hotplug's id
    [{**HOT_VCPU, "props": {"socket-id": -1}}],
    [{**HOT_VCPU, "props": {"romfile": 1}}],
    {"vcpu-1-0-0-0": HOT_VCPU},
])
def test_recorded_hot_vcpus_are_parsed_strictly(vcpus: Any) -> None:
    live = load_domain({**SPEC, "vcpus": {"current": 2, "max": 3}})
    with pytest.raises(InvalidSpec):
        devlayout.parse({**Layout.unchanged(live).to_dict(), "vcpus": vcpus}, live, "x")


class CpuMonitor(QmpCommands):
    def __init__(self, cpus: list[dict[str, Any]]) -> None:
        self.cpus = cpus

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = 30.0) -> Any:
        return {"query-memory-devices": [], "query-hotpluggable-cpus": self.cpus}[command]


def test_a_run_with_hot_added_vcpus_is_restorable_with_them() -> None:
    cpus = [{"type": "max-x86_64-cpu", "vcpus-count": 1, "props": HOT_VCPU["props"],
             "qom-path": "/machine/peripheral/vcpu-1-0-0-0"},
            {"type": "max-x86_64-cpu", "vcpus-count": 1,
             "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
             "qom-path": "/machine/unattached/device[0]"}]
    running = FakeRunning([], layout_changed=False,
                          live=load_domain({**SPEC, "vcpus": {"current": 2, "max": 2}}))
    running.monitor = CpuMonitor(cpus)  # type: ignore[assignment]
    layout = asyncio.run(devlayout.check_restorable("hot", running))  # type: ignore[arg-type]
    assert layout is not None and layout.vcpus == (HOT_VCPU,)
    assert (layout.boot_disks, layout.disk_ids, layout.placement) == (1, (0,), {})
    cpus[0]["qom-path"] = "/machine/peripheral/somebody-elses"
    with pytest.raises(Exception, match="vCPU 'somebody-elses'"):
        asyncio.run(devlayout.check_restorable("hot", running))  # type: ignore[arg-type]
