"""Shared storage pools between two hosts (issue 18 item 3, docs/storage.md).

Two daemons, each in its own network namespace ("hosts", test_migration.py's
netns_pair), define the same ``shared-dir`` pool on a folder both see (namespaces share
the file system, as hosts share an NFS or CephFS mount).  A live migration with
--copy-storage-all of a guest whose disk is a volume there copies no disk byte: the
copy plan sees the pool shared on both ends.  The guest's writes are in the one image
on either host, and QEMU's image lock refuses a second writer of it on the other host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle
from tests.real.test_migration import DESTINATION_IP, _migrate, netns_pair  # noqa: F401
from virtkit.cli.client import ApiError

pytestmark = pytest.mark.qemu


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """The "mount": a folder every host sees; the pool lives in a folder inside it."""
    mount = Path(tempfile.mkdtemp(prefix="vk-shared-", dir="/tmp"))
    os.chmod(mount, 0o755)
    try:
        yield mount
    finally:
        shutil.rmtree(mount, ignore_errors=True)


def _shared_pool(host: DaemonHandle, folder: Path, *, build: bool) -> None:
    host.cli("pool-define-as", "shd", "shared-dir", "--target", str(folder))
    if build:
        host.cli("pool-build", "shd")
    host.cli("pool-start", "shd")


def test_live_migration_on_a_shared_pool_copies_no_disk(
        netns_pair: tuple[DaemonHandle, DaemonHandle],  # noqa: F811
        shared_folder: Path) -> None:
    source, destination = netns_pair
    folder = shared_folder / "vms"
    _shared_pool(source, folder, build=True)
    _shared_pool(destination, folder, build=False)  # the same folder: already there
    source.cli("vol-create-as", "shd", "g.raw", "8M", "--format", "raw")
    listed = destination.cli("vol-list", "shd").stdout
    assert "g.raw" in listed  # the other host sees the volume made here
    image = folder / "g.raw"

    source.define("sh1", disks=[{"pool": "shd", "volume": "g.raw"}])
    source.client.post(source.client.domain_path("sh1", "/start"))
    source.wait_booted("sh1")
    source.console_run("sh1", "printf VKSHARED-77 | dd of=/dev/vda bs=512 count=1 "
                       "conv=fsync 2>/dev/null; echo w-$((1+1))", "w-2")
    assert image.read_bytes()[:11] == b"VKSHARED-77"

    result = _migrate(source, destination, "sh1", address=DESTINATION_IP, persistent=True,
                      undefine_source=True, copy_storage_all=True)
    assert result["destination"]["state"] == "running"
    assert result["copied_disks"] == [] and result["disk_bytes"] == 0
    assert result["shared_disks"] == [str(image)]
    disk = destination.client.get(destination.client.domain_path("sh1", "/disks"))[0]
    assert (disk["pool"], disk["volume"], disk["path"]) == ("shd", "g.raw", str(image))

    # the same guest, writing the same image from the other host
    out = destination.console_run("sh1", "head -c 11 /dev/vda; echo; printf VKAFTER-88 | "
                                  "dd of=/dev/vda bs=512 seek=1 count=1 conv=fsync "
                                  "2>/dev/null; echo w-$((2+1))", "w-3")
    assert "VKSHARED-77" in out
    assert image.read_bytes()[512:522] == b"VKAFTER-88"

    # a second writer of that image on the first host: QEMU's image lock refuses it
    source.define("sh2", disks=[{"pool": "shd", "volume": "g.raw"}])
    with pytest.raises(ApiError) as refused:
        source.client.post(source.client.domain_path("sh2", "/start"))
    assert refused.value.http_status == 409 and "locked by another QEMU" in str(refused.value)
    assert source.state("sh2") == "shutoff"
    assert destination.state("sh1") == "running"
    assert image.read_bytes()[:11] == b"VKSHARED-77"


def test_destination_without_the_shared_pool_gets_the_disk_copied(
        netns_pair: tuple[DaemonHandle, DaemonHandle],  # noqa: F811
        shared_folder: Path, tmp_path: Path) -> None:
    """The pool is shared here only: --copy-storage-all copies the disk as usual."""
    source, destination = netns_pair
    _shared_pool(source, shared_folder / "vms", build=True)
    source.cli("vol-create-as", "shd", "c.qcow2", "8M", "--format", "qcow2")
    source.define("sh3", disks=[{"pool": "shd", "volume": "c.qcow2"}])
    source.client.post(source.client.domain_path("sh3", "/start"))
    source.wait_booted("sh3")
    source.console_run("sh3", "printf VKCOPY-5 | dd of=/dev/vda bs=512 count=1 conv=fsync "
                       "2>/dev/null; echo w-$((3+1))", "w-4")
    target = tmp_path / "copy.qcow2"
    result = _migrate(source, destination, "sh3", address=DESTINATION_IP,
                      copy_storage_all=True,
                      disk_paths={str(shared_folder / "vms" / "c.qcow2"): str(target)})
    assert result["copied_disks"] and result["shared_disks"] == []
    assert result["disk_bytes"] > 0 and target.exists()
