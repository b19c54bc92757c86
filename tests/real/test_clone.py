"""virtkit clone (virt-clone) against real QEMU and qemu-img, with the tiny guest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle

pytestmark = pytest.mark.qemu


def qcow2_with(path: Path, text: bytes) -> Path:
    """A 16 MiB qcow2 whose first sector is ``text`` (one repeated byte) and the
    next 64 KiB 0x5a."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    for command in ("write -P 0x5a 512 64k", f"write -P 0x{text[0]:02x} 0 512"):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True,
                       capture_output=True)
    return path


def head(path: str, tmp: Path) -> bytes:
    out = tmp / "head.bin"
    out.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "dd", "-O", "raw", "bs=512", "count=1", f"if={path}",
                    f"of={out}"], check=True, capture_output=True)
    return out.read_bytes()


def define_with_disk(daemon: DaemonHandle, name: str, disk: Path) -> None:
    daemon.define(name, disks=[{"path": str(disk), "format": "qcow2"}],
                  nics=[{"type": "user"}], serials=[{"log": True}])


def test_full_clone_boots_and_diverges(daemon: DaemonHandle, tmp_path: Path) -> None:
    disk = qcow2_with(tmp_path / "web.qcow2", b"A" * 512)
    define_with_disk(daemon, "web", disk)
    result = daemon.cli("clone", "--original", "web", "--name", "web2", "--auto-clone",
                        "--json")
    clone = json.loads(result.stdout)
    source = daemon.info("web")
    assert clone["uuid"] != source["uuid"]
    copy = clone["disks"][0]["path"]
    assert copy == str(tmp_path / "web2.qcow2")
    assert subprocess.run(["qemu-img", "compare", str(disk), copy],
                          capture_output=True).returncode == 0
    nics = [json.loads(daemon.cli("domiflist", name, "--json").stdout)[0]["mac"]
            for name in ("web", "web2")]
    assert nics[0] != nics[1]
    daemon.client.post(daemon.client.domain_path("web2", "/start"))
    daemon.wait_booted("web2")
    daemon.console_run("web2", "printf 'diverged' | dd of=/dev/vda conv=fsync 2>/dev/null;"
                               " echo wrote-$((6*7))", "wrote-42")
    daemon.cli("destroy", "web2")
    assert head(copy, tmp_path).startswith(b"diverged")
    assert head(str(disk), tmp_path) == b"A" * 512  # the original is untouched


def test_running_original_needs_pause_or_agent(daemon: DaemonHandle, tmp_path: Path) -> None:
    disk = qcow2_with(tmp_path / "db.qcow2", b"B" * 512)
    define_with_disk(daemon, "db", disk)
    daemon.client.post(daemon.client.domain_path("db", "/start"))
    daemon.wait_booted("db")
    refused = daemon.cli("clone", "-o", "db", "-n", "db2", "--auto-clone", check=False)
    assert refused.returncode != 0 and "is running" in refused.stderr
    no_agent = daemon.cli("clone", "-o", "db", "-n", "db2", "--auto-clone", "--force",
                          check=False)
    assert no_agent.returncode != 0 and "guest agent" in no_agent.stderr
    assert not (tmp_path / "db2.qcow2").exists()
    assert daemon.client.get("/v1/domains?all=1")[-1]["name"] != "db2"
    daemon.cli("suspend", "db")
    daemon.cli("clone", "-o", "db", "-n", "db2", "-f", str(tmp_path / "copy.qcow2"))
    daemon.cli("resume", "db")
    assert head(str(tmp_path / "copy.qcow2"), tmp_path) == b"B" * 512
    assert daemon.state("db") == "running"


def test_linked_clone_shares_a_base_neither_writes(daemon: DaemonHandle,
                                                   tmp_path: Path) -> None:
    disk = qcow2_with(tmp_path / "base.qcow2", b"C" * 512)
    define_with_disk(daemon, "tpl", disk)
    daemon.cli("clone", "-o", "tpl", "-n", "tpl2", "--auto-clone", "--linked")
    clone_disk = daemon.info("tpl2")["disks"][0]["path"]
    original_disk = daemon.info("tpl")["disks"][0]["path"]
    assert original_disk != str(disk) and clone_disk != str(disk)
    for overlay in (clone_disk, original_disk):
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", overlay],
                                         capture_output=True, check=True).stdout)
        assert info["backing-filename"] == str(disk)
        assert head(overlay, tmp_path) == b"C" * 512
    daemon.client.post(daemon.client.domain_path("tpl", "/start"))
    refused = daemon.cli("clone", "-o", "tpl", "-n", "tpl3", "--auto-clone", "--linked",
                         check=False)
    assert refused.returncode != 0 and "needs it shut off" in refused.stderr


def test_bad_clone_requests_change_nothing(daemon: DaemonHandle, tmp_path: Path) -> None:
    disk = qcow2_with(tmp_path / "app.qcow2", b"D" * 512)
    define_with_disk(daemon, "app", disk)
    daemon.define("other")
    taken = tmp_path / "taken.qcow2"
    taken.write_bytes(b"keep me")
    cases = [
        (("clone", "-o", "app", "-n", "other", "--auto-clone"), "already exists"),
        (("clone", "-o", "app", "-n", "app2"), "--auto-clone"),
        (("clone", "-o", "app", "-n", "app2", "-f", str(taken)), "already exists"),
        (("clone", "-o", "app", "-n", "app2", "-f", "relative.qcow2"), "absolute path"),
        (("clone", "-o", "nope", "-n", "app2", "--auto-clone"),  # virsh's line
         "failed to get domain 'nope'"),
    ]
    for argv, message in cases:
        result = daemon.cli(*argv, check=False)
        assert result.returncode != 0 and message in result.stderr, (argv, result.stderr)
    assert taken.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.qcow2", "taken.qcow2"]
    assert [row["name"] for row in daemon.client.get("/v1/domains?all=1")] == ["app", "other"]
