"""rbd pools (issue 18 items 3 and 6) without a Ceph: the rbd:// URL rule, the pool
model, libvirt pool and disk XML, QEMU's rbd blockdev, qemu-img's name for an image,
and storage fencing's decisions against a fake rbd/ceph command
(tests/real/test_rbd_pool.py runs the same against a real one-node Ceph)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound
from virtkit.formats.libvirt_pool_xml import pool_from_xml, pool_to_xml
from virtkit.formats.libvirt_xml import domain_from_xml, domain_to_xml
from virtkit.model.domain import Domain
from virtkit.model.load import load_domain
from virtkit.model.netdisk import parse_rbd_url, rbd_blockdev
from virtkit.model.pool import Pool, PoolType
from virtkit.qemu.argv import blockdev_nodes
from virtkit.service import clusterha, storagefence
from virtkit.storage import qemuimg, rbd, rbdfence
from virtkit.storage.pools import backend_for
from virtkit.storage.rbd import RbdPool

URL = "rbd://libvirt@10.0.0.1:6789,[fd00::2]:3300,mon3:6789/vms/web-root"


# -- the URL and the pool model ------------------------------------------------------


def test_rbd_urls_parse_into_monitors_pool_image_and_user() -> None:
    ref = parse_rbd_url(URL)
    assert ref.monitors == (("10.0.0.1", 6789), ("fd00::2", 3300), ("mon3", 6789))
    assert (ref.pool, ref.image, ref.user) == ("vms", "web-root", "libvirt")
    assert ref.url == URL
    assert parse_rbd_url("rbd://127.0.0.1/rbd/x").monitors == (("127.0.0.1", 6789),)


@pytest.mark.parametrize("bad", ["rbd://mon/pool/a/b", "rbd://mon/pool/..", "rbd://mon",
                                 "rbd://mon/pool/x?conf=/etc/passwd", "rbd://mon:99999/p/x",
                                 "rbd://a:b@mon/p/x", "rbd://mon/p/x:id=admin"])
def test_rbd_urls_that_would_smuggle_options_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"is not an rbd://|out of range"):
        parse_rbd_url(bad)


def test_an_rbd_pool_is_made_from_monitors_pool_and_user_and_is_shared() -> None:
    pool = Pool.model_validate({"name": "ceph", "type": "rbd", "source_hosts":
                                ["10.0.0.1", "mon2:3300"], "source_name": "vms",
                                "auth_username": "admin"})
    assert pool.target == "rbd://admin@10.0.0.1:6789,mon2:3300/vms"
    assert pool.source_hosts == ["10.0.0.1:6789", "mon2:3300"]
    assert pool.shared and pool.type is PoolType.RBD
    assert isinstance(backend_for(pool), RbdPool)
    # the stored form loads back to the same pool; a target alone gives the fields
    assert Pool.model_validate(pool.model_dump(mode="json")) == pool
    short = Pool.model_validate({"name": "c", "type": "rbd", "target": "rbd://127.0.0.1/rbd"})
    assert (short.target, short.source_hosts, short.source_name) == \
        ("rbd://127.0.0.1:6789/rbd", ["127.0.0.1:6789"], "rbd")


@pytest.mark.parametrize(("spec", "match"), [
    ({"source_hosts": ["m"]}, "needs source_hosts"),
    ({"source_hosts": ["m"], "source_name": "p", "target": "rbd://other/p"}, "is not"),
    ({"target": "rbd://m/p/image"}, "names an image"),
    ({"source_hosts": ["m"], "source_name": "p", "auth_secret_uuid":
      "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"}, "needs auth_username"),
    ({"source_hosts": ["m"], "source_name": "p", "source_path": "/x"}, "no source"),
])
def test_rbd_pools_refuse_what_does_not_fit(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pool.model_validate({"name": "c", "type": "rbd", **spec})


def test_rbd_fields_belong_to_rbd_pools_only(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="belong to rbd pools only"):
        Pool.model_validate({"name": "d", "target": str(tmp_path), "source_name": "vms"})


# -- libvirt pool XML --------------------------------------------------------------------

POOL_XML = """<pool type='rbd'>
  <name>ceph</name>
  <uuid>8f8f5d6e-4f8b-4a53-8b5a-4f0b8b8e7c11</uuid>
  <source>
    <name>vms</name>
    <host name='mon1' port='6789'/>
    <host name='10.0.0.2'/>
    <auth type='ceph' username='libvirt'>
      <secret uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/>
    </auth>
  </source>
