"""virsh schedinfo, memtune, blkiotune, blkdeviotune against a real confined QEMU: the
values land in the cgroup files of the running QEMU (v1 or v2, whichever the host has)
and, for blkdeviotune, in QEMU's own throttle (query-block)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle

pytestmark = pytest.mark.qemu

GIB_KIB = 1024 * 1024


def _cgroup_file(daemon: DaemonHandle, name: str, controller: str, file: str) -> str:
    folders = [Path(p) for p in daemon.info(name)["security"]["cgroup"]]
    for folder in folders:
        if (folder / file).exists() and (len(folders) == 1
                                         or f"/{controller}/" in str(folder)):
            return (folder / file).read_text().strip()
    raise AssertionError(f"no {file} in {folders}")


@pytest.fixture(scope="module")
def lim(module_daemon: DaemonHandle, tmp_path_factory: pytest.TempPathFactory
        ) -> DaemonHandle:
    """A running tiny guest 'lim' defined with limits and a throttled raw disk."""
    disk = tmp_path_factory.mktemp("lim") / "lim.raw"
    with open(disk, "wb") as image:
        image.truncate(16 * 2**20)
    module_daemon.define("lim", memory=128, cputune={"shares": 2048},
                         memtune={"hard_limit": 2 * GIB_KIB},
                         disks=[{"path": str(disk), "format": "raw",
                                 "iotune": {"total_bytes_sec": 10_000_000}}])
    module_daemon.cli("start", "lim")
    module_daemon.wait_booted("lim")
    if not daemon_has_cgroup(module_daemon, "lim"):
        pytest.skip("the test daemon's QEMU has no cgroup here")
    return module_daemon


def daemon_has_cgroup(daemon: DaemonHandle, name: str) -> bool:
    security = daemon.info(name).get("security") or {}
    return bool(security.get("cgroup"))


def _v2(daemon: DaemonHandle) -> bool:
    return len(daemon.info("lim")["security"]["cgroup"]) == 1


def test_start_applies_the_spec_limits(lim: DaemonHandle) -> None:
    if _v2(lim):
        assert _cgroup_file(lim, "lim", "cpu", "cpu.weight") == "79"
        assert _cgroup_file(lim, "lim", "memory", "memory.max") == str(2 * 2**30)
    else:
        assert _cgroup_file(lim, "lim", "cpu", "cpu.shares") == "2048"
        assert _cgroup_file(lim, "lim", "memory", "memory.limit_in_bytes") == str(2 * 2**30)
    shown = lim.cli("blkdeviotune", "lim", "vda").stdout
    assert "total_bytes_sec: 10000000" in shown, shown  # query-block of the running QEMU


def test_schedinfo_live_and_config(lim: DaemonHandle) -> None:
    out = lim.cli("schedinfo", "lim").stdout
    assert out.splitlines()[:4] == ["Scheduler  : posix", "cpu_shares : 2048",
                                    "vcpu_period: 100000", "vcpu_quota : -1"], out
    lim.cli("schedinfo", "lim", "--set", "cpu_shares=512", "--set", "vcpu_quota=50000",
            "--live")
    if _v2(lim):
        assert _cgroup_file(lim, "lim", "cpu", "cpu.max") == "50000 100000"
    else:
        assert _cgroup_file(lim, "lim", "cpu", "cpu.shares") == "512"
        assert _cgroup_file(lim, "lim", "cpu", "cpu.cfs_quota_us") == "50000"
    stored = json.loads(lim.cli("schedinfo", "lim", "--config", "--json").stdout)
    assert stored["cpu_shares"] == 2048 and stored["live"] is False  # --live only
    lim.cli("schedinfo", "lim", "--set", "vcpu_period=200000", "--config")
    assert "<period>200000</period>" in lim.cli("dumpxml", "lim").stdout
    bad = lim.cli("schedinfo", "lim", "--set", "cpu_shares=1", check=False)
    assert bad.returncode == 1 and "out of range" in bad.stderr, bad.stderr


def test_memtune_live_and_config(lim: DaemonHandle) -> None:
    lim.cli("memtune", "lim", "--soft-limit", "512M", "--live")
    file = "memory.high" if _v2(lim) else "memory.soft_limit_in_bytes"
    assert _cgroup_file(lim, "lim", "memory", file) == str(512 * 2**20)
    lim.cli("memtune", "lim", "--hard-limit", "3G", "--config")
    xml = lim.cli("dumpxml", "lim").stdout
    assert "<hard_limit unit=\"KiB\">3145728</hard_limit>" in xml.replace("'", '"'), xml
    out = lim.cli("memtune", "lim").stdout
    assert "hard_limit     : 2097152" in out and "soft_limit     : 524288" in out, out


def test_blkiotune_sets_or_names_the_missing_controller(lim: DaemonHandle) -> None:
    result = lim.cli("blkiotune", "lim", "--weight", "500", "--live", check=False)
    if result.returncode == 0:
        assert "weight" in result.stdout and "500" in result.stdout
    else:  # a host whose QEMU group has no blkio/io weight says so, changes nothing
        assert "weight" in result.stderr and "has no" in result.stderr, result.stderr
    lim.cli("blkiotune", "lim", "--weight", "400", "--config")
    assert "<weight>400</weight>" in lim.cli("dumpxml", "lim").stdout


def test_blkdeviotune_live_and_config(lim: DaemonHandle) -> None:
    lim.cli("blkdeviotune", "lim", "vda", "--total-bytes-sec", "0",
            "--read-iops-sec", "100", "--write-iops-sec", "50", "--live")
    live = json.loads(lim.cli("blkdeviotune", "lim", "vda", "--json").stdout)
    assert (live["read_iops_sec"], live["write_iops_sec"], live["total_bytes_sec"]) == \
        (100, 50, 0)
    stored = json.loads(lim.cli("blkdeviotune", "lim", "vda", "--config", "--json").stdout)
    assert stored["total_bytes_sec"] == 10_000_000 and stored["read_iops_sec"] == 0
    lim.cli("blkdeviotune", "lim", "vda", "--write-bytes-sec", "2000000", "--config")
    assert "<write_bytes_sec>2000000</write_bytes_sec>" in lim.cli("dumpxml", "lim").stdout
    bad = lim.cli("blkdeviotune", "lim", "vdz", check=False)
    assert bad.returncode == 1 and "no disk 'vdz'" in bad.stderr, bad.stderr
    both = lim.cli("blkdeviotune", "lim", "vda", "--total-iops-sec", "5",
                   "--read-iops-sec", "5", "--live", check=False)
    assert both.returncode == 1 and "cannot be combined" in both.stderr, both.stderr


def _block_device() -> tuple[str, str]:
    """(path, MAJ:MIN) of a disk of this host for the per-device limits (any will do:
    the cgroup files take rules for every block device)."""
    for entry in sorted(Path("/sys/block").iterdir()):
        if entry.name.startswith(("loop", "ram", "zram", "dm-", "sr")):
            continue
        node = Path("/dev") / entry.name
        if node.is_block_device():
            return str(node), (entry / "dev").read_text().strip()
    pytest.skip("no disk block device on this host")


def _device_rules(daemon: DaemonHandle, name: str) -> str:
    """Every per-device blkio/io rule of the QEMU's group, as the kernel lists them."""
    files = ["io.max"] if _v2(daemon) else [
        "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
        "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"]
    return "\n".join(f"{file}: {_cgroup_file(daemon, name, 'blkio', file)}"
                     for file in files)


