"""Confined QEMU (docs/security.md): each VM's QEMU runs as its own uid/gid with no
capabilities, in its own cgroup, and can open only what was handed to it.

The isolation test runs a helper *in VM A's security context* (A's uid and gid, no
supplementary groups, joined to A's cgroup) and has it try VM B's disk, sockets and
private folder, and the daemon's state: every attempt must be refused, while A's own
disk opens (so the helper could succeed where it is allowed to).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, cleanup, file_access, start_daemon, wait_for
from virtkit.cli.client import Client
from virtkit.images.tinyguest import TinyGuest
from virtkit.paths import state_paths
from virtkit.qemu.process import proc_start_time
from virtkit.runtime import ownership

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root daemon")]

ACL = "system.posix_acl_access"

HELPER = r"""
import json, os, socket, sys
targets = json.loads(sys.argv[1])
results = {}
def attempt(name, action):
    try:
        action()
        results[name] = "ok"
    except OSError as exc:
        results[name] = exc.__class__.__name__
def opener(path, mode):
    return lambda: open(path, mode).close()
def connect(path):
    def run():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
    return run
for name, (kind, path) in targets.items():
    if kind == "connect":
        attempt(name, connect(path))
    elif kind == "list":
        attempt(name, lambda: os.listdir(path))
    else:
        attempt(name, opener(path, kind))
print(json.dumps(results))
"""


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _disk(folder: Path, name: str) -> Path:
    path = folder / name
    with open(path, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    path.chmod(0o644)
    return path


_snapshot = file_access


def _tree(path: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """The disk, its folder and the folders above it (exec grants land on those)."""
    return {str(p): _snapshot(p) for p in [path, *path.parents]}


def _vm_entries(path: Path, uids: set[int]) -> set[int]:
    """The ACL entries of ``uids`` still on ``path`` or the folders above it."""
    left = set()
    for folder in [path, *path.parents]:
        with contextlib.suppress(OSError):
            left |= {e.id for e in ownership.read_acl(str(folder))
                     if e.tag == ownership.USER and e.id in uids}
    return left


def _restored(disk: Path, before: dict[str, tuple[int, int, int, bytes | None]],
              uids: set[int]) -> bool:
    """The disk and its folder exactly as before, no entry of the VMs above them (the
    shared folders higher up may be chmod-ed by other pytest sessions meanwhile)."""
    return (_snapshot(disk) == before[str(disk)]
            and _snapshot(disk.parent) == before[str(disk.parent)]
            and not _vm_entries(disk, uids))


def _start(daemon: DaemonHandle, name: str, disk: Path) -> dict[str, Any]:
    daemon.define(name, disks=[{"path": str(disk), "format": "raw"}])
    daemon.cli("start", name)
    return daemon.wait_state(name, "running")


def _as_vm(info: dict[str, Any], targets: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Run the helper as the VM's uid/gid inside its cgroup; its verdict per target."""
    security = info["security"]
    uid, gid = security["uid"], security["gid"]
    procs = [f"{folder}/cgroup.procs" for folder in security["cgroup"]]

    def become() -> None:
        for path in procs:
            with open(path, "w") as handle:
                handle.write(str(os.getpid()))
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    result = subprocess.run([sys.executable, "-c", HELPER, json.dumps(targets)],
                            preexec_fn=become, capture_output=True, text=True, timeout=60,
                            check=True, cwd="/")
    verdict: dict[str, str] = json.loads(result.stdout)
    return verdict


