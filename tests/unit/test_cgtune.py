"""Resource limits onto cgroup files (runtime/cgtune.py): the v1 and v2 mappings, the
refusal when a file is missing, reading values back, on fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.errors import HostError, InvalidSpec
from virtkit.host.cgroups import Cgroup
from virtkit.model.tuning import UNLIMITED_KIB
from virtkit.runtime import cgtune


def test_v2_mapping_as_libvirt() -> None:
    writes = cgtune.cgroup_writes(
        "v2", {"shares": 2048, "period": 50000, "quota": 25000},
        {"hard_limit": 1048576, "soft_limit": 524288, "swap_hard_limit": 1572864},
        {"weight": 300}, {"io.weight"})
    assert writes == [("", "cpu.weight", str(cgtune.shares_to_weight(2048))),
                      ("", "cpu.max", "25000 50000"),
                      ("", "memory.max", str(1048576 * 1024)),
                      ("", "memory.high", str(524288 * 1024)),
                      ("", "memory.swap.max", str(524288 * 1024)),
                      ("", "io.weight", "default 300")]
    assert cgtune.shares_to_weight(1024) == 39 and cgtune.shares_to_weight(262144) == 10000
    assert cgtune.cgroup_writes("v2", {"quota": -1}, {}, {}, set()) == [
        ("", "cpu.max", "max 100000")]
    assert cgtune.cgroup_writes("v2", {}, {"hard_limit": UNLIMITED_KIB}, {}, set()) == [
        ("", "memory.max", "max")]
    # BFQ's own weight file is preferred when present
    assert cgtune.cgroup_writes("v2", {}, {}, {"weight": 300},
                                {"io.bfq.weight", "io.weight"}) == [
        ("", "io.bfq.weight", "300")]


def test_v1_mapping_as_libvirt() -> None:
    writes = cgtune.cgroup_writes(
        "v1", {"shares": 2048, "period": 50000, "quota": 25000},
        {"hard_limit": 1024, "soft_limit": UNLIMITED_KIB, "swap_hard_limit": 2048},
        {"weight": 300}, {"blkio/blkio.weight"})
    assert writes == [("cpu", "cpu.shares", "2048"), ("cpu", "cpu.cfs_period_us", "50000"),
                      ("cpu", "cpu.cfs_quota_us", "25000"),
                      ("memory", "memory.limit_in_bytes", str(1024 * 1024)),
                      ("memory", "memory.soft_limit_in_bytes", "-1"),
                      ("memory", "memory.memsw.limit_in_bytes", str(2048 * 1024)),
                      ("blkio", "blkio.weight", "300")]


def _v1_group(tmp_path: Path, files: dict[str, str]) -> Cgroup:
    dirs = {}
    for controller in ("cpu", "memory"):
        dirs[controller] = tmp_path / controller / "virtkit" / "vm"
        dirs[controller].mkdir(parents=True)
    for name, value in files.items():
        controller, file = name.split("/")
        (dirs[controller] / file).write_text(value)
    return Cgroup("v1", dirs)


def test_apply_writes_and_read_gives_them_back(tmp_path: Path) -> None:
    group = _v1_group(tmp_path, {"cpu/cpu.shares": "1024", "cpu/cpu.cfs_period_us": "100000",
                                 "cpu/cpu.cfs_quota_us": "-1",
                                 "memory/memory.limit_in_bytes": "9223372036854771712",
                                 "memory/memory.soft_limit_in_bytes": "9223372036854771712"})
    assert cgtune.read(group)["hard_limit"] == UNLIMITED_KIB
    written = cgtune.apply(group, "vm", {"shares": 512, "quota": 50000},
                           {"hard_limit": 2048}, {})
    assert len(written) == 3
    values = cgtune.read(group)
    assert (values["cpu_shares"], values["vcpu_quota"], values["hard_limit"]) == \
        (512, 50000, 2048)
    assert values["weight"] is None  # no blkio controller in this group


def test_a_missing_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    group = _v1_group(tmp_path, {"cpu/cpu.shares": "1024",
                                 "memory/memory.limit_in_bytes": "1"})
    with pytest.raises(HostError) as caught:
        cgtune.apply(group, "vm", {"shares": 512}, {"swap_hard_limit": 4096},
                     {"weight": 100})
    assert "memory/memory.memsw.limit_in_bytes" in caught.value.message
    assert "blkio/blkio.weight" in caught.value.message
    assert (group.dirs["cpu"] / "cpu.shares").read_text() == "1024"  # untouched


def test_no_cgroup_is_refused_naming_why() -> None:
    assert cgtune.apply(None, "vm", {}, {"hard_limit": None}, {}) == []  # nothing asked
    with pytest.raises(HostError, match="no cgroup"):
        cgtune.apply(None, "vm", {"shares": 512}, {}, {})


def test_v2_read(tmp_path: Path) -> None:
    folder = tmp_path / "virtkit" / "vm"
    folder.mkdir(parents=True)
    for name, value in {"cpu.weight": "79", "cpu.max": "25000 50000", "memory.max": "max",
                        "memory.high": str(2048 * 1024), "io.weight": "default 300"}.items():
        (folder / name).write_text(value + "\n")
    values = cgtune.read(Cgroup("v2", {"": folder}))
    assert values == {"cpu_shares": cgtune.weight_to_shares(79), "vcpu_period": 50000,
                      "vcpu_quota": 25000, "hard_limit": UNLIMITED_KIB, "soft_limit": 2048,
                      "swap_hard_limit": None, "weight": 300, "devices": {}}


def test_blkdeviotune_groups_replace_as_libvirt() -> None:
    from virtkit.errors import InvalidSpec
    from virtkit.service.limits import _merge

    old = {"total_bytes_sec": 10, "read_iops_sec": 5}
    merged = _merge(old, {"read_bytes_sec": 7})
    assert (merged.total_bytes_sec, merged.read_bytes_sec, merged.read_iops_sec) == \
        (None, 7, 5)
    with pytest.raises(InvalidSpec, match="cannot be combined"):
        _merge(None, {"total_iops_sec": 1, "read_iops_sec": 1})


def test_cli_sizes_and_flags() -> None:
    from virtkit.cli.limits import kib
    from virtkit.cli.main import build_parser

    assert (kib("1048576"), kib("2G"), kib("512M"), kib("-1")) == \
        (1048576, 2 * 1024**2, 512 * 1024, UNLIMITED_KIB)
    args = build_parser().parse_args(["blkdeviotune", "vm", "vda", "--total-iops-sec", "5",
                                      "--live"])
    assert (args.device, args.total_iops_sec, args.live) == ("vda", 5, True)
    args = build_parser().parse_args(["schedinfo", "vm", "--set", "cpu_shares=2",
                                      "--set", "vcpu_quota=-1", "--config"])
    assert args.set == ["cpu_shares=2", "vcpu_quota=-1"] and args.config


# -- blkiotune per device: v1 blkio files, v2 io.max / io.weight ---------------------------

def test_device_writes_on_v1_and_v2() -> None:
    blkio = {"devices": [{"dev": "8:0", "weight": 500, "read_bytes_sec": 1000,
                          "write_iops_sec": 0}]}
    assert cgtune.cgroup_writes("v1", {}, {}, blkio, {"blkio/blkio.weight_device"}) == [
        ("blkio", "blkio.weight_device", "8:0 500"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1000"),
        ("blkio", "blkio.throttle.write_iops_device", "8:0 0")]  # 0: the rule goes
    assert cgtune.cgroup_writes("v2", {}, {}, blkio, {"io.weight"}) == [
        ("", "io.weight", "8:0 500"), ("", "io.max", "8:0 rbps=1000 wiops=max")]
    removed = {"devices": [{"dev": "8:0", "weight": 0}]}
    assert cgtune.cgroup_writes("v2", {}, {}, removed, {"io.bfq.weight"}) == [
        ("", "io.bfq.weight", "8:0 default")]


def _v1_blkio(tmp_path: Path) -> Cgroup:
    group = _v1_group(tmp_path, {})
    group.dirs["blkio"] = tmp_path / "blkio" / "virtkit" / "vm"
    group.dirs["blkio"].mkdir(parents=True)
    for name in cgtune.V1_THROTTLE.values():  # this host's v1: throttles, no weight files
        (group.dirs["blkio"] / name).write_text("")
    return group


def test_v1_device_throttles_are_written_and_read_back(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(cgtune, "block_device_number", lambda path: "254:0")
    group = _v1_blkio(tmp_path)
    written = cgtune.apply(group, "vm", {}, {}, {"devices": [
        {"path": "/dev/vda", "read_bytes_sec": 1048576, "write_iops_sec": 50}]})
    assert written == [str(group.dirs["blkio"] / "blkio.throttle.read_bps_device"),
                       str(group.dirs["blkio"] / "blkio.throttle.write_iops_device")]
    assert (group.dirs["blkio"] / "blkio.throttle.read_bps_device").read_text() == \
        "254:0 1048576"
    assert cgtune.read(group)["devices"] == {"254:0": {"read_bytes_sec": 1048576,
                                                       "write_iops_sec": 50}}
    # no blkio.weight_device here (no BFQ/CFQ): a device weight is refused, saying why
    with pytest.raises(HostError) as caught:
        cgtune.apply(group, "vm", {}, {}, {"devices": [{"path": "/dev/vda", "weight": 500}]})
    assert "blkio/blkio.weight_device" in caught.value.message
    assert "BFQ" in caught.value.message


def test_a_missing_blkio_controller_is_named(tmp_path: Path) -> None:
    group = _v1_group(tmp_path, {})  # cpu and memory only: blkio not mounted
    with pytest.raises(HostError) as caught:
        cgtune.apply(group, "vm", {}, {}, {"weight": 300})
    assert "the blkio controller is not mounted" in caught.value.message


def test_a_device_must_be_a_block_device(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="not a block device"):
        cgtune.block_device_number("/dev/null")
    with pytest.raises(InvalidSpec, match="No such file"):
        cgtune.block_device_number(str(tmp_path / "nothing"))


def test_v2_device_lines_are_read() -> None:
    assert cgtune._v2_devices("default 100\n8:0 500\n", "8:0 rbps=100 wbps=max "
                              "riops=max wiops=7\n") == {
        "8:0": {"weight": 500, "read_bytes_sec": 100, "write_iops_sec": 7}}


def test_cli_device_options_in_virsh_syntax() -> None:
    from virtkit.cli.limits import device_values
    assert device_values("/dev/sda,500,/dev/sdb,0", "device_weights") == [
        ("/dev/sda", 500), ("/dev/sdb", 0)]
    with pytest.raises(InvalidSpec, match="PATH,VALUE"):
        device_values("/dev/sda", "device_weights")
