"""rbd pools and storage fencing against a real one-node Ceph (issue 18 items 3 and 6;
docs/storage.md, docs/cluster.md): one monitor and one bluestore OSD on a file
(tests/real/cephserver.py), started once for this module.  Daemons and QEMUs reach it
through librbd and the rbd/ceph commands; no kernel rbd module anywhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.cephserver import CephServer, ceph_server
from tests.real.conftest import DaemonHandle, cleanup, start_daemon
from tests.real.test_migration import _migrate
from virtkit.cli.client import Client
from virtkit.errors import HostError
from virtkit.images.tinyguest import TinyGuest
from virtkit.model.netdisk import parse_rbd_url, rbd_blockdev
from virtkit.paths import state_paths
from virtkit.storage import rbdfence

pytestmark = pytest.mark.qemu  # QEMU writers, guests (the fence's QEMUs boot no guest)

@pytest.fixture(scope="module")
def ceph() -> Iterator[CephServer]:
    for program in ("ceph-mon", "ceph-osd", "rbd"):
        if shutil.which(program) is None:
            pytest.fail("ceph-mon, ceph-osd and ceph-common are test packages "
                        "(scripts/setup.sh test)")
    with ceph_server() as server:
        yield server


def _daemon(tiny_guest: TinyGuest) -> DaemonHandle:
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    try:
        process = start_daemon(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return DaemonHandle(root, process, Client(state_paths(root), timeout=180), tiny_guest)


@pytest.fixture
def host(ceph: CephServer, tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    handle = _daemon(tiny_guest)
    try:
        yield handle
    finally:
        cleanup(handle)


def _rbd_pool(host: DaemonHandle, ceph: CephServer, name: str = "ceph1") -> None:
    host.cli("pool-define-as", name, "rbd", "--source-host", ceph.monitor,
             "--source-name", ceph.pool)
    host.cli("pool-start", name)


def _images(ceph: CephServer) -> list[str]:
    return sorted(ceph.rbd("ls", ceph.pool).split())


def test_volumes_in_a_ceph_pool(host: DaemonHandle, ceph: CephServer, tmp_path: Path) -> None:
    _rbd_pool(host, ceph)
    info = json.loads(host.cli("pool-info", "ceph1", "--json").stdout)
    assert (info["type"], info["shared"], info["state"]) == ("rbd", True, "active")
    assert info["target"] == f"rbd://{ceph.monitor}/{ceph.pool}"
    assert info["source_hosts"] == [ceph.monitor] and info["source_name"] == ceph.pool

    host.cli("vol-create-as", "ceph1", "a", "16M")  # raw: the default in an rbd pool
    vol = json.loads(host.cli("vol-info", "a", "--pool", "ceph1", "--json").stdout)
    assert (vol["path"], vol["format"], vol["capacity"]) == (
        f"rbd://{ceph.monitor}/{ceph.pool}/a", "raw", 16 * 2**20)
    assert json.loads(ceph.rbd("info", "--format", "json", f"{ceph.pool}/a"))["size"] == \
        16 * 2**20  # made in Ceph
    qcow = host.cli("vol-create-as", "ceph1", "q", "1M", "--format", "qcow2", check=False)
    assert qcow.returncode != 0 and "raw rbd image" in qcow.stderr

    host.cli("vol-resize", "a", "32M", "--pool", "ceph1")
    assert json.loads(host.cli("vol-info", "a", "--pool", "ceph1", "--json").stdout)[
        "capacity"] == 32 * 2**20
    shrink = host.cli("vol-resize", "a", "8M", "--pool", "ceph1", check=False)
    assert shrink.returncode != 0 and "shrink" in shrink.stderr

    host.cli("vol-clone", "a", "full", "--pool", "ceph1")
    host.cli("vol-clone", "a", "linked", "--pool", "ceph1", "--linked")
    linked = json.loads(host.cli("vol-info", "linked", "--pool", "ceph1", "--json").stdout)
    assert linked["backing"] == f"rbd://{ceph.monitor}/{ceph.pool}/a"
    local = tmp_path / "seed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(local), "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", str(local)],
                   check=True, capture_output=True)
    host.cli("vol-import", "ceph1", "imp", str(local))
    out = tmp_path / "out.raw"
    ceph.rbd("export", "--no-progress", f"{ceph.pool}/imp", str(out))
    assert out.read_bytes()[:4096] == b"\x5a" * 4096 and out.stat().st_size == 4 * 2**20

    names = [v["name"] for v in json.loads(host.cli("vol-list", "ceph1", "--json").stdout)]
    assert names == ["a", "full", "imp", "linked"] and _images(ceph) == names
    upload = host.cli("vol-upload", "a", str(local), "--pool", "ceph1", check=False)
    assert upload.returncode != 0 and "vol-import" in upload.stderr
    base = host.cli("vol-delete", "a", "--pool", "ceph1", check=False)
    assert base.returncode != 0 and "linked" in base.stderr
    host.cli("vol-wipe", "imp", "--pool", "ceph1")
    ceph.rbd("export", "--no-progress", f"{ceph.pool}/imp", str(tmp_path / "wiped.raw"))
    assert (tmp_path / "wiped.raw").read_bytes() == bytes(4 * 2**20)
    for name in ("linked", "full", "imp", "a"):
        host.cli("vol-delete", name, "--pool", "ceph1")
    assert _images(ceph) == []
    assert "vk-clone" not in ceph.rbd("ls", "-l", ceph.pool)  # the clone's snapshot went

    xml = host.cli("pool-dumpxml", "ceph1").stdout
    assert "<pool type='rbd'>" in xml and f"<host name='{ceph.ip}' port='6789'/>" in xml
    host.cli("pool-destroy", "ceph1")
    host.cli("pool-undefine", "ceph1")
    (tmp_path / "pool.xml").write_text(xml)
    host.cli("pool-define", str(tmp_path / "pool.xml"))
    host.cli("pool-start", "ceph1")


@pytest.fixture
def hosts(ceph: CephServer, tiny_guest: TinyGuest) -> Iterator[list[DaemonHandle]]:
    handles: list[DaemonHandle] = []
    try:
        for _ in range(2):
            handles.append(_daemon(tiny_guest))
        yield handles
    finally:
        for handle in handles:
            cleanup(handle)


def test_guest_on_an_rbd_volume_runs_and_migrates_without_copy(
        hosts: list[DaemonHandle], ceph: CephServer) -> None:
    source, destination = hosts
    for handle in hosts:
        _rbd_pool(handle, ceph)
    source.cli("vol-create-as", "ceph1", "g", "8M")
    source.define("rb1", disks=[{"pool": "ceph1", "volume": "g"}])
    xml = source.cli("dumpxml", "rb1").stdout
    assert f"<source protocol='rbd' name='{ceph.pool}/g'>" in xml
    source.client.post(source.client.domain_path("rb1", "/start"))
    source.wait_booted("rb1")
    source.console_run("rb1", "printf VKRBD-4242 | dd of=/dev/vda bs=512 count=1 "
                       "conv=fsync 2>/dev/null; echo w-$((1+1))", "w-2")
    assert _read(ceph, "g", 0, 10) == b"VKRBD-4242"

    result = _migrate(source, destination, "rb1", persistent=True, undefine_source=True,
                      copy_storage_all=True)
    assert result["destination"]["state"] == "running"
    assert result["copied_disks"] == [] and result["disk_bytes"] == 0
    assert result["shared_disks"] == [f"rbd://{ceph.monitor}/{ceph.pool}/g"]
    out = destination.console_run("rb1", "head -c 10 /dev/vda; echo; printf VKRBD-AFTER | "
                                  "dd of=/dev/vda bs=512 seek=1 count=1 conv=fsync "
                                  "2>/dev/null; echo w-$((2+1))", "w-3")
    assert "VKRBD-4242" in out
    assert _read(ceph, "g", 512, 11) == b"VKRBD-AFTER"


def _read(ceph: CephServer, image: str, offset: int, length: int) -> bytes:
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as out:
        os.unlink(out.name)
        ceph.rbd("export", "--no-progress", f"{ceph.pool}/{image}", out.name)
        with open(out.name, "rb") as data:
            data.seek(offset)
            return data.read(length)


# -- storage fencing ---------------------------------------------------------------------


class Writer:
    """A QEMU with one rbd image as a raw blockdev (no guest): writes go through QMP's
    qemu-io, so the test sees exactly which write Ceph accepted (qemu-io prints its
    answer on QEMU's stdout)."""

    def __init__(self, ceph: CephServer, image: str, folder: Path, name: str) -> None:
        self.socket = folder / f"{name}.qmp"
        self.out = folder / f"{name}.out"
        self.out.touch()
        node = {**rbd_blockdev(parse_rbd_url(f"rbd://{ceph.monitor}/{ceph.pool}/{image}")),
                "node-name": "proto", "cache": {"direct": False, "no-flush": False}}
        self.process = subprocess.Popen(
            ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "none",
             "-qmp", f"unix:{self.socket},server=on,wait=off", "-blockdev", json.dumps(node),
             "-blockdev", json.dumps({"driver": "raw", "file": "proto", "node-name": "d0"})],
            stdout=self.out.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {self.out.read_text()}")
            time.sleep(0.05)
        self.qmp = socket.socket(socket.AF_UNIX)
        self.qmp.settimeout(60)
        self.qmp.connect(str(self.socket))
        self.file = self.qmp.makefile("r")
        self.file.readline()  # greeting
        self._execute("qmp_capabilities")

    def _execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.qmp.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def write(self, pattern: int) -> str:
        """qemu-io's answer to writing ``pattern`` into the first 4 KiB."""
        before = self.out.stat().st_size
        reply = self._execute("human-monitor-command",
                              **{"command-line": f'qemu-io d0 "write -P {pattern} 0 4k"'})
        with self.out.open() as printed:
            printed.seek(before)
            return printed.read() + str(reply.get("return", reply))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.qmp.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[Writer]]:
    started: list[Writer] = []
    try:
        yield started
    finally:
        for writer in started:
            writer.stop()


