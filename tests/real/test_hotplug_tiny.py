"""Hotplug with the tiny guest: libvirt device XML (virsh attach-device), and save and
restore after hotplug (the save file carries the running configuration; a device set a
fresh QEMU could not rebuild is refused)."""

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


def test_save_after_a_hot_add_is_refused_and_after_media_change_works(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    """A QEMU started afresh lays hot-added devices out differently, so a save file of
    such a run could not be restored: refused before anything stops.  A CD change
    keeps the layout: that save restores, with the new medium."""
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
    extra = _disk(tmp_path, "extra.qcow2")
    daemon.cli("attach-disk", "hs", extra, "--live")
    refused = daemon.cli("save", "hs", str(tmp_path / "again.save"), check=False)
    assert refused.returncode != 0 and "hot-plugged or unplugged" in refused.stderr
    assert not (tmp_path / "again.save").exists()
    assert daemon.state("hs") == "running"


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
