"""One writer per image, bases stay read-only, conflicts are 409s naming the other user
(docs/architecture.md, "Safety invariants") -- against a real daemon and QEMU."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle
from virtkit.errors import VirtkitError

pytestmark = pytest.mark.qemu


def qcow2(path: Path, fill: int | None = None, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), *([] if backing else ["16M"])], check=True)
    if fill is not None:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x{fill:02x} 0 64k",
                        str(path)], check=True, capture_output=True)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status_of(call: object) -> VirtkitError:
    with pytest.raises(VirtkitError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_linked_clone_base_survives_a_revert(daemon: DaemonHandle, tmp_path: Path) -> None:
    """A revert to an internal snapshot from before a linked clone would rewrite the
    clone's base: refused (409, naming the clone); once the clone is gone it works and
    leaves no orphaned -top overlay."""
    base = qcow2(tmp_path / "orig.qcow2", 0x41)
    daemon.define("orig", disks=[{"path": str(base), "format": "qcow2"}])
    daemon.cli("snapshot-create-as", "orig", "s1")
    daemon.cli("clone", "--original", "orig", "--name", "lc", "--auto-clone", "--linked")
    top = daemon.info("orig")["disks"][0]["path"]
    assert top != str(base)
    before = digest(base)
    refused = daemon.cli("snapshot-revert", "orig", "s1", check=False)
    assert refused.returncode != 0, refused.stdout
    assert "lc" in refused.stderr and "base" in refused.stderr, refused.stderr
    assert daemon.info("orig")["disks"][0]["path"] == top  # nothing changed
    assert digest(base) == before
    err = status_of(lambda: daemon.client.post(
        daemon.client.domain_path("orig", "/snapshots/s1/revert"), {}))
    assert err.http_status == 409
    daemon.cli("undefine", "lc", "--remove-all-storage")
    still = daemon.cli("snapshot-revert", "orig", "s1", check=False)  # lc.qcow2 is no
    assert still.returncode != 0 and "lc.qcow2" in still.stderr  # pool volume: it stays
    (tmp_path / "lc.qcow2").unlink()
    daemon.cli("snapshot-revert", "orig", "s1")
    assert daemon.info("orig")["disks"][0]["path"] == str(base)
    assert not Path(top).exists()  # the overlay orig ran on is not left behind


def test_disk_of_another_running_domain(daemon: DaemonHandle, tmp_path: Path) -> None:
    """define, start, attach --live and --config of another domain's image: 409 naming
    it, before any QEMU opens the file."""
    shared = qcow2(tmp_path / "shared.qcow2")
    daemon.define("a", disks=[{"path": str(shared), "format": "qcow2"}])
    err = status_of(lambda: daemon.define("b", disks=[{"path": str(shared)}]))
    assert err.http_status == 409 and "'a'" in err.message, err
    # read-only in b: fine while a is shut off, refused at start while a runs
    daemon.define("b", disks=[{"path": str(shared), "readonly": True}])
    daemon.client.post(daemon.client.domain_path("a", "/start"))
    err = status_of(lambda: daemon.client.post(daemon.client.domain_path("b", "/start")))
    assert err.http_status == 409 and "'a'" in err.message, err
    assert daemon.state("b") == "shutoff"
    daemon.define("c")
    daemon.client.post(daemon.client.domain_path("c", "/start"))
    for scope in ("--live", "--config"):
        result = daemon.cli("attach-disk", "c", str(shared), "vdb", scope, check=False)
        assert result.returncode != 0 and "'a'" in result.stderr, (scope, result.stderr)
        assert "500" not in result.stderr
    err = status_of(lambda: daemon.client.post(daemon.client.domain_path("c", "/disks"),
                                               {"disk": {"path": str(shared)},
                                                "live": True}))
    assert err.http_status == 409
    own = qcow2(tmp_path / "own.qcow2")
    done = daemon.cli("attach-disk", "c", str(own), "--config")
    assert "None" not in done.stdout and "vd" in done.stdout, done.stdout


def test_backing_files_are_never_removed_or_written(daemon: DaemonHandle) -> None:
    images = daemon.root / "images"
    daemon.cli("vol-create-as", "default", "v.qcow2", "16M")
    daemon.define("v", disks=[{"pool": "default", "volume": "v.qcow2"}])
    refused = daemon.cli("vol-clone", "v.qcow2", "k.qcow2", "--pool", "default", "--linked",
                         check=False)
    assert refused.returncode != 0 and "'v'" not in refused.stdout
    assert "v" in refused.stderr and "clone" in refused.stderr, refused.stderr
    assert not (images / "k.qcow2").exists()
    # an overlay made behind virtkit's back: v must no longer write its image
    qcow2(images / "k.qcow2", backing=images / "v.qcow2")
    err = status_of(lambda: daemon.client.post(daemon.client.domain_path("v", "/start")))
    assert err.http_status == 409 and "k.qcow2" in err.message, err
    forced = daemon.cli("vol-delete", "v.qcow2", "--pool", "default", "--force", check=False)
    assert forced.returncode != 0 and "backing file of default/k.qcow2" in forced.stderr
    gone = daemon.cli("undefine", "v", "--remove-all-storage")
    assert "kept" in gone.stdout and "backing file" in gone.stdout, gone.stdout
    assert (images / "v.qcow2").exists()
    info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                           str(images / "k.qcow2")], capture_output=True, text=True,
                          check=True)
    assert len(json.loads(info.stdout)) == 2


def test_pending_detach_is_named_and_does_not_block(daemon: DaemonHandle,
                                                    tmp_path: Path) -> None:
    """A paused guest cannot release a hot-plugged disk: the detach answers "pending",
    and a new attach of that image, or a second detach, says so (409) with the fix."""
    boot = qcow2(tmp_path / "boot.qcow2")
    extra = qcow2(tmp_path / "extra.qcow2")
    daemon.define("hp", disks=[{"path": str(boot), "format": "qcow2"}])
    daemon.client.post(daemon.client.domain_path("hp", "/start"), {"paused": True})
    daemon.cli("attach-disk", "hp", str(extra), "vdb", "--live")
    first = daemon.cli("detach-disk", "hp", "vdb", "--live")
    assert "not released" in first.stdout, first.stdout
    again = daemon.cli("attach-disk", "hp", str(extra), "vdc", "--live", check=False)
    assert again.returncode != 0 and "detach is pending" in again.stderr, again.stderr
    assert "destroy" in again.stderr or "wait" in again.stderr
    second = daemon.cli("detach-disk", "hp", "vdb", "--live", check=False)
    assert second.returncode != 0 and "already pending" in second.stderr, second.stderr
    # found by the stateful checker: a snapshot then left QEMU writing the old image
    snap = daemon.cli("snapshot-create-as", "hp", "s1", "--disk-only", check=False)
    assert snap.returncode != 0 and "is pending" in snap.stderr, snap.stderr


def test_deleting_a_snapshot_never_writes_an_image_others_are_backed_by(
        daemon: DaemonHandle) -> None:
    """An external snapshot's delete merges the overlay into the image it froze; when
    that image is also a linked clone's base, the merge would change the clone's data:
    refused (409, naming the clone), the files untouched.  (The stateful checker found
    it: QEMU's lock refused the live commit as a 500, and offline nothing stopped it.)"""
    images = daemon.root / "images"
    daemon.cli("vol-create-as", "default", "v.qcow2", "16M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 64k",
                    str(images / "v.qcow2")], check=True, capture_output=True)
    daemon.define("d", disks=[{"pool": "default", "volume": "v.qcow2"}])
    daemon.client.post(daemon.client.domain_path("d", "/snapshots"),
                       {"name": "s1", "disk_only": True, "kind": "external"})
    top = daemon.info("d")["spec"]["disks"][0]["path"]
    assert top != str(images / "v.qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 0 64k", top], check=True,
                   capture_output=True)  # the guest's writes since the snapshot
    daemon.cli("vol-clone", "v.qcow2", "k.qcow2", "--pool", "default", "--linked")
    base = digest(images / "v.qcow2")
    err = status_of(lambda: daemon.client.request(
        "DELETE", daemon.client.domain_path("d", "/snapshots/s1")))
    assert err.http_status == 409 and "k.qcow2" in err.message, err
    assert "--metadata" in (err.fix or "")
    assert digest(images / "v.qcow2") == base and Path(top).exists()
    assert [s["name"] for s in daemon.client.get(daemon.client.domain_path(
        "d", "/snapshots"))] == ["s1"]