</pool>"""


def test_libvirt_rbd_pool_xml_is_read_and_written_back() -> None:
    spec, warnings = pool_from_xml(POOL_XML)
    assert warnings == []
    pool = Pool.model_validate(spec)
    assert pool.target == "rbd://libvirt@mon1:6789,10.0.0.2:6789/vms"
    assert pool.auth_secret_uuid == "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"
    text = pool_to_xml(pool)
    assert "<pool type='rbd'>" in text and "<host name='10.0.0.2' port='6789'/>" in text
    assert "<auth type='ceph' username='libvirt'>" in text
    assert Pool.model_validate(pool_from_xml(text)[0]) == pool


@pytest.mark.parametrize(("change", "where"), [
    (("<secret uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/>", "<secret usage='x'/>"),
     "secret@usage"),
    (("type='ceph' username", "type='chap' username"), "auth@type"),
    (("</source>", "</source><target><path>/x</path></target>"), "target"),
    (("<name>vms</name>", "<name>vms</name><config opt='a' value='b'/>"), "config"),
])
def test_libvirt_rbd_pool_xml_refuses_what_virtkit_cannot_keep(change: tuple[str, str],
                                                               where: str) -> None:
    with pytest.raises(InvalidSpec, match=where):
        pool_from_xml(POOL_XML.replace(*change))


# -- domains: libvirt network disks, QEMU's blockdev, qemu-img ---------------------------

DISK_XML = """<domain type='kvm'><name>r1</name><memory unit='MiB'>64</memory><devices>
<disk type='network' device='disk'><driver name='qemu' type='raw'/>
<auth username='libvirt'><secret type='ceph' uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth>
<source protocol='rbd' name='vms/r1-disk'><host name='10.0.0.1' port='6789'/><host name='mon2'/>
</source><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def test_libvirt_rbd_network_disks_are_read_and_written() -> None:
    spec, warnings = domain_from_xml(DISK_XML)
    assert warnings == []
    assert spec["disks"][0]["path"] == "rbd://libvirt@10.0.0.1:6789,mon2:6789/vms/r1-disk"
    text = domain_to_xml(Domain.model_validate(spec))
    assert "<disk type='network' device='disk'>" in text
    assert "<source protocol='rbd' name='vms/r1-disk'>" in text
    assert "<host name='mon2' port='6789'/>" in text and "<auth username='libvirt'/>" in text
    again, _ = domain_from_xml(text)
    assert again["disks"][0]["path"] == spec["disks"][0]["path"]


def test_a_volume_disk_on_an_rbd_pool_is_written_as_a_network_disk() -> None:
    domain = load_domain({"name": "m", "memory": 64, "disks": [
        {"pool": "ceph", "volume": "a", "path": "rbd://127.0.0.1:6789/rbd/a",
         "format": "raw"}]})
    text = domain_to_xml(domain)
    assert "<source protocol='rbd' name='rbd/a'>" in text and "volume=" not in text


@pytest.mark.parametrize(("change", "where"), [
    (("protocol='rbd'", "protocol='iscsi'"), "protocol"),
    (("<host name='10.0.0.1' port='6789'/><host name='mon2'/>", ""), "host"),
    (("name='vms/r1-disk'", "name='vms'"), "POOL/IMAGE"),
])
def test_other_network_disks_are_refused_by_location(change: tuple[str, str],
                                                     where: str) -> None:
    with pytest.raises(InvalidSpec, match=where):
        domain_from_xml(DISK_XML.replace(*change))


