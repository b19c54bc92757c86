"""Snapshots against real QEMU (TCG) and the tiny guest, with data checked in the guest.

The guest writes known data to its qcow2 data disk (/dev/vda) through the serial
console and reads an md5sum back; memory is checked with a marker file in the
guest's RAM-backed root file system (gone after a reboot, back after a revert with
memory).  Offline changes are made and read with qemu-io on the host.  One test
uses the shared Debian guest with qemu-guest-agent (tests/real/debianguest.py) for
--quiesce.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle
from tests.real.debianguest import DebianVm
from virtkit.cli.client import ApiError
from virtkit.cli.streaming import open_stream

pytestmark = pytest.mark.qemu

BLOCKS = 4  # 64 KiB blocks of the data area written and checksummed


def _image(path: Path, size: str = "32M", fmt: str = "qcow2") -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return str(path)


def _write(daemon: DaemonHandle, name: str, seed: str) -> str:
    """Fill the data area with bytes derived from ``seed``; return their md5sum."""
    out = daemon.console_run(
        name, f"yes {seed} | head -c {BLOCKS * 65536} > /tmp/d; dd if=/tmp/d of=/dev/vda "
        f"bs=65536 conv=fsync 2>/dev/null; sync; echo MARK-{seed} > /tmp/marker; "
        f"md5sum /tmp/d | sed 's/^/SUM=/'; echo W-''{seed}", f"W-{seed}\r")
    return _sum(out)


def _read(daemon: DaemonHandle, name: str, tag: str) -> str:
    """The md5sum of the data area as the guest reads it now."""
    out = daemon.console_run(
        name, f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=65536 count={BLOCKS} "
        f"2>/dev/null | md5sum | sed 's/^/SUM=/'; echo R-''{tag}", f"R-{tag}\r")
    return _sum(out)


def _marker(daemon: DaemonHandle, name: str, tag: str) -> str:
    out = daemon.console_run(name, f"cat /tmp/marker 2>/dev/null || echo MARK-none; "
                             f"echo M-''{tag}", f"M-{tag}\r")
    found: list[str] = re.findall(r"^MARK-(\w+)", out, re.M)
    return found[-1] if found else ""


def _sum(out: str) -> str:
    found: list[str] = re.findall(r"SUM=([0-9a-f]{32})", out)
    assert found, out
    return found[-1]


def _snap(daemon: DaemonHandle, name: str, snap: str, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = daemon.client.post(
        daemon.client.domain_path(name, "/snapshots"), {"name": snap, **body})
    return result


def _revert(daemon: DaemonHandle, name: str, snap: str, start: str | None = None
            ) -> dict[str, Any]:
    body = {"start": start} if start else {}
    result: dict[str, Any] = daemon.client.post(
        daemon.client.domain_path(name, f"/snapshots/{snap}/revert"), body)
    return result


def _delete(daemon: DaemonHandle, name: str, snap: str, query: str = "") -> dict[str, Any]:
    result: dict[str, Any] = daemon.client.request(
        "DELETE", daemon.client.domain_path(name, f"/snapshots/{snap}{query}"))
    return result


def _qemu_io(path: str, command: str, fmt: str = "qcow2") -> str:
    result = subprocess.run(["qemu-io", "-f", fmt, "-c", command, path], capture_output=True,
                            text=True, check=False)
    return result.stdout + result.stderr


def _has_pattern(path: str, pattern: int, fmt: str = "qcow2") -> bool:
    out = _qemu_io(path, f"read -P {pattern:#x} 0 64k", fmt)
    return "Pattern verification failed" not in out and "read 65536/65536" in out


def _disk_path(daemon: DaemonHandle, name: str) -> str:
    return str(daemon.info(name)["disks"][0]["path"])


def test_internal_snapshots_with_memory_and_offline(daemon: DaemonHandle,
                                                    tmp_path: Path) -> None:
    data = _image(tmp_path / "data.qcow2")
    daemon.define("int", disks=[{"path": data}])
    daemon.client.post(daemon.client.domain_path("int", "/start"))
    daemon.wait_booted("int")
    with pytest.raises(ApiError) as no_agent:  # a channel, but no agent in the tiny guest
        _snap(daemon, "int", "q", quiesce=True)
    assert no_agent.value.http_status == 503 and "guest agent" in no_agent.value.message
    assert daemon.client.get(daemon.client.domain_path("int", "/snapshots")) == []
    sum_a = _write(daemon, "int", "aaaa")
    snap = _snap(daemon, "int", "s1", description="before b")
    assert (snap["kind"], snap["memory"], snap["state"]) == ("internal", True, "running")
    sum_b = _write(daemon, "int", "bbbb")
    assert sum_b != sum_a and _read(daemon, "int", "b1") == sum_b
    result = _revert(daemon, "int", "s1")  # live: RAM and disk of that instant
    assert result["domain_state"] == "running"
    assert _marker(daemon, "int", "r1") == "aaaa"
    assert _read(daemon, "int", "r1") == sum_a
    assert _disk_path(daemon, "int") == data  # internal: no new files

    daemon.client.post(daemon.client.domain_path("int", "/destroy"))
    offline = _snap(daemon, "int", "s2")  # offline: qemu-img snapshot -c, disk only
    assert (offline["kind"], offline["memory"], offline["parent"]) == ("internal", False, "s1")
    assert _qemu_io(data, "write -P 0x5a 0 64k")  # change the disk offline
    assert _has_pattern(data, 0x5A)
    _revert(daemon, "int", "s2")
    assert daemon.state("int") == "shutoff"
    assert not _has_pattern(data, 0x5A)

    _revert(daemon, "int", "s1")  # with memory from shut off: started, then loaded
    assert daemon.state("int") == "running"
    assert _marker(daemon, "int", "r2") == "aaaa"
    assert _read(daemon, "int", "r2") == sum_a
    listing = daemon.client.get(daemon.client.domain_path("int", "/snapshots"))
    assert [(s["name"], s["current"]) for s in listing] == [("s1", True), ("s2", False)]
    _delete(daemon, "int", "s1")  # running: the snapshot-delete job
    _delete(daemon, "int", "s2")
    tags = subprocess.run(["qemu-img", "snapshot", "-U", "-l", data], capture_output=True,
                          text=True, check=True).stdout
    assert "s1" not in tags and "s2" not in tags
    assert _read(daemon, "int", "r3") == sum_a


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_external_chain_running_delete_middle_and_memory(daemon: DaemonHandle,
                                                         tmp_path: Path) -> None:
    data = _image(tmp_path / "data.qcow2")
    daemon.define("ext", disks=[{"path": data}])
    daemon.client.post(daemon.client.domain_path("ext", "/start"))
    daemon.wait_booted("ext")
    sum_a = _write(daemon, "ext", "aaaa")
    before = daemon.info("ext")
    with pytest.raises(ApiError) as failed:  # the memory file cannot be written: all undone
        _snap(daemon, "ext", "bad", kind="external", memspec="/proc/virtkit-test.mem")
    assert "memory file" in failed.value.message
    assert _files(tmp_path) == {"data.qcow2"}
    assert daemon.info("ext")["spec"] == before["spec"]
    assert daemon.state("ext") == "running" and _read(daemon, "ext", "u") == sum_a

    e1 = _snap(daemon, "ext", "e1", kind="external", disk_only=True)
    assert (e1["kind"], e1["memory"]) == ("external", False)
    assert _disk_path(daemon, "ext") == str(tmp_path / "data.e1.qcow2")
    sum_b = _write(daemon, "ext", "bbbb")
    assert _snap(daemon, "ext", "e2", kind="external")["memory"] is True
    sum_c = _write(daemon, "ext", "cccc")
    _snap(daemon, "ext", "e3", kind="external", disk_only=True)
    sum_d = _write(daemon, "ext", "dddd")
    assert len({sum_a, sum_b, sum_c, sum_d}) == 4

    # e2 sits in the middle: its frozen image is merged away while the guest runs
    _delete(daemon, "ext", "e2")
    assert not (tmp_path / "data.e2.qcow2").exists()
    assert _read(daemon, "ext", "d2") == sum_d
    e3 = daemon.client.get(daemon.client.domain_path("ext", "/snapshots/e3"))
    assert e3["parent"] == "e1" and e3["disks"][0]["file"] == str(tmp_path / "data.e1.qcow2")

    _revert(daemon, "ext", "e3", start="running")  # disk-only: a fresh boot
    daemon.wait_booted("ext", count=2)
    assert _read(daemon, "ext", "c") == sum_c
    assert not (tmp_path / "data.e3.qcow2").exists()  # the discarded top
    assert _marker(daemon, "ext", "c") == "none"

    sum_e = _write(daemon, "ext", "eeee")
    assert _snap(daemon, "ext", "e4", kind="external")["memory"] is True
    _write(daemon, "ext", "ffff")
    assert _revert(daemon, "ext", "e4")["domain_state"] == "running"  # memory: no boot
    assert _marker(daemon, "ext", "e") == "eeee"
    assert _read(daemon, "ext", "e") == sum_e

    _revert(daemon, "ext", "e1", start="running")
    daemon.wait_booted("ext", count=3)
    assert _read(daemon, "ext", "a") == sum_a
    _revert(daemon, "ext", "e4")  # back onto the other branch, memory included
    assert _marker(daemon, "ext", "e2") == "eeee"
    assert _read(daemon, "ext", "e2") == sum_e
    tree = daemon.cli("snapshot-list", "ext", "--tree").stdout
    assert tree.split() == ["e1", "|", "+-", "e3", "|", "+-", "e4"]
    info = daemon.cli("snapshot-current", "ext", "--name").stdout
    assert info.strip() == "e4"

    _merge_everything_back(daemon, tmp_path, data, sum_e)


def _merge_everything_back(daemon: DaemonHandle, tmp_path: Path, data: str,
                           sum_e: str) -> None:
    """Merges while running, then new snapshots on the merged chains (QEMU's graph must
    not keep the merged nodes): e1 merges its reader down into the original image (an
    intermediate commit), e4 its reader, the active top (an active commit + pivot)."""
    _delete(daemon, "ext", "e1")
    _snap(daemon, "ext", "e5", kind="external", disk_only=True)
    _delete(daemon, "ext", "e4")
    _delete(daemon, "ext", "e5")
    _snap(daemon, "ext", "e6", kind="external", disk_only=True)
    assert _read(daemon, "ext", "e3") == sum_e
    _delete(daemon, "ext", "e6")
    _delete(daemon, "ext", "e3")
    assert _disk_path(daemon, "ext") == data  # everything merged back into the original
    assert _files(tmp_path) == {"data.qcow2"}
    assert _read(daemon, "ext", "e4") == sum_e

    # a disk hot-added to the running VM only (not to its spec) is snapshotted too: the
    # snapshot follows the running configuration and QEMU's device ids
    hot = _image(tmp_path / "hot.qcow2")
    daemon.client.post(daemon.client.domain_path("ext", "/disks"),
                       {"disk": {"path": hot}, "live": True})
    e7 = _snap(daemon, "ext", "e7", kind="external", disk_only=True)
    assert [d["mode"] for d in e7["disks"]] == ["external", "external"]
    assert _files(tmp_path) == {"data.qcow2", "hot.qcow2", "data.e7.qcow2", "hot.e7.qcow2"}
    assert _disk_path(daemon, "ext") == str(tmp_path / "data.e7.qcow2")  # the stored spec
    _delete(daemon, "ext", "e7")
    assert _files(tmp_path) == {"data.qcow2", "hot.qcow2"}
    # (with memory after a hotplug: tests/real/test_hotplug_tiny.py)
    assert _read(daemon, "ext", "e5") == sum_e


def test_offline_external_and_bad_inputs(daemon: DaemonHandle, tmp_path: Path) -> None:
    data = _image(tmp_path / "data.qcow2")
    _qemu_io(data, "write -P 0x11 0 64k")
    daemon.define("off", disks=[{"path": data}])
    _snap(daemon, "off", "o1", kind="external")  # offline: disk-only by nature
    top = _disk_path(daemon, "off")
    assert top == str(tmp_path / "data.o1.qcow2")
    _qemu_io(top, "write -P 0x22 0 64k")
    _snap(daemon, "off", "o2", kind="external")
    _qemu_io(_disk_path(daemon, "off"), "write -P 0x33 0 64k")

    _revert(daemon, "off", "o1")
    assert daemon.state("off") == "shutoff"
    assert _has_pattern(_disk_path(daemon, "off"), 0x11)
    _revert(daemon, "off", "o2")
    assert _has_pattern(_disk_path(daemon, "off"), 0x22)
    # its frozen image is the original: o2's data merges down (NDJSON progress stream)
    with open_stream(daemon.client, "DELETE", daemon.client.domain_path("off", "/snapshots/o1"),
                     None, accept="application/x-ndjson") as response:
        lines = [json.loads(line) for line in response]
    assert lines[-1]["result"]["deleted"] == ["o1"]
    assert all("progress" in line for line in lines[:-1])
    assert not (tmp_path / "data.o1.qcow2").exists()
    assert _has_pattern(_disk_path(daemon, "off"), 0x22)
    _qemu_io(_disk_path(daemon, "off"), "write -P 0x44 0 64k")
    reverted = daemon.cli("snapshot-revert", "off", "o2").stdout
    assert "reverted to snapshot o2 (now shutoff)" in reverted
    assert _has_pattern(_disk_path(daemon, "off"), 0x22)
    table = daemon.cli("snapshot-list", "off", "--parent").stdout.splitlines()
    # virsh's columns first (the current mark after them: no column shifts)
    assert table[0].split() == ["Name", "Creation", "Time", "State", "Parent", "Kind",
                                "Memory", "Current"]
    row = table[2].split()
    assert row[0] == "o2" and row[4:] == ["shutoff", "external", "no", "*"], row  # no parent

    raw = _bad_inputs(daemon, tmp_path)
    refused = daemon.cli("undefine", "off", check=False)
    assert refused.returncode == 1 and "--snapshots-metadata" in refused.stderr
    daemon.cli("undefine", "off", "--snapshots-metadata")
    # a raw disk by default gets an external disk-only snapshot (here through the CLI);
    # deleting it commits the overlay into the raw image and the spec names that again
    made = daemon.cli("snapshot-create-as", "rawvm", "r2", "--description", "via the CLI")
    assert "Domain snapshot r2 created (external disk-only)" in made.stdout
    assert _disk_path(daemon, "rawvm") == str(tmp_path / "raw.r2.qcow2")
    _qemu_io(_disk_path(daemon, "rawvm"), "write -P 0x55 0 64k")
    shown = daemon.cli("snapshot-info", "rawvm", "--current").stdout
    assert "via the CLI" in shown and "external" in shown
    daemon.cli("snapshot-delete", "rawvm", "r2")
    disk = daemon.info("rawvm")["disks"][0]
    assert (disk["path"], disk["format"]) == (raw, "raw")
    assert not (tmp_path / "raw.r2.qcow2").exists()
    assert _has_pattern(raw, 0x55, "raw")
    assert daemon.cli("snapshot-list", "rawvm", "--name").stdout == ""


def _bad_inputs(daemon: DaemonHandle, tmp_path: Path) -> str:
    """A clear error each, with the right status, and nothing changed; returns the raw
    image of the domain 'rawvm' it defines."""
    daemon.define("other", disks=[{"path": _image(tmp_path / "other.qcow2")}])
    raw = _image(tmp_path / "raw.img", "8M", "raw")
    daemon.define("rawvm", disks=[{"path": raw}])
    files, spec = _files(tmp_path), daemon.info("off")["spec"]
    cases: list[tuple[str, Any, int, str]] = [
        ("revert unknown", lambda: _revert(daemon, "off", "nope"), 404,
         "domain 'off' has no snapshot 'nope'"),
        ("another VM's snapshot", lambda: _revert(daemon, "other", "o2"), 404,
         "domain 'other' has no snapshot 'o2'"),
        ("duplicate", lambda: _snap(daemon, "off", "o2", kind="external"), 409,
         "already has a snapshot 'o2'"),
        ("raw internal", lambda: _snap(daemon, "rawvm", "r1", kind="internal"), 400,
         "--disk-only"),
        ("quiesce offline", lambda: _snap(daemon, "off", "q1", kind="external", quiesce=True),
         400, "--quiesce needs a running domain"),
        ("mixing kinds", lambda: _snap(daemon, "off", "i1", kind="internal"), 409,
         "all be of one kind"),
        ("bad name", lambda: _snap(daemon, "off", "../x"), 400, "invalid snapshot name"),
    ]
    for what, call, status, text in cases:
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.http_status == status, what
        assert text in str(error.value), (what, str(error.value))
    assert _files(tmp_path) == files
    assert daemon.info("off")["spec"] == spec
    return raw


def test_quiesced_snapshot_through_the_guest_agent(debian_vm: DebianVm) -> None:
    """A Debian guest with qemu-guest-agent: --quiesce freezes its file systems, so data
    the guest wrote a moment before (not synced) is in the frozen image; thawed after."""
    daemon, disk = debian_vm.daemon, debian_vm.disk
    assert _files(debian_vm.folder) == {disk.name}
    marker = f"quiesce-{secrets.token_hex(8)}"
    daemon.client.post(daemon.client.domain_path(debian_vm.name, "/guest/exec"), {
        "path": "/bin/sh", "args": ["-c", f"echo {marker} > /root/quiesce-marker"]})
    made = daemon.cli("snapshot-create-as", debian_vm.name, "q1", "--external", "--disk-only",
                      "--quiesce")
    assert "Domain snapshot q1 created (external disk-only)" in made.stdout
    assert marker.encode() in disk.read_bytes()  # flushed into the frozen image
    status = daemon.client.get(daemon.client.domain_path(debian_vm.name, "/guest/fsfreeze"))
    assert status["status"] == "thawed"
    _delete(daemon, debian_vm.name, "q1")
    assert _files(debian_vm.folder) == {disk.name}
