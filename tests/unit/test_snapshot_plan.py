"""The pure parts of snapshots: planning, chain merges, ordering, the store table, CLI tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from virtkit.cli.snapshots import _memspec, _tree
from virtkit.errors import Conflict, InvalidSpec
from virtkit.model.domain import Disk, DiskDevice
from virtkit.model.snapshot import (
    check_name,
    descendants,
    on_image,
    overlay_name,
    plan_create,
    plan_delete,
)
from virtkit.store.db import SnapshotRow, Store

QCOW = Disk(path="/img/a.qcow2", format="qcow2")
RAW = Disk(path="/img/b.img", format="raw")
CDROM = Disk(path="/iso/x.iso", device=DiskDevice.CDROM, format="raw")
RO = Disk(path="/img/ro.qcow2", format="qcow2", readonly=True)


def _plan(disks: list[Disk], *, running: bool = True, kind: str | None = None,
          disk_only: bool = False, memspec: str | None = None,
          existing: set[str] | None = None) -> tuple[str, bool, list[str]]:
    targets = [f"vd{chr(97 + i)}" for i in range(len(disks))]
    plan = plan_create(disks, targets, running=running, kind=kind,  # type: ignore[arg-type]
                       disk_only=disk_only, memspec=memspec, existing_kinds=existing or set())
    return plan.kind, plan.memory, [d.mode for d in plan.disks]


def test_default_is_internal_with_memory_when_every_disk_is_qcow2() -> None:
    assert _plan([QCOW, CDROM, RO]) == ("internal", True, ["internal", "skipped", "skipped"])
    assert _plan([QCOW], running=False) == ("internal", False, ["internal"])
    assert _plan([QCOW], disk_only=True) == ("internal", False, ["internal"])


def test_default_is_external_disk_only_when_a_disk_is_not_qcow2() -> None:
    assert _plan([QCOW, RAW]) == ("external", False, ["external", "external"])
    assert _plan([QCOW], kind="external") == ("external", True, ["external"])
    assert _plan([QCOW], kind="external", running=False) == ("external", False, ["external"])
    assert _plan([QCOW], memspec="/m") == ("external", True, ["external"])


def test_internal_on_a_raw_disk_names_the_fix() -> None:
    with pytest.raises(InvalidSpec) as error:
        _plan([QCOW, RAW], kind="internal")
    assert "vdb" in error.value.message and "--disk-only" in str(error.value.fix)


def test_refusals() -> None:
    with pytest.raises(InvalidSpec):
        _plan([CDROM, RO])  # nothing to snapshot
    with pytest.raises(Conflict):
        _plan([QCOW], kind="internal", existing={"external"})
    with pytest.raises(InvalidSpec):
        _plan([QCOW], kind="internal", memspec="/m")
    with pytest.raises(InvalidSpec):
        _plan([QCOW], kind="external", disk_only=True, memspec="/m")


@pytest.mark.parametrize("name", ["s1", "before-upgrade", "v1.2+x", "A_b"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "-x", "a b", "a/b", "x" * 65, "é", "current"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidSpec):
        check_name(name)


def test_overlay_names_are_free_and_follow_the_original_image() -> None:
    assert overlay_name("/d/data.qcow2", "s1", set()) == "/d/data.s1.qcow2"
    taken = {"/d/data.s1.qcow2", "/d/data.s1.1.qcow2"}
    assert overlay_name("/d/data.qcow2", "s1", taken) == "/d/data.s1.2.qcow2"


def test_delete_in_the_middle_merges_the_single_reader_down() -> None:
    # base <- o1 (frozen by the deleted one) <- o2 (frozen by s3) <- o3 (active)
    readers: dict[str, str | None] = {"/o3": "/o2", "/o2": "/o1", "/base": None}
    step = plan_delete("/o1", readers, ours=True)
    assert (step.action, step.child) == ("merge", "/o2")


def test_delete_keeps_a_branch_point_and_drops_what_nothing_reads() -> None:
    readers: dict[str, str | None] = {"/top": "/o1", "/o2": "/o1"}  # a branch at o1
    assert plan_delete("/o1", readers, ours=True).action == "keep"
    assert plan_delete("/o1", {"/top": "/base"}, ours=True).action == "drop"
    assert plan_delete("/base", {"/top": "/o9"}, ours=False).action == "keep"


def test_descendants_deepest_first() -> None:
    parents = {"a": None, "b": "a", "c": "b", "d": "a", "e": None}
    below = descendants(parents, "a")
    assert set(below) == {"b", "c", "d"} and below[0] == "c"
    assert descendants(parents, "e") == []


def test_on_image_drops_the_pool_volume_reference() -> None:
    disk = Disk(pool="default", volume="v.qcow2", path="/p/v.qcow2", format="qcow2")
    moved = on_image(disk, "/p/v.s1.qcow2", "qcow2")
    assert (moved.path, moved.pool, moved.volume) == ("/p/v.s1.qcow2", None, None)


def test_cli_tree_and_memspec() -> None:
    snaps: list[dict[str, Any]] = [{"name": "a", "parent": None}, {"name": "b", "parent": "a"},
             {"name": "c", "parent": "a"}, {"name": "d", "parent": "b"}]
    assert _tree(snaps) == ["a", "|", "+- b", "|  |", "|  +- d", "+- c"]
    assert _memspec("file=/x/m,snapshot=external") == "/x/m"
    assert _memspec("/x/m") == "/x/m"
    with pytest.raises(InvalidSpec):
        _memspec("nonsense")


def _row(domain: str, name: str, parent: str | None, current: bool = True) -> SnapshotRow:
    return SnapshotRow(domain, name, parent, 1.0, "internal", False, "shutoff", current, {})


def test_store_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.insert_domain("u1", "vm", {"name": "vm"})
    store.insert_snapshot(_row("u1", "a", None))
    store.insert_snapshot(_row("u1", "b", "a"))
    store.insert_snapshot(_row("u1", "c", "b"))
    assert [s.name for s in store.list_snapshots("u1") if s.current] == ["c"]
    with pytest.raises(Conflict):
        store.insert_snapshot(_row("u1", "a", None))
    store.delete_snapshot("u1", "b")
    found = store.find_snapshot("u1", "c")
    assert found is not None and found.parent == "a"
    store.set_current_snapshot("u1", None)
    assert not any(s.current for s in store.list_snapshots("u1"))
    store.delete_domain("u1")
    assert store.list_snapshots("u1") == []
    store.close()
