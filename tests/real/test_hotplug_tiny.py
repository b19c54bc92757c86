"""Hotplug with the tiny guest: libvirt device XML (virsh attach-device), and save and
restore and memory snapshots after hotplug (the save file or snapshot carries the
running configuration and where QEMU put the hot-added devices; a device set a fresh
QEMU could not rebuild, as after unplugging a device it started with, is refused)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle

pytestmark = pytest.mark.qemu


def _disk(tmp: Path, name: str) -> str:
    path = tmp / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return str(path)


def _paths(daemon: DaemonHandle, name: str) -> list[str | None]:
    return [d["path"] for d in json.loads(daemon.cli("domblklist", name, "--json").stdout)]


def _hot_add(daemon: DaemonHandle, name: str, tmp: Path, last: int = 1) -> str:
    """Attach a virtio disk and a (restricted user-mode) NIC live; wait until the guest
    sees both; write known data on the new disk.  Returns the NIC's MAC."""
    daemon.cli("attach-disk", name, _disk(tmp, f"{name}-hot.qcow2"), "--live")
    mac = f"52:54:00:15:00:{last:02x}"  # one MAC per domain
    daemon.cli("attach-interface", name, "user", "--mac", mac, "--live")
    daemon.console_run(name, "until [ -b /dev/vdb ] && [ -e /sys/class/net/eth0 ]; do "
                       "sleep 0.2; done; echo hot-data > /tmp/h; dd if=/tmp/h of=/dev/vdb "
                       "conv=fsync 2>/dev/null; echo ho''t-ready", "hot-ready")
    return mac


def _marker(daemon: DaemonHandle, name: str, value: str) -> None:
    daemon.console_run(name, f"echo {value} > /tmp/mark; echo mar''ked-{value}",
                       f"marked-{value}")


def _guest_state(daemon: DaemonHandle, name: str, tag: str) -> str:
    """The RAM marker, the hot NIC's MAC and the hot disk's first bytes, as the guest
    sees them now."""
    return daemon.console_run(
        name, "echo STATE $(cat /tmp/mark) $(cat /sys/class/net/eth0/address) "
        f"$(dd if=/dev/vdb bs=8 count=1 2>/dev/null) E''ND-{tag}", f"END-{tag}")


def _assert_state(daemon: DaemonHandle, name: str, tag: str, mark: str, mac: str) -> None:
    out = _guest_state(daemon, name, tag)
    assert f"STATE {mark} {mac} hot-data" in out, out
    devices = json.loads(daemon.cli("domiflist", name, "--json").stdout)
    assert [nic["mac"] for nic in devices] == [mac]
    assert len(_paths(daemon, name)) == 2  # the boot disk and the hot-added one


