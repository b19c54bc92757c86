"""Hotplug against a real Debian guest: the guest sees each device come and go.

The guest agent reads what the guest sees (/sys, /proc) so no console scraping
is needed.  The shared Debian guest (tests/real/debianguest.py) serves the module.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pycdlib
import pytest

from tests.real.conftest import DaemonHandle, wait_for
from tests.real.debianguest import DebianVm

pytestmark = pytest.mark.qemu


# The tests share one running Debian guest (tests/real/debianguest.py; it has the
# balloon and the empty SATA CD-ROM sda these tests use): these names keep the tests'
# own words for it.
@pytest.fixture
def module_daemon(debian_vm: DebianVm) -> DaemonHandle:
    """The shared Debian guest's daemon."""
    return debian_vm.daemon


@pytest.fixture
def vm(debian_vm: DebianVm) -> str:
    return debian_vm.name


def guest(handle: DaemonHandle, name: str, script: str) -> str:
    return handle.cli("guest", "exec", name, "--", "/bin/sh", "-c", script).stdout


def blocks(handle: DaemonHandle, name: str) -> set[str]:
    return set(guest(handle, name, "ls /sys/block").split())


def image(tmp: Path, name: str, size: str = "64M") -> str:
    path = tmp / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return str(path)


def test_disk_hot_add_and_remove(module_daemon: DaemonHandle, vm: str, tmp_path: Path) -> None:
    before = blocks(module_daemon, vm)
    path = image(tmp_path, "data.qcow2")
    out = module_daemon.cli("attach-disk", vm, path, "--live").stdout
    assert "Disk vdb attached" in out
    wait_for(lambda: "vdb" in blocks(module_daemon, vm), 30, "vdb in the guest")
    guest(module_daemon, vm, "echo virtkit-data | dd of=/dev/vdb conv=fsync 2>/dev/null")
    listed = json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)
    assert [d["target"] for d in listed] == ["vda", "sda", "vdb"]
    spec_disks = json.loads(module_daemon.cli("domblklist", vm, "--inactive",
                                              "--json").stdout)
    assert len(spec_disks) == 2  # --live leaves the definition alone
    module_daemon.cli("detach-disk", vm, "vdb", "--live")
    assert blocks(module_daemon, vm) == before
    head = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=16", "count=1",
                           f"if={path}", f"of={tmp_path / 'head'}"], check=True)
    assert head.returncode == 0 and (tmp_path / "head").read_bytes().startswith(b"virtkit-data")


def test_persistent_attach_then_config_detach(module_daemon: DaemonHandle, vm: str,
                                              tmp_path: Path) -> None:
    path = image(tmp_path, "both.qcow2")
    before = blocks(module_daemon, vm)
    module_daemon.cli("attach-disk", vm, path, "vdc", "--persistent")
    wait_for(lambda: len(blocks(module_daemon, vm)) == len(before) + 1, 30, "a new disk")
    inactive = json.loads(module_daemon.cli("domblklist", vm, "--inactive", "--json").stdout)
    assert path in [d["path"] for d in inactive]
    module_daemon.cli("detach-disk", vm, path, "--config")
    inactive = json.loads(module_daemon.cli("domblklist", vm, "--inactive", "--json").stdout)
    assert path not in [d["path"] for d in inactive]
    assert len(blocks(module_daemon, vm)) == len(before) + 1  # still there live
    module_daemon.cli("detach-disk", vm, "vdc", "--live")
    assert blocks(module_daemon, vm) == before


def test_failed_hotplug_rolls_back(module_daemon: DaemonHandle, vm: str, tmp_path: Path) -> None:
    """Fill the free PCIe ports; the next disk fails after its blockdev-add, which is
    undone: the same image can be attached once a port is free again."""
    paths = [image(tmp_path, f"fill{n}.qcow2") for n in range(6)]
    attached = []
    for path in paths:
        result = module_daemon.cli("attach-disk", vm, path, "--live", check=False)
        if result.returncode != 0:
            assert "no free PCIe slot" in result.stderr
            refused = path
            break
        attached.append(path)
    else:
        raise AssertionError("the free PCIe ports never ran out")
    assert len(attached) >= 1
    listed = json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)
    assert refused not in [d["path"] for d in listed]
    module_daemon.cli("detach-disk", vm, attached[0], "--live")
    module_daemon.cli("attach-disk", vm, refused, "--live")  # no stale node holds its lock
    for path in [*attached[1:], refused]:
        module_daemon.cli("detach-disk", vm, path, "--live")
    assert len(json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)) == 2


def test_bad_device_requests_change_nothing(module_daemon: DaemonHandle, vm: str,
                                            tmp_path: Path) -> None:
    before = module_daemon.client.get(module_daemon.client.domain_path(vm))["version"]
    cases = [
        (("detach-disk", vm, "vdz"), "has no disk vdz"),
        (("attach-disk", vm, str(tmp_path / "missing.qcow2"), "--live"), "does not exist"),
        (("attach-disk", vm, image(tmp_path, "s.qcow2"), "--targetbus", "sata", "--live"),
         "cannot be hot-plugged"),
        (("setvcpus", vm, "9", "--live"), "outside 1..4"),
        (("detach-interface", vm, "user", "--mac", "52:54:00:00:00:99"), "no interface"),
        (("attach-memory", vm, "100M", "--live"), "multiple of 128 MiB"),
        (("attach-memory", vm, "4G", "--live"), "above its maximum"),
        (("change-media", vm, "vda", "--eject"), "not a CD-ROM"),
    ]
    for argv, message in cases:
        result = module_daemon.cli(*argv, check=False)
        assert result.returncode != 0 and message in result.stderr, (argv, result.stderr)
    assert module_daemon.client.get(module_daemon.client.domain_path(vm))["version"] == before
    assert len(json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)) == 2


