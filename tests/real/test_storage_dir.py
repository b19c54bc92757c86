"""Directory and ISO pools against real qemu-img (and a real, paused QEMU for locks).

Every file lives in a scratch folder removed at teardown; every QEMU started here
is killed by PID in a finally block (and dies with the test process otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound, VirtkitError
from virtkit.model.pool import Pool, PoolType
from virtkit.storage import qemuimg
from virtkit.storage.dirpool import DirPool
from virtkit.storage.isopool import IsoPool
from virtkit.storage.pools import backend_for

MiB = 1024 * 1024
QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="vk-storage-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pool(scratch: Path) -> DirPool:
    backend = backend_for(Pool(name="vms", type=PoolType.DIR, target=str(scratch / "vms")))
    assert isinstance(backend, DirPool)
    assert not backend.exists()
    backend.build()
    assert backend.exists()
    return backend


def visible(folder: str) -> list[str]:
    return sorted(os.listdir(folder))


def read(path: str, fmt: str, offset: int, length: int) -> bytes:
    """Bytes of the guest's view of an image (converted to raw, then sliced)."""
    with tempfile.NamedTemporaryFile() as out:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, out.name],
                       check=True, capture_output=True)
        with open(out.name, "rb") as data:
            data.seek(offset)
            return data.read(length)


def write_pattern(path: str, fmt: str, byte: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset} {length}", path],
                   check=True, capture_output=True)


def same_content(a: str, fmt_a: str, b: str, fmt_b: str) -> bool:
    result = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, a, b],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0


# --- volumes: create, list, info, resize ---------------------------------------------------


def test_create_list_info(pool: DirPool) -> None:
    disk = pool.create_volume("disk.qcow2", 1024 * MiB, "qcow2")
    raw = pool.create_volume("data.raw", 16 * MiB, "raw")
    full = pool.create_volume("full.raw", 8 * MiB, "raw", prealloc=True)
    assert (disk.format, disk.capacity, disk.backing) == ("qcow2", 1024 * MiB, None)
    assert disk.allocation < MiB  # metadata only
    assert (raw.format, raw.capacity) == ("raw", 16 * MiB)
    assert raw.allocation <= 64 * 1024  # sparse (qemu-img writes the first block)
    assert full.allocation >= 8 * MiB  # falloc reserved it
    assert disk.path == os.path.join(pool.root, "disk.qcow2")
    assert [v.name for v in pool.list_volumes()] == ["data.raw", "disk.qcow2", "full.raw"]
    assert pool.volume("disk.qcow2") == disk
    assert visible(pool.root) == ["data.raw", "disk.qcow2", "full.raw"]  # no temps left
    assert oct(os.stat(disk.path).st_mode & 0o777) == "0o600"


def test_create_refusals(pool: DirPool) -> None:
    pool.create_volume("a.qcow2", MiB, "qcow2")
    with pytest.raises(Conflict, match="already exists") as caught:
        pool.create_volume("a.qcow2", MiB, "raw")
    assert caught.value.fix
    with pytest.raises(InvalidSpec, match="vmdk"):
        pool.create_volume("b.vmdk", MiB, "vmdk")
    with pytest.raises(InvalidSpec, match="positive"):
        pool.create_volume("c.raw", 0, "raw")
    with pytest.raises(InvalidSpec, match="not allowed"):
        pool.create_volume("../escape.raw", MiB, "raw")
    assert visible(pool.root) == ["a.qcow2"]


def test_hidden_files_and_partials_are_not_volumes(pool: DirPool) -> None:
    Path(pool.root, ".x.qcow2.partial").write_bytes(b"")
    Path(pool.root, ".hidden").write_bytes(b"")
    os.mkdir(os.path.join(pool.root, "subdir"))
    Path(pool.root, "notes.txt").write_text("hello")  # libvirt lists any file, so do we
    assert [(v.name, v.format) for v in pool.list_volumes()] == [("notes.txt", "raw")]