def test_save_and_restore_after_hot_adds_and_a_media_change(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    """The save file carries where QEMU put the hot-added disk and NIC; the restoring
    QEMU is built with them there (same ids, same PCIe root ports), so the guest goes
    on with its RAM, its new NIC and its new disk.  A CD change keeps the layout too."""
    iso = tmp_path / "m.iso"
    iso.write_bytes(b"\0" * 65536)
    daemon.define("hs", disks=[{"path": _disk(tmp_path, "boot.qcow2"), "format": "qcow2"},
                               {"device": "cdrom", "bus": "scsi"}])
    daemon.client.post(daemon.client.domain_path("hs", "/start"))
    daemon.wait_booted("hs")
    daemon.cli("change-media", "hs", "sda", str(iso), "--insert")
    daemon.console_run("hs", "echo hot-state > /tmp/mark; echo ok-mar''ked", "ok-marked")
    daemon.cli("save", "hs", str(tmp_path / "hs.save"))
    daemon.cli("restore", str(tmp_path / "hs.save"))
    assert daemon.state("hs") == "running"
    assert str(iso) in _paths(daemon, "hs")  # the medium of the saved run is back
    assert "hot-state" in daemon.console_run("hs", "cat /tmp/mark; echo do''ne", "done")
    # (SCSI CD at sda: the hot disk is vdb)
    mac = _hot_add(daemon, "hs", tmp_path)
    _marker(daemon, "hs", "before-save")
    daemon.cli("save", "hs", str(tmp_path / "again.save"))
    assert daemon.state("hs") == "shutoff"
    daemon.cli("restore", str(tmp_path / "again.save"))
    assert daemon.state("hs") == "running"
    out = _guest_state(daemon, "hs", "r1")
    assert f"STATE before-save {mac} hot-data" in out, out
    assert len(_paths(daemon, "hs")) == 3
    # and once more from the restored run (its QEMU was built from the layout)
    daemon.cli("save", "hs", str(tmp_path / "third.save"))
    daemon.cli("restore", str(tmp_path / "third.save"))
    assert f"STATE before-save {mac} hot-data" in _guest_state(daemon, "hs", "r2")


def test_memory_snapshots_after_hot_adds_revert_with_those_devices(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    """Internal snapshot with memory and external one with --memspec, both taken after
    a live disk and NIC hotplug without a restart: each revert starts QEMU with the
    hot-added devices where they were, and the guest has its RAM marker back."""
    daemon.define("hm", disks=[{"path": _disk(tmp_path, "hm.qcow2"), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("hm", "/start"))
    daemon.wait_booted("hm")
    mac = _hot_add(daemon, "hm", tmp_path)
    _marker(daemon, "hm", "at-s1")
    daemon.cli("snapshot-create-as", "hm", "s1")
    snap = daemon.client.get(daemon.client.domain_path("hm", "/snapshots/s1"))
    assert (snap["kind"], snap["memory"]) == ("internal", True)
    _marker(daemon, "hm", "after-s1")
    daemon.cli("destroy", "hm")  # the revert must build a fresh QEMU
    daemon.cli("snapshot-revert", "hm", "s1")
    assert daemon.state("hm") == "running"
    _assert_state(daemon, "hm", "s1", "at-s1", mac)

    daemon.define("he", disks=[{"path": _disk(tmp_path, "he.qcow2"), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("he", "/start"))
    daemon.wait_booted("he")
    mac = _hot_add(daemon, "he", tmp_path, last=2)
    _marker(daemon, "he", "at-e1")
    memory = tmp_path / "e1.mem"
    daemon.cli("snapshot-create-as", "he", "e1", "--memspec", str(memory))
    assert memory.is_file()
    _marker(daemon, "he", "after-e1")
    daemon.cli("snapshot-revert", "he", "e1")
    assert daemon.state("he") == "running"
    _assert_state(daemon, "he", "e1", "at-e1", mac)


def test_save_after_an_unplug_is_refused_and_the_vm_runs_on(daemon: DaemonHandle,
                                                            tmp_path: Path) -> None:
    daemon.define("hr", disks=[{"path": _disk(tmp_path, "a.qcow2"), "format": "qcow2"},
                               {"path": _disk(tmp_path, "b.qcow2"), "format": "qcow2"},
                               {"path": _disk(tmp_path, "c.qcow2"), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("hr", "/start"))
    daemon.wait_booted("hr")
    daemon.cli("detach-disk", "hr", "vdb", "--live")
    refused = daemon.cli("save", "hr", str(tmp_path / "hr.save"), check=False)
    assert refused.returncode != 0 and "hot-plugged or unplugged" in refused.stderr
    assert not (tmp_path / "hr.save").exists()
    assert daemon.state("hr") == "running"


def test_attach_device_takes_libvirt_disk_xml(daemon: DaemonHandle, tmp_path: Path) -> None:
    daemon.define("ax")
    daemon.client.post(daemon.client.domain_path("ax", "/start"))
    daemon.wait_booted("ax")
    extra = _disk(tmp_path, "x.qcow2")
    xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
           f"<source file='{extra}'/><target dev='vdb' bus='virtio'/></disk>")
    done = daemon.cli("attach-device", "ax", "-", "--persistent", input_text=xml)
    assert "attached successfully (live and config)" in done.stdout
    assert extra in _paths(daemon, "ax")
    out = daemon.console_run("ax", "ls /sys/block; echo lis''ted", "listed")
    assert "vda" in out  # the tiny guest had no disk before: the new one is its first
    inactive = json.loads(daemon.cli("domblklist", "ax", "--inactive", "--json").stdout)
    assert [d["path"] for d in inactive] == [extra]
    daemon.cli("detach-device", "ax", "-", "--persistent", input_text=xml)
    assert _paths(daemon, "ax") == []
    for bad, message in (("<video><model type='vga'/></video>", "takes <disk>"),
                         ("<disk type='file'><source file='/x'", "not well-formed"),
                         ("<memory model='nvdimm'/>", "not supported")):
        result = daemon.cli("attach-device", "ax", "-", input_text=bad, check=False)
        assert result.returncode != 0 and message in result.stderr, (bad, result.stderr)
