"""Host tuning against real QEMU: pinning, guest NUMA, numatune, hugepages, overcommit,
KSM, PCI passthrough refusals and nodedev-list.

This host has CPUs 0-1, one NUMA node and no IOMMU: pinning, one- and two-node guest
topologies on node 0 and huge pages work for real; host node 1 and passthrough are
refused, clearly, with nothing changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, cleanup, start_daemon
from virtkit.cli.client import ApiError, Client
from virtkit.images.tinyguest import TinyGuest
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

KSM_RUN = Path("/sys/kernel/mm/ksm/run")
HUGEPAGES = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")


def _allowed(pid: int, tid: int) -> str:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines()
                if line.startswith("Cpus_allowed_list:"))


def _threads(daemon: DaemonHandle, name: str) -> tuple[int, dict[int, int], list[int]]:
    """QEMU pid, vCPU -> tid, and the other threads."""
    info = daemon.client.get(daemon.client.domain_path(name, "/vcpus"))
    vcpus = {item["id"]: item["thread_id"] for item in info["vcpus"]}
    others = [int(t) for t in os.listdir(f"/proc/{info['pid']}/task")
              if int(t) not in vcpus.values()]
    return info["pid"], vcpus, others


def _start(daemon: DaemonHandle, name: str) -> None:
    daemon.client.post(daemon.client.domain_path(name, "/start"))


def test_vcpupin_and_emulatorpin_live_and_config(daemon: DaemonHandle) -> None:
    daemon.define("pin", memory=64, vcpus=2)
    _start(daemon, "pin")
    pid, vcpus, others = _threads(daemon, "pin")
    assert daemon.cli("vcpupin", "pin", "1", "0").returncode == 0
    assert _allowed(pid, vcpus[1]) == "0"
    assert _allowed(pid, vcpus[0]) == "0-1"
    table = daemon.cli("vcpupin", "pin").stdout.splitlines()
    assert table[0].split() == ["VCPU", "CPU", "Affinity"]
    assert [line.split() for line in table[2:]] == [["0", "0-1"], ["1", "0"]]
    assert "1" in daemon.cli("emulatorpin", "pin", "1").stdout
    assert all(_allowed(pid, tid) == "1" for tid in others)
    assert _allowed(pid, vcpus[1]) == "0"  # vCPU threads keep their own pinning
    cputune = daemon.info("pin")["spec"]["cputune"]
    # live only: the spec's pinning is untouched (its CPU limits are schedinfo's)
    assert (cputune["vcpupin"], cputune["emulatorpin"]) == ({}, None)
    # --config: stored, applied at the next start (after QMP lists the threads, before cont)
    daemon.cli("vcpupin", "pin", "0", "1", "--config")
    daemon.cli("emulatorpin", "pin", "0", "--config")
    stored = daemon.info("pin")["spec"]["cputune"]
    assert (stored["vcpupin"], stored["emulatorpin"]) == ({"0": "1"}, "0")
    assert _allowed(pid, vcpus[0]) == "0-1"  # --config alone leaves the running QEMU
    daemon.client.post(daemon.client.domain_path("pin", "/destroy"))
    _start(daemon, "pin")
    pid, vcpus, others = _threads(daemon, "pin")
    assert (_allowed(pid, vcpus[0]), _allowed(pid, vcpus[1])) == ("1", "0-1")
    assert all(_allowed(pid, tid) == "0" for tid in others)
    assert "cputune" in daemon.cli("dumpxml", "pin").stdout


def test_bad_pinning_requests_change_nothing(daemon: DaemonHandle) -> None:
    daemon.define("badpin", memory=64, vcpus=2)
    _start(daemon, "badpin")
    pid, vcpus, others = _threads(daemon, "badpin")
    version = daemon.info("badpin")["version"]
    cases = [
        (("vcpupin", "badpin", "5", "0"), "domain 'badpin' has no vCPU 5 (it has 0-1)"),
        (("vcpupin", "badpin", "0", "7"), "this host has no CPU 7 (usable: 0-1)"),
        (("vcpupin", "badpin", "0", "1-x"), "cannot read '1-x'"),
        (("emulatorpin", "badpin", "0-5", "--config"), "this host has no CPU 2-5"),
    ]
    for args, message in cases:
        result = daemon.cli(*args, check=False)
        assert result.returncode == 1, args
        assert message in result.stderr and "(fix: " in result.stderr, result.stderr
    missing = daemon.cli("vcpupin", "nosuch", "0", "0", check=False)
    assert (missing.returncode, missing.stderr) == (1, "error: failed to get domain 'nosuch'\n")
    assert daemon.info("badpin")["version"] == version
    assert {_allowed(pid, tid) for tid in [*vcpus.values(), *others]} == {"0-1"}
    with pytest.raises(ApiError, match="vCPU 2 does not exist"):
        daemon.define("badpin2", memory=64, vcpus=2, cputune={"vcpupin": {2: "0"}})
    with pytest.raises(ApiError, match="this host has no CPU 3"):
        daemon.define("badpin3", memory=64, cputune={"emulatorpin": "3"})
    daemon.client.post(daemon.client.domain_path("badpin", "/destroy"))
    refused = daemon.cli("vcpupin", "badpin", "0", "0", "--live", check=False)
    assert "it is not running" in refused.stderr
    assert daemon.info("badpin")["version"] == version


def test_guest_numa_topology_on_host_node_0(daemon: DaemonHandle) -> None:
    daemon.define("numa1", memory=128, numatune={"nodeset": "0"})
    daemon.define("numa2", memory=256, vcpus=2, numatune={"nodeset": "0", "mode": "strict"},
                  numa=[{"cpus": "0", "memory": 128}, {"cpus": "1", "memory": 128}])
    for name in ("numa1", "numa2"):
        _start(daemon, name)
        daemon.wait_booted(name)
    one = daemon.console_run("numa1", "echo N=$(ls -d /sys/devices/system/node/node*)=; "
                             "echo END$((1+1))", "END2")
    assert "N=/sys/devices/system/node/node0=" in one
    two = daemon.console_run(
        "numa2", "echo N=$(ls -d /sys/devices/system/node/node*)= C=$(cat "
        "/sys/devices/system/node/node1/cpulist)= M=$(grep MemTotal "
        "/sys/devices/system/node/node1/meminfo | tr -s ' ' | cut -d' ' -f4)=; "
        "echo END$((1+2))", "END3")
    assert "N=/sys/devices/system/node/node0 /sys/devices/system/node/node1=" in two
    assert "C=1=" in two
    node1_kib = int(two.rsplit("M=", 1)[1].split("=")[0])
    assert 64 * 1024 < node1_kib <= 128 * 1024  # less what the kernel reserved (initrd)
    cmdline = Path(f"/proc/{daemon.info('numa2')['pid']}/cmdline").read_bytes().split(b"\0")
    backends = [arg for arg in cmdline if b"memory-backend" in arg]
    assert len(backends) == 2 and all(b'"host-nodes":[0]' in arg for arg in backends)
    assert b"node,nodeid=1,cpus=1,memdev=ram-node1" in cmdline


def test_host_node_1_and_hugepage_shortage_are_refused(daemon: DaemonHandle) -> None:
    with pytest.raises(ApiError, match=r"this host has no NUMA node 1 \(it has node 0\)"):
        daemon.define("node1", memory=64, numatune={"nodeset": "1"})
    assert daemon.client.get("/v1/domains") == []
    free = int((HUGEPAGES / "free_hugepages").read_text())
    daemon.define("huge", memory=(free + 64) * 2, memory_backing={"hugepages": True})
    result = daemon.cli("start", "huge", check=False)
    assert result.returncode == 1
    assert f"only {free} are free" in result.stderr and "nr_hugepages" in result.stderr
    assert daemon.state("huge") == "shutoff"


@contextlib.contextmanager
def _hugepages(count: int) -> Iterator[None]:
    """Reserve ``count`` 2 MiB pages for the test; the old number is restored after."""
    nr = HUGEPAGES / "nr_hugepages"
    before = nr.read_text().strip()
    nr.write_text(str(int(before) + count))
    try:
        yield
    finally:
        nr.write_text(before)


def test_hugepage_backed_guest_uses_the_reserved_pages(daemon: DaemonHandle) -> None:
    with _hugepages(64):
        if int((HUGEPAGES / "free_hugepages").read_text()) < 64:
            pytest.skip("the kernel could not reserve 64 huge pages")
        daemon.define("hp", memory=128, memory_backing={"hugepages": True})
        free_before = int((HUGEPAGES / "free_hugepages").read_text())
        _start(daemon, "hp")
        daemon.wait_booted("hp")
        assert int((HUGEPAGES / "free_hugepages").read_text()) <= free_before - 32
        daemon.client.post(daemon.client.domain_path("hp", "/destroy"))
        assert int((HUGEPAGES / "free_hugepages").read_text()) == free_before


def test_pci_passthrough_is_refused_without_iommu(daemon: DaemonHandle) -> None:
    devices = daemon.client.get("/v1/nodedevs?cap=pci")
    present = devices[0]["address"]
    assert present == "0000:00:00.0"
    listing = daemon.cli("nodedev-list", "--cap", "pci").stdout
    assert present in listing and "IOMMU group" in listing
    with pytest.raises(ApiError, match="this host has no IOMMU") as info:
        daemon.define("pt", memory=64, hostdevs=[{"address": devices[-1]["address"]}])
    assert "intel_iommu=on" in str(info.value.fix)
    with pytest.raises(ApiError, match=r"host PCI device 0000:42:00\.0 does not exist"):
        daemon.define("pt", memory=64, hostdevs=[{"address": "42:00.0"}])
    assert daemon.client.get("/v1/domains") == []
    daemon.define("pt", memory=64)
    _start(daemon, "pt")
    version = daemon.info("pt")["version"]
    xml = (f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
           f"domain='0x0000' bus='0x00' slot='0x{present[8:10]}' function='0x0'/></source>"
           "</hostdev>")
    result = daemon.cli("attach-device", "pt", "-", "--live", input_text=xml, check=False)
    assert result.returncode == 1 and "this host has no IOMMU" in result.stderr
    assert daemon.info("pt")["version"] == version
    qmp_devices = daemon.info("pt")["spec"].get("hostdevs")
    assert not qmp_devices
    image = daemon.root / "pt2.raw"
    image.write_bytes(b"\0" * 65536)
    install = daemon.cli("install", "--name", "pt2", "--memory", "64", "--import", "--disk",
                         str(image), "--host-device", "00:00.0", "--noautoconsole",
                         check=False)
    assert install.returncode == 1 and "no IOMMU" in install.stderr


def test_ksm_status_and_switch_restore_the_prior_value(daemon: DaemonHandle) -> None:
    prior = KSM_RUN.read_text().strip()
    try:
        status = daemon.client.get("/v1/host/ksm")
        assert status["run"] == int(prior) and status["saved_mib"] >= 0
        assert "Pages sharing:" in daemon.cli("host", "ksm").stdout
        on = daemon.client.request("PUT", "/v1/host/ksm", {"action": "on"})
        assert on["run"] == 1 and KSM_RUN.read_text().strip() == "1"
        off = daemon.cli("host", "ksm", "off").stdout
        assert "KSM:" in off and "off" in off and KSM_RUN.read_text().strip() == "0"
    finally:
        KSM_RUN.write_text(prior)
    assert KSM_RUN.read_text().strip() == prior


@pytest.fixture
def tight_daemon(tiny_guest: TinyGuest, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[DaemonHandle]:
    """A daemon allowed one vCPU for 2 host CPUs (VIRTKIT_CPU_RATIO=0.5)."""
    monkeypatch.setenv("VIRTKIT_CPU_RATIO", "0.5")
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    handle: Any = None
    try:
        process = start_daemon(root)
        handle = DaemonHandle(root, process, Client(state_paths(root), timeout=180),
                              tiny_guest)
        yield handle
    finally:
        if handle is not None:
            cleanup(handle)
        shutil.rmtree(root, ignore_errors=True)


def test_overcommit_limit_refuses_start(tight_daemon: DaemonHandle) -> None:
    daemon = tight_daemon
    daemon.define("oc1", memory=64)
    daemon.define("oc2", memory=64)
    _start(daemon, "oc1")
    result = daemon.cli("start", "oc2", check=False)
    assert result.returncode == 1
    assert ("cannot start 'oc2': running domains would have 2 vCPUs, above the limit of 1 "
            "(2 host CPUs x CPU ratio 0.5)") in result.stderr
    assert "VIRTKIT_CPU_RATIO" in result.stderr
    assert daemon.state("oc2") == "shutoff"
    capacity = daemon.client.get("/v1/host/capacity")
    assert capacity["limits"]["vcpus"] == 1
    assert capacity["running"] == {"domains": 1, "vcpus": 1, "memory_mib": 64}
    assert capacity["defined"]["domains"] == 2
    assert "Memory (MiB)" in daemon.cli("host", "capacity").stdout
    daemon.client.post(daemon.client.domain_path("oc1", "/destroy"))
    _start(daemon, "oc2")
    assert daemon.state("oc2") == "running"


def test_a_hot_plugged_vcpu_is_pinned_as_at_start_not_like_the_emulator(
        daemon: DaemonHandle) -> None:
    """QEMU's main thread creates a hot-plugged vCPU's thread, so it would inherit
    emulatorpin; virtkit pins it like a vCPU present at start (vcpupin, else all CPUs)."""
    daemon.define("hotpin", memory=128, vcpus={"current": 1, "max": 3},
                  cputune={"emulatorpin": "0", "vcpupin": {2: "1"}})
    _start(daemon, "hotpin")
    daemon.wait_booted("hotpin")
    pid, vcpus, others = _threads(daemon, "hotpin")
    assert all(_allowed(pid, tid) == "0" for tid in others)
    daemon.cli("setvcpus", "hotpin", "3", "--live")
    pid, vcpus, others = _threads(daemon, "hotpin")
    assert sorted(vcpus) == [0, 1, 2]
    assert [_allowed(pid, vcpus[index]) for index in (0, 1, 2)] == ["0-1", "0-1", "1"]
    assert all(_allowed(pid, tid) == "0" for tid in others)
