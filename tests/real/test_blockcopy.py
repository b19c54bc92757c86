"""blockcopy and live vol-resize against real QEMU (TCG) and the tiny guest, through
the real CLI.  The guest writes and reads its disk on the serial console; after a
pivot the domain is destroyed and started again, so what is checked is what the
definition names, not QEMU's memory.  Copies of 16 MiB of random data are slowed with
--bandwidth so that they are still running while the guest writes or while they are
aborted (no test asserts a duration)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.errors import VirtkitError

pytestmark = pytest.mark.qemu


def _data_image(path: Path, mib: int = 16) -> str:
    """A qcow2 image holding ``mib`` MiB of random data (so a copy has work to do)."""
    raw = path.with_suffix(".raw")
    raw.write_bytes(os.urandom(mib * 1024 * 1024))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(path)], check=True)
    raw.unlink()
    return str(path)


def _write(daemon: DaemonHandle, name: str, marker: str, sector: int = 0) -> None:
    daemon.console_run(name, f"echo {marker} | dd of=/dev/vda bs=512 seek={sector} "
                       f"conv=fsync 2>/dev/null; sync; echo W-''{marker}", f"W-{marker}\r")


def _read(daemon: DaemonHandle, name: str, sector: int = 0) -> str:
    tag = secrets.token_hex(4)
    out = daemon.console_run(
        name, "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 count=1 "
        f"skip={sector} 2>/dev/null | head -n 1 | head -c 40 | tr -cd 'A-Za-z0-9-' "
        f"| sed 's/^/GOT=/'; echo; echo R-''{tag}", f"R-{tag}\r")
    found = re.findall(r"GOT=([A-Za-z0-9-]*)", out)
    return found[-1] if found else ""


def _read_file(path: str, fmt: str = "qcow2") -> bytes:
    """The first 40 bytes of an image's guest-visible data, read on the host."""
    out = Path(path).with_name(f".{Path(path).name}.{secrets.token_hex(3)}.raw")
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, str(out)],
                       check=True)
        with open(out, "rb") as stream:
            return stream.read(40)
    finally:
        out.unlink(missing_ok=True)


def _info(path: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True,
        check=True).stdout)
    return result


def _disk(daemon: DaemonHandle, name: str) -> str:
    return str(daemon.info(name)["spec"]["disks"][0]["path"])


def _open_files(daemon: DaemonHandle) -> set[str]:
    files = set()
    for pid in daemon.qemu_pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    return files


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_copy_and_pivot_while_the_guest_writes(daemon: DaemonHandle, tmp_path: Path) -> None:
    source = _data_image(tmp_path / "src.qcow2")
    dest = str(tmp_path / "copy.qcow2")
    daemon.define("cp", disks=[{"path": source, "format": "qcow2"}])
    daemon.cli("start", "cp")
    daemon.wait_booted("cp")
    first = f"ONE-{secrets.token_hex(6)}"
    _write(daemon, "cp", first)
    # the guest keeps writing sector 100 while the copy runs and pivots
    daemon.console_run("cp", "(i=0; while [ $i -lt 300 ]; do echo DATA-$i | dd of=/dev/vda "
                       "bs=512 seek=100 conv=fsync 2>/dev/null; i=$((i+1)); done) & "
                       "echo BG''START", "BGSTART\r")
    done = daemon.cli("blockcopy", "cp", "vda", dest, "--wait", "--pivot", "--verbose",
                      "--bandwidth", "4")
    assert done.stdout == "\nSuccessfully pivoted\n", done.stdout
    assert "Block Copy: [100.00 %]" in done.stderr, done.stderr
    assert _disk(daemon, "cp") == dest  # the definition names what QEMU uses
    assert not _info(dest).get("backing-filename")  # a full copy stands alone
    opened = _open_files(daemon)
    assert dest in opened and source not in opened, opened  # the old image is closed
    assert daemon.cli("blockjob", "cp", "vda", "--info").stdout == \
        "No current block job for vda\n"
    daemon.console_run("cp", "wait; echo WAIT''ED", "WAITED\r", timeout=180)
    assert _read(daemon, "cp") == first
    assert _read(daemon, "cp", 100) == "DATA-299"
    daemon.cli("destroy", "cp")
    daemon.cli("start", "cp")
    daemon.wait_booted("cp", count=2)
    assert _read(daemon, "cp") == first
    assert _read(daemon, "cp", 100) == "DATA-299"
    assert dest in _open_files(daemon)
    daemon.cli("destroy", "cp")