@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_external_snapshot_leaves_only_the_overlay_writable(
        daemon: DaemonHandle, tmp_path: Path, paused: bool) -> None:
    """Invariant 1 from outside: after an external snapshot, the images below the new
    overlays are open read-only in QEMU (file descriptor flags), whether the VM runs or
    is paused (a paused snapshot once left the frozen image open O_RDWR)."""
    from tests.real.test_invariants_stateful import writable_images

    name = "xp" if paused else "xr"
    base = qcow2(tmp_path / f"{name}.qcow2")
    daemon.define(name, disks=[{"path": str(base)}])
    daemon.client.post(daemon.client.domain_path(name, "/start"))
    daemon.wait_booted(name)
    if paused:
        daemon.cli("suspend", name)
    pid = int(daemon.info(name)["pid"])
    assert writable_images(pid) == {str(base)}
    for snap in ("e1", "e2"):
        daemon.cli("snapshot-create-as", name, snap, "--disk-only", "--external")
        top = str(tmp_path / f"{name}.{snap}.qcow2")
        assert writable_images(pid) == {top}, snap
    assert daemon.state(name) == ("paused" if paused else "running")
    if paused:
        daemon.cli("resume", name)
    daemon.console_run(name, "dd if=/dev/zero of=/dev/vda bs=4k count=4 conv=fsync "
                       "2>/dev/null; echo wr''ote", "wrote")  # the overlay takes writes
    assert writable_images(pid) == {str(tmp_path / f"{name}.e2.qcow2")}
