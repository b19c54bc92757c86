"""shared-dir pools (issue 18 item 3): the model, the backend, libvirt XML, and the
migration's copy plan leaving shared disks out (service/sharedstore.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import Conflict, InvalidSpec, NotFound
from virtkit.formats.libvirt_pool_xml import pool_from_xml, pool_to_xml
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.pool import Pool, PoolType
from virtkit.service import sharedstore
from virtkit.service.copyplan import copy_plan
from virtkit.storage.pools import backend_for
from virtkit.storage.shareddir import SharedDirPool


def test_shared_dir_is_a_shared_folder_pool(tmp_path: Path) -> None:
    pool = Pool(name="sh", type=PoolType.SHARED_DIR, target=str(tmp_path / "sh"))
    assert pool.shared and not Pool(name="d", target=str(tmp_path)).shared
    backend = backend_for(pool)
    assert isinstance(backend, SharedDirPool)
    backend.build()
    backend.create_volume("a.qcow2", 2**20, "qcow2")
    assert [v.name for v in backend.list_volumes()] == ["a.qcow2"]
    clone = backend.clone_volume("a.qcow2", "b.qcow2", linked=True)
    assert clone.backing == str(tmp_path / "sh" / "a.qcow2")


def test_shared_dir_build_needs_the_mounted_parent(tmp_path: Path) -> None:
    pool = Pool(name="sh", type=PoolType.SHARED_DIR, target=str(tmp_path / "nfs" / "vms"))
    with pytest.raises(NotFound, match="not mounted here"):
        backend_for(pool).build()


def test_shared_dir_round_trips_through_libvirt_xml(tmp_path: Path) -> None:
    pool = Pool(name="sh", type=PoolType.SHARED_DIR, target=str(tmp_path))
    text = pool_to_xml(pool)
    # libvirt's quotes outside <metadata>, libxml2's inside it
    assert 'type="shared-dir"' in text and "<pool type='dir'>" in text
    spec, warnings = pool_from_xml(text)
    assert (spec["type"], warnings) == ("shared-dir", [])


def _spec() -> Any:
    return load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [
        {"path": "/nfs/vms/a.qcow2", "format": "qcow2", "pool": "sh", "volume": "a.qcow2"},
        {"path": "/d/b.qcow2", "format": "qcow2"}]})


def test_copy_plan_leaves_shared_disks_out_and_keeps_their_volume() -> None:
    live = _spec()
    definition = dump_domain(live)
    copies, moved, stored = copy_plan(live, definition, {},
                                      frozenset({"/nfs/vms/a.qcow2"}))
    assert copies == [("disk1", "/d/b.qcow2")]
    assert (moved.disks[0].pool, moved.disks[0].volume) == ("sh", "a.qcow2")
    assert stored["disks"][0]["pool"] == "sh"
    with pytest.raises(InvalidSpec, match="shared pool"):
        copy_plan(live, definition, {"/nfs/vms/a.qcow2": "/e/a.qcow2"},
                  frozenset({"/nfs/vms/a.qcow2"}))


class _Storage:
    """What sharedstore asks of StorageService."""

    def __init__(self, volumes: dict[str, tuple[str, str, str]]) -> None:
        self.volumes = volumes

    def shared_volume(self, path: str) -> tuple[str, str, str] | None:
        return self.volumes.get(path)


class _Peer:
    def __init__(self, pools: dict[str, dict[str, Any]]) -> None:
        self.pools = pools

    async def pool(self, name: str) -> dict[str, Any]:
        if name not in self.pools:
            raise NotFound(f"pool {name!r} not found")
        return self.pools[name]


def test_a_disk_is_shared_only_when_the_destination_has_the_same_pool() -> None:
    storage: Any = _Storage({"/nfs/vms/a.qcow2": ("sh", "a.qcow2", "/nfs/vms")})
    live = _spec()
    same = {"sh": {"shared": True, "state": "active", "target": "/nfs/vms"}}
    for pools, expected in (
            (same, [{"path": "/nfs/vms/a.qcow2", "pool": "sh", "volume": "a.qcow2"}]),
            ({}, []),
            ({"sh": {**same["sh"], "target": "/elsewhere"}}, []),
            ({"sh": {**same["sh"], "shared": False}}, []),
            ({"sh": {**same["sh"], "state": "inactive"}}, [])):
        peer: Any = _Peer(pools)
        assert asyncio.run(sharedstore.shared_on_both(storage, peer, live)) == expected


def test_the_destination_checks_the_claim_against_its_own_pools() -> None:
    storage: Any = _Storage({"/nfs/vms/a.qcow2": ("sh", "a.qcow2", "/nfs/vms")})
    claim = [{"path": "/nfs/vms/a.qcow2", "pool": "sh", "volume": "a.qcow2"}]
    sharedstore.check_here(storage, claim)
    sharedstore.check_here(storage, None)
    with pytest.raises(Conflict, match="same shared-dir pool"):
        sharedstore.check_here(_Storage({}), claim)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        sharedstore.check_here(storage, [{**claim[0], "pool": "other"}])


# --- netfs pools and nfs:// disks ---------------------------------------------------


def test_netfs_pool_from_host_and_path_or_url() -> None:
    pool = Pool.model_validate({"name": "n", "type": "nfs", "source_host": "nas1",
                                "source_path": "/srv/vms/"})
    assert (pool.type, pool.target, pool.shared) == (PoolType.NETFS, "nfs://nas1/srv/vms", True)
    assert pool.netfs_source() == ("nas1", "/srv/vms")
    again = Pool.model_validate(pool.model_dump(mode="json"))
    assert again.target == pool.target
    by_url = Pool.model_validate({"name": "n", "type": "netfs", "target": "nfs://[fd00::1]/x"})
    assert (by_url.source_host, by_url.source_path) == ("fd00::1", "/x")
    for bad, why in (({"type": "netfs"}, "needs source_host"),
                     ({"type": "netfs", "target": "nfs://h/a/../b"}, "not an nfs://"),
                     ({"type": "netfs", "target": "nfs://h/a?uid=0"}, "not an nfs://"),
                     ({"type": "netfs", "source_host": "-o x", "source_path": "/a"},
                      "not a host name"),
                     ({"type": "netfs", "target": "nfs://h/a", "source_host": "g"},
                      "is not source_host"),
                     ({"type": "dir", "target": "/a", "source_host": "h"}, "netfs pools only")):
        with pytest.raises(ValueError, match=why):
            Pool.model_validate({"name": "n", **bad})


def test_a_disk_may_be_an_nfs_url_and_qemu_gets_an_nfs_blockdev() -> None:
    from virtkit.qemu.argv import blockdev_nodes

    domain = load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [
        {"path": "nfs://10.0.0.5/export/vms/a.qcow2", "format": "qcow2"}]})
    protocol, fmt = blockdev_nodes(domain.disks[0], "disk0")
    assert protocol == {"driver": "nfs", "server": {"type": "inet", "host": "10.0.0.5"},
                        "path": "/export/vms/a.qcow2", "user": 0, "group": 0,
                        "node-name": "file-disk0", "read-only": False,
                        "cache": {"direct": False, "no-flush": False}}
    assert (fmt["driver"], fmt["file"]) == ("qcow2", "file-disk0")
    for bad in ("nfs://h/a b", "nfs:///a", "nfs://h/a/../etc/shadow", "nfs://h/a#x"):
        with pytest.raises(InvalidSpec, match="nfs://SERVER/EXPORT/PATH"):
            load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [{"path": bad}]})


def test_nfs_disks_are_no_host_paths_and_remote_callers_name_them_as_volumes() -> None:
    from virtkit.errors import Forbidden
    from virtkit.host.pathpolicy import PathPolicy
    from virtkit.runtime import preflight

    url = "nfs://10.0.0.5/export/a.qcow2"
    domain = load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [{"path": url}]})
    assert preflight.guest_paths(domain) == []
    policy = PathPolicy("/nonexistent-root", ())
    assert preflight.check_paths(domain, policy, remote=False) == []
    with pytest.raises(Forbidden, match="netfs pool"):
        preflight.check_paths(domain, policy, remote=True)
    preflight.check_paths(domain, policy, remote=True, trusted=[url])
    as_volume = load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [
        {"path": url, "pool": "n", "volume": "a.qcow2"}]})
    preflight.check_paths(as_volume, policy, remote=True)


def test_qemu_img_gets_nfs_urls_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.storage import qemuimg

    seen: list[list[str]] = []
    monkeypatch.setattr(qemuimg, "_run", lambda argv, *a, **k: seen.append(argv))
    qemuimg.create("nfs://h/e/a.raw", "raw", 2**20)
    assert seen[-1][-2:] == ["nfs://h/e/a.raw", str(2**20)]
    assert qemuimg.image_file("nfs://h/e/a.raw") == "nfs://h/e/a.raw"


def test_libvirt_netfs_pool_xml_becomes_a_netfs_pool() -> None:
    text = ("<pool type='netfs'><name>nfs</name><source><host name='nas1'/>"
            "<dir path='/export/vms'/><format type='nfs'/></source>"
            "<target><path>/var/lib/libvirt/images/nfs</path></target></pool>")
    spec, warnings = pool_from_xml(text)
    assert warnings == []
    pool = Pool.model_validate(spec)
    assert (pool.type, pool.target) == (PoolType.NETFS, "nfs://nas1/export/vms")
    with pytest.raises(InvalidSpec, match="netfs pools are NFS"):
        pool_from_xml(text.replace("type='nfs'", "type='glusterfs'"))