@pytest.mark.changes_debian_guest  # a third vCPU (offline), which TCG cannot unplug
def test_vcpu_hot_add_and_tcg_unplug_refusal(module_daemon: DaemonHandle, vm: str) -> None:
    def online() -> str:
        return guest(module_daemon, vm, "cat /sys/devices/system/cpu/online").strip()

    assert online() == "0-1"
    module_daemon.cli("setvcpus", vm, "3", "--live")
    wait_for(lambda: online() == "0-2", 30, "vCPU 2 online in the guest")
    assert module_daemon.info(vm)["vcpus"] == 3
    # Under TCG (this machine) QEMU 7.2 crashes at the next hotplug after a vCPU unplug,
    # so virtkit refuses the unplug and points at the guest-side offline instead.
    assert module_daemon.info(vm)["accelerator"] == "tcg"
    refused = module_daemon.cli("setvcpus", vm, "2", "--live", check=False)
    assert refused.returncode != 0 and "setvcpus --guest" in refused.stderr
    assert module_daemon.info(vm)["vcpus"] == 3
    module_daemon.cli("setvcpus", vm, "2", "--guest")
    assert online() == "0-1"


@pytest.mark.changes_debian_guest  # a DIMM, and the balloon at 512 MiB
def test_memory_hot_add_and_balloon(module_daemon: DaemonHandle, vm: str) -> None:
    def total_kib() -> int:
        line = guest(module_daemon, vm, "grep MemTotal /proc/meminfo")
        return int(line.split()[1])

    before = total_kib()
    module_daemon.cli("attach-memory", vm, "256M", "--live")
    wait_for(lambda: total_kib() >= before + 250 * 1024, 30, "the DIMM online in the guest")
    assert module_daemon.info(vm)["memory_mib"] == 768
    grown = total_kib()
    module_daemon.cli("setmem", vm, "512M", "--live")
    wait_for(lambda: total_kib() <= grown - 200 * 1024, 30, "the balloon to inflate")


def test_nic_hot_add_and_remove(module_daemon: DaemonHandle, vm: str) -> None:
    def nics() -> set[str]:
        return set(guest(module_daemon, vm, "ls /sys/class/net").split())

    assert nics() == {"lo"}
    mac = "52:54:00:12:34:56"
    module_daemon.cli("attach-interface", vm, "user", "--mac", mac, "--live")
    wait_for(lambda: "eth0" in nics(), 30, "eth0 in the guest")
    address = guest(module_daemon, vm, "cat /sys/class/net/eth0/address").strip()
    assert address == mac
    listed = json.loads(module_daemon.cli("domiflist", vm, "--json").stdout)
    assert [nic["mac"] for nic in listed] == [mac]
    module_daemon.cli("detach-interface", vm, "user", "--mac", mac, "--live")
    wait_for(lambda: nics() == {"lo"}, 30, "eth0 gone")


def test_change_media_insert_and_eject(module_daemon: DaemonHandle, vm: str,
                                       tmp_path: Path) -> None:
    iso = tmp_path / "media.iso"
    cd = pycdlib.PyCdlib()
    cd.new(vol_ident="VKMEDIA")
    cd.add_fp(__import__("io").BytesIO(b"hello from the CD\n"), 18, "/HELLO.TXT;1")
    cd.write(str(iso))
    cd.close()

    def label() -> str:
        return guest(module_daemon, vm, "dd if=/dev/sr0 bs=1 skip=32808 count=7 "
                                        "2>/dev/null || echo no-medium").strip()

    assert label() == "no-medium"
    module_daemon.cli("change-media", vm, "sda", str(iso), "--insert")
    wait_for(lambda: label() == "VKMEDIA", 30, "the medium in the guest")
    module_daemon.cli("change-media", vm, "sda", "--eject", "--force")
    wait_for(lambda: label() == "no-medium", 30, "the medium gone")
    listed = json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)
    assert listed[1]["path"] is None


def test_live_configuration_survives_a_daemon_restart(module_daemon: DaemonHandle, vm: str,
                                                      tmp_path: Path) -> None:
    path = image(tmp_path, "kept.qcow2")
    module_daemon.cli("attach-disk", vm, path, "--live")
    module_daemon.kill9()
    module_daemon.restart()
    listed = json.loads(module_daemon.cli("domblklist", vm, "--json").stdout)
    assert path in [d["path"] for d in listed]
    module_daemon.cli("detach-disk", vm, path, "--live")  # ids were kept: unplug works
    assert path not in [d["path"] for d in json.loads(
        module_daemon.cli("domblklist", vm, "--json").stdout)]
