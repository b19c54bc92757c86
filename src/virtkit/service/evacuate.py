"""``cluster evacuate HOST [--policy migrate|stop|copy-storage]`` and ``cluster restore
HOST`` (docs/cluster.md, "Evacuate and restore").

Evacuate first *plans* every VM running on the host, before anything is done:

- a VM whose writable disks are all on shared pools (or that has none) is
  live-migrated to the host placement picks (nothing is copied);
- a VM with a disk only this host sees (a local pool, a path outside the shared
  pools) follows the policy: ``copy-storage`` live-migrates it with its disks
  copied (``--copy-storage-all``), ``stop`` shuts it down (``destroy`` after
  ``stop_timeout`` seconds), ``migrate`` (the default) refuses it.

A plan with a refusal (a local disk under ``migrate``, or no host that can take a
VM) is refused as a whole, and the host is not put in maintenance.  Otherwise the
host is marked in maintenance (``/virtkit/maintenance/<host>``, no lease; placement
skips it) and the VMs are handled one after another by asking the host's own daemon
(its migrations move the ownership as any migration does).  What was done is
written into the maintenance key, so that restore can undo it: moved VMs migrate
back (copied ones with their disks copied back), stopped ones start again.

``only`` handles the named VMs alone (the CLI calls once per VM, to show progress);
``dry_run`` gives the plan and changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from virtkit.cluster import placement, vms
from virtkit.cluster.etcd import Compare, Op
from virtkit.cluster.hosts import HOSTS, MEMBERS, encode
from virtkit.cluster.vms import MAINTENANCE, SPECS
from virtkit.errors import Conflict, InvalidSpec, NotFound, VirtkitError
from virtkit.service.clustervms import RUNNING, ClusterVms
from virtkit.service.forward import CALLER, FORWARDED_BY, send

log = logging.getLogger(__name__)

POLICIES = ("migrate", "stop", "copy-storage")
#: seconds a guest gets to shut down under ``--policy stop`` before it is destroyed
STOP_TIMEOUT = 60.0


async def _call(cluster_vms: ClusterVms, host: str, method: str, path: str,
                body: dict[str, Any] | None = None, *, read_only: bool = False) -> Any:
    """One request to ``host``'s daemon (its cluster API over mutual TLS, or its socket
    on the same machine: service/forward.py); its answer, or VirtkitError with its
    message."""
    owner = await cluster_vms.owner(host, read_only=read_only)
    data = json.dumps(body).encode() if body is not None else b""
    # evacuate and restore are an administrator's (their route is not read-only), so
    # the calls they make carry the local caller's standing
    reply = await send(owner, method, path, data,
                       {"Content-Type": "application/json", FORWARDED_BY: cluster_vms.host or "",
                        CALLER: "read-only" if read_only else "local"})
    answer = json.loads(reply.body or b"{}")
    if reply.status >= 400:
        message = answer.get("message") if isinstance(answer, dict) else None
        raise VirtkitError(message or f"host {host} answered HTTP {reply.status}")
    return answer


def _vm_path(name: str, rest: str = "") -> str:
    return f"/v1/domains/{quote(name, safe='')}{rest}"


async def migrate_via(cluster_vms: ClusterVms, source: str, name: str,
                      destination: str, **extra: Any) -> dict[str, Any]:
    """Ask ``source``'s daemon to migrate ``name`` to ``destination`` (live, unless
    ``extra`` says otherwise: ``offline``, ``copy_storage_all`` ...)."""
    member = await cluster_vms._etcd().get(MEMBERS + destination)
    address = member.json().get("address") if member is not None else None
    body = {"destination": await _destination(cluster_vms, destination),
            "address": address or "127.0.0.1",
            "persistent": True, "undefine_source": True, **extra}
    try:
        return dict(await _call(cluster_vms, source, "POST", _vm_path(name, "/migrate"),
                                body))
    except VirtkitError as exc:
        raise VirtkitError(f"{name}: {exc.message}") from exc


async def _destination(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
    """How the source daemon reaches ``host``'s for the migration: its cluster API
    (mutual TLS with the source's cluster certificate) when it publishes one and this
    host has a cluster certificate (the source is a member too), else its socket on
    this machine (forward.owner_of refuses, naming the host, when neither is there)."""
    owner = await cluster_vms.owner(host)
    return {"url": owner.url, "cluster": True} if owner.url is not None \
        else {"socket": owner.socket}


async def _domains_on(cluster_vms: ClusterVms, host: str) -> list[dict[str, Any]]:
    """``host``'s VMs as its daemon sees them now (not its published summary, which
    may be a second old)."""
    return list(await _call(cluster_vms, host, "GET", "/v1/domains?all=1", read_only=True))


async def _running_on(cluster_vms: ClusterVms, host: str) -> list[dict[str, Any]]:
    return [d for d in await _domains_on(cluster_vms, host) if d.get("state") in RUNNING]


async def plan(cluster_vms: ClusterVms, host: str, policy: str) -> list[dict[str, Any]]:
    """What evacuating ``host`` would do with each VM running there: ``action``
    ``migrate``/``copy``/``stop`` and ``to`` (a host), or ``refused`` (why)."""
    if policy not in POLICIES:
        raise InvalidSpec(f"evacuate policy {policy!r}: use one of {', '.join(POLICIES)}",
                          field="policy")
    etcd = cluster_vms._etcd()
    records = await cluster_vms.host_records()
    shared = (records.get(host) or {}).get("shared_pools") or {}
    ledger, _rev = await vms.ledger(etcd)
    steps = []
    for vm in await _running_on(cluster_vms, host):
        stored = await etcd.get(SPECS + vm["uuid"])
        spec = (stored.json().get("spec") if stored is not None else None) or {}
        local = placement.local_disks(spec, shared)
        step: dict[str, Any] = {"name": vm["name"], "uuid": vm["uuid"], "local_disks": local}
        steps.append(step)
        if local and policy == "stop":
            step["action"] = "stop"
            continue
        if local and policy == "migrate":
            step["refused"] = (f"its disks {', '.join(local)} are on this host only: "
                               "choose --policy copy-storage (copy them) or --policy stop")
            continue
        need = placement.Need.of(spec)
        if local:  # copied: the destination needs the shared pools only
            need = replace(need, pools=frozenset(p for p in need.pools if p in shared))
        others = {name: r for name, r in records.items() if name != host}
        hosts = placement.candidates(others, [e for e in ledger
                                              if e.get("name") != vm["name"]])
        try:
            chosen = placement.choose(hosts, need)
        except Conflict as exc:
            step["refused"] = exc.message
            continue
        step.update(action="copy" if local else "migrate", to=chosen.name)
        # the next VM is weighed with this one there
        ledger = [e for e in ledger if e.get("name") != vm["name"]] + [
            {"name": vm["name"], "host": chosen.name, "memory_mib": need.memory_mib,
             "vcpus": need.vcpus, "group": need.group}]
    return steps


async def _stop(cluster_vms: ClusterVms, host: str, name: str, timeout: float) -> str:
    """Shut the VM down on ``host`` (ACPI, waiting ``timeout`` s), else destroy it."""
    if timeout > 0:
        try:
            await _call(cluster_vms, host, "POST", _vm_path(name, "/shutdown"),
                        {"wait": True, "timeout": timeout})
            return "shut down"
        except VirtkitError as exc:
            log.info("cluster: evacuate %s: %s did not shut down (%s); destroying it",
                     host, name, exc.message)
    await _call(cluster_vms, host, "POST", _vm_path(name, "/destroy"), {})
    return "destroyed"


async def _mark(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
    etcd, key = cluster_vms._etcd(), MAINTENANCE + host
    current = await etcd.get(key)
    if current is not None:
        return dict(current.json())
    mark: dict[str, Any] = {"since": time.time(), "moved": [], "stopped": []}
    await etcd.txn([Compare.version(key, "=", 0)], [Op.put(key, encode(mark))])
    return mark


async def evacuate(cluster_vms: ClusterVms, host: str, *, policy: str = "migrate",
                   stop_timeout: float = STOP_TIMEOUT, dry_run: bool = False,
                   only: list[str] | None = None) -> dict[str, Any]:
    etcd = cluster_vms._etcd()
    if await etcd.get(MEMBERS + host) is None:
        raise NotFound(f"no host {host} in the cluster", fix="see 'virtkit cluster list'")
    steps = await plan(cluster_vms, host, policy)
    if only is not None:
        steps = [s for s in steps if s["name"] in only]
    refused = [s for s in steps if s.get("refused")]
    if dry_run:
        return {"host": host, "policy": policy, "plan": steps}
    if refused:
        raise Conflict(f"host {host} cannot be evacuated (it is not put in maintenance): "
                       + "; ".join(f"{s['name']}: {s['refused']}" for s in refused),
                       fix="choose another --policy, free room on the other hosts, or "
                           "move or stop those VMs first", plan=steps)
    mark = await _mark(cluster_vms, host)
    moved, stopped, failed = [], [], []
    for step in steps:
        name = step["name"]
        try:
            if step["action"] == "stop":
                how = await _stop(cluster_vms, host, name, stop_timeout)
                stopped.append({"name": name, "uuid": step["uuid"], "how": how})
            else:
                extra = {"copy_storage_all": True} if step["action"] == "copy" else {}
                await migrate_via(cluster_vms, host, name, step["to"], **extra)
                moved.append({"name": name, "uuid": step["uuid"], "to": step["to"],
                              "how": step["action"]})
        except VirtkitError as exc:
            failed.append({"name": name, "error": exc.message})
            continue
        log.info("cluster: evacuate %s: %s %s", host, name, step["action"])
    mark["moved"] = list(mark.get("moved") or []) + moved
    mark["stopped"] = list(mark.get("stopped") or []) + stopped
    await etcd.put(MAINTENANCE + host, encode(mark))
    stayed = [d["name"] for d in await _domains_on(cluster_vms, host)
              if d.get("state") not in RUNNING and d["name"] not in
              {s["name"] for s in mark["stopped"]}]
    return {"host": host, "maintenance": True, "policy": policy, "moved": moved,
            "stopped": stopped, "failed": failed, "stayed": stayed}


async def restore(cluster_vms: ClusterVms, host: str) -> dict[str, Any]:
    etcd = cluster_vms._etcd()
    key = MAINTENANCE + host
    current = await etcd.get(key)
    if current is None:
        raise Conflict(f"host {host} is not in maintenance",
                       fix=f"virtkit cluster evacuate {host} first")
    if await etcd.get(HOSTS + host) is None:
        raise Conflict(f"host {host} is down", fix=f"start virtkitd on {host} first")
    mark = current.json()
    returned, started, failed = [], [], []
    for vm in mark.get("moved", []):
        where = await vms.locate(etcd, vm["uuid"])
        if where is None or where["host"] == host:
            continue
        running = {d["uuid"] for d in await _running_on(cluster_vms, where["host"])}
        if vm["uuid"] not in running:
            continue  # stopped or gone since: it stays where it is
        extra = {"copy_storage_all": True} if vm.get("how") == "copy" else {}
        try:
            await migrate_via(cluster_vms, where["host"], where["name"], host, **extra)
        except VirtkitError as exc:
            failed.append({"name": vm["name"], "error": exc.message})
            continue
        returned.append({"name": vm["name"], "from": where["host"],
                         "how": vm.get("how", "migrate")})
    here = {d["uuid"]: d for d in await _domains_on(cluster_vms, host)}
    for vm in mark.get("stopped", []):
        row = here.get(vm["uuid"])
        if row is None or row.get("state") in RUNNING:
            continue  # undefined, moved or started since
        try:
            await _call(cluster_vms, host, "POST", _vm_path(row["name"], "/start"), {})
        except VirtkitError as exc:
            failed.append({"name": vm["name"], "error": exc.message})
            continue
        started.append({"name": vm["name"]})
    if failed:  # the host stays in maintenance with what is left to bring back
        left = {f["name"] for f in failed}
        mark["moved"] = [v for v in mark.get("moved", []) if v["name"] in left]
        mark["stopped"] = [v for v in mark.get("stopped", []) if v["name"] in left]
        await etcd.txn([Compare.mod_revision(key, "=", current.mod_revision)],
                       [Op.put(key, encode(mark))])
    else:
        await etcd.txn([Compare.mod_revision(key, "=", current.mod_revision)],
                       [Op.delete(key)])
    return {"host": host, "maintenance": bool(failed), "returned": returned,
            "started": started, "failed": failed}