def test_a_guest_written_qcow2_header_does_not_change_a_raw_volume(pool: DirPool,
                                                                  scratch: Path) -> None:
    """A guest owns the bytes of its raw disk; if it writes a qcow2 header naming a host
    file as backing, the volume must stay raw (no probing of files virtkit made)."""
    vol = pool.create_volume("guest.raw", 8 * MiB, "raw")
    header = scratch / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname",
                    "-F", "raw", str(header), "8M"], check=True)
    with open(vol.path, "r+b") as disk:
        disk.write(header.read_bytes())
    assert qemuimg.detect_format(vol.path) == "qcow2"  # what a probe would believe
    after = pool.volume("guest.raw")
    assert (after.format, after.backing) == ("raw", None)
    clone = pool.clone_volume("guest.raw", "clone.qcow2", linked=True)
    assert qemuimg.backing_chain(clone.path)[-1]["format"] == "raw"
    pool.wipe_volume("guest.raw")
    assert Path(vol.path).read_bytes() == bytes(8 * MiB)


def test_resize_grow_and_refused_shrink(pool: DirPool) -> None:
    pool.create_volume("q.qcow2", 64 * MiB, "qcow2")
    pool.create_volume("r.raw", 64 * MiB, "raw")
    for name in ("q.qcow2", "r.raw"):
        assert pool.resize_volume(name, 128 * MiB).capacity == 128 * MiB
        with pytest.raises(InvalidSpec, match="discard") as caught:
            pool.resize_volume(name, 32 * MiB)
        assert caught.value.fix and "shrink" in caught.value.fix
        assert pool.volume(name).capacity == 128 * MiB
    assert pool.resize_volume("r.raw", 32 * MiB, shrink=True).capacity == 32 * MiB
    with pytest.raises(NotFound, match="'gone' not found in pool 'vms'"):
        pool.resize_volume("gone", MiB)


def test_capacity_is_the_file_system(pool: DirPool) -> None:
    numbers = pool.capacity()
    fs = os.statvfs(pool.root)
    assert numbers.capacity == fs.f_blocks * fs.f_frsize
    assert 0 < numbers.available <= numbers.capacity
    assert 0 < numbers.allocation <= numbers.capacity - numbers.available


# --- clones, imports --------------------------------------------------------------------


def test_linked_clone_sees_its_backing(pool: DirPool) -> None:
    base = pool.create_volume("base.qcow2", 64 * MiB, "qcow2")
    write_pattern(base.path, "qcow2", 0x42, 0, MiB)
    clone = pool.clone_volume("base.qcow2", "vm1.qcow2", linked=True)
    assert (clone.format, clone.capacity, clone.backing) == ("qcow2", 64 * MiB, base.path)
    assert read(clone.path, "qcow2", 0, 4096) == b"\x42" * 4096
    chain = qemuimg.backing_chain(clone.path)
    assert [c["filename"] for c in chain] == [clone.path, base.path]
    assert chain[0]["backing-filename-format"] == "qcow2"
    # an overlay of a raw volume, and the refusals
    pool.create_volume("plain.raw", 8 * MiB, "raw")
    assert pool.clone_volume("plain.raw", "over.qcow2", linked=True).backing == \
        os.path.join(pool.root, "plain.raw")
    with pytest.raises(InvalidSpec, match="qcow2 overlay"):
        pool.clone_volume("base.qcow2", "vm2.raw", linked=True, fmt="raw")
    with pytest.raises(InvalidSpec, match="smaller"):
        pool.create_volume("small.qcow2", MiB, "qcow2", backing=base)


def test_full_clone_reports_rising_progress(pool: DirPool) -> None:
    src = pool.create_volume("src.raw", 64 * MiB, "raw")
    with open(src.path, "r+b") as f:  # real data all over, so qemu-img reports steps
        for offset in range(0, 64 * MiB, MiB):
            f.seek(offset)
            f.write(os.urandom(64 * 1024))
    seen: list[tuple[float, float]] = []
    clone = pool.clone_volume("src.raw", "copy.qcow2", fmt="qcow2",
                              progress=lambda done, total: seen.append((done, total)))
    assert clone.format == "qcow2" and clone.backing is None
    assert same_content(src.path, "raw", clone.path, "qcow2")
    percents = [done for done, _ in seen]
    assert len(percents) >= 3, seen
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert percents[-1] == 100.0 and {total for _, total in seen} == {100.0}