def test_libvirt_nfs_network_disks_become_nfs_urls() -> None:
    text = DISK_XML.replace("protocol='rbd' name='vms/r1-disk'",
                            "protocol='nfs' name='/export/r1.raw'").replace(
        "<host name='10.0.0.1' port='6789'/><host name='mon2'/>", "<host name='nfs1'/>")
    text = text.replace("<auth username='libvirt'><secret type='ceph' uuid="
                        "'2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth>", "")
    spec, _ = domain_from_xml(text)
    assert spec["disks"][0]["path"] == "nfs://nfs1/export/r1.raw"


def test_an_rbd_disk_reaches_qemu_as_an_rbd_blockdev() -> None:
    disk = load_domain({"name": "m", "memory": 64, "disks": [
        {"path": URL, "format": "raw"}]}).disks[0]
    protocol, fmt = blockdev_nodes(disk, "disk0")
    assert protocol == {
        "driver": "rbd", "pool": "vms", "image": "web-root", "user": "libvirt",
        "server": [{"host": "10.0.0.1", "port": "6789"}, {"host": "fd00::2", "port": "3300"},
                   {"host": "mon3", "port": "6789"}],
        "auth-client-required": ["cephx"], "node-name": "file-disk0",
        "cache": {"direct": False, "no-flush": False}, "read-only": False,
        "discard": "unmap"}
    assert fmt["file"] == "file-disk0" and fmt["driver"] == "raw"
    anonymous = rbd_blockdev(parse_rbd_url("rbd://127.0.0.1/rbd/a"))
    assert anonymous["auth-client-required"] == ["none"] and "user" not in anonymous


def test_a_disk_path_naming_a_ceph_pool_only_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="names a Ceph pool"):
        load_domain({"name": "m", "memory": 64, "disks": [{"path": "rbd://m/rbd"}]})


def test_qemu_img_opens_rbd_images_through_json_options() -> None:
    name = qemuimg.image_file("rbd://127.0.0.1/rbd/a")
    assert name.startswith("json:")
    assert json.loads(name[5:]) == {"file": {
        "driver": "rbd", "pool": "rbd", "image": "a",
        "server": [{"host": "127.0.0.1", "port": "6789"}], "auth-client-required": ["none"]}}


# -- the backend's refusals (no Ceph needed) ---------------------------------------------


def _backend() -> RbdPool:
    return RbdPool(Pool.model_validate({"name": "ceph", "type": "rbd",
                                        "target": "rbd://127.0.0.1/rbd"}))


@pytest.mark.parametrize(("call", "match"), [
    (lambda b: b.create_volume("a", 2**20, "qcow2"), "raw rbd image"),
    (lambda b: b.create_volume("a", 2**20, "raw", prealloc=True), "preallocated"),
    (lambda b: b.clone_volume("a", "b", fmt="qcow2"), "raw rbd image"),
    (lambda b: b.import_volume("a", "/x.vmdk", "qcow2"), "raw rbd image"),
])
def test_what_rbd_cannot_do_is_refused_before_ceph_is_asked(call: Any, match: str,
                                                           monkeypatch: Any) -> None:
    monkeypatch.setattr(rbd, "run", _no_ceph)
    with pytest.raises(InvalidSpec, match=match):
        call(_backend())


