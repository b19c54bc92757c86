"""The path policy against a real virtkitd (host/pathpolicy.py, docs/security.md §7):
host files that are not the guest's are refused at define and at start with a 4xx that
names the path and the rule, and are left exactly as they were (owner, mode, ACL); a
FIFO never stalls the daemon; a refused start never touches the image a running VM
holds.  The daemon fixture fails any test whose event loop stalled (> 0.5 s)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, file_access
from virtkit.cli.client import ApiError, Client
from virtkit.paths import state_paths

ACL = "system.posix_acl_access"


_state = file_access


def _refused(call: Any, status: int, *phrases: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    error = caught.value
    assert error.http_status == status, f"{error.http_status}: {error}"
    for phrase in phrases:
        assert phrase in str(error), f"{phrase!r} not in {error}"
    return error


def test_host_files_are_refused_at_define_and_left_untouched(daemon: DaemonHandle,
                                                             tmp_path: Path) -> None:
    daemon.cli("tls", "setup", "--hostname", "127.0.0.1")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = daemon.root / "images" / "passwd.raw"
    link.symlink_to("/etc/passwd")
    cases = [
        ("/etc/shadow", False, ["/etc/shadow", "system tree /etc"]),
        (str(daemon.root / "virtkit.db"), True, ["virtkit.db", "state folder"]),
        (str(daemon.root / "tls" / "ca-key.pem"), True, ["ca-key.pem", "state folder"]),
        (str(fifo), False, [str(fifo), "FIFO"]),
        ("/dev/null", False, ["/dev/null", "character device"]),
        (str(link), True, ["a link to /etc/passwd", "system tree /etc"]),
    ]
    for path, readonly, phrases in cases:
        before = _state(path)
        spec = daemon.spec("thief", disks=[{"path": path, "format": "raw",
                                            "readonly": readonly}])
        error = _refused(lambda s=spec: daemon.client.post("/v1/domains", {"spec": s}), 400,
                         *phrases)
        assert error.details.get("field") == "disks[0].path" and error.fix
        assert _state(path) == before, path
    # the kernel, a shared folder and a serial log go through the same policy
    for overrides, phrase in (
            ({"boot": {"kernel": "/etc/shadow"}}, "boot.kernel: /etc/shadow"),
            ({"filesystems": [{"source": "/etc", "target": "etc", "driver": "9p",
                               "accessmode": "mapped"}]}, "filesystems[0].source: /etc"),
            ({"serials": [{"log": True, "log_path": "/etc/cron.d/virtkit"}]},
             "serials[0].log_path: /etc/cron.d/virtkit")):
        spec = {**daemon.spec("thief"), **overrides}
        _refused(lambda s=spec: daemon.client.post("/v1/domains", {"spec": s}), 400, phrase)
    assert not Path("/etc/cron.d/virtkit").exists()
    assert "thief" not in {d["name"] for d in daemon.client.get("/v1/domains")}


@pytest.mark.qemu
def test_a_file_changed_after_define_is_refused_at_start(daemon: DaemonHandle,
                                                         tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    daemon.define("swap", disks=[{"path": str(image), "format": "raw"}])
    database = daemon.root / "virtkit.db"
    before = _state(database)
    image.unlink()
    image.symlink_to(database)  # files change between define and start
    _refused(lambda: daemon.client.post(daemon.client.domain_path("swap", "/start"), {}),
             400, "disks[0].path", "virtkit.db", "state folder")
    assert _state(database) == before
    assert daemon.state("swap") == "shutoff"


def test_a_fifo_disk_or_backing_file_is_refused_unopened_and_stalls_no_one(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    """Opening a FIFO waits for a writer (qemu-img used to, on the event loop, for 30 s,
    while every other client waited).  Now a FIFO named as a disk, or as the backing
    file of one, is refused by name before anything opens it (no writer ever comes
    here: a request that opened it would outlast the client's 20 s timeout), other
    clients are served meanwhile, and the loop-lag watchdog sees no stall."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(fifo), "-F",
                    "raw", str(top), "16M"], check=True)
    outcomes: dict[str, Any] = {}
    specs = {"piped": {"path": str(fifo), "format": "raw"},
             "chained": {"path": str(top), "format": "qcow2"},
             "probed": {"path": str(top)}}

    def define(name: str) -> None:
        client = Client(state_paths(daemon.root), timeout=20)
        try:
            outcomes[name] = client.post("/v1/domains",
                                         {"spec": daemon.spec(name, disks=[specs[name]])})
        except ApiError as exc:
            outcomes[name] = exc

    workers = [threading.Thread(target=define, args=(name,)) for name in specs]
    for worker in workers:
        worker.start()
    seen = [daemon.client.get("/v1/version")["version"] for _ in range(5)]
    assert all(seen)
    for worker in workers:
        worker.join(60)
    for name, phrase in (("piped", "disks[0].path: " + str(fifo)),
                         ("chained", "disks[0].path (backing file): " + str(fifo)),
                         ("probed", "disks[0].path (backing file): " + str(fifo))):
        error = outcomes[name]
        assert isinstance(error, ApiError) and error.http_status == 400, (name, error)
        assert phrase in str(error) and "FIFO" in str(error), str(error)
    assert {d["name"] for d in daemon.client.get("/v1/domains")}.isdisjoint(specs)


@pytest.mark.qemu
def test_a_refused_start_leaves_the_running_vms_image_alone(daemon: DaemonHandle,
                                                           tmp_path: Path) -> None:
    image = tmp_path / "shared.raw"
    image.write_bytes(b"\0" * 4 * 1024 * 1024)
    image.chmod(0o644)
    original = _state(image)
    daemon.define("holder", disks=[{"path": str(image), "format": "raw"}])
    # a second writable definition is refused at define (one writer per image); a
    # read-only one may be defined, and its start while 'holder' writes is refused
    daemon.define("intruder", disks=[{"path": str(image), "format": "raw", "readonly": True}])
    daemon.client.post(daemon.client.domain_path("holder", "/start"), {})
    daemon.wait_booted("holder")
    held = _state(image)
    error = _refused(
        lambda: daemon.client.post(daemon.client.domain_path("intruder", "/start"), {}),
        409, "holder")
    assert "shared.raw" in str(error)
    assert _state(image) == held  # not "restored" to 0:0 0644 under the running VM
    assert daemon.state("intruder") == "shutoff"
    # and the running VM still writes its disk
    daemon.console_run("holder", "echo STILL-WRITES | dd of=/dev/vda conv=fsync "
                       "2>/dev/null; echo w''rote", "wrote")
    assert b"STILL-WRITES" in image.read_bytes()[:4096]
    daemon.client.post(daemon.client.domain_path("holder", "/destroy"), {})
    daemon.wait_state("holder", "shutoff")
    assert _state(image) == original