def test_full_clone_flattens_a_linked_clone(pool: DirPool) -> None:
    base = pool.create_volume("base.qcow2", 8 * MiB, "qcow2")
    write_pattern(base.path, "qcow2", 0x11, 0, MiB)
    pool.clone_volume("base.qcow2", "linked.qcow2", linked=True)
    flat = pool.clone_volume("linked.qcow2", "flat.qcow2")
    assert flat.backing is None
    assert read(flat.path, "qcow2", 0, 512) == b"\x11" * 512


@pytest.mark.parametrize("source_fmt", ["vmdk", "vdi", "vhdx", "qcow2"])
def test_import_foreign_images(pool: DirPool, scratch: Path, source_fmt: str) -> None:
    raw = scratch / "orig.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    write_pattern(str(raw), "raw", 0x7e, 3 * MiB, 2 * MiB)
    foreign = scratch / f"disk.{source_fmt}"
    subprocess.run(["qemu-img", "convert", "-O", source_fmt, str(raw), str(foreign)],
                   check=True)
    for target in ("qcow2", "raw"):
        progress: list[tuple[float, float]] = []
        volume = pool.import_volume(f"imported-{source_fmt}.{target}", str(foreign), target,
                                    source_fmt=source_fmt,
                                    progress=lambda *report, seen=progress: seen.append(report))
        assert volume.format == target and volume.capacity >= 16 * MiB
        assert same_content(str(raw), "raw", volume.path, target)
        assert progress and progress[-1] == (100.0, 100.0)
    # detected when not declared
    detected = pool.import_volume(f"detected-{source_fmt}.qcow2", str(foreign), "qcow2")
    assert same_content(str(raw), "raw", detected.path, "qcow2")
    assert foreign.exists()  # the source is left alone


def test_failed_conversion_leaves_nothing(pool: DirPool, scratch: Path) -> None:
    garbage = scratch / "broken.vmdk"
    garbage.write_bytes(os.urandom(64 * 1024))
    for fmt in ("vmdk", "qcow2", "vdi"):
        with pytest.raises(VirtkitError) as caught:
            pool.import_volume("new.qcow2", str(garbage), "qcow2", source_fmt=fmt)
        assert isinstance(caught.value, InvalidSpec), caught.value
        assert str(garbage) in caught.value.message
    assert visible(pool.root) == []
    with pytest.raises(NotFound, match="does not exist"):
        pool.import_volume("new.qcow2", str(scratch / "missing.vmdk"), "qcow2")
    assert visible(pool.root) == []


def test_a_full_disk_leaves_nothing(scratch: Path) -> None:
    folder = scratch / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        pool = DirPool(Pool(name="tiny", type=PoolType.DIR, target=str(folder)))
        source = scratch / "big.raw"
        source.write_bytes(os.urandom(8 * MiB))
        with pytest.raises(HostError, match="No space left") as caught:
            pool.import_volume("big.raw", str(source), "raw", source_fmt="raw")
        assert caught.value.fix
        with pytest.raises(HostError, match="No space left"):
            pool.create_volume("prealloc.raw", 16 * MiB, "raw", prealloc=True)
        assert visible(str(folder)) == []
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_concurrent_writer_of_one_name_is_refused(pool: DirPool) -> None:
    temp = os.path.join(pool.root, ".busy.raw.partial")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="being written by another operation"):
            pool.create_volume("busy.raw", MiB, "raw")
        assert os.path.exists(temp)  # not ours to remove
    finally:
        os.close(fd)
    # a temp nobody holds (a killed process) is reused
    assert pool.create_volume("busy.raw", MiB, "raw").capacity == MiB
    assert visible(pool.root) == ["busy.raw"]


# --- wipe, delete -----------------------------------------------------------------------


def test_wipe_raw_writes_zeros(pool: DirPool) -> None:
    vol = pool.create_volume("w.raw", 8 * MiB, "raw")
    write_pattern(vol.path, "raw", 0x33, 0, 8 * MiB)
    pool.wipe_volume("w.raw")
    assert Path(vol.path).read_bytes() == bytes(8 * MiB)
    assert pool.volume("w.raw").capacity == 8 * MiB


