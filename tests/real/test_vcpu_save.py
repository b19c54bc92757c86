"""save, restore and managedsave after ``setvcpus --live``: the save file's device
layout records the vCPU hot-added with device_add, and the restoring QEMU is built with
it as a device again (``-smp`` one lower, ``-device`` with the same id and topology),
so the guest goes on with its RAM and both vCPUs, and vcpucount says 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for

pytestmark = pytest.mark.qemu


def _sh(daemon: DaemonHandle, name: str, command: str, tag: str) -> str:
    out = daemon.console_run(name, f"{command}; echo EN''D-{tag}", f"END-{tag}")
    return out


def _cpus(daemon: DaemonHandle, name: str, tag: str) -> str:
    """'present online' as the guest's kernel lists them, e.g. '0-1 0-1'."""
    out = _sh(daemon, name, "echo CP''US $(cat /sys/devices/system/cpu/present) "
              "$(cat /sys/devices/system/cpu/online)", tag)
    return out.split("CPUS ", 1)[1].split("\n", 1)[0].strip() if "CPUS " in out else out


def _live_count(daemon: DaemonHandle, name: str) -> str:
    return daemon.cli("vcpucount", name, "--current", "--live").stdout.strip()


def test_save_restore_and_managedsave_after_setvcpus_live(daemon: DaemonHandle,
                                                          tmp_path: Path) -> None:
    daemon.define("vs", memory=128, vcpus={"current": 1, "max": 2})
    daemon.cli("start", "vs")
    daemon.wait_booted("vs")
    daemon.cli("setvcpus", "vs", "2", "--live")
    wait_for(lambda: _cpus(daemon, "vs", "plug").startswith("0-1"), 60,
             "the hot-added vCPU in the guest")
    _sh(daemon, "vs", "echo 1 > /sys/devices/system/cpu/cpu1/online 2>/dev/null; "
        "echo vcpu-mark > /tmp/mark", "mark")
    assert _cpus(daemon, "vs", "before") == "0-1 0-1"

    daemon.cli("save", "vs", str(tmp_path / "vs.save"))  # refused before: hot-added vCPUs
    assert daemon.state("vs") == "shutoff"
    daemon.cli("restore", str(tmp_path / "vs.save"))
    assert daemon.state("vs") == "running"
    assert _live_count(daemon, "vs") == "2"
    assert "vcpu-mark" in _sh(daemon, "vs", "cat /tmp/mark", "r1")  # its RAM is back
    assert _cpus(daemon, "vs", "r1") == "0-1 0-1"
    # the restored vCPU runs: take it offline and online again in the guest
    _sh(daemon, "vs", "echo 0 > /sys/devices/system/cpu/cpu1/online", "off")
    assert _cpus(daemon, "vs", "off") == "0-1 0"
    _sh(daemon, "vs", "echo 1 > /sys/devices/system/cpu/cpu1/online", "on")
    assert _cpus(daemon, "vs", "on") == "0-1 0-1"
    # it is a hot-added device again (the TCG unplug refusal, not "started with 2")
    refused = daemon.cli("setvcpus", "vs", "1", "--live", check=False)
    assert refused.returncode == 1 and "under TCG" in refused.stderr, refused.stderr

    daemon.cli("managedsave", "vs")  # from the restored run: the layout carries on
    daemon.cli("start", "vs")
    daemon.wait_state("vs", "running")
    assert _live_count(daemon, "vs") == "2"
    assert "vcpu-mark" in _sh(daemon, "vs", "cat /tmp/mark", "ms")
    assert _cpus(daemon, "vs", "ms") == "0-1 0-1"
