"""Logical pools against real LVM on a loop device.

This kernel has no device-mapper, so the pool runs with ``global {activation=0}``
(LVM metadata only: pvcreate, vgcreate, lvcreate -Zn, lvresize, lvremove, lvs).
Each test makes a 64 MiB sparse file and a loop device; teardown always runs
vgremove -f, pvremove and losetup -d on the device it created, and removes the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound
from virtkit.model.pool import Pool, PoolType
from virtkit.storage.lvm import ACTIVATION_OFF, LogicalPool, device_mapper_available
from virtkit.storage.pools import backend_for

MiB = 1024 * 1024
EXTENT = 4 * MiB  # vgcreate's default extent size

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="LVM and loop devices need root")


def _ensure_lvm() -> None:
    if shutil.which("lvm") is None and not os.path.exists("/usr/sbin/lvm"):
        subprocess.run(["apt-get", "install", "-y", "lvm2"], check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@dataclass
class Loop:
    device: str
    vg: str


def _lvm_quiet(*argv: str) -> None:
    """Run an LVM clean-up command; metadata-only where LVs cannot be active anyway."""
    config = [] if device_mapper_available() else ["--config", ACTIVATION_OFF]
    subprocess.run(["lvm", argv[0], *config, *argv[1:]],
                   capture_output=True, check=False, stdin=subprocess.DEVNULL,
                   env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"})


@pytest.fixture
def loop() -> Iterator[Loop]:
    """A 64 MiB sparse file on a loop device, and a unique VG name for it."""
    _ensure_lvm()
    folder = tempfile.mkdtemp(prefix="vk-lvm-")
    backing = os.path.join(folder, "pv.img")
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    device = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True,
                            text=True, check=True).stdout.strip()
    loop_vg = f"vktest{uuid.uuid4().hex[:8]}"
    try:
        yield Loop(device=device, vg=loop_vg)
    finally:
        try:
            _lvm_quiet("vgremove", "-f", loop_vg)
            _lvm_quiet("pvremove", "-ff", "-y", device)
        finally:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)


def logical(loop: Loop, **config: str | None) -> LogicalPool:
    pool = Pool(name="vmvg", type=PoolType.LOGICAL, target=loop.vg, source_devices=[loop.device])
    backend = LogicalPool(pool, lvm_config=config.get("lvm_config", ACTIVATION_OFF))
    return backend


def blkid_type(device: str) -> str | None:
    result = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


def test_build_volumes_resize_delete(loop: Loop) -> None:
    pool = logical(loop)
    assert not pool.exists()
    pool.build()
    assert pool.exists() and blkid_type(loop.device) == "LVM2_member"
    start = pool.capacity()
    assert start.capacity == 60 * MiB  # 64 MiB less metadata, in 4 MiB extents
    assert (start.allocation, start.available) == (0, start.capacity)
    assert pool.list_volumes() == []

    disk = pool.create_volume("disk1", 10 * MiB, "raw")
    assert (disk.name, disk.path, disk.format) == ("disk1", f"/dev/{loop.vg}/disk1", "raw")
    assert disk.capacity == disk.allocation == 12 * MiB  # rounded up to whole extents
    pool.create_volume("disk2", EXTENT, "raw")
    assert [v.name for v in pool.list_volumes()] == ["disk1", "disk2"]
    assert pool.volume("disk1") == disk
    assert pool.volume_path("disk2") == f"/dev/{loop.vg}/disk2"
    used = pool.capacity()
    assert (used.allocation, used.available) == (16 * MiB, 44 * MiB)

    assert pool.resize_volume("disk1", 20 * MiB).capacity == 20 * MiB
    with pytest.raises(InvalidSpec, match="discard") as caught:
        pool.resize_volume("disk1", 8 * MiB)
    assert caught.value.fix
    assert pool.volume("disk1").capacity == 20 * MiB
    assert pool.resize_volume("disk1", 8 * MiB, shrink=True).capacity == 8 * MiB
    assert pool.resize_volume("disk1", 7 * MiB, shrink=True).capacity == 8 * MiB  # same extents

    with pytest.raises(Conflict, match="still holds 2 logical volumes") as refused:
        pool.delete()
    assert refused.value.fix
    pool.delete_volume("disk1")
    pool.delete_volume("disk2")
    with pytest.raises(NotFound, match="'disk1' not found in pool 'vmvg'"):
        pool.delete_volume("disk1")
    pool.delete()
    assert not pool.exists()
    assert blkid_type(loop.device) is None  # pvremove wiped the label
    with pytest.raises(NotFound, match="pool-build"):
        pool.capacity()


def test_refusals(loop: Loop, tmp_path: Path) -> None:
    pool = logical(loop)
    pool.build()
    with pytest.raises(Conflict, match="already exists"):
        pool.build()
    pool.create_volume("a", EXTENT, "raw")
    with pytest.raises(InvalidSpec, match="qcow2 volume on a logical volume is not supported"
                       ) as caught:
        pool.create_volume("b", EXTENT, "qcow2")
    assert caught.value.fix and "dir pool" in caught.value.fix
    with pytest.raises(Conflict, match="already exists"):
        pool.create_volume("a", EXTENT, "raw")
    with pytest.raises(HostError, match="insufficient free space") as full:
        pool.create_volume("huge", 1024 * MiB, "raw")
    assert full.value.fix
    with pytest.raises(InvalidSpec, match="not allowed"):
        pool.create_volume("../x", EXTENT, "raw")
    with pytest.raises(InvalidSpec, match="linked clones"):
        pool.clone_volume("a", "b", linked=True)
    # without activation the LV has no device node: data operations refuse cleanly
    image = tmp_path / "small.raw"
    image.write_bytes(bytes(MiB))
    for attempt in (lambda: pool.wipe_volume("a"),
                    lambda: pool.clone_volume("a", "copy"),
                    lambda: pool.import_volume("imp", str(image), "raw", source_fmt="raw")):
        with pytest.raises(HostError, match=r"no device node|activation is switched off") as err:
            attempt()
        assert err.value.fix
    assert [v.name for v in pool.list_volumes()] == ["a"]  # nothing half-made


def test_build_refuses_devices_in_use(loop: Loop, tmp_path: Path) -> None:
    first = logical(loop)
    first.build()
    other = LogicalPool(Pool(name="second", type=PoolType.LOGICAL, target=loop.vg + "x",
                             source_devices=[loop.device]), lvm_config=ACTIVATION_OFF)
    with pytest.raises(Conflict, match="already holds an LVM physical volume") as caught:
        other.build()
    assert loop.device in caught.value.message and "wipefs" in (caught.value.fix or "")
    missing = LogicalPool(Pool(name="m", type=PoolType.LOGICAL, target="vkmissing",
                               source_devices=["/dev/vk-no-such-disk"]),
                          lvm_config=ACTIVATION_OFF)
    with pytest.raises(NotFound, match="/dev/vk-no-such-disk"):
        missing.build()
    empty = LogicalPool(Pool(name="e", type=PoolType.LOGICAL, target="vkempty"),
                        lvm_config=ACTIVATION_OFF)
    with pytest.raises(InvalidSpec, match="no source devices"):
        empty.build()


def test_backend_for_passes_the_lvm_config(loop: Loop) -> None:
    pool = Pool(name="vmvg", type=PoolType.LOGICAL, target=loop.vg, source_devices=[loop.device])
    backend = backend_for(pool, lvm_config=ACTIVATION_OFF)
    assert isinstance(backend, LogicalPool) and not backend.activation
    assert LogicalPool(pool).activation  # the product default is plain LVM


@pytest.mark.skipif(not device_mapper_available(),
                    reason="this kernel has no device-mapper, LVs cannot be activated")
def test_an_image_on_an_active_lv(loop: Loop, tmp_path: Path) -> None:
    pool = logical(loop, lvm_config=None)
    pool.build()
    try:
        pool.create_volume("empty", EXTENT, "raw")
        image = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"],
                       check=True)
        volume = pool.import_volume("boot", str(image), "raw", source_fmt="qcow2")
        info = subprocess.run(["qemu-img", "info", "-f", "raw", volume.path],
                              capture_output=True, text=True, check=True)
        assert "virtual size: 8 MiB" in info.stdout
        pool.wipe_volume("boot")
    finally:
        for volume in pool.list_volumes():
            pool.delete_volume(volume.name)