def _no_ceph(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("Ceph was asked")


def test_the_rbd_command_gets_monitors_and_auth_on_its_command_line() -> None:
    args = rbd.client_args(parse_rbd_url("rbd://admin@10.0.0.1,[::1]:3300/rbd"))
    assert args[args.index("--mon-host") + 1] == "10.0.0.1:6789,[::1]:3300"
    assert args[args.index("--id") + 1] == "admin"
    anonymous = rbd.client_args(parse_rbd_url("rbd://10.0.0.1/rbd"))
    assert anonymous[anonymous.index("--auth-client-required") + 1] == "none"


@pytest.mark.parametrize(("stderr", "error"), [
    ("rbd: error opening image nope: (2) No such file or directory", NotFound),
    ("rbd: create error: (17) File exists", Conflict),
    ("rbd: error: image still has watchers", Conflict),
    ("2026-12-06T17:34:13.281+0000 7fc128622d00 -1 auth: noise\nrbd: oops (5) I/O", HostError),
])
def test_rbd_command_errors_become_virtkit_errors(stderr: str, error: type,
                                                  monkeypatch: Any) -> None:
    import subprocess

    def fake(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", stderr)
    monkeypatch.setattr(rbd.subprocess, "run", fake)
    with pytest.raises(error) as caught:
        rbd.run("rbd", parse_rbd_url("rbd://m/rbd"), "info", "rbd/x", what="volume 'x'")
    assert "noise" not in str(caught.value) and "volume 'x'" in str(caught.value)


# -- storage fencing ---------------------------------------------------------------------


@dataclass
class FakeCeph:
    """The rbd/ceph commands the fence runs, against one image's clients."""

    watchers: list[str]
    locks: list[dict[str, str]]
    blocklist_fails: bool = False
    newcomer: str | None = None

    def __post_init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.blocklisted: set[str] = set()

    def run(self, tool: str, ref: Any, *args: str, what: str, **_: Any) -> Any:
        self.calls.append((tool, *args))
        if args[:3] == ("osd", "blocklist", "add"):
            if self.blocklist_fails:
                raise HostError(f"{what}: Error EACCES: access denied")
            self.blocklisted.add(args[3])
            self.watchers = [w for w in self.watchers if w not in self.blocklisted]
        elif args[:2] == ("lock", "rm"):
            self.locks = [lk for lk in self.locks if lk["id"] != args[3]]
        return None

    def run_json(self, tool: str, ref: Any, *args: str, what: str) -> Any:
        self.calls.append((tool, *args))
        if args[0] == "status":
            watchers = self.watchers + ([self.newcomer] if self.newcomer and
                                        self.blocklisted else [])
            return {"watchers": [{"address": w} for w in watchers]}
        return self.locks


def _fake(monkeypatch: Any, ceph: FakeCeph) -> FakeCeph:
    monkeypatch.setattr(rbdfence, "run", ceph.run)
    monkeypatch.setattr(rbdfence, "run_json", ceph.run_json)
    return ceph


OLD = "10.0.0.7:0/2981824472"
LOCK = {"id": "auto 140703598384320", "locker": "client.4129", "address": OLD}


def test_the_fence_blocklists_every_client_then_breaks_the_lock(monkeypatch: Any) -> None:
    ceph = _fake(monkeypatch, FakeCeph([OLD], [dict(LOCK)]))
    fenced = rbdfence.fence_image(parse_rbd_url("rbd://m/rbd/a"))
    assert fenced.to_dict() == {"image": "rbd/a", "blocklisted": [OLD],
                                "locks_broken": ["client.4129"]}
    order = [c[:3] for c in ceph.calls if c[0] == "ceph" or c[1:3] == ("lock", "rm")]
    assert order == [("ceph", "osd", "blocklist"), ("rbd", "lock", "rm")]
    assert ("ceph", "osd", "blocklist", "add", OLD, str(rbdfence.BLOCKLIST_SECONDS)) \
        in ceph.calls


def test_a_fence_that_cannot_blocklist_fails_naming_the_image(monkeypatch: Any) -> None:
    _fake(monkeypatch, FakeCeph([OLD], [dict(LOCK)], blocklist_fails=True))
    with pytest.raises(HostError, match=r"rbd image rbd/a failed.*not started.*EACCES"):
        rbdfence.fence_image(parse_rbd_url("rbd://m/rbd/a"))


def test_a_client_that_opens_the_image_during_the_fence_fails_it(monkeypatch: Any) -> None:
    _fake(monkeypatch, FakeCeph([OLD], [], newcomer="10.0.0.9:0/1"))
    with pytest.raises(HostError, match=r"still held.*10\.0\.0\.9:0/1"):
        rbdfence.fence_image(parse_rbd_url("rbd://m/rbd/a"))


def test_only_writable_rbd_disks_are_fenced_once_per_image(monkeypatch: Any) -> None:
    spec = {"disks": [{"path": "rbd://m/rbd/a"}, {"path": "rbd://m/rbd/ro", "readonly": True},
                      {"path": "/var/lib/x.qcow2"}, {"path": "rbd://n:3300/rbd/a"}]}
    refs = rbdfence.rbd_disks(spec, ["rbd://m/rbd/b"])
    assert [(r.pool, r.image) for r in refs] == [("rbd", "a"), ("rbd", "b")]
    ceph = _fake(monkeypatch, FakeCeph([], []))
    assert asyncio.run(storagefence.fence_storage(None, "vm", {"disks": [
        {"path": "/var/lib/x.qcow2"}]})) == []
    assert ceph.calls == []


# -- the HA restart path fences before it starts, and gives the VM back when it cannot --


class _Vms:
    def __init__(self, started: list[str]) -> None:
        self.started = started
        self.domains = self
        self.storage = None
        self.cluster = self

    store = property(lambda self: self)

    def find_domain(self, uuid: str) -> Any:
        return object()

    async def start(self, uuid: str) -> None:
        self.started.append(uuid)


def _orphan() -> Any:
    from virtkit.cluster.ha import Orphan
    return Orphan("u1", "web", {"name": "web", "ha": True, "disks": [
        {"path": "rbd://m/rbd/web", "format": "raw"}]}, "hostA", {"uuid": "u1"}, 7)


@pytest.mark.parametrize("fence_ok", [True, False])
def test_ha_restart_fences_rbd_disks_first(fence_ok: bool, monkeypatch: Any) -> None:
    from virtkit.cluster import ha, placement
    events: list[str] = []

    async def look(etcd: Any) -> Any:
        return ha.View([_orphan()], {"me": {}}, [])

    async def claim(*args: Any) -> bool:
        events.append("claim")
        return True

    async def unclaim(*args: Any) -> None:
        events.append("unclaim")

    async def fence(storage: Any, name: str, spec: dict[str, Any]) -> list[Any]:
        events.append("fence")
        if not fence_ok:
            raise HostError("storage fence of rbd image rbd/web failed")
        return []

    monkeypatch.setattr(ha, "look", look)
    monkeypatch.setattr(ha, "claim", claim)
    monkeypatch.setattr(ha, "unclaim", unclaim)
    monkeypatch.setattr(placement, "choose", lambda *a: type("C", (), {"name": "me"})())
    monkeypatch.setattr(placement, "candidates", lambda *a: [])
    monkeypatch.setattr(clusterha, "fence_storage", fence)
    started: list[str] = []
    recovery = clusterha.HaRecovery(_Vms(started))  # type: ignore[arg-type]
    done = asyncio.run(recovery._take_orphans(object(), "me", 1))  # type: ignore[arg-type]
    if fence_ok:
        assert (events, started, done) == (["claim", "fence"], ["u1"], ["web"])
    else:
        assert (events, started, done) == (["claim", "fence", "unclaim"], [], [])


# -- an rbd disk counts as shared storage (migration's copy plan, HA) --------------------


def test_an_rbd_volume_is_found_as_a_shared_volume(tmp_path: Any) -> None:
    from virtkit.service.storage import StorageService
    from virtkit.store.db import Store
    store = Store(tmp_path / "state.db")
    pool = Pool.model_validate({"name": "ceph", "type": "rbd", "source_hosts": ["127.0.0.1"],
                                "source_name": "rbd"})
    row = store.insert_pool(pool.uuid, pool.name, pool.model_dump(mode="json"))
    store.update_pool(row.uuid, state="active")
    storage = StorageService.__new__(StorageService)
    storage._store = store  # locate and shared_volume read the store only
    path = "rbd://127.0.0.1:6789/rbd/web"
    assert storage.locate(path) == ("ceph", "web")
    assert storage.shared_volume(path) == ("ceph", "web", "rbd://127.0.0.1:6789/rbd")
    assert storage.locate("rbd://127.0.0.1:6789/other/web") is None
    assert storage.pool_files() == []  # no host files to scan for backing chains
