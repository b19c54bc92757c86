"""Host tuning logic on fake sysfs trees: NUMA nodes, huge pages, KSM, PCI devices,
IOMMU groups, vfio-pci binding, and the overcommit rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import Conflict, HostError, InvalidSpec
from virtkit.host import ksm, numa, pci
from virtkit.model.domain import Domain
from virtkit.model.load import load_domain
from virtkit.runtime import tuning
from virtkit.service import capacity


def _node(root: Path, node: int, cpus: str, total_kib: int) -> None:
    folder = root / "devices" / "system" / "node" / f"node{node}"
    folder.mkdir(parents=True)
    (folder / "cpulist").write_text(cpus + "\n")
    (folder / "meminfo").write_text(f"Node {node} MemTotal:  {total_kib} kB\n"
                                    f"Node {node} MemFree:   {total_kib // 2} kB\n")


def _hugepages(root: Path, size_kib: int, total: int, free: int) -> None:
    folder = root / "kernel" / "mm" / "hugepages" / f"hugepages-{size_kib}kB"
    folder.mkdir(parents=True)
    (folder / "nr_hugepages").write_text(f"{total}\n")
    (folder / "free_hugepages").write_text(f"{free}\n")


def test_numa_nodes_and_hugepages(tmp_path: Path) -> None:
    _node(tmp_path, 0, "0-3", 8 * 1024 * 1024)
    _node(tmp_path, 1, "4-7", 4 * 1024 * 1024)
    _hugepages(tmp_path, 2048, 512, 100)
    nodes = numa.host_nodes(tmp_path)
    assert [(n.id, n.cpus, n.memory_mib, n.free_mib) for n in nodes] == [
        (0, "0-3", 8192, 4096), (1, "4-7", 4096, 2048)]
    assert numa.check_nodeset("0-1", tmp_path) == set()
    assert numa.check_nodeset("1-3", tmp_path) == {2, 3}
    pages = numa.hugepages(tmp_path)[2048]
    assert (pages.total, pages.free, pages.free_mib) == (512, 100, 200)
    assert [n.id for n in numa.host_nodes(tmp_path / "nonuma")] == [0]


def test_tuning_checks_against_the_host(tmp_path: Path) -> None:
    _node(tmp_path, 0, "0-1", 1024 * 1024)
    _hugepages(tmp_path, 2048, 64, 64)
    (tmp_path / "kernel" / "iommu_groups").mkdir(parents=True)
    ok = load_domain({"name": "a", "memory": 128, "numatune": {"nodeset": "0"},
                      "memory_backing": {"hugepages": True}})
    tuning.check_host(ok, at_start=True, sys_root=tmp_path)
    with pytest.raises(InvalidSpec, match=r"no NUMA node 1 \(it has node 0\)"):
        tuning.check_host(load_domain({"name": "a", "memory": 64, "numatune": {
            "nodeset": "1"}}), at_start=False, sys_root=tmp_path)
    big = load_domain({"name": "a", "memory": 256, "memory_backing": {"hugepages": True}})
    tuning.check_host(big, at_start=False, sys_root=tmp_path)  # pages are counted at start
    with pytest.raises(HostError, match=r"needs 128 huge pages of 2 MiB .* only 64 are free") \
            as info:
        tuning.check_host(big, at_start=True, sys_root=tmp_path)
    assert "echo 128 >" in str(info.value.fix)
    gig = load_domain({"name": "a", "memory": 1024, "memory_backing": {
        "hugepages": True, "page_size_kib": 1048576}})
    with pytest.raises(HostError, match="no 1024 MiB huge pages"):
        tuning.check_host(gig, at_start=True, sys_root=tmp_path)
    usable = os.sched_getaffinity(0)
    beyond = max(usable) + 1
    with pytest.raises(InvalidSpec, match=f"this host has no CPU {beyond}"):
        tuning.check_host(load_domain({"name": "a", "memory": 64, "cputune": {
            "vcpupin": {0: str(beyond)}}}), at_start=False, sys_root=tmp_path)


def _ksm(root: Path, run: int = 0) -> Path:
    folder = root / "kernel" / "mm" / "ksm"
    folder.mkdir(parents=True)
    (folder / "run").write_text(f"{run}\n")
    for index, name in enumerate(ksm.COUNTERS):
        (folder / name).write_text(f"{(index + 1) * 1000}\n")
    return folder


def test_ksm_status_and_switch(tmp_path: Path) -> None:
    folder = _ksm(tmp_path)
    status = ksm.status(tmp_path)
    assert status["run"] == 0 and not status["enabled"]
    assert status["pages_sharing"] == 2000
    assert status["saved_mib"] == round(2000 * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    assert ksm.set_run(1, tmp_path)["enabled"]
    assert (folder / "run").read_text() == "1\n"
    with pytest.raises(HostError, match="this kernel has no KSM") as info:
        ksm.status(tmp_path / "none")
    assert info.value.fix


# -- PCI -------------------------------------------------------------------------------------

def _device(root: Path, address: str, *, vendor: str = "0x8086", device: str = "0x1533",
            driver: str | None = None, group: int | None = None) -> Path:
    folder = root / "bus" / "pci" / "devices" / address
    folder.mkdir(parents=True)
    (folder / "vendor").write_text(vendor + "\n")
    (folder / "device").write_text(device + "\n")
    (folder / "class").write_text("0x020000\n")
    (folder / "numa_node").write_text("-1\n")
    (folder / "driver_override").write_text("(null)\n")
    if driver is not None:
        drivers = root / "bus" / "pci" / "drivers" / driver
        drivers.mkdir(parents=True, exist_ok=True)
        (folder / "driver").symlink_to(drivers)
    if group is not None:
        groups = root / "kernel" / "iommu_groups" / str(group) / "devices"
        groups.mkdir(parents=True, exist_ok=True)
        (folder / "iommu_group").symlink_to(groups.parent)
        (groups / address).symlink_to(folder)
    return folder


def test_list_devices_with_names_groups_and_sriov(tmp_path: Path) -> None:
    ids = tmp_path / "pci.ids"
    ids.write_text("# comment\n8086  Intel Corporation\n\t1533  I210 Gigabit Network "
                   "Connection\n\t\t8086 0001  subsystem\nC 02  Network controller\n")
    pf = _device(tmp_path, "0000:01:00.0", driver="igb", group=3)
    (pf / "sriov_totalvfs").write_text("7\n")
    (pf / "sriov_numvfs").write_text("1\n")
    vf = _device(tmp_path, "0000:01:10.0", device="0x1520", group=4)
    (pf / "virtfn0").symlink_to(vf)
    (vf / "physfn").symlink_to(pf)
    devices = {d.address: d for d in pci.list_devices(tmp_path, ids)}
    first = devices["0000:01:00.0"]
    assert (first.vendor, first.product) == ("Intel Corporation",
                                             "I210 Gigabit Network Connection")
    assert (first.driver, first.iommu_group, first.numa_node) == ("igb", 3, None)
    assert (first.sriov_totalvfs, first.sriov_numvfs, first.virtfns) == (7, 1, ["0000:01:10.0"])
    assert devices["0000:01:10.0"].physfn == "0000:01:00.0"
    assert devices["0000:01:10.0"].product is None  # not in this pci.ids


def test_passthrough_checks_the_whole_iommu_group(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="does not exist"):
        pci.check_passthrough("0000:09:00.0", managed=True, sys_root=tmp_path)
    _device(tmp_path, "0000:01:00.0", driver="igb")
    with pytest.raises(HostError, match="this host has no IOMMU"):
        pci.check_passthrough("0000:01:00.0", managed=True, sys_root=tmp_path)
    root = tmp_path / "iommu"
    _device(root, "0000:01:00.0", driver="igb", group=1)
    _device(root, "0000:01:00.1", driver="igb", group=1)
    _device(root, "0000:02:00.0", driver="vfio-pci", group=2)
    _device(root, "0000:02:00.1", group=2)
    _device(root, "0000:04:00.0", driver="igb", group=6)
    with pytest.raises(InvalidSpec, match=r"0000:01:00\.1, in the same IOMMU group 1, is bound "
                                          r"to the host driver igb"):
        pci.check_passthrough("0000:01:00.0", managed=True, sys_root=root)
    assert pci.check_passthrough("0000:02:00.0", managed=False, sys_root=root).iommu_group == 2
    with pytest.raises(InvalidSpec, match="it is bound to the host driver igb") as info:
        pci.check_passthrough("0000:04:00.0", managed=False, sys_root=root)
    assert "managed: true" in str(info.value.fix)


def test_bind_and_restore_use_driver_override(tmp_path: Path) -> None:
    """The sysfs writes of a managed device, in order (the fake tree records them)."""
    folder = _device(tmp_path, "0000:03:00.0", driver="e1000e", group=5)
    drivers = tmp_path / "bus" / "pci" / "drivers"
    (drivers / "e1000e" / "unbind").write_text("")
    (tmp_path / "bus" / "pci" / "drivers_probe").write_text("")
    with pytest.raises(HostError, match="did not bind to vfio-pci"):
        pci.bind_vfio("0000:03:00.0", tmp_path)  # nothing rebinds in a fake tree
    assert (drivers / "e1000e" / "unbind").read_text() == "0000:03:00.0"
    assert (folder / "driver_override").read_text() == "vfio-pci"
    assert (tmp_path / "bus" / "pci" / "drivers_probe").read_text() == "0000:03:00.0"
    # the kernel would now have bound it: emulate, then give it back
    (drivers / "vfio-pci").mkdir()
    (drivers / "vfio-pci" / "unbind").write_text("")
    (folder / "driver").unlink()
    (folder / "driver").symlink_to(drivers / "vfio-pci")
    assert pci.bind_vfio("0000:03:00.0", tmp_path) is None  # already there: nothing to undo
    pci.restore_driver("0000:03:00.0", "e1000e", tmp_path)
    assert (folder / "driver_override").read_text() == "\n"
    assert (drivers / "vfio-pci" / "unbind").read_text() == "0000:03:00.0"


# -- overcommit ------------------------------------------------------------------------------

def _domains(*sizes: tuple[int, int]) -> list[Domain]:
    return [load_domain({"name": f"d{i}", "memory": mib, "vcpus": vcpus})
            for i, (vcpus, mib) in enumerate(sizes)]


def test_overcommit_rule() -> None:
    running = _domains((4, 1024), (4, 1024))
    env = {"VIRTKIT_CPU_RATIO": "4", "VIRTKIT_MEMORY_RATIO": "1.5"}
    new = load_domain({"name": "new", "memory": 1024, "vcpus": 1})
    capacity.check_start(new, running, env, host_cpus=4, host_mib=2048)
    with pytest.raises(Conflict, match=r"17 vCPUs, above the limit of 16 \(4 host CPUs x CPU "
                                       r"ratio 4\)"):
        capacity.check_start(load_domain({"name": "n", "memory": 1, "vcpus": 9}), running,
                             env, host_cpus=4, host_mib=2048)
    with pytest.raises(Conflict, match=r"3073 MiB of memory, above the limit of 3072 MiB"):
        capacity.check_start(load_domain({"name": "n", "memory": 1025}), running, env,
                             host_cpus=4, host_mib=2048)
    report = capacity.report(running, running, {}, 2, 1000)
    assert report["limits"] == {"vcpus": 32, "memory_mib": 1500}
    assert report["running"] == {"domains": 2, "vcpus": 8, "memory_mib": 2048}
    with pytest.raises(InvalidSpec, match="VIRTKIT_MEMORY_RATIO='-1' is not a positive"):
        capacity.ratios({"VIRTKIT_MEMORY_RATIO": "-1"})
