"""Ownership across a migration between two cluster hosts (api/forward.py ``_finish``,
service/clustervms.py, cluster/vms.py :func:`take_over`): the keys move in one txn on
the destination before it defines (offline) or resumes (live) the VM, and the source
drops its copy only after that finish succeeded.  Real etcd-server; fake daemons (a
store of rows, a finish handler that defines the VM)."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from virtkit.api import forward
from virtkit.cluster import vms
from virtkit.cluster.etcd import Etcd
from virtkit.errors import Conflict
from virtkit.service.clustervms import ClusterVms

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd-server")

UUID = "0b1c2d3e-0000-4000-8000-000000000001"


class _Store:
    """A host's domains: uuid -> spec (all shut off)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def _row(self, uuid: str) -> Any:
        spec = self.rows[uuid]
        return SimpleNamespace(uuid=uuid, name=spec["name"], spec=spec)

    def find_domain(self, ref: str) -> Any:
        for uuid, spec in self.rows.items():
            if ref in (uuid, spec["name"]):
                return self._row(uuid)
        return None

    def get_runtime(self, _uuid: str) -> Any:
        return SimpleNamespace(state="shutoff")

    def all_runtime(self) -> dict[str, Any]:
        return {}

    def list_domains(self) -> list[Any]:
        return [self._row(uuid) for uuid in self.rows]


def _host(etcd: Etcd, name: str, lease: int) -> ClusterVms:
    store = _Store()

    async def undefine(uuid: str) -> None:
        store.rows.pop(uuid, None)

    cluster = SimpleNamespace(etcd=etcd, host_name=name,
                              agent=SimpleNamespace(lease=lease, name=name), store=store)
    return ClusterVms(cluster, SimpleNamespace(undefine=undefine))  # type: ignore[arg-type]


def _spec() -> dict[str, Any]:
    return {"name": "web", "uuid": UUID, "memory": {"current": 256}, "vcpus": {"current": 1}}


async def _b_and_c(etcd: Etcd) -> tuple[ClusterVms, ClusterVms]:
    b = _host(etcd, "b", await etcd.lease_grant(30))
    c = _host(etcd, "c", await etcd.lease_grant(30))
    b.cluster.store.rows[UUID] = _spec()
    await b.defined(UUID)  # b's VM in the cluster: name, spec, owner on b's lease
    return b, c


async def _offline_migrate(b: ClusterVms, c: ClusterVms,
                           finish: Callable[[], Awaitable[web.Response]]) -> None:
    """What the source does: the destination's finish (through its cluster
    middleware), then --undefinesource only when that succeeded; then both hosts'
    background loops run (they release the names of VMs a host no longer has)."""
    c.offline_incoming = lambda migration: migration == UUID

    async def handler(_request: web.Request) -> web.Response:
        await c.adopt_once()  # the destination's loop runs before its define: not gone
        return await finish()

    request = make_mocked_request("POST", f"/v1/migrations/{UUID}/finish")
    try:
        response = await forward._finish(request, handler, c, UUID)
        ok = response.status < 300
    except Conflict:
        ok = False
    if ok:
        await b.domains.undefine(UUID)
    for host in (b, c):
        await host.adopt_once()


async def _where(etcd: Etcd) -> tuple[Any, Any]:
    name, owner = await etcd.get(vms.NAMES + "web"), await etcd.get(vms.OWNERS + UUID)
    return (name.json()["host"] if name is not None else None,
            owner.json()["host"] if owner is not None else None)


async def test_offline_undefinesource_moves_the_vm_and_its_ownership(etcd: Etcd) -> None:
    """Before the fix: c's claim clashed with b's name key, c's define was undone in
    silence, b undefined its copy, and its loop released the keys: defined nowhere."""
    b, c = await _b_and_c(etcd)

    async def finish() -> web.Response:
        c.cluster.store.rows[UUID] = _spec()  # offline finish: defined here
        return web.json_response({"uuid": UUID, "name": "web"})

    await _offline_migrate(b, c, finish)
    assert UUID in c.cluster.store.rows and UUID not in b.cluster.store.rows
    assert await _where(etcd) == ("c", "c")
    owner = await etcd.get(vms.OWNERS + UUID)
    assert owner is not None and owner.lease == c._lease()
    spec = await etcd.get(vms.SPECS + UUID)
    assert spec is not None and spec.json()["spec"]["name"] == "web"
    assert c.arriving == set()
    with pytest.raises(Conflict, match="owned by host c"):  # a copy left on b may not run
        await b.may_start(vms.Local("web", UUID, _spec(), False))
    await c.may_start(vms.Local("web", UUID, _spec(), False))


async def test_a_refused_finish_leaves_the_vm_defined_and_owned_on_the_source(
        etcd: Etcd) -> None:
    b, c = await _b_and_c(etcd)

    async def refuse() -> web.Response:
        raise Conflict("the destination refuses")

    await _offline_migrate(b, c, refuse)
    assert UUID in b.cluster.store.rows and UUID not in c.cluster.store.rows
    assert await _where(etcd) == ("b", "b")
    owner = await etcd.get(vms.OWNERS + UUID)
    assert owner is not None and owner.lease == b._lease()

    async def error() -> web.Response:
        return web.json_response({"message": "no"}, status=500)

    await _offline_migrate(b, c, error)
    assert UUID in b.cluster.store.rows and await _where(etcd) == ("b", "b")


async def test_ownership_that_changed_meanwhile_refuses_the_finish(etcd: Etcd) -> None:
    """The take-over is a CAS on the keys as read: a concurrent change (here: another
    host took the VM) refuses the finish before anything is defined here."""
    b, c = await _b_and_c(etcd)
    defined: list[str] = []

    async def finish() -> web.Response:
        defined.append(UUID)
        return web.json_response({"uuid": UUID})

    real_get = etcd.get
    raced: list[str] = []

    async def racing_get(key: str) -> Any:
        found = await real_get(key)
        if key == vms.NAMES + "web" and not raced:
            raced.append(key)
            d = await etcd.lease_grant(30)
            await vms.take_over(etcd, UUID, "d", d)  # another host, between read and txn
        return found

    etcd.get = racing_get  # type: ignore[method-assign]
    try:
        await _offline_migrate(b, c, finish)
    finally:
        etcd.get = real_get  # type: ignore[method-assign]
    assert defined == [] and UUID in b.cluster.store.rows
    assert await _where(etcd) == ("d", "d")


async def test_a_refused_finish_gives_the_name_back_when_the_owner_key_was_absent(
        etcd: Etcd) -> None:
    """The source's owner key was gone (its lease lapsed and not made again yet): the
    take-over makes ours and moves the name key; a refusal deletes ours and gives the
    name key back to the source, whose loop makes its owner key again (before: the
    name stayed on c, whose loop then released the VM's keys altogether)."""
    b, c = await _b_and_c(etcd)
    await etcd.delete(vms.OWNERS + UUID)

    async def refuse() -> web.Response:
        raise Conflict("the destination refuses")

    await _offline_migrate(b, c, refuse)
    assert UUID in b.cluster.store.rows and await _where(etcd) == ("b", "b")
    spec = await etcd.get(vms.SPECS + UUID)
    assert spec is not None
