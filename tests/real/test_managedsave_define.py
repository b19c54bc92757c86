"""virsh managedsave-define / managedsave-edit / managedsave-dumpxml on real QEMU: the
definition inside a managed save image changes on the host side only (a disk moved to
another file, a title, the state after the restore), and the restore then uses it with
the guest's memory intact; a change the guest would see is refused, named."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle
from tests.real.test_managedsave import _marker_survived, _write_marker

pytestmark = pytest.mark.qemu

MIB = 2**20


def _saved_guest(daemon: DaemonHandle, tmp_path: Path, name: str) -> Path:
    disk = tmp_path / f"{name}-a.raw"
    with open(disk, "wb") as image:
        image.truncate(32 * MIB)
    daemon.define(name, memory=128, disks=[{"path": str(disk), "format": "raw"}])
    daemon.cli("start", name)
    daemon.wait_booted(name)
    _write_marker(daemon, name)
    daemon.cli("managedsave", name)
    return disk


def test_managedsave_define_moves_a_disk_and_the_restore_uses_it(daemon: DaemonHandle,
                                                                 tmp_path: Path) -> None:
    old = _saved_guest(daemon, tmp_path, "md")
    new = tmp_path / "md-b.raw"
    shutil.copyfile(old, new)
    xml = daemon.cli("managedsave-dumpxml", "md").stdout
    assert re.search(f"file=[\"']{old}[\"']", xml), xml
    edited = tmp_path / "md.xml"
    edited.write_text(xml.replace(str(old), str(new)).replace(
        "</name>", "</name>\n  <title>moved</title>", 1))
    out = daemon.cli("managedsave-define", "md", str(edited), "--paused").stdout
    assert out == "Managed save state file of domain 'md' updated.\n"
    stored = daemon.cli("managedsave-dumpxml", "md").stdout
    assert re.search(f"file=[\"']{new}[\"']", stored), stored
    assert "<title>moved</title>" in stored
    assert "Managed save:   yes" in daemon.cli("dominfo", "md").stdout

    # what the guest would see is refused, and the image keeps its definition
    bigger, count = re.subn(r"<(memory|currentMemory) unit=.KiB.>\d+<",
                            r"<\1 unit='KiB'>262144<", stored)
    assert count == 2
    edited.write_text(bigger)
    refused = daemon.cli("managedsave-define", "md", str(edited), check=False)
    assert refused.returncode == 1
    assert "the guest would see: memory.current" in refused.stderr, refused.stderr
    assert daemon.cli("managedsave-dumpxml", "md").stdout == stored

    daemon.cli("start", "md")  # restored paused (--paused), from the moved disk
    assert daemon.cli("domstate", "md").stdout.strip() == "paused"
    daemon.cli("resume", "md")
    assert _marker_survived(daemon, "md")
    assert str(new) in daemon.cli("domblklist", "md").stdout
    daemon.cli("destroy", "md")


def test_managedsave_edit_and_the_missing_image(daemon: DaemonHandle, tmp_path: Path
                                                ) -> None:
    _saved_guest(daemon, tmp_path, "me")
    env = {"EDITOR": "sed -i -e s|</name>|</name><title>edited</title>|"}
    out = daemon.cli("managedsave-edit", "me", env=env).stdout
    assert out == "Managed save image of domain 'me' edited.\n"
    assert "<title>edited</title>" in daemon.cli("managedsave-dumpxml", "me").stdout
    unchanged = daemon.cli("managedsave-edit", "me", env={"EDITOR": "true"}).stdout
    assert "XML configuration not changed" in unchanged
    # --running with the XML unchanged still sets the state after the restore
    daemon.cli("managedsave-edit", "me", "--running", env={"EDITOR": "true"})
    daemon.cli("start", "me")
    assert daemon.cli("domstate", "me").stdout.strip() == "running"
    assert _marker_survived(daemon, "me")
    daemon.cli("destroy", "me")
    missing = daemon.cli("managedsave-define", "me", str(tmp_path / "none.xml"),
                         check=False)
    assert missing.returncode == 1
    (tmp_path / "me.xml").write_text(daemon.cli("dumpxml", "me").stdout)
    missing = daemon.cli("managedsave-define", "me", str(tmp_path / "me.xml"), check=False)
    assert missing.returncode == 1
    assert "has no managed save image" in missing.stderr, missing.stderr