def test_a_vm_cannot_open_another_vms_disk_sockets_or_the_daemon_state(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    disk_a, disk_b = _disk(tmp_path, "a.img"), _disk(tmp_path, "b.img")
    before = {**_tree(disk_a), **_tree(disk_b)}
    info_a, info_b = _start(daemon, "conf-a", disk_a), _start(daemon, "conf-b", disk_b)

    status_a, status_b = _status(info_a["pid"]), _status(info_b["pid"])
    uid_a, uid_b = int(status_a["Uid"].split()[0]), int(status_b["Uid"].split()[0])
    assert uid_a != 0 and uid_b != 0 and uid_a != uid_b
    assert status_a["Uid"].split() == [str(uid_a)] * 4
    assert status_a["Gid"].split() == [str(info_a["security"]["gid"])] * 4
    assert status_a["Groups"] == ""
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status_a[key], 16) == 0, key
        assert int(status_b[key], 16) == 0, key
    assert status_a["NoNewPrivs"] == "1" and status_a["Seccomp"] == "2"
    cgroup_lines = Path(f"/proc/{info_a['pid']}/cgroup").read_text()
    for folder in info_a["security"]["cgroup"]:
        assert str(info_a["pid"]) in Path(folder, "cgroup.procs").read_text().split()
    assert "virtkit/" in cgroup_lines
    assert info_a["security"]["label"] == f"+{uid_a}:+{info_a['security']['gid']}"
    shown = daemon.cli("dominfo", "conf-a").stdout
    assert "Security model:  virtkit-dac" in shown or "virtkit-dac" in shown
    assert f"+{uid_a}:+" in shown

    run_b = daemon.root / "run" / info_b["uuid"]
    log_b = daemon.root / "log" / "domains" / info_b["uuid"] / "serial0.log"
    verdict = _as_vm(info_a, {
        "own disk read-write": ("r+b", str(disk_a)),
        "B disk read": ("rb", str(disk_b)),
        "B disk write": ("r+b", str(disk_b)),
        "B qmp socket": ("connect", str(run_b / "qmp.sock")),
        "B serial socket": ("connect", str(run_b / "serial0.sock")),
        "B private folder": ("list", str(run_b)),
        "B serial log": ("rb", str(log_b)),
        "daemon database": ("rb", str(daemon.root / "virtkit.db")),
        "daemon log": ("rb", str(daemon.root / "log" / "virtkitd.log")),
        "B QEMU log": ("rb", str(log_b.parent / "qemu.log")),
        "daemon socket": ("connect", str(daemon.root / "virtkitd.sock")),
        "daemon journals": ("list", str(daemon.root / "confine")),
    })
    assert verdict.pop("own disk read-write") == "ok"
    assert verdict == dict.fromkeys(verdict, "PermissionError")

    for name in ("conf-a", "conf-b"):
        daemon.cli("destroy", name)
        daemon.wait_state(name, "shutoff")
    uids = {uid_a, uid_b}
    assert _restored(disk_a, before, uids) and _restored(disk_b, before, uids)
    for folder in info_a["security"]["cgroup"] + info_b["security"]["cgroup"]:
        assert not Path(folder).exists()
    assert list((daemon.root / "confine").glob("*.json")) == []


def test_kill9_daemon_then_vm_gone_restores_ownership_on_reconcile(
        daemon: DaemonHandle, tmp_path: Path) -> None:
    disk = _disk(tmp_path, "c.img")
    before = _tree(disk)
    info = _start(daemon, "conf-c", disk)
    assert os.stat(disk).st_uid == info["security"]["uid"]  # handed over while it runs
    assert stat.S_IMODE(os.stat(disk).st_mode) == 0o600
    daemon.kill9()
    pid = info["pid"]
    start = proc_start_time(pid)
    assert start is not None
    os.kill(pid, 9)
    wait_for(lambda: proc_start_time(pid) != start, 30, "QEMU to end")
    assert os.stat(disk).st_uid == info["security"]["uid"]  # nobody restored it yet
    daemon.restart()
    uid = info["security"]["uid"]
    wait_for(lambda: _restored(disk, before, {uid}), 30, "ownership restored by reconcile")
    assert daemon.state("conf-c") == "shutoff"
    for folder in info["security"]["cgroup"]:
        assert not Path(folder).exists()
    assert list((daemon.root / "confine").glob("*.json")) == []