def test_finish_keeps_the_source_and_leaves_a_consistent_copy(daemon: DaemonHandle,
                                                              tmp_path: Path) -> None:
    source = _data_image(tmp_path / "src.qcow2")
    daemon.define("cf", disks=[{"path": source, "format": "qcow2"}])
    daemon.cli("start", "cf")
    daemon.wait_booted("cf")
    first = f"ONE-{secrets.token_hex(6)}"
    _write(daemon, "cf", first)
    # into a new volume of the default pool, by pool and name
    done = daemon.cli("blockcopy", "cf", "vda", "fin.qcow2", "--pool", "default", "--finish")
    assert done.stdout == "\nSuccessfully copied\n", done.stdout
    copy = str(daemon.root / "images" / "fin.qcow2")
    assert _disk(daemon, "cf") == source  # the disk stays on its image
    assert copy not in _open_files(daemon)  # the copy is closed, complete
    subprocess.run(["qemu-img", "check", "-q", copy], check=True)
    assert _read_file(copy).startswith(first.encode())
    later = f"TWO-{secrets.token_hex(6)}"
    _write(daemon, "cf", later)
    assert _read(daemon, "cf") == later
    assert _read_file(copy).startswith(first.encode())  # the copy is not the disk
    vols = daemon.cli("vol-list", "default").stdout
    assert "fin.qcow2" in vols, vols
    # the POOL/VOLUME form, raw
    daemon.cli("blockcopy", "cf", "vda", "default/fin2.raw", "--raw", "--finish")
    assert _read_file(str(daemon.root / "images" / "fin2.raw"), "raw").startswith(
        later.encode())
    daemon.cli("destroy", "cf")


def test_abort_and_timeout_remove_the_half_written_copy(daemon: DaemonHandle,
                                                        tmp_path: Path) -> None:
    source = _data_image(tmp_path / "src.qcow2")
    dest = tmp_path / "half.qcow2"
    daemon.define("ca", disks=[{"path": source, "format": "qcow2"}])
    daemon.cli("start", "ca")
    daemon.wait_booted("ca")
    marker = f"ONE-{secrets.token_hex(6)}"
    _write(daemon, "ca", marker)
    started = daemon.cli("blockcopy", "ca", "vda", str(dest), "--bandwidth", "1")
    assert started.stdout == "Block Copy started\n", started.stdout
    assert dest.exists()
    raw = daemon.cli("blockjob", "ca", "vda", "--raw").stdout
    assert raw.startswith(" type=copy\n"), raw
    busy = daemon.cli("blockcopy", "ca", "vda", str(tmp_path / "other.qcow2"), check=False)
    assert busy.returncode == 1 and "already has a block job (Block Copy" in busy.stderr
    assert not (tmp_path / "other.qcow2").exists()
    refused = daemon.cli("blockjob", "ca", "vda", "--pivot", check=False)
    assert refused.returncode == 1 and "cannot pivot yet" in refused.stderr, refused.stderr
    daemon.cli("blockjob", "ca", "vda", "--abort")
    assert not dest.exists()  # made by the daemon, removed
    assert str(dest) not in _open_files(daemon)
    assert _disk(daemon, "ca") == source
    assert daemon.cli("blockjob", "ca", "vda", "--info").stdout == \
        "No current block job for vda\n"
    assert _read(daemon, "ca") == marker  # still running on its own disk

    # --timeout: not in sync in time, aborted, removed
    late = daemon.cli("blockcopy", "ca", "vda", str(dest), "--bandwidth", "1",
                      "--timeout", "1", check=False)
    assert late.returncode == 1 and "copy aborted" in late.stderr, late.stderr
    assert not dest.exists()
    assert daemon.state("ca") == "running" and _disk(daemon, "ca") == source
    assert _read(daemon, "ca") == marker

    # the domain stops mid-copy: the half-written copy goes at the next block command
    daemon.cli("blockcopy", "ca", "vda", str(dest), "--bandwidth", "1")
    assert dest.exists()
    daemon.cli("destroy", "ca")
    daemon.cli("start", "ca")
    daemon.wait_booted("ca", count=2)
    assert daemon.cli("blockjob", "ca", "vda", "--info").stdout == \
        "No current block job for vda\n"
    assert not dest.exists()
    daemon.cli("destroy", "ca")


def test_bad_requests_are_refused_and_nothing_is_lost(daemon: DaemonHandle,
                                                      tmp_path: Path) -> None:
    source = _data_image(tmp_path / "src.qcow2", mib=1)
    daemon.define("cb", disks=[{"path": source, "format": "qcow2"}])
    path = daemon.client.domain_path("cb", "/blockjobs/vda/copy")
    err = _refusal(daemon, path, {"dest": str(tmp_path / "n.qcow2"), "wait": True})
    assert err.http_status == 409 and "is not running" in err.message, err
    daemon.cli("start", "cb")
    daemon.wait_booted("cb")
    marker = f"ONE-{secrets.token_hex(6)}"
    _write(daemon, "cb", marker)
    there = tmp_path / "there.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(there), "1M"], check=True)
    before = _sha(str(there))
    cases = [
        ({"dest": str(there)}, 409, "already exists"),
        ({"dest": str(tmp_path / "x.qcow2"), "pivot": True, "finish": True}, 400,
         "exclude each other"),
        ({"dest": "relative.qcow2"}, 400, "neither an absolute path nor a pool volume"),
        ({"dest": "/etc/evil.qcow2"}, 400, "system tree /etc"),
        ({"dest": str(tmp_path / "nope" / "x.qcow2")}, 400, "does not exist"),
        ({"dest": source, "reuse_external": True}, 400, "image of the disk itself"),
        ({"dest": str(tmp_path / "missing.qcow2"), "reuse_external": True}, 404,
         "does not exist"),
        ({"dest": "nopool/x.qcow2"}, 404, "no storage pool 'nopool'"),
        ({"dest": str(tmp_path / "x.qcow2"), "format": "vmdk"}, 400, "format"),
    ]
    for body, status, text in cases:
        err = _refusal(daemon, path, body)
        assert err.http_status == status and text in err.message, (body, err)
    err = _refusal(daemon, daemon.client.domain_path("cb", "/blockjobs/vdz/copy"),
                   {"dest": str(tmp_path / "z.qcow2")})
    assert err.http_status == 404 and "no disk 'vdz'" in err.message, err
    bad = daemon.cli("blockcopy", "cb", "vda", str(there), check=False)
    assert bad.returncode == 1 and "--reuse-external" in bad.stderr, bad.stderr
    assert _sha(str(there)) == before  # nothing written over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.qcow2", "there.qcow2"]
    assert _disk(daemon, "cb") == source and _read(daemon, "cb") == marker
    # --reuse-external of a file of the right size: written, and kept
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(there), "1M"], check=True)
    daemon.cli("blockcopy", "cb", "vda", str(there), "--reuse-external", "--finish")
    assert _read_file(str(there)).startswith(marker.encode())
    daemon.cli("destroy", "cb")


