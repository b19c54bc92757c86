"""Save and restore after hotplug, with the tiny guest: the save file carries the
running configuration, and a device set a fresh QEMU could not rebuild is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.real.conftest import DaemonHandle


def _disk(tmp: Path, name: str) -> str:
    path = tmp / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return str(path)


def _paths(daemon: DaemonHandle, name: str) -> list[str | None]:
    return [d["path"] for d in json.loads(daemon.cli("domblklist", name, "--json").stdout)]


def test_restore_brings_back_a_hot_added_disk(daemon: DaemonHandle, tmp_path: Path) -> None:
    daemon.define("hs", disks=[{"path": _disk(tmp_path, "boot.qcow2"), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("hs", "/start"))
    daemon.wait_booted("hs")
    extra = _disk(tmp_path, "extra.qcow2")
    daemon.cli("attach-disk", "hs", extra, "--live")
    daemon.console_run("hs", "echo hot-state > /tmp/mark; echo ok-marked", "ok-marked")
    daemon.cli("save", "hs", str(tmp_path / "hs.save"))
    assert daemon.state("hs") == "shutoff"
    daemon.cli("restore", str(tmp_path / "hs.save"))
    assert daemon.state("hs") == "running"
    assert extra in _paths(daemon, "hs")  # the live-only disk is back, same QEMU id
    out = daemon.console_run("hs", "cat /tmp/mark; ls /sys/block", "vdb")
    assert "hot-state" in out
    daemon.cli("detach-disk", "hs", extra, "--live")
    assert extra not in _paths(daemon, "hs")


def test_save_after_an_unplug_is_refused_and_the_vm_runs_on(daemon: DaemonHandle,
                                                            tmp_path: Path) -> None:
    daemon.define("hr", disks=[{"path": _disk(tmp_path, "a.qcow2"), "format": "qcow2"},
                               {"path": _disk(tmp_path, "b.qcow2"), "format": "qcow2"},
                               {"path": _disk(tmp_path, "c.qcow2"), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("hr", "/start"))
    daemon.wait_booted("hr")
    daemon.cli("detach-disk", "hr", "vdb", "--live")
    refused = daemon.cli("save", "hr", str(tmp_path / "hr.save"), check=False)
    assert refused.returncode != 0 and "had a device unplugged" in refused.stderr
    assert not (tmp_path / "hr.save").exists()
    assert daemon.state("hr") == "running"
