"""netfs pools through QEMU's libnfs (issue 18 item 3, docs/storage.md): a real
nfs-ganesha + rpcbind (tests/real/nfsserver.py) in a network namespace, daemons in the
same namespace.  No kernel NFS client anywhere: qemu-img and QEMU speak nfs:// and
libnfs lists, renames and removes."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, cleanup, start_daemon
from tests.real.nfsserver import NfsServer, nfs_server
from tests.real.test_migration import _migrate
from virtkit.cli.client import Client
from virtkit.images.tinyguest import TinyGuest
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu


@pytest.fixture
def nfs() -> Iterator[NfsServer]:
    if shutil.which("ganesha.nfsd") is None or shutil.which("rpcbind") is None:
        pytest.fail("nfs-ganesha, nfs-ganesha-vfs and rpcbind are test packages "
                    "(scripts/setup.sh test)")
    with nfs_server() as server:
        yield server


@pytest.fixture
def hosts(nfs: NfsServer, tiny_guest: TinyGuest) -> Iterator[list[DaemonHandle]]:
    """Two daemons in the NFS server's namespace (each reaches it at 127.0.0.1)."""
    handles: list[DaemonHandle] = []
    try:
        for _ in range(2):
            root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
            try:
                process = start_daemon(root, nfs.netns)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            handles.append(DaemonHandle(root, process, Client(state_paths(root), timeout=180),
                                        tiny_guest, netns=nfs.netns))
        yield handles
    finally:
        for handle in handles:
            cleanup(handle)


def _netfs_pool(host: DaemonHandle, nfs: NfsServer) -> None:
    host.cli("pool-define-as", "nfs1", "nfs", "--source-host", nfs.host,
             "--source-path", str(nfs.export))
    host.cli("pool-build", "nfs1")
    host.cli("pool-start", "nfs1")


def test_volumes_on_an_nfs_export(hosts: list[DaemonHandle], nfs: NfsServer,
                                  tmp_path: Path) -> None:
    host = hosts[0]
    _netfs_pool(host, nfs)
    info = json.loads(host.cli("pool-info", "nfs1", "--json").stdout)
    assert info["type"] == "netfs" and info["shared"] is True
    assert info["target"] == f"nfs://127.0.0.1{nfs.export}" and info["capacity"] > 0
    host.cli("vol-create-as", "nfs1", "a.qcow2", "16M", "--format", "qcow2")
    assert (nfs.export / "a.qcow2").read_bytes()[:4] == b"QFI\xfb"  # made on the server
    assert not list(nfs.export.glob(".*"))  # no staging temp left
    vol = json.loads(host.cli("vol-info", "a.qcow2", "--pool", "nfs1", "--json").stdout)
    assert (vol["path"], vol["format"], vol["capacity"]) == (
        f"nfs://127.0.0.1{nfs.export}/a.qcow2", "qcow2", 16 * 2**20)
    host.cli("vol-clone", "a.qcow2", "b.qcow2", "--pool", "nfs1")
    local = tmp_path / "seed.raw"
    local.write_bytes(b"SEED" + bytes(2**20 - 4))
    host.cli("vol-import", "nfs1", "c.raw", str(local), "--format", "raw")
    assert (nfs.export / "c.raw").read_bytes()[:4] == b"SEED"
    names = [v["name"] for v in json.loads(host.cli("vol-list", "nfs1", "--json").stdout)]
    assert names == ["a.qcow2", "b.qcow2", "c.raw"]
    again = host.cli("vol-create-as", "nfs1", "a.qcow2", "1M", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    for name in names:
        host.cli("vol-delete", name, "--pool", "nfs1")
    assert sorted(p.name for p in nfs.export.iterdir()) == []
    host.cli("pool-destroy", "nfs1")
    host.cli("pool-delete", "nfs1")  # the export stays: it is the server's
    assert nfs.export.is_dir()


def test_guest_on_an_nfs_volume_runs_and_migrates_without_copy(
        hosts: list[DaemonHandle], nfs: NfsServer) -> None:
    source, destination = hosts
    for host in hosts:
        _netfs_pool(host, nfs)
    source.cli("vol-create-as", "nfs1", "g.raw", "8M", "--format", "raw")
    source.define("nf1", disks=[{"pool": "nfs1", "volume": "g.raw"}])
    source.client.post(source.client.domain_path("nf1", "/start"))
    source.wait_booted("nf1")
    source.console_run("nf1", "printf VKNFS-4242 | dd of=/dev/vda bs=512 count=1 "
                       "conv=fsync 2>/dev/null; echo w-$((1+1))", "w-2")
    assert (nfs.export / "g.raw").read_bytes()[:10] == b"VKNFS-4242"

    result = _migrate(source, destination, "nf1", persistent=True, undefine_source=True,
                      copy_storage_all=True)
    assert result["destination"]["state"] == "running"
    assert result["copied_disks"] == [] and result["disk_bytes"] == 0
    assert result["shared_disks"] == [f"nfs://127.0.0.1{nfs.export}/g.raw"]
    out = destination.console_run("nf1", "head -c 10 /dev/vda; echo; printf VKNFS-AFTER | "
                                  "dd of=/dev/vda bs=512 seek=1 count=1 conv=fsync "
                                  "2>/dev/null; echo w-$((2+1))", "w-3")
    assert "VKNFS-4242" in out
    assert (nfs.export / "g.raw").read_bytes()[512:523] == b"VKNFS-AFTER"
