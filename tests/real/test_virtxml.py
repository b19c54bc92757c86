"""``virtkit xml`` (virt-xml's syntax) against a running tiny guest: a disk added live
and to the definition, edited, then removed; the guest sees the hot-added disk."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for

pytestmark = pytest.mark.qemu


def _disks(daemon: DaemonHandle, name: str) -> list[dict[str, object]]:
    return list(daemon.info(name)["spec"].get("disks") or [])


def test_add_edit_remove_a_disk_like_virt_xml(daemon: DaemonHandle, tmp_path: Path) -> None:
    first = tmp_path / "a.raw"
    first.write_bytes(b"\0" * 2**20)
    extra = tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(extra), "16M"], check=True)
    daemon.define("vxml", disks=[{"path": str(first), "format": "raw"}])
    daemon.cli("start", "vxml")
    daemon.wait_booted("vxml")

    added = daemon.cli("xml", "vxml", "--add-device", "--disk",
                       f"{extra},format=qcow2,bus=virtio", "--update")
    assert added.stdout == ("Device hotplug successful.\n"
                            "Domain 'vxml' defined successfully.\n"), added.stdout
    assert [d["path"] for d in _disks(daemon, "vxml")] == [str(first), str(extra)]

    def guest_sees_vdb() -> bool:
        out = daemon.console_run("vxml", "ls /sys/block; echo L-''s", "L-s\r")
        return "vdb" in out

    wait_for(guest_sees_vdb, 60, "the guest to see the hot-added disk")

    diff = daemon.cli("xml", "vxml", "--edit", "target=vdb", "--disk", "cache=none",
                      "--print-diff")
    assert '+      "cache": "none",' in diff.stdout, diff.stdout
    assert _disks(daemon, "vxml")[1].get("cache") != "none"  # --print-diff defines nothing
    daemon.cli("xml", "vxml", "--edit", "target=vdb", "--disk", "cache=none")
    assert _disks(daemon, "vxml")[1].get("cache") == "none"
    refused = daemon.cli("xml", "vxml", "--edit", "--disk", "cache=none", "--update",
                         check=False)
    assert refused.returncode == 1 and "only disks and NICs" in refused.stderr

    daemon.cli("xml", "vxml", "--remove-device", "--disk", "target=vdb")
    assert [d["path"] for d in _disks(daemon, "vxml")] == [str(first)]
    daemon.cli("destroy", "vxml")
