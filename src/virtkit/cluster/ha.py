"""HA restart in etcd terms: which HA VMs lost their host, and the claim that lets one
surviving host restart each of them (docs/cluster.md, "HA and fencing").

An HA VM (spec ``ha: true``) whose desired state is ``running`` is *orphaned* when it
has no owner key (``/virtkit/owner/<uuid>`` lived on its host's lease) and the host
its name key names has no live record (``/virtkit/hosts/<host>``, on the same lease).
Both go when that lease expires, which happens only after the host fenced its HA QEMUs
(cluster/fence.py): from then on another host may start the VM.

The claim is one txn whose compares make it safe against every race: the owner key is
still absent, the name key is unchanged since it was read, and the old host's record is
still gone (a host that came back in between keeps its VM).  Its puts make the claimer
the owner (on its own lease) and the name key's host.  Exactly one host wins; the
others see the owner key and leave the VM alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from virtkit.cluster.etcd import Compare, Etcd, Op
from virtkit.cluster.hosts import HOSTS, encode
from virtkit.cluster.vms import NAMES, OWNERS, SPECS


@dataclass(frozen=True)
class Orphan:
    """An HA VM to restart: its spec, the host it was on, and its name key as read."""

    uuid: str
    name: str
    spec: dict[str, Any]
    was_on: str
    name_value: dict[str, Any]
    name_revision: int


@dataclass(frozen=True)
class View:
    """One consistent read of the cluster (a single txn: one revision)."""

    orphans: list[Orphan]
    hosts: dict[str, dict[str, Any]]  # live records
    ledger: list[dict[str, Any]]  # every name key's value


async def look(etcd: Etcd) -> View:
    """The orphaned HA VMs, the live hosts and the name ledger, read at one revision."""
    done = await etcd.txn([], [Op.get(SPECS, prefix=True), Op.get(OWNERS, prefix=True),
                               Op.get(NAMES, prefix=True), Op.get(HOSTS, prefix=True)])
    specs, owners, names, hosts = [*done.ranges, [], [], [], []][:4]
    owned = {kv.key.removeprefix(OWNERS) for kv in owners}
    held = {kv.key.removeprefix(NAMES): kv for kv in names}
    live = {kv.key.removeprefix(HOSTS): kv.json() for kv in hosts}
    orphans = []
    for kv in specs:
        value = kv.json()
        spec = value.get("spec") or {}
        uuid, name = str(value.get("uuid")), str(value.get("name"))
        if not spec.get("ha") or value.get("desired") != "running" or uuid in owned:
            continue
        name_kv = held.get(name)
        if name_kv is None:
            continue
        name_value = name_kv.json()
        host = str(name_value.get("host"))
        if name_value.get("uuid") != uuid or host in live:
            continue  # not this VM's name, or its host is up (it adopts the VM itself)
        orphans.append(Orphan(uuid, name, spec, host, name_value, name_kv.mod_revision))
    return View(orphans, live, [json.loads(kv.value) for kv in names])


async def claim(etcd: Etcd, orphan: Orphan, host: str, lease: int) -> bool:
    """Make ``host`` the VM's owner if nothing changed since :func:`look`; True if it
    did (then ``host`` must start the VM, or :func:`unclaim` it)."""
    done = await etcd.txn(
        [Compare.version(OWNERS + orphan.uuid, "=", 0),
         Compare.mod_revision(NAMES + orphan.name, "=", orphan.name_revision),
         Compare.version(HOSTS + orphan.was_on, "=", 0)],
        [Op.put(OWNERS + orphan.uuid, encode({"host": host, "name": orphan.name}), lease),
         Op.put(NAMES + orphan.name, encode({**orphan.name_value, "host": host}))])
    return done.succeeded


async def unclaim(etcd: Etcd, orphan: Orphan, lease: int) -> None:
    """Give a claimed VM back to the cluster when it could not be started here: the
    owner key goes (only while it is ours) and the name names its old host again, so
    another host may try."""
    await etcd.txn([Compare.lease(OWNERS + orphan.uuid, "=", lease)],
                   [Op.delete(OWNERS + orphan.uuid),
                    Op.put(NAMES + orphan.name, encode(orphan.name_value))])