def test_no_confine_runs_qemu_as_the_daemon_user(tiny_guest: TinyGuest, tmp_path: Path
                                                  ) -> None:
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    process = start_daemon(root, extra=("--no-confine",))
    handle = DaemonHandle(root, process, Client(state_paths(root), timeout=180), tiny_guest)
    try:
        disk = _disk(tmp_path, "d.img")
        info = _start(handle, "plain", disk)
        assert _status(info["pid"])["Uid"].split()[0] == "0"
        assert info["security"]["model"] == "none"
        assert os.stat(disk).st_uid == 0
    finally:
        cleanup(handle)


def test_hot_plugged_disk_and_cd_are_handed_over_and_back(daemon: DaemonHandle,
                                                          tmp_path: Path) -> None:
    """attach-disk / change-media grant the new image to the running VM's uid before
    QEMU opens it, and detach / eject give it back."""
    boot, extra = _disk(tmp_path, "boot.img"), _disk(tmp_path, "extra.img")
    iso = tmp_path / "m.iso"
    iso.write_bytes(b"\0" * 65536)
    iso.chmod(0o600)  # others may not read it: needs an ACL entry, not a chown
    before = {**_tree(extra), **_tree(iso)}
    daemon.define("hp", disks=[{"path": str(boot), "format": "raw"},
                               {"device": "cdrom", "bus": "scsi"}])
    daemon.cli("start", "hp")
    daemon.wait_booted("hp")
    uid = daemon.info("hp")["security"]["uid"]
    daemon.cli("attach-disk", "hp", str(extra), "vdb", "--live")
    assert (os.stat(extra).st_uid, stat.S_IMODE(os.stat(extra).st_mode)) == (uid, 0o600)
    daemon.cli("change-media", "hp", "sda", str(iso), "--insert")
    assert os.stat(iso).st_uid == 0  # shared read-only media are never chowned
    assert uid in {e.id for e in ownership.read_acl(str(iso)) if e.tag == ownership.USER}
    assert "vdb" in daemon.console_run("hp", "ls /sys/block; echo lis''ted", "listed")
    daemon.cli("detach-disk", "hp", "vdb", "--live")
    daemon.cli("change-media", "hp", "sda", "--eject")
    # the files at once; the folders above stay traversable until the VM ends
    wait_for(lambda: _snapshot(extra) == before[str(extra)], 30, "the unplugged disk back")
    assert _snapshot(iso) == before[str(iso)]
    daemon.cli("destroy", "hp")
    daemon.wait_state("hp", "shutoff")
    assert _restored(extra, before, {uid}) and _restored(iso, before, {uid})


def test_a_daemon_under_ip_netns_exec_still_puts_qemu_in_its_cgroup(
        netns_daemon: DaemonHandle, tmp_path: Path) -> None:
    """``ip netns exec`` remounts /sys, and the cgroup mounts under /sys/fs/cgroup are
    gone in its mount namespace: the daemon mounts its hierarchies itself instead of
    starting QEMU without a cgroup (a silent downgrade)."""
    disk = _disk(tmp_path, "ns.img")
    info = _start(netns_daemon, "ns-conf", disk)
    folders = info["security"]["cgroup"]
    assert folders, info["security"]
    assert not any("NO CGROUP" in note for note in info["security"]["notes"])
    cgroup_lines = Path(f"/proc/{info['pid']}/cgroup").read_text()
    name = Path(folders[0]).name
    memory = [line for line in cgroup_lines.splitlines() if ":memory:" in line]
    assert memory and memory[0].endswith(f"/virtkit/{name}"), cgroup_lines
    checks = {c["name"]: c for c in netns_daemon.client.get("/v1/host/check")}
    assert checks["daemon's QEMU cgroups"]["status"] == "PASS", checks
    netns_daemon.cli("destroy", "ns-conf")
    netns_daemon.wait_state("ns-conf", "shutoff")
    wait_for(lambda: not Path(f"/sys/fs/cgroup/memory/virtkit/{name}").exists(), 30,
             "the VM's cgroup to be removed")