def test_blkiotune_device_throttles_live_config_and_at_start(lim: DaemonHandle) -> None:
    path, dev = _block_device()
    lim.cli("blkiotune", "lim", "--device-read-bytes-sec", f"{path},1048576",
            "--device-write-iops-sec", f"{path},50", "--live")
    rules = _device_rules(lim, "lim")
    if _v2(lim):
        assert f"{dev} rbps=1048576 wbps=max riops=max wiops=50" in rules, rules
    else:  # this host: cgroup v1 blkio, the VM's own group
        assert f"read_bps_device: {dev} 1048576" in rules, rules
        assert f"write_iops_device: {dev} 50" in rules, rules
    shown = lim.cli("blkiotune", "lim").stdout
    assert f"device_read_bytes_sec : {path},1048576" in shown, shown
    assert f"device_write_iops_sec : {path},50" in shown, shown
    lim.cli("blkiotune", "lim", "--device-write-iops-sec", f"{path},0", "--live")
    assert f"{dev} 50" not in _device_rules(lim, "lim")  # 0 removes the rule
    assert f"{dev} 1048576" in _device_rules(lim, "lim") or _v2(lim)  # the other stays

    weight = lim.cli("blkiotune", "lim", "--device-weights", f"{path},500", "--live",
                     check=False)
    if weight.returncode:  # no BFQ/CFQ weight files (this host): said, nothing changed
        assert "weight_device" in weight.stderr or "io.weight" in weight.stderr
        assert "BFQ" in weight.stderr, weight.stderr

    lim.cli("blkiotune", "lim", "--device-write-bytes-sec", f"{path},2097152", "--config")
    xml = lim.cli("dumpxml", "lim").stdout.replace("'", '"')
    assert f"<device><path>{path}</path><write_bytes_sec>2097152</write_bytes_sec>" \
        in xml.replace("\n", "").replace(" ", ""), xml
    stored = json.loads(lim.cli("blkiotune", "lim", "--config", "--json").stdout)
    assert stored["device_write_bytes_sec"] == f"{path},2097152"

    # stored in the spec, applied at start
    lim.define("blk", memory=128, blkiotune={"devices": [
        {"path": path, "read_iops_sec": 77, "write_bytes_sec": 3000000}]})
    lim.cli("start", "blk")
    try:
        rules = _device_rules(lim, "blk")
        if _v2(lim):
            assert f"{dev} rbps=max wbps=3000000 riops=77 wiops=max" in rules, rules
        else:
            assert f"read_iops_device: {dev} 77" in rules, rules
            assert f"write_bps_device: {dev} 3000000" in rules, rules
        bad = lim.cli("blkiotune", "blk", "--device-read-iops-sec", "/dev/null,5",
                      "--live", check=False)
        assert bad.returncode == 1 and "not a block device" in bad.stderr, bad.stderr
    finally:
        lim.cli("destroy", "blk")
