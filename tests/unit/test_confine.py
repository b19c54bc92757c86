"""Confinement bookkeeping: ACL encoding, grants and their release, the journal that
survives a daemon crash, uid choice and cgroup paths (runtime/confine.py,
runtime/ownership.py, host/cgroups.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from virtkit.errors import HostError
from virtkit.host import cgroups
from virtkit.model.load import load_domain
from virtkit.paths import StatePaths
from virtkit.runtime import confine, ownership
from virtkit.runtime.ownership import (
    MASK,
    OTHER,
    USER,
    USER_OBJ,
    AclEntry,
    acl_from_mode,
    decode_acl,
    encode_acl,
    with_user,
    without_user,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
UID = 6_512_345


def _acl_supported(path: Path) -> bool:
    probe = path / "probe"
    probe.touch()
    try:
        os.setxattr(probe, ownership.ACL_XATTR, encode_acl(
            with_user(acl_from_mode(0o600), UID, 4)))
    except OSError:
        return False
    return True


# -- the ACL format --------------------------------------------------------------------

def test_acl_round_trips_and_is_sorted_by_tag_then_id() -> None:
    entries = [AclEntry(OTHER, ownership.UNDEFINED_ID, 0), AclEntry(USER, 7, 4),
               AclEntry(USER_OBJ, ownership.UNDEFINED_ID, 6), AclEntry(USER, 3, 1)]
    raw = encode_acl(entries)
    assert raw[:4] == b"\x02\x00\x00\x00" and len(raw) == 4 + 8 * 4
    assert [(e.tag, e.id) for e in decode_acl(raw)] == [
        (USER_OBJ, ownership.UNDEFINED_ID), (USER, 3), (USER, 7),
        (OTHER, ownership.UNDEFINED_ID)]


def test_decode_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="malformed POSIX ACL"):
        decode_acl(b"\x02\x00\x00")
    with pytest.raises(ValueError, match="unknown POSIX ACL version"):
        decode_acl(b"\x01\x00\x00\x00")


def test_adding_a_user_sets_the_mask_and_removing_it_drops_the_mask() -> None:
    base = acl_from_mode(0o640)
    granted = with_user(base, UID, ownership.R)
    assert AclEntry(USER, UID, 4) in granted
    assert next(e.perm for e in granted if e.tag == MASK) == 4  # group r | user r
    again = with_user(granted, UID, ownership.X)
    assert AclEntry(USER, UID, 5) in again
    assert sorted(without_user(again, UID)) == sorted(base)


def test_removing_one_vm_keeps_another_vms_entry() -> None:
    both = with_user(with_user(acl_from_mode(0o600), UID, 4), UID + 1, 4)
    left = without_user(both, UID)
    assert [e.id for e in left if e.tag == USER] == [UID + 1]
    assert any(e.tag == MASK for e in left)


def test_mode_after_acl_removal_takes_group_bits_from_the_group_entry() -> None:
    entries = acl_from_mode(0o600)
    assert ownership.mode_after_acl_removal(0o640, entries) == 0o600
    assert ownership.mode_after_acl_removal(0o4750, acl_from_mode(0o750)) == 0o4750


# -- grants on real files ----------------------------------------------------------------

@root_only
def test_own_grant_chowns_and_release_restores_owner_and_mode(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    image.chmod(0o644)
    grant = ownership.plan(str(image), UID, UID, "own")
    assert grant.original == (0, 0, 0o644)
    ownership.apply(grant)
    st = os.stat(image)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o600)
    ownership.release(grant)
    st = os.stat(image)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)


@root_only
def test_release_leaves_a_file_another_vm_took_over(tmp_path: Path) -> None:
    """A migration's destination (another uid) owns the file now: the source's release
    must not take it away; the destination's release restores the true original."""
    image = tmp_path / "shared.img"
    image.write_bytes(b"x")
    image.chmod(0o640)
    source = ownership.plan(str(image), UID, UID, "own")
    ownership.apply(source)
    destination = ownership.plan(str(image), UID + 1, UID + 1, "own")
    assert destination.original == (0, 0, 0o640)  # from the xattr, not the source's uid
    ownership.apply(destination)
    ownership.release(source)
    assert os.stat(image).st_uid == UID + 1
    ownership.release(destination)
    st = os.stat(image)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)


