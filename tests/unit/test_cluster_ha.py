"""HA restart's etcd side (cluster/ha.py) against a real etcd-server: which HA VMs are
orphaned when their host's lease goes, and the claim only one host can win."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest

from virtkit.cluster import ha, vms
from virtkit.cluster.etcd import Etcd
from virtkit.cluster.hosts import HOSTS, encode

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd-server")


def _vm(name: str, uuid: str, *, ha_flag: bool = True, running: bool = True) -> vms.Local:
    spec: dict[str, Any] = {"name": name, "uuid": uuid, "memory": {"current": 64},
                            "vcpus": {"current": 1}, "ha": ha_flag}
    return vms.Local(name, uuid, spec, running=running)


async def _host(etcd: Etcd, name: str) -> int:
    """A live host: its record on a fresh lease (the lease id)."""
    lease = await etcd.lease_grant(30)
    await etcd.put(HOSTS + name, encode({"name": name, "capacity": {
        "cpus": 2, "memory_mib": 4096}}), lease)
    return lease


async def _three_vms_on_a(etcd: Etcd) -> int:
    lease = await _host(etcd, "a")
    await _host(etcd, "b")
    await vms.claim(etcd, "a", lease, _vm("ha-run", "u-1"))
    await vms.claim(etcd, "a", lease, _vm("plain", "u-2", ha_flag=False))
    await vms.claim(etcd, "a", lease, _vm("ha-off", "u-3", running=False))
    return lease


async def test_only_running_ha_vms_of_a_host_whose_lease_went_are_orphans(etcd: Etcd) -> None:
    lease_a = await _three_vms_on_a(etcd)
    view = await ha.look(etcd)
    assert view.orphans == [] and set(view.hosts) == {"a", "b"}
    await etcd.lease_revoke(lease_a)  # a dies: its record and owner keys go
    view = await ha.look(etcd)
    assert [(o.name, o.uuid, o.was_on) for o in view.orphans] == [("ha-run", "u-1", "a")]
    assert set(view.hosts) == {"b"} and {r["name"] for r in view.ledger} == {
        "ha-run", "plain", "ha-off"}


async def test_exactly_one_host_wins_the_claim(etcd: Etcd) -> None:
    lease_a = await _three_vms_on_a(etcd)
    await etcd.lease_revoke(lease_a)
    (orphan,) = (await ha.look(etcd)).orphans
    leases = [await etcd.lease_grant(30) for _ in range(4)]
    won = await asyncio.gather(*(ha.claim(etcd, orphan, f"h{i}", lease)
                                 for i, lease in enumerate(leases)))
    assert sum(won) == 1
    winner = won.index(True)
    owner = await etcd.get(vms.OWNERS + "u-1")
    assert owner is not None and owner.json()["host"] == f"h{winner}"
    assert owner.lease == leases[winner]
    name = await etcd.get(vms.NAMES + "ha-run")
    assert name is not None and name.json()["host"] == f"h{winner}"
    assert (await ha.look(etcd)).orphans == []
    # given back: an orphan again, its name on the old host
    await ha.unclaim(etcd, orphan, leases[winner])
    assert await etcd.get(vms.OWNERS + "u-1") is None
    again = (await ha.look(etcd)).orphans
    assert [o.was_on for o in again] == ["a"]


async def test_a_host_that_came_back_keeps_its_vm(etcd: Etcd) -> None:
    lease_a = await _three_vms_on_a(etcd)
    await etcd.lease_revoke(lease_a)
    (orphan,) = (await ha.look(etcd)).orphans
    await _host(etcd, "a")  # back before anyone claimed: the claim must fail
    assert not await ha.claim(etcd, orphan, "b", await etcd.lease_grant(30))
    assert await etcd.get(vms.OWNERS + "u-1") is None
    assert (await ha.look(etcd)).orphans == []  # its host is up: it adopts it itself