def test_wipe_qcow2_recreates_it_keeping_its_backing(pool: DirPool) -> None:
    base = pool.create_volume("base.qcow2", 8 * MiB, "qcow2")
    write_pattern(base.path, "qcow2", 0x21, 0, MiB)
    pool.clone_volume("base.qcow2", "top.qcow2", linked=True)
    top = pool.volume("top.qcow2")
    write_pattern(top.path, "qcow2", 0x99, 0, 2 * MiB)
    pool.wipe_volume("top.qcow2")
    after = pool.volume("top.qcow2")
    assert (after.capacity, after.backing) == (top.capacity, base.path)
    assert read(after.path, "qcow2", 0, 512) == b"\x21" * 512  # the base shows again
    assert read(after.path, "qcow2", MiB, 512) == bytes(512)
    standalone = pool.create_volume("solo.qcow2", 4 * MiB, "qcow2")
    write_pattern(standalone.path, "qcow2", 0x55, 0, 4 * MiB)
    pool.wipe_volume("solo.qcow2")
    assert read(standalone.path, "qcow2", 0, 4096) == bytes(4096)
    assert pool.volume("solo.qcow2").allocation < 1 * MiB
    assert qemuimg.check(standalone.path, "qcow2")["check-errors"] == 0


def test_delete_volume_and_pool(pool: DirPool) -> None:
    pool.create_volume("one.raw", MiB, "raw")
    pool.create_volume("two.qcow2", MiB, "qcow2")
    with pytest.raises(Conflict, match="still holds 2 volumes") as caught:
        pool.delete()
    assert "one.raw" in caught.value.message and caught.value.fix
    pool.delete_volume("one.raw")
    pool.delete_volume("two.qcow2")
    with pytest.raises(NotFound):
        pool.delete_volume("two.qcow2")
    Path(pool.root, ".stale.raw.partial").write_bytes(b"left by a killed daemon")
    pool.delete()
    assert not pool.exists()
    with pytest.raises(NotFound, match="pool-build"):
        pool.list_volumes()


def test_qemu_img_helpers(pool: DirPool) -> None:
    vol = pool.create_volume("m.qcow2", 64 * MiB, "qcow2")
    assert qemuimg.measure("qcow2", size=1024 * MiB)["required"] < MiB
    measured = qemuimg.measure("raw", src=vol.path, src_fmt="qcow2")
    assert measured["fully-allocated"] == 64 * MiB
    report = qemuimg.check(vol.path, "qcow2")
    assert report["supported"] and report["check-errors"] == 0
    pool.create_volume("r.raw", MiB, "raw")
    assert qemuimg.check(os.path.join(pool.root, "r.raw"), "raw")["supported"] is False
    with pytest.raises(NotFound):
        qemuimg.check(os.path.join(pool.root, "nope"), "qcow2")


# --- a running QEMU holds volumes --------------------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test process


@contextlib.contextmanager
def paused_qemu(disks: dict[str, str], timeout: float = 120) -> Iterator[int]:
    """A paused QEMU with each ``path: format`` attached as a virtio disk; killed by PID
    on exit (and after ``timeout`` seconds, or when the test process dies)."""
    assert QEMU
    argv = [QEMU, "-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-m", "64"]
    for index, (path, fmt) in enumerate(disks.items()):
        node = {"driver": fmt, "node-name": f"d{index}",
                "file": {"driver": "file", "filename": path}}
        argv += ["-blockdev", json.dumps(node), "-device", f"virtio-blk-pci,drive=d{index}"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        deadline = time.monotonic() + 15
        while not all(qemuimg.image_locks(p).in_use for p in disks):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"QEMU did not take its locks: {process.poll()}")
            time.sleep(0.05)
        yield process.pid
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_volumes_a_running_vm_holds_are_not_written(pool: DirPool) -> None:
    raw = pool.create_volume("held.raw", 8 * MiB, "raw")
    q = pool.create_volume("held.qcow2", 8 * MiB, "qcow2")
    base = pool.create_volume("base.qcow2", 8 * MiB, "qcow2")
    top = pool.clone_volume("base.qcow2", "top.qcow2", linked=True)
    write_pattern(raw.path, "raw", 0x44, 0, MiB)
    with paused_qemu({raw.path: "raw", q.path: "qcow2", top.path: "qcow2"}):
        for name in ("held.raw", "held.qcow2"):
            for attempt in (lambda n=name: pool.resize_volume(n, 16 * MiB),
                            lambda n=name: pool.wipe_volume(n),
                            lambda n=name: pool.delete_volume(n),
                            lambda n=name: pool.clone_volume(n, "copy")):
                with pytest.raises(Conflict, match="in use by a running VM") as caught:
                    attempt()
                assert caught.value.fix
            with pytest.raises(Conflict, match="being written by a running VM"):
                pool.clone_volume(name, "linked.qcow2", linked=True)
        # reading is fine, and a base that a VM only reads can get another overlay
        assert pool.volume("held.qcow2").capacity == 8 * MiB
        assert pool.clone_volume("base.qcow2", "top2.qcow2", linked=True).backing == base.path
        with pytest.raises(Conflict, match="in use by a running VM"):
            pool.resize_volume("base.qcow2", 16 * MiB)
        assert sorted(visible(pool.root)) == sorted(
            ["held.raw", "held.qcow2", "base.qcow2", "top.qcow2", "top2.qcow2"])
    assert read(raw.path, "raw", 0, 512) == b"\x44" * 512  # untouched
    pool.resize_volume("held.raw", 16 * MiB)  # and free again once QEMU is gone


