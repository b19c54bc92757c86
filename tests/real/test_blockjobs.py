"""Live block jobs against real QEMU (TCG) and the tiny guest: blockcommit, blockpull,
blockjob, blockresize, through the real CLI.  Data is written and read back by the
guest on its serial console (/dev/vda); after a pivot the domain is destroyed and
started again, so what is checked is what the definition names, not QEMU's memory."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for

pytestmark = pytest.mark.qemu


def _image(path: Path, size: str = "32M") -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return str(path)


def _write_marker(daemon: DaemonHandle, name: str, marker: str) -> None:
    daemon.console_run(name, f"echo {marker} | dd of=/dev/vda conv=fsync 2>/dev/null; sync; "
                       f"echo W-''{marker}", f"W-{marker}\r")


def _read_marker(daemon: DaemonHandle, name: str, tag: str) -> str:
    out = daemon.console_run(
        name, "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 count=1 2>/dev/null "
        f"| head -c 40 | tr -cd 'A-Za-z0-9-' | sed 's/^/GOT=/'; echo; echo R-''{tag}",
        f"R-{tag}\r")
    found = re.findall(r"GOT=([A-Za-z0-9-]*)", out)
    return found[-1] if found else ""


def _backing(path: str) -> str | None:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                                     capture_output=True, text=True, check=True).stdout)
    backing: str | None = info.get("full-backing-filename") or info.get("backing-filename")
    return backing


def _snapshot(daemon: DaemonHandle, name: str, snap: str) -> None:
    daemon.cli("snapshot-create-as", name, snap, "--disk-only", "--external")


def _disk(daemon: DaemonHandle, name: str) -> str:
    return str(daemon.info(name)["spec"]["disks"][0]["path"])


def test_active_commit_pivots_and_the_definition_follows(daemon: DaemonHandle,
                                                         tmp_path: Path) -> None:
    base = _image(tmp_path / "base.qcow2")
    daemon.define("bc", disks=[{"path": base, "format": "qcow2"}])
    daemon.cli("start", "bc")
    daemon.wait_booted("bc")
    # refusals name the problem: nothing below the top yet; no job to abort
    bad = daemon.cli("blockcommit", "bc", "vda", "--active", "--pivot", check=False)
    assert bad.returncode == 1 and "nothing below" in bad.stderr, bad.stderr
    bad = daemon.cli("blockjob", "bc", "vda", "--abort", check=False)
    assert bad.returncode == 1 and "no active block job on disk vda" in bad.stderr
    assert daemon.cli("blockjob", "bc", "vda", "--info").stdout == \
        "No current block job for vda\n"

    _snapshot(daemon, "bc", "s1")
    overlay = _disk(daemon, "bc")
    assert overlay != base and _backing(overlay) == base
    marker = f"MARK-{secrets.token_hex(6)}"
    _write_marker(daemon, "bc", marker)
    bad = daemon.cli("blockcommit", "bc", "vda", check=False)  # the top needs --active
    assert bad.returncode == 1 and "needs --active" in bad.stderr, bad.stderr

    done = daemon.cli("blockcommit", "bc", "vda", "--active", "--pivot", "--verbose",
                      "--delete")
    assert done.stdout == "\nSuccessfully pivoted\n", done.stdout
    assert "Active Block Commit: [100.00 %]" in done.stderr, done.stderr
    assert _disk(daemon, "bc") == base  # the definition names what QEMU uses
    assert not Path(overlay).exists()  # --delete: the stale overlay is gone
    assert daemon.cli("blockjob", "bc", "vda", "--info").stdout == \
        "No current block job for vda\n"
    assert _read_marker(daemon, "bc", "live") == marker

    daemon.cli("destroy", "bc")
    daemon.cli("start", "bc")
    daemon.wait_booted("bc", count=2)
    assert _read_marker(daemon, "bc", "after") == marker
    daemon.cli("destroy", "bc")
    bad = daemon.cli("blockjob", "bc", "vda", check=False)
    assert bad.returncode == 1 and "is not running" in bad.stderr


def test_commit_without_wait_then_blockjob_pivot_and_pull(daemon: DaemonHandle,
                                                           tmp_path: Path) -> None:
    base = _image(tmp_path / "base.qcow2")
    daemon.define("bp", disks=[{"path": base, "format": "qcow2"}])
    daemon.cli("start", "bp")
    daemon.wait_booted("bp")
    _snapshot(daemon, "bp", "s1")
    first = f"ONE-{secrets.token_hex(6)}"
    _write_marker(daemon, "bp", first)
    _snapshot(daemon, "bp", "s2")
    top = _disk(daemon, "bp")
    middle = _backing(top)
    assert middle is not None and _backing(middle) == base

    # pull the middle's data into the top: the top stands alone, the definition stays
    pulled = daemon.cli("blockpull", "bp", "vda", "--wait")
    assert pulled.stdout == "\nPull complete\n", pulled.stdout
    assert _backing(top) is None and _disk(daemon, "bp") == top
    assert _read_marker(daemon, "bp", "pull") == first

    # a second overlay, committed without --wait: the job waits in its ready phase
    _snapshot(daemon, "bp", "s3")
    second = f"TWO-{secrets.token_hex(6)}"
    _write_marker(daemon, "bp", second)
    newtop = _disk(daemon, "bp")
    assert _backing(newtop) == top
    started = daemon.cli("blockcommit", "bp", newtop, "--active", "--shallow")
    assert started.stdout == "Active Block Commit started\n"
    busy = daemon.cli("blockpull", "bp", "vda", check=False)
    assert busy.returncode == 1 and "already has a block job" in busy.stderr, busy.stderr
    raw = daemon.cli("blockjob", "bp", "vda", "--raw").stdout
    assert raw.startswith(" type=active_commit\n"), raw
    daemon.cli("blockjob", "bp", "vda", "--bandwidth", "0")
    info = daemon.cli("blockjob", "bp", "vda", "--info")
    assert info.stderr.strip().startswith("Active Block Commit: ["), info.stderr

    def pivot() -> str | None:  # ready once the copy is done: --pivot before is refused
        result = daemon.cli("blockjob", "bp", "vda", "--pivot", check=False)
        assert result.returncode == 0 or "cannot pivot" in result.stderr, result.stderr
        return result.stdout if result.returncode == 0 else None

    assert wait_for(pivot, 120, "the commit to be ready") == "Successfully pivoted\n"
    assert _disk(daemon, "bp") == top
    assert Path(newtop).exists()  # left in place without --delete, as libvirt leaves it
    assert _read_marker(daemon, "bp", "pivot") == second

    # live resize: the guest sees the new size at once
    resized = daemon.cli("blockresize", "bp", "vda", "48M")
    assert resized.stdout == "Block device 'vda' is resized\n"
    out = daemon.console_run("bp", "cat /sys/block/vda/size; echo S-''z", "S-z\r")
    assert str(48 * 2048) in out, out
    daemon.cli("destroy", "bp")