def _refusal(daemon: DaemonHandle, path: str, body: dict[str, object]) -> VirtkitError:
    with pytest.raises(VirtkitError) as info:
        daemon.client.post(path, body)
    return info.value


def test_vol_resize_of_a_running_disk_is_live(daemon: DaemonHandle) -> None:
    daemon.cli("vol-create-as", "default", "grow.qcow2", "16M")
    daemon.define("vr", disks=[{"pool": "default", "volume": "grow.qcow2"}])
    daemon.cli("start", "vr")
    daemon.wait_booted("vr")
    done = daemon.cli("vol-resize", "grow.qcow2", "24M", "--pool", "default")
    assert "successfully changed" in done.stdout, done.stdout

    def size() -> str:
        tag = secrets.token_hex(3)
        out = daemon.console_run("vr", f"echo SZ=$(cat /sys/block/vda/size); echo S-''{tag}",
                                 f"S-{tag}\r")
        found = re.findall(r"SZ=(\d+)", out)
        return found[-1] if found else ""

    assert wait_for(lambda: size() == str(24 * 2048), 30, "the guest to see 24 MiB")
    info = json.loads(daemon.cli("vol-info", "grow.qcow2", "--pool", "default",
                                 "--json").stdout)
    assert info["capacity"] == 24 * 1024 * 1024, info
    shrink = daemon.cli("vol-resize", "grow.qcow2", "8M", "--pool", "default", "--shrink",
                        check=False)
    assert shrink.returncode == 1 and "cannot shrink volume 'grow.qcow2'" in shrink.stderr
    assert size() == str(24 * 2048)
    daemon.cli("destroy", "vr")
    # offline: qemu-img, as before
    daemon.cli("vol-resize", "grow.qcow2", "32M", "--pool", "default")
    daemon.cli("start", "vr")
    daemon.wait_booted("vr", count=2)
    assert wait_for(lambda: size() == str(32 * 2048), 30, "the guest to see 32 MiB")
    daemon.cli("destroy", "vr")


def test_shallow_copy_shares_the_backing_image(daemon: DaemonHandle, tmp_path: Path) -> None:
    base = _data_image(tmp_path / "base.qcow2", mib=4)
    daemon.define("cs", disks=[{"path": base, "format": "qcow2"}])
    daemon.cli("start", "cs")
    daemon.wait_booted("cs")
    old = f"OLD-{secrets.token_hex(6)}"
    _write(daemon, "cs", old, 8)
    daemon.cli("snapshot-create-as", "cs", "s1", "--disk-only", "--external")
    top = _disk(daemon, "cs")
    new = f"NEW-{secrets.token_hex(6)}"
    _write(daemon, "cs", new)
    dest = str(tmp_path / "shallow.qcow2")
    bad = daemon.cli("blockcopy", "cs", "vda", dest, "--shallow", "--raw", check=False)
    assert bad.returncode == 1 and "must be qcow2" in bad.stderr, bad.stderr
    done = daemon.cli("blockcopy", "cs", "vda", dest, "--shallow", "--pivot")
    assert done.stdout == "\nSuccessfully pivoted\n", done.stdout
    assert _info(dest).get("backing-filename") == base  # the base is shared, not copied
    assert os.path.getsize(dest) < 2 * 1024 * 1024  # only the top's data
    assert _disk(daemon, "cs") == dest
    opened = _open_files(daemon)
    assert top not in opened and base in opened and dest in opened, opened
    assert (_read(daemon, "cs"), _read(daemon, "cs", 8)) == (new, old)
    daemon.cli("destroy", "cs")
    daemon.cli("start", "cs")
    daemon.wait_booted("cs", count=2)
    assert (_read(daemon, "cs"), _read(daemon, "cs", 8)) == (new, old)
    daemon.cli("destroy", "cs")
