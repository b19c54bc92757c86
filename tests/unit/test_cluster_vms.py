"""VM names, specs and ownership in etcd (cluster/vms.py) against a real etcd-server."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest

from virtkit.cluster import vms
from virtkit.cluster.etcd import Compare, Etcd, Op
from virtkit.errors import Conflict

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd-server")


def _vm(name: str = "web1", uuid: str = "u-1", memory: int = 256,
        group: str | None = None) -> vms.Local:
    spec: dict[str, Any] = {"name": name, "uuid": uuid, "memory": {"current": memory},
                            "vcpus": {"current": 1}}
    if group:
        spec["anti_affinity"] = group
    return vms.Local(name, uuid, spec, running=False)


async def _json(etcd: Etcd, key: str) -> Any:
    kv = await etcd.get(key)
    return kv.json() if kv is not None else None


async def test_claim_records_name_spec_and_owner_on_the_lease(etcd: Etcd) -> None:
    lease = await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease, _vm())
    assert await _json(etcd, vms.NAMES + "web1") == {
        "name": "web1", "uuid": "u-1", "host": "a", "memory_mib": 256, "vcpus": 1,
        "group": None}
    assert (await _json(etcd, vms.SPECS + "u-1"))["desired"] == "shutoff"
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.json()["host"] == "a" and owner.lease == lease
    await vms.claim(etcd, "a", lease, _vm(memory=512))  # a redefinition here is fine
    assert (await _json(etcd, vms.NAMES + "web1"))["memory_mib"] == 512
    assert await vms.locate(etcd, "web1") == {"name": "web1", "uuid": "u-1", "host": "a",
                                              "owned": True}
    assert (await vms.locate(etcd, "u-1") or {})["host"] == "a"
    assert await vms.locate(etcd, "nope") is None


async def test_a_name_is_unique_in_the_cluster(etcd: Etcd) -> None:
    lease_a, lease_b = await etcd.lease_grant(30), await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease_a, _vm())
    with pytest.raises(Conflict) as clash:
        await vms.claim(etcd, "b", lease_b, _vm(uuid="u-2"))
    assert "a VM of that name is on host a" in str(clash.value)
    with pytest.raises(Conflict, match="on host a"):
        await vms.check_name(etcd, "web1", None, "b")
    await vms.check_name(etcd, "web1", None, "a")
    assert await etcd.get(vms.OWNERS + "u-2") is None


async def test_two_placements_from_one_ledger_cannot_both_reserve(etcd: Etcd) -> None:
    _rows, seen = await vms.ledger(etcd)
    spec = {"name": "x", "memory": {"current": 64}}
    first = await vms.reserve(etcd, "x", "a", spec, seen)
    assert first is not None
    # a second placement weighed the same ledger: the name key made since refuses it
    assert await vms.reserve(etcd, "y", "a", {**spec, "name": "y"}, seen) is None
    rows, seen = await vms.ledger(etcd)
    assert [r["name"] for r in rows] == ["x"] and rows[0]["uuid"] is None
    assert await vms.reserve(etcd, "y", "a", {**spec, "name": "y"}, seen) is not None
    with pytest.raises(Conflict):
        await vms.reserve(etcd, "x", "b", spec, seen + 10)
    # concurrently from one ledger: exactly one wins
    _rows, seen = await vms.ledger(etcd)
    won = await asyncio.gather(*(vms.reserve(etcd, f"c{i}", "a", spec, seen)
                                 for i in range(5)))
    assert sum(1 for w in won if w is not None) == 1
    # the reserved host's claim takes the reservation over
    lease = await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease, _vm("x", "u-x"))
    assert (await _json(etcd, vms.NAMES + "x"))["uuid"] == "u-x"
    await vms.unreserve(etcd, "y", b"not the reservation")
    assert await etcd.get(vms.NAMES + "y") is not None


async def test_take_over_moves_the_owner_in_one_step_and_give_back(etcd: Etcd) -> None:
    lease_a, lease_b = await etcd.lease_grant(30), await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease_a, _vm())
    previous = await vms.take_over(etcd, "u-1", "b", lease_b)
    assert previous is not None and previous.lease == lease_a
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.lease == lease_b and owner.json()["host"] == "b"
    assert (await _json(etcd, vms.NAMES + "web1"))["host"] == "b"
    await vms.give_back(etcd, "u-1", previous, lease_b)
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.lease == lease_a and owner.json()["host"] == "a"
    assert (await _json(etcd, vms.NAMES + "web1"))["host"] == "a"
    assert await vms.take_over(etcd, "not-in-cluster", "b", lease_b) is None


async def test_adopt_makes_the_owner_key_again_after_the_lease_expired(etcd: Etcd) -> None:
    lease = await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease, _vm())
    await etcd.lease_revoke(lease)  # the host was cut off: its owner keys went
    assert await etcd.get(vms.OWNERS + "u-1") is None
    assert await etcd.get(vms.NAMES + "web1") is not None  # the name stays taken
    fresh = await etcd.lease_grant(30)
    problems = await vms.adopt(etcd, "a", fresh, [_vm(), _vm("other", "u-9")])
    assert problems == []
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.lease == fresh
    assert (await _json(etcd, vms.NAMES + "other"))["host"] == "a"
    # never taken from another host: b's VM of the same name is a problem, not a claim
    lease_b = await etcd.lease_grant(30)
    problems = await vms.adopt(etcd, "b", lease_b, [_vm(uuid="u-b")])
    assert len(problems) == 1 and "held in the cluster by u-1 on host a" in problems[0]
    assert (await etcd.get(vms.OWNERS + "u-1")).lease == fresh  # type: ignore[union-attr]


async def test_release_and_forget_gone(etcd: Etcd) -> None:
    lease = await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease, _vm())
    await vms.claim(etcd, "a", lease, _vm("db", "u-db"))
    await vms.set_desired(etcd, "u-1", "running")
    assert (await _json(etcd, vms.SPECS + "u-1"))["desired"] == "running"
    await vms.release(etcd, "web1", "u-1")
    assert [await etcd.get(k) for k in (vms.NAMES + "web1", vms.SPECS + "u-1",
                                        vms.OWNERS + "u-1")] == [None, None, None]
    assert await vms.forget_gone(etcd, "a", lambda: set()) == ["db"]
    assert await etcd.range(vms.NAMES) == []


async def test_mod_revision_all_sees_a_new_key_under_the_prefix(etcd: Etcd) -> None:
    await etcd.put("/p/a", "1")
    _rows, seen = await vms.ledger(etcd)
    guard = Compare.mod_revision_all("/p/", "<", seen + 1)
    assert (await etcd.txn([guard], [Op.put("/q", "x")])).succeeded
    await etcd.put("/p/b", "2")
    assert not (await etcd.txn([guard], [Op.put("/q", "y")])).succeeded


async def test_a_vm_starts_only_on_its_owner(etcd: Etcd) -> None:
    lease_a, lease_b = await etcd.lease_grant(30), await etcd.lease_grant(30)
    await vms.claim(etcd, "a", lease_a, _vm())
    await vms.ensure_owner(etcd, "a", lease_a, _vm())
    # the same VM defined on b too (an offline copy): b may not start it
    with pytest.raises(Conflict) as refused:
        await vms.ensure_owner(etcd, "b", lease_b, _vm())
    assert "owned by host a" in str(refused.value)
    # a's lease expired (cut off): its name key stays a's, so b still may not
    await etcd.lease_revoke(lease_a)
    with pytest.raises(Conflict, match="on host a"):
        await vms.ensure_owner(etcd, "b", lease_b, _vm())
    fresh = await etcd.lease_grant(30)
    await vms.ensure_owner(etcd, "a", fresh, _vm())  # a, back, takes its key again
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.lease == fresh
    await vms.ensure_owner(etcd, "c", lease_b, _vm("new", "u-new"))  # unknown: claimed
    assert (await _json(etcd, vms.NAMES + "new"))["host"] == "c"
