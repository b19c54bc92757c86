"""Pools and volumes through the daemon: virsh's pool-*/vol-* flows end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle
from virtkit.cli.client import ApiError
from virtkit.cli.streaming import open_stream, send_file

pytestmark = pytest.mark.qemu


def _pool(daemon: DaemonHandle, name: str, target: Path, kind: str = "dir") -> None:
    daemon.cli("pool-define-as", name, kind, "--target", str(target))
    daemon.cli("pool-build", name)
    daemon.cli("pool-start", name)


def test_default_pool_exists_and_is_active(daemon: DaemonHandle) -> None:
    pools = json.loads(daemon.cli("pool-list", "--json").stdout)
    default = next(p for p in pools if p["name"] == "default")
    assert default["state"] == "active" and default["autostart"] is True
    assert default["target"] == str(daemon.root / "images")
    assert default["capacity"] > default["available"] > 0


def test_classic_kvm_vm_and_iso_pools(daemon: DaemonHandle, tmp_path: Path) -> None:
    _pool(daemon, "kvm-vm", tmp_path / "kvm-vm")
    _pool(daemon, "iso", tmp_path / "iso", "iso")
    out = daemon.cli("vol-create-as", "kvm-vm", "test01.qcow2", "10G", "--format",
                     "qcow2").stdout
    assert "Vol test01.qcow2 created" in out
    info = json.loads(daemon.cli("vol-info", "test01.qcow2", "--pool", "kvm-vm",
                                 "--json").stdout)
    assert (info["format"], info["capacity"]) == ("qcow2", 10 * 1024**3)
    assert info["path"] == str(tmp_path / "kvm-vm" / "test01.qcow2")
    iso = tmp_path / "debian.iso"
    with open(iso, "wb") as out:  # 16 empty sectors, then a primary volume descriptor
        out.write(b"\0" * 32768 + b"\x01CD001\x01\x00" + b" " * 32
                  + b"DEBIAN 12 NETINST".ljust(32) + b"\0" * (2048 - 72) + b"\0" * 4096)
    daemon.cli("vol-upload", "debian.iso", str(iso), "--pool", "iso")
    media = daemon.cli("vol-list", "iso", "--details").stdout
    assert "Label" in media and "DEBIAN 12 NETINST" in media
    table = daemon.cli("pool-list", "--all", "--details").stdout
    assert "kvm-vm" in table and "iso" in table
    listing = daemon.cli("vol-list", "kvm-vm", "--details").stdout
    assert "test01.qcow2" in listing and "qcow2" in listing


def test_disk_by_volume_boots_and_protects_the_volume(daemon: DaemonHandle,
                                                      tmp_path: Path) -> None:
    daemon.cli("vol-create-as", "default", "vm.qcow2", "64M")
    info = daemon.define("voluser", disks=[{"pool": "default", "volume": "vm.qcow2"}])
    disk = info["disks"][0]
    assert (disk["pool"], disk["volume"], disk["format"]) == ("default", "vm.qcow2", "qcow2")
    assert disk["path"] == str(daemon.root / "images" / "vm.qcow2")
    daemon.client.post(daemon.client.domain_path("voluser", "/start"))
    daemon.wait_booted("voluser")
    assert "VIRTKIT-DISK vda 67108864" in daemon.console_log("voluser")
    # a volume a running domain uses grows live (test_blockcopy.py checks the guest)
    daemon.cli("vol-resize", "vm.qcow2", "128M", "--pool", "default")
    for command in (("vol-wipe", "vm.qcow2"), ("vol-delete", "vm.qcow2", "--force")):
        result = daemon.cli(*command, "--pool", "default", check=False)
        assert result.returncode == 1
        assert "in use by running domain(s) voluser" in result.stderr
    daemon.client.post(daemon.client.domain_path("voluser", "/destroy"))
    result = daemon.cli("vol-delete", "vm.qcow2", "--pool", "default", check=False)
    assert result.returncode == 1 and "used by domain(s) voluser" in result.stderr
    assert (daemon.root / "images" / "vm.qcow2").exists()
    volumes = json.loads(daemon.cli("vol-list", "default", "--json").stdout)
    assert volumes[0]["used_by"] == ["voluser"]


def test_backing_file_is_protected_and_linked_clone(daemon: DaemonHandle) -> None:
    daemon.cli("vol-create-as", "default", "base.qcow2", "1G")
    daemon.cli("vol-clone", "base.qcow2", "child.qcow2", "--pool", "default", "--linked")
    child = json.loads(daemon.cli("vol-info", "child.qcow2", "--pool", "default",
                                  "--json").stdout)
    assert child["backing"] and child["backing"].endswith("base.qcow2")
    result = daemon.cli("vol-delete", "base.qcow2", "--pool", "default", check=False)
    assert result.returncode == 1 and "backing file of default/child.qcow2" in result.stderr
    daemon.cli("vol-delete", "child.qcow2", "--pool", "default")
    daemon.cli("vol-delete", "base.qcow2", "--pool", "default")


def test_upload_download_and_import_with_progress(daemon: DaemonHandle,
                                                  tmp_path: Path) -> None:
    payload = tmp_path / "payload.raw"
    payload.write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB
    daemon.cli("vol-upload", "up.raw", str(payload), "--pool", "default")
    stored = daemon.root / "images" / "up.raw"
    assert stored.read_bytes() == payload.read_bytes()
    assert not list((daemon.root / "images").glob(".*partial"))
    back = tmp_path / "back.raw"
    daemon.cli("vol-download", "up.raw", str(back), "--pool", "default")
    assert back.read_bytes() == payload.read_bytes()
    _streamed_and_by_descriptor(daemon, payload, tmp_path)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", str(payload), str(vmdk)], check=True)
    result = daemon.cli("vol-import", "default", "fromvmdk.qcow2", str(vmdk))
    assert "fromvmdk.qcow2 created" in result.stdout
    info = json.loads(daemon.cli("vol-info", "fromvmdk.qcow2", "--pool", "default",
                                 "--json").stdout)
    assert info["format"] == "qcow2" and info["capacity"] == 8 * 1024 * 1024
    compare = subprocess.run(["qemu-img", "compare", "-q", str(payload), info["path"]])
    assert compare.returncode == 0


def _streamed_and_by_descriptor(daemon: DaemonHandle, payload: Path, tmp_path: Path) -> None:
    """Both transfer paths: bytes streamed over the socket (remote clients, daemons that
    cannot take a descriptor), and the local one where the daemon copies from our fd."""
    data = payload.read_bytes()
    volumes = "/v1/pools/default/volumes"
    with open(payload, "rb") as source:
        result = send_file(daemon.client, "PUT", f"{volumes}/streamed.raw/upload", source,
                           len(data), lambda _sent: None)
    assert result["uploaded"] == len(data)
    assert (daemon.root / "images" / "streamed.raw").read_bytes() == data
    with open_stream(daemon.client, "GET", f"{volumes}/streamed.raw/download") as response:
        assert response.read() == data
    with open(payload, "rb") as source:
        result = daemon.client.post(f"{volumes}/byfd.raw/upload-fd", {"fd": source.fileno()})
    assert result["uploaded"] == len(data)
    assert (daemon.root / "images" / "byfd.raw").read_bytes() == data
    target = tmp_path / "byfd.out"
    with open(target, "wb") as out:
        daemon.client.post(f"{volumes}/byfd.raw/download-fd", {"fd": out.fileno()})
    assert target.read_bytes() == data
    # The duplicate keeps our open mode: a write-only file cannot be an upload source,
    # a read-only one cannot receive a download, and a closed number is refused.
    with open(tmp_path / "wo", "wb") as write_only, pytest.raises(ApiError) as refused:
        daemon.client.post(f"{volumes}/nope.raw/upload-fd", {"fd": write_only.fileno()})
    assert "not opened for reading" in refused.value.message
    with open(payload, "rb") as read_only, pytest.raises(ApiError) as refused:
        daemon.client.post(f"{volumes}/byfd.raw/download-fd", {"fd": read_only.fileno()})
    assert "not opened for writing" in refused.value.message
    with pytest.raises(ApiError) as refused:
        daemon.client.post(f"{volumes}/nope.raw/upload-fd", {"fd": 987654})
    assert "no open file descriptor 987654" in refused.value.message
    assert not (daemon.root / "images" / "nope.raw").exists()
    assert target.read_bytes() == data


def test_bad_storage_requests(daemon: DaemonHandle, tmp_path: Path) -> None:
    for name in ("../escape.qcow2", "a/b", ".hidden"):
        with pytest.raises(ApiError) as excinfo:
            daemon.client.post("/v1/pools/default/volumes", {"name": name, "capacity": "1M"})
        assert excinfo.value.http_status == 400 and "not allowed" in excinfo.value.message
    daemon.cli("vol-create-as", "default", "dup.qcow2", "1M")
    result = daemon.cli("vol-create-as", "default", "dup.qcow2", "1M", check=False)
    assert result.returncode == 1 and "exists" in result.stderr
    garbage = tmp_path / "garbage.vdi"
    garbage.write_bytes(b"not a vdi at all" * 100)
    result = daemon.cli("vol-import", "default", "bad.qcow2", str(garbage), check=False)
    assert result.returncode == 1
    assert not (daemon.root / "images" / "bad.qcow2").exists()
    assert not list((daemon.root / "images").glob(".*"))
    _pool(daemon, "full", tmp_path / "full")
    daemon.cli("vol-create-as", "full", "x.raw", "1M", "--format", "raw")
    daemon.cli("pool-destroy", "full")
    result = daemon.cli("pool-delete", "full", check=False)
    assert result.returncode == 1 and "volume" in result.stderr
    assert (tmp_path / "full" / "x.raw").exists()
    result = daemon.cli("vol-list", "full", check=False)
    assert result.returncode == 1 and "not active" in result.stderr


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 4 MiB tmpfs, so a pool can fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_leaves_no_partial_volume(daemon: DaemonHandle, tmp_path: Path,
                                            small_fs: Path) -> None:
    _pool(daemon, "tiny", small_fs / "pool")
    big = tmp_path / "big.raw"
    big.write_bytes(b"\x5a" * 8 * 1024 * 1024)
    result = daemon.cli("vol-upload", "big.raw", str(big), "--pool", "tiny", check=False)
    assert result.returncode == 1
    assert "No space left" in result.stderr and "nothing was changed" in result.stderr
    result = daemon.cli("vol-import", "tiny", "big.qcow2", str(big), check=False)
    assert result.returncode == 1
    assert list((small_fs / "pool").iterdir()) == []
