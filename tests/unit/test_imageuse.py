"""runtime/imageuse.py: backing files read from qcow2 headers, the rules of "who else
uses this image", and QEMU's lock errors as 409s."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from virtkit.errors import Conflict, QemuError
from virtkit.runtime.imageuse import (
    ImageUse,
    Use,
    Wanted,
    backing_file,
    chain_below,
    lock_conflict,
)

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed")


@needs_qemu_img
def test_backing_files_from_the_header(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    for image, below in ((mid, "base.qcow2"), (top, str(mid))):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", below, "-F", "qcow2",
                        str(image)], check=True)
    assert backing_file(str(base)) is None
    assert backing_file(str(mid)) == str(base)  # relative names resolved to its folder
    assert chain_below(str(top)) == [str(mid), str(base)]
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"QFI")
    assert backing_file(str(raw)) is None
    assert backing_file(str(tmp_path / "missing")) is None


def _problem(want: Wanted, others: list[Use], defined: bool) -> str | None:
    found = ImageUse._problem(want, others, defined=defined)
    return None if found is None else found[0]


def test_rules(tmp_path: Path) -> None:
    image = str(tmp_path / "a.qcow2")
    writer_running = Use(image, "a", "u1", True, True)
    writer_defined = Use(image, "a", "u1", True, False)
    reader_running = Use(image, "r", "u2", False, True)
    base_of = Use(image, "k", "u3", False, False, via="/x/k.qcow2")
    rw, ro = Wanted(image, True, "disks[0].path"), Wanted(image, False, "disks[0].path")
    problem = _problem(rw, [writer_running], defined=False)
    assert problem is not None and "running domain 'a'" in problem
    assert _problem(ro, [writer_running], defined=False) is not None  # reader + writer
    assert _problem(ro, [reader_running], defined=False) is None  # two readers
    assert _problem(rw, [writer_defined], defined=False) is None  # start: not running
    assert _problem(rw, [writer_defined], defined=True) is not None  # define: two writers
    assert _problem(ro, [writer_defined], defined=True) is None
    problem = _problem(rw, [base_of], defined=False)
    assert problem is not None and "backing file of /x/k.qcow2" in problem
    assert _problem(ro, [base_of], defined=False) is None  # reading a base is fine


def test_qemu_lock_errors_become_conflicts() -> None:
    error = QemuError('QEMU refused blockdev-add: Failed to get "write" lock\nIs another '
                      'process using the image [/var/lib/a.qcow2]?')
    conflict = lock_conflict(error, lambda path: [Use(path, "a", "u", True, True)])
    assert isinstance(conflict, Conflict) and conflict.http_status == 409
    assert "/var/lib/a.qcow2" in conflict.message and "'a'" in conflict.message
    assert lock_conflict(QemuError("QEMU exited: no such device"), None) is None
