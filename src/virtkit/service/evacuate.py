"""``cluster evacuate HOST`` and ``cluster restore HOST`` (docs/cluster.md).

Evacuate: the host is marked in maintenance (``/virtkit/maintenance/<host>``, no
lease: it stays while the host is down; placement skips the host), then each VM
running there is live-migrated, one after another, to the host placement picks, by
asking the host's own daemon to migrate it (the existing migration: its ownership
moves at the destination's finish).  Shut-off VMs stay defined where they are
(nothing runs there to move).  What moved is written into the maintenance key.

Restore: each VM the evacuation moved that still runs where it went is migrated
back, and the maintenance mark is removed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

from virtkit.cluster import placement, vms
from virtkit.cluster.etcd import Compare, Op
from virtkit.cluster.hosts import HOSTS, MEMBERS, encode
from virtkit.cluster.vms import MAINTENANCE
from virtkit.errors import Conflict, NotFound, VirtkitError
from virtkit.service.clustervms import RUNNING, ClusterVms
from virtkit.service.forward import relay, socket_of

log = logging.getLogger(__name__)


async def _migrate(cluster_vms: ClusterVms, source: str, name: str,
                   destination: str) -> dict[str, Any]:
    """Ask ``source``'s daemon to live-migrate ``name`` to ``destination``."""
    etcd = cluster_vms._etcd()
    member = await etcd.get(MEMBERS + destination)
    address = member.json().get("address") if member is not None else None
    target = socket_of(destination, await cluster_vms.api_of(destination), read_only=False)
    path = socket_of(source, await cluster_vms.api_of(source), read_only=False)
    body = {"destination": {"socket": target}, "address": address or "127.0.0.1",
            "persistent": True, "undefine_source": True}
    reply = await relay(source, path, "POST", f"/v1/domains/{quote(name, safe='')}/migrate",
                        json.dumps(body).encode(), {"Content-Type": "application/json",
                                                    "X-Virtkit-Forwarded-By":
                                                    cluster_vms.host or ""})
    answer = json.loads(reply.body or b"{}")
    if reply.status >= 400:
        raise VirtkitError(f"{name}: {answer.get('message', f'HTTP {reply.status}')}")
    return dict(answer)


async def _domains_on(cluster_vms: ClusterVms, host: str) -> list[dict[str, Any]]:
    """``host``'s VMs as its daemon sees them now (not its published summary, which
    may be a second old)."""
    path = socket_of(host, await cluster_vms.api_of(host), read_only=True)
    reply = await relay(host, path, "GET", "/v1/domains?all=1", b"",
                        {"X-Virtkit-Forwarded-By": cluster_vms.host or ""})
    if reply.status >= 400:
        raise VirtkitError(f"host {host} did not list its VMs (HTTP {reply.status})")
    return list(json.loads(reply.body))


async def _running_on(cluster_vms: ClusterVms, host: str) -> list[dict[str, Any]]:
    return [d for d in await _domains_on(cluster_vms, host) if d.get("state") in RUNNING]


async def evacuate(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
    etcd = cluster_vms._etcd()
    if await etcd.get(MEMBERS + host) is None:
        raise NotFound(f"no host {host} in the cluster", fix="see 'virtkit cluster list'")
    key = MAINTENANCE + host
    current = await etcd.get(key)
    mark: dict[str, Any] = current.json() if current is not None else {
        "since": time.time(), "moved": []}
    if current is None:
        await etcd.txn([Compare.version(key, "=", 0)], [Op.put(key, encode(mark))])
    moved, failed = [], []
    ledger, _rev = await vms.ledger(etcd)
    records = await cluster_vms.host_records()
    by_name = {e["name"]: e for e in ledger if e.get("uuid")}
    for vm in await _running_on(cluster_vms, host):
        entry = by_name.get(vm["name"], {"memory_mib": 0, "vcpus": 1})
        need = placement.Need(memory_mib=int(entry.get("memory_mib") or 0),
                              vcpus=int(entry.get("vcpus") or 1), group=entry.get("group"))
        try:
            chosen = placement.choose(placement.candidates(records, ledger), need)
            await _migrate(cluster_vms, host, vm["name"], chosen.name)
        except VirtkitError as exc:
            failed.append({"name": vm["name"], "error": exc.message})
            continue
        moved.append({"name": vm["name"], "uuid": vm["uuid"], "to": chosen.name})
        ledger.append({**entry, "host": chosen.name})  # weigh the next VM with it there
        log.info("cluster: evacuate %s: %s moved to %s", host, vm["name"], chosen.name)
    mark["moved"] = list(mark.get("moved") or []) + moved
    await etcd.put(key, encode(mark))
    stayed = [d["name"] for d in await _domains_on(cluster_vms, host)
              if d.get("state") not in RUNNING]
    return {"host": host, "maintenance": True, "moved": moved, "failed": failed,
            "stayed": stayed}


async def restore(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
    etcd = cluster_vms._etcd()
    key = MAINTENANCE + host
    current = await etcd.get(key)
    if current is None:
        raise Conflict(f"host {host} is not in maintenance",
                       fix=f"virtkit cluster evacuate {host} first")
    if await etcd.get(HOSTS + host) is None:
        raise Conflict(f"host {host} is down", fix=f"start virtkitd on {host} first")
    returned, failed = [], []
    for vm in current.json().get("moved", []):
        where = await vms.locate(etcd, vm["uuid"])
        if where is None or where["host"] == host:
            continue
        running = {d["uuid"] for d in await _running_on(cluster_vms, where["host"])}
        if vm["uuid"] not in running:
            continue  # stopped or gone since: it stays where it is
        try:
            await _migrate(cluster_vms, where["host"], where["name"], host)
        except VirtkitError as exc:
            failed.append({"name": vm["name"], "error": exc.message})
            continue
        returned.append({"name": vm["name"], "from": where["host"]})
    await etcd.txn([Compare.mod_revision(key, "=", current.mod_revision)], [Op.delete(key)])
    return {"host": host, "maintenance": False, "returned": returned, "failed": failed}