# --- iso pools --------------------------------------------------------------------------


def make_iso(folder: Path, label: str) -> Path:
    """An ISO with volume label ``label``: by xorriso/genisoimage when installed, else a
    hand-made ISO 9660 header (16 system sectors, primary descriptor, terminator)."""
    content = folder / "content"
    content.mkdir(exist_ok=True)
    (content / "README.txt").write_text("install me\n")
    iso = folder / "media.iso"
    if shutil.which("xorriso"):
        subprocess.run(["xorriso", "-as", "mkisofs", "-V", label, "-o", str(iso),
                        str(content)], check=True, capture_output=True)
    elif shutil.which("genisoimage"):
        subprocess.run(["genisoimage", "-V", label, "-o", str(iso), str(content)],
                       check=True, capture_output=True)
    else:
        primary = bytes([1]) + b"CD001\x01\x00" + b" " * 32 + label.encode().ljust(32) \
            + bytes(2048 - 72)
        terminator = bytes([255]) + b"CD001\x01" + bytes(2041)
        iso.write_bytes(bytes(16 * 2048) + primary + terminator + bytes(8 * 2048))
    return iso


def test_iso_pool(scratch: Path) -> None:
    isos = backend_for(Pool(name="iso", type=PoolType.ISO, target=str(scratch / "iso")))
    assert isinstance(isos, IsoPool)
    isos.build()
    media = make_iso(scratch, "DEBIAN_12_AMD64")
    seen: list[tuple[float, float]] = []
    volume = isos.import_volume("debian-12.iso", str(media), "iso",
                                progress=lambda done, total: seen.append((done, total)))
    size = media.stat().st_size
    assert (volume.format, volume.capacity, volume.allocation) == ("iso", size, size)
    assert volume.label == "DEBIAN_12_AMD64"
    assert seen[-1] == (size, size)
    assert Path(volume.path).read_bytes() == media.read_bytes()
    Path(isos.root, "notes.txt").write_text("not an iso")
    listed = {v.name: v.label for v in isos.list_volumes()}
    assert listed == {"debian-12.iso": "DEBIAN_12_AMD64", "notes.txt": None}
    for refused in (lambda: isos.create_volume("x.iso", MiB, "raw"),
                    lambda: isos.resize_volume("debian-12.iso", 2 * size),
                    lambda: isos.clone_volume("debian-12.iso", "copy.iso"),
                    lambda: isos.wipe_volume("debian-12.iso")):
        with pytest.raises(InvalidSpec, match="iso pools hold install media") as caught:
            refused()
        assert caught.value.fix and "vol-upload" in caught.value.fix
    with pytest.raises(InvalidSpec, match="not as qcow2"):
        isos.import_volume("again.iso", str(media), "qcow2")
    with pytest.raises(Conflict, match="already exists"):
        isos.import_volume("debian-12.iso", str(media), "iso")
    isos.delete_volume("debian-12.iso")
    isos.delete_volume("notes.txt")
    assert isos.list_volumes() == []
    isos.delete()
    assert not isos.exists()