@root_only
def test_read_grant_is_an_acl_entry_that_goes_without_a_trace(tmp_path: Path) -> None:
    if not _acl_supported(tmp_path):
        pytest.skip("no POSIX ACLs on this file system")
    iso = tmp_path / "cd.iso"
    iso.write_bytes(b"x")
    iso.chmod(0o600)
    grants = [ownership.Grant(str(iso), "read", UID, UID),
              ownership.Grant(str(iso), "read", UID + 1, UID + 1)]
    for grant in grants:
        ownership.apply(grant)
    named = [e for e in ownership.read_acl(str(iso)) if e.tag == USER]
    assert {(e.id, e.perm) for e in named} == {(UID, 4), (UID + 1, 4)}
    assert os.stat(iso).st_uid == 0
    ownership.release(grants[0])
    assert [e.id for e in ownership.read_acl(str(iso)) if e.tag == USER] == [UID + 1]
    ownership.release(grants[1])
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(iso, ownership.ACL_XATTR)
    assert stat.S_IMODE(os.stat(iso).st_mode) == 0o600


def test_traverse_grants_only_for_folders_others_cannot_enter(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    inner = closed / "open"
    inner.mkdir(parents=True)
    closed.chmod(0o700)
    inner.chmod(0o755)
    tmp_path.chmod(0o755)
    folders = [g.path for g in ownership.traverse_grants(str(inner / "f"), UID, UID)]
    assert str(closed) in folders
    assert str(inner) not in folders and str(tmp_path) not in folders
    assert all(g.kind == "exec" for g in ownership.traverse_grants(str(inner / "f"), UID, UID))


def test_grant_json_round_trip() -> None:
    grant = ownership.Grant("/x", "own", 1, 2, (0, 0, 0o644))
    assert ownership.Grant.from_json(grant.to_json()) == grant
    with pytest.raises(ValueError, match="unknown grant kind"):
        ownership.plan("/", 1, 1, "steal")


# -- the journal and reconcile --------------------------------------------------------------

@root_only
def test_reconcile_restores_a_dead_vms_files_and_keeps_a_live_ones(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.make()
    confiner = confine.Confiner(paths, enabled=True, cgroup_root=tmp_path / "nocgroup")
    images = {}
    for uuid in ("dead", "alive"):
        image = tmp_path / f"{uuid}.img"
        image.write_bytes(b"x")
        image.chmod(0o644)
        images[uuid] = image
        conf = confine.Confinement(uuid, UID, UID, [], confiner.journal(uuid))
        conf.grant([(str(image), "own")])
        assert os.stat(image).st_uid == UID
    # a new daemon: only the journal on disk remembers
    fresh = confine.Confiner(paths, enabled=True, cgroup_root=tmp_path / "nocgroup")
    notes = fresh.reconcile({"alive"})
    assert len(notes) == 1 and "dead" in notes[0]
    assert os.stat(images["dead"]).st_uid == 0
    assert stat.S_IMODE(os.stat(images["dead"]).st_mode) == 0o644
    assert not confiner.journal("dead").exists()
    assert os.stat(images["alive"]).st_uid == UID
    adopted = fresh.adopt("alive")
    assert adopted is not None and adopted.uid == UID
    fresh.release(adopted)
    assert os.stat(images["alive"]).st_uid == 0


def test_confiner_is_off_for_a_non_root_daemon_unless_asked(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    paths = StatePaths(tmp_path)
    assert not confine.Confiner(paths).enabled
    assert not confine.Confiner(paths, enabled=False).enabled


def test_unconfined_reason_names_a_9p_passthrough_share() -> None:
    domain = load_domain({"name": "v", "memory": 64, "filesystems": [
        {"source": "/srv", "target": "srv", "driver": "9p"}]})
    assert "passthrough" in (confine.unconfined_reason(domain) or "")
    mapped = load_domain({"name": "v", "memory": 64, "filesystems": [
        {"source": "/srv", "target": "srv", "driver": "9p", "accessmode": "mapped"}]})
    assert confine.unconfined_reason(mapped) is None
    vfio = load_domain({"name": "v", "memory": 64, "hostdevs": [{"address": "01:00.0"}]})
    assert "vfio" in (confine.unconfined_reason(vfio) or "")


# -- uids ---------------------------------------------------------------------------------

def test_uid_is_stable_per_instance_and_domain_and_inside_the_range() -> None:
    first = confine.uid_candidate("/var/lib/virtkit", "u1")
    assert first == confine.uid_candidate("/var/lib/virtkit", "u1")
    assert first != confine.uid_candidate("/tmp/other", "u1")
    assert confine.BASE_UID <= first < confine.BASE_UID + confine.UID_SPAN


def test_pick_uid_moves_on_while_the_candidate_is_taken() -> None:
    first = confine.uid_candidate("/r", "u")
    second = confine.uid_candidate("/r", "u", 1)
    assert confine.pick_uid("/r", "u", lambda uid: uid == first) == second
    assert confine.pick_uid("/r", "u", lambda uid: False) == first


def test_uids_in_use_reads_proc(tmp_path: Path) -> None:
    for pid, uid in (("10", 0), ("11", 6_500_001)):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (tmp_path / "self").mkdir()
    assert confine.uids_in_use(tmp_path) == {0, 6_500_001}


def test_cgroup_name_is_a_single_safe_path_component() -> None:
    name = confine.cgroup_name("/var/lib/virtkit", "0b6e5a55-0000-4000-8000-000000000001")
    assert "/" not in name and name.startswith("0b6e5a55-")
    assert name != confine.cgroup_name("/tmp/vk", "0b6e5a55-0000-4000-8000-000000000001")


# -- cgroups ------------------------------------------------------------------------------

def test_cgroup_version_from_the_tree(tmp_path: Path) -> None:
    assert cgroups.cgroup_version(tmp_path) is None
    (tmp_path / "memory").mkdir()
    assert cgroups.cgroup_version(tmp_path) == "v1"
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroups.cgroup_version(tmp_path) == "v2"


def test_group_dirs_v1_per_mounted_controller_and_v2_one_folder(tmp_path: Path) -> None:
    for controller in ("memory", "pids", "devices"):
        (tmp_path / controller).mkdir()
    assert cgroups.group_dirs(tmp_path, "v1", "vm") == {
        "memory": tmp_path / "memory/virtkit/vm", "pids": tmp_path / "pids/virtkit/vm",
        "devices": tmp_path / "devices/virtkit/vm"}
    assert cgroups.group_dirs(tmp_path, "v2", "vm") == {"": tmp_path / "virtkit/vm"}
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="bad cgroup name"):
            cgroups.group_dirs(tmp_path, "v2", bad)


def test_v1_group_writes_limits_and_the_device_allow_list(tmp_path: Path) -> None:
    for controller in ("memory", "pids", "cpu", "devices"):
        (tmp_path / controller).mkdir()
    limits = cgroups.Limits(memory_bytes=123, pids_max=77, cpu_weight=100,
                            devices=("c 1:3 rwm", "b 7:0 rw"))
    group = cgroups.Cgroup.create("vm", limits, tmp_path)
    assert (tmp_path / "memory/virtkit/vm/memory.limit_in_bytes").read_text() == "123"
    assert (tmp_path / "pids/virtkit/vm/pids.max").read_text() == "77"
    assert (tmp_path / "cpu/virtkit/vm/cpu.shares").read_text() == "1024"
    assert (tmp_path / "devices/virtkit/vm/devices.deny").read_text() == "a"
    # a plain file keeps only the last write; the kernel file appends each rule
    assert (tmp_path / "devices/virtkit/vm/devices.allow").read_text() == "b 7:0 rw"
    assert sorted(group.procs_files) == sorted(
        str(tmp_path / c / "virtkit/vm/cgroup.procs") for c in ("memory", "pids", "cpu",
                                                                "devices"))


def test_v2_group_sets_memory_max_and_enables_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids io\n")
    group = cgroups.Cgroup.create("vm", cgroups.Limits(memory_bytes=5, pids_max=9), tmp_path)
    assert (tmp_path / "virtkit/vm/memory.max").read_text() == "5"
    # io: blkiotune (io.weight, io.max) in the VM's group
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu +io"
    assert group.notes and "BPF" in group.notes[0]


def test_cgroup_creation_fails_cleanly_without_a_cgroup_fs(tmp_path: Path) -> None:
    with pytest.raises(HostError):
        cgroups.Cgroup.create("vm", cgroups.Limits(), tmp_path)


def test_memory_limit_is_generous() -> None:
    assert cgroups.memory_limit(256, tcg=False) == (256 + 64 + 512) * 2**20
    assert cgroups.memory_limit(1024, tcg=True) == (1024 + 256 + 512 + 1024) * 2**20


def test_block_device_rule_only_for_block_devices(tmp_path: Path) -> None:
    assert cgroups.block_device_rule(str(tmp_path)) is None
    assert cgroups.block_device_rule(str(tmp_path / "missing")) is None
    if os.path.exists("/dev/loop0"):
        assert cgroups.block_device_rule("/dev/loop0") == "b 7:0 rw"


@root_only
def test_a_folder_chmod_since_the_start_is_repaired_by_the_next_grant(tmp_path: Path) -> None:
    """chmod on a folder with an ACL resets its mask (pytest does it to its base folder):
    the VM's traversal right is gone until the next grant applies it again."""
    if not _acl_supported(tmp_path):
        pytest.skip("no POSIX ACLs on this file system")
    folder = tmp_path / "closed"
    folder.mkdir(mode=0o700)
    first, second = folder / "disk.img", folder / "overlay.qcow2"
    first.write_bytes(b"x")
    conf = confine.Confinement("u", UID, UID, [], tmp_path / "journal.json")
    conf.grant([(str(first), "own")])

    def mask() -> int:
        return next(e.perm for e in ownership.read_acl(str(folder)) if e.tag == MASK)

    assert mask() & ownership.X
    folder.chmod(0o700)
    assert mask() == 0
    second.write_bytes(b"y")
    conf.grant([(str(second), "own")])
    assert mask() & ownership.X
    conf.release_all()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(folder, ownership.ACL_XATTR)


def test_reconcile_removes_a_group_the_journal_never_named(tmp_path: Path) -> None:
    """A crash between making the cgroup and journalling it: the name is computed."""
    cgroup_root = tmp_path / "cg"
    (cgroup_root / "memory").mkdir(parents=True)
    paths = StatePaths(tmp_path / "state")
    paths.make()
    confiner = confine.Confiner(paths, enabled=False, cgroup_root=cgroup_root)
    confiner.journals.mkdir()
    confine.Confinement("u1", UID, UID, [], confiner.journal("u1")).save()
    name = confine.cgroup_name(str(paths.root), "u1")
    group = cgroup_root / "memory" / "virtkit" / name
    group.mkdir(parents=True)
    assert len(confiner.reconcile(set())) == 1
    assert not group.exists() and not confiner.journal("u1").exists()


# -- the check-to-change window: every change acts through a checked descriptor ----------

def _owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _swap_in(link: Path, target: Path) -> None:
    """What a local attacker racing the daemon does: the checked name becomes a link."""
    link.rename(link.with_name(link.name + ".moved"))
    link.symlink_to(target)


@root_only
@pytest.mark.parametrize("kind", ["own", "read"])
def test_a_link_swapped_in_after_the_check_is_not_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    if kind == "read" and not _acl_supported(tmp_path):
        pytest.skip("no POSIX ACLs on this file system")
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    image.chmod(0o600)
    victim = tmp_path / "victim"  # stands for /etc/shadow
    victim.write_bytes(b"secret")
    victim.chmod(0o640)
    grant = ownership.plan(str(image), UID, UID, kind)  # planned right after the check
    _swap_in(image, victim)  # the window between the check and the change
    with pytest.raises(ownership.PathChanged):
        ownership.apply(grant)
    assert _owner(victim) == (0, 0, 0o640)
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(victim, ownership.ACL_XATTR)
    # swapped back, and again while the change is under way: the descriptor opened
    # and checked before stays on the checked file, the link is never used
    image.unlink()
    (tmp_path / "disk.img.moved").rename(image)
    monkeypatch.setattr(ownership, "before_change", lambda _g: _swap_in(image, victim))
    ownership.apply(grant)
    assert _owner(victim) == (0, 0, 0o640)
    moved = tmp_path / "disk.img.moved"
    if kind == "own":
        assert _owner(moved) == (UID, UID, 0o600)
    else:
        assert UID in [e.id for e in ownership.read_acl(str(moved)) if e.tag == USER]


@root_only
def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(
        tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "disk.img").write_bytes(b"x")
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "disk.img").write_bytes(b"secret")
    (elsewhere / "disk.img").chmod(0o644)
    grant = ownership.plan(str(images / "disk.img"), UID, UID, "own")
    images.rename(tmp_path / "images.moved")  # a folder on the way becomes a link
    images.symlink_to(elsewhere)
    with pytest.raises(ownership.PathChanged):
        ownership.apply(grant)
    assert _owner(elsewhere / "disk.img") == (0, 0, 0o644)


@root_only
def test_another_file_or_a_fifo_in_its_place_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    grant = ownership.plan(str(image), UID, UID, "own")
    image.rename(tmp_path / "moved.img")
    image.write_bytes(b"other")  # same name, another inode
    image.chmod(0o644)
    with pytest.raises(ownership.PathChanged, match="replaced"):
        ownership.apply(grant)
    assert _owner(image) == (0, 0, 0o644)
    image.unlink()
    os.mkfifo(image)
    with pytest.raises(ownership.PathChanged, match="not a regular file"):
        ownership.apply(grant)
    assert os.lstat(image).st_uid == 0


@root_only
def test_release_does_not_follow_a_link_swapped_in_while_the_vm_ran(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    image.chmod(0o644)
    grant = ownership.plan(str(image), UID, UID, "own")
    ownership.apply(grant)
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret")
    os.chown(victim, UID, UID)  # a file the VM uid owns: release would chown it to root
    victim.chmod(0o600)
    _swap_in(image, victim)
    ownership.release(grant)  # logged, not raised: nothing is restored through the link
    assert _owner(victim) == (UID, UID, 0o600)
    assert _owner(tmp_path / "disk.img.moved")[0] == UID  # left to the administrator


def test_grants_journal_the_identity_they_act_on(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    grant = ownership.plan(str(image), UID, UID, "read")
    st = os.stat(image)
    assert grant.identity == (st.st_dev, st.st_ino)
    assert ownership.Grant.from_json(grant.to_json()) == grant
    old = {k: v for k, v in grant.to_json().items() if k != "identity"}  # older journals
    assert ownership.Grant.from_json(old).identity is None
