"""blockcopy's pure parts: the copy plan (what is created, how QEMU syncs, every
refusal) and the CLI's reading of DEST / --dest / --xml and the options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from virtkit.cli.blockjobs import copy_destination
from virtkit.cli.main import build_parser
from virtkit.errors import Conflict, InvalidSpec, NotFound
from virtkit.runtime.blockcopy import Destination, Existing, plan_copy

MiB = 1024 * 1024
CHAIN = [("/i/top.qcow2", "snap-1", "qcow2"), ("/i/base.qcow2", "drive-disk0", "qcow2")]
ALONE = [("/i/disk.qcow2", "drive-disk0", "qcow2")]


def test_new_file_full_copy_takes_the_disks_format_and_size() -> None:
    plan = plan_copy(CHAIN, 32 * MiB, Destination("/c/copy.qcow2"), None, shallow=False)
    assert (plan.format, plan.size, plan.sync, plan.create) == ("qcow2", 32 * MiB, "full",
                                                                 True)
    assert plan.backing_file is None and plan.backing_node is None
    raw = plan_copy(ALONE, MiB, Destination("/c/copy.raw", "raw"), None, shallow=False)
    assert raw.format == "raw" and raw.sync == "full"


def test_shallow_copy_is_backed_by_the_disks_backing_node() -> None:
    plan = plan_copy(CHAIN, MiB, Destination("/c/copy.qcow2"), None, shallow=True)
    assert plan.sync == "top"
    assert (plan.backing_file, plan.backing_format, plan.backing_node) == \
        ("/i/base.qcow2", "qcow2", "drive-disk0")
    # a disk without a backing image: a shallow copy is a full one
    assert plan_copy(ALONE, MiB, Destination("/c/c.qcow2"), None, shallow=True).sync == "full"
    with pytest.raises(InvalidSpec, match="must be qcow2"):
        plan_copy(CHAIN, MiB, Destination("/c/copy.raw", "raw"), None, shallow=True)


def test_an_existing_destination_needs_reuse_external() -> None:
    there = Existing("qcow2", MiB, None)
    with pytest.raises(Conflict, match=r"already exists.*never writes over"):
        plan_copy(ALONE, MiB, Destination("/c/x.qcow2"), there, shallow=False)
    plan = plan_copy(ALONE, MiB, Destination("/c/x.qcow2", reuse=True), there, shallow=False)
    assert plan.create is False and plan.format == "qcow2"
    with pytest.raises(NotFound, match="does not exist"):
        plan_copy(ALONE, MiB, Destination("/c/x.qcow2", reuse=True), None, shallow=False)
    with pytest.raises(InvalidSpec, match="same size"):
        plan_copy(ALONE, 2 * MiB, Destination("/c/x.qcow2", reuse=True), there, shallow=False)
    backed = Existing("qcow2", MiB, "/elsewhere.qcow2")
    with pytest.raises(InvalidSpec, match="has a backing file"):
        plan_copy(ALONE, MiB, Destination("/c/x.qcow2", reuse=True), backed, shallow=False)
    with pytest.raises(InvalidSpec, match=r"must be backed by /i/base\.qcow2"):
        plan_copy(CHAIN, MiB, Destination("/c/x.qcow2", reuse=True), backed, shallow=True)
    good = Existing("qcow2", MiB, "/i/base.qcow2")
    assert plan_copy(CHAIN, MiB, Destination("/c/x.qcow2", reuse=True), good,
                     shallow=True).sync == "top"


def test_block_devices_are_never_created_and_default_to_raw() -> None:
    device = Existing("raw", MiB, None, block=True)
    plan = plan_copy(ALONE, MiB, Destination("/dev/loop7", blockdev=True), device,
                     shallow=False)
    assert plan.format == "raw" and plan.create is False
    with pytest.raises(NotFound, match="block device /dev/loop7 does not exist"):
        plan_copy(ALONE, MiB, Destination("/dev/loop7", blockdev=True), None, shallow=False)
    with pytest.raises(InvalidSpec, match="not a block device"):
        plan_copy(ALONE, MiB, Destination("/c/f", blockdev=True), Existing("raw", MiB, None),
                  shallow=False)


def test_the_disks_own_images_and_other_domains_images_are_refused() -> None:
    with pytest.raises(InvalidSpec, match="image of the disk itself"):
        plan_copy(CHAIN, MiB, Destination("/i/base.qcow2", reuse=True),
                  Existing("qcow2", MiB, None), shallow=False)
    with pytest.raises(Conflict, match="image of running domain 'other'"):
        plan_copy(ALONE, MiB, Destination("/c/o.qcow2", reuse=True),
                  Existing("qcow2", MiB, None), shallow=False,
                  used_by=["running domain 'other'"])
    with pytest.raises(InvalidSpec, match="format 'vmdk'"):
        plan_copy(ALONE, MiB, Destination("/c/o.vmdk", "vmdk"), None, shallow=False)


def _args(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(["blockcopy", *words])


def test_cli_reads_dest_forms_and_options() -> None:
    args = _args("vm", "vda", "/c/copy.qcow2", "--wait", "--pivot", "--verbose",
                 "--bandwidth", "5", "--shallow", "--reuse-external", "--timeout", "30")
    assert copy_destination(args) == {"dest": "/c/copy.qcow2", "pool": None, "format": None,
                                      "blockdev": False}
    assert args.pivot and args.shallow and args.reuse_external and args.timeout == 30
    args = _args("vm", "vda", "--dest", "copy.qcow2", "--pool", "default", "--raw",
                 "--finish", "--async", "--bytes", "--bandwidth", "1048576")
    assert copy_destination(args) == {"dest": "copy.qcow2", "pool": "default",
                                      "format": "raw", "blockdev": False}
    assert _args("vm", "vda", "/dev/sdz", "--blockdev").blockdev
    with pytest.raises(InvalidSpec, match="one destination"):
        copy_destination(_args("vm", "vda"))
    with pytest.raises(InvalidSpec, match="one destination"):
        copy_destination(_args("vm", "vda", "/a", "--dest", "/b"))


def test_cli_reads_a_libvirt_disk_xml(tmp_path: Path) -> None:
    xml = tmp_path / "d.xml"
    xml.write_text("<disk type='file'><source file='/c/x.qcow2'/>"
                   "<driver name='qemu' type='qcow2'/></disk>")
    assert copy_destination(_args("vm", "vda", "--xml", str(xml))) == {
        "dest": "/c/x.qcow2", "pool": None, "format": "qcow2", "blockdev": False}
    xml.write_text("<disk type='volume'><source pool='default' volume='v.raw'/></disk>")
    assert copy_destination(_args("vm", "vda", "--xml", str(xml), "--raw")) == {
        "dest": "v.raw", "pool": "default", "format": "raw", "blockdev": False}
    xml.write_text("<disk type='block'><source dev='/dev/sdz'/></disk>")
    assert copy_destination(_args("vm", "vda", "--xml", str(xml)))["blockdev"] is True
    xml.write_text("<disk><target dev='vdb'/></disk>")
    with pytest.raises(InvalidSpec, match="expected <disk> with a <source>"):
        copy_destination(_args("vm", "vda", "--xml", str(xml)))
    xml.write_text("<disk")
    with pytest.raises(InvalidSpec, match="cannot read the disk XML"):
        copy_destination(_args("vm", "vda", "--xml", str(xml)))