def test_a_fenced_writer_can_never_write_again(ceph: CephServer, writers: list[Writer],
                                               tmp_path: Path) -> None:
    """The old host's QEMU is frozen (SIGSTOP: a hung host), the fence runs, the new
    QEMU writes; the old one, thawed, is refused by Ceph and the data is the new one's."""
    ceph.rbd("create", "--size", "16M", f"{ceph.pool}/ha1")
    old = Writer(ceph, "ha1", tmp_path, "old")
    writers.append(old)
    assert "wrote 4096/4096" in old.write(0xAA)  # it holds the exclusive lock now
    os.kill(old.process.pid, signal.SIGSTOP)

    disks = {"disks": [{"path": f"rbd://{ceph.monitor}/{ceph.pool}/ha1", "format": "raw"}]}
    fenced = rbdfence.fence_images(rbdfence.rbd_disks(disks))
    assert len(fenced) == 1 and len(fenced[0].blocklisted) == 1
    assert fenced[0].locks_broken  # the old QEMU's exclusive lock
    assert fenced[0].blocklisted[0] in ceph.ceph("osd", "blocklist", "ls")

    new = Writer(ceph, "ha1", tmp_path, "new")
    writers.append(new)
    assert "wrote 4096/4096" in new.write(0xBB)
    os.kill(old.process.pid, signal.SIGCONT)
    refused = old.write(0xCC)
    assert "write failed" in refused and "wrote" not in refused
    assert _read(ceph, "ha1", 0, 4096) == b"\xbb" * 4096
    # a QEMU that was killed (a crash) leaves its watch and lock behind for ~30 s: the
    # fence clears them too, so the restarted copy takes the lock at once
    new.stop()
    again = rbdfence.fence_images(rbdfence.rbd_disks(disks))
    assert again[0].blocklisted and again[0].locks_broken
    third = Writer(ceph, "ha1", tmp_path, "third")
    writers.append(third)
    assert "wrote 4096/4096" in third.write(0xDD)


def test_a_fence_that_cannot_reach_ceph_refuses_the_restart(ceph: CephServer) -> None:
    """A monitor that does not answer: the fence fails naming the image and why, so
    the HA restart gives the VM back instead of starting a second writer."""
    disks = {"disks": [{"path": f"rbd://{ceph.ip}:1/{ceph.pool}/ha2", "format": "raw"}]}
    with pytest.raises(HostError, match=r"rbd image rbd/ha2 failed.*not started here"):
        rbdfence.fence_images(rbdfence.rbd_disks(disks))
