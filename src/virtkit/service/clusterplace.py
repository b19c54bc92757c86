"""Placement for ``install`` and ``start --place`` in a cluster (docs/cluster.md,
"Placement").

``install`` without ``--host`` is placed as ``define`` is (service/clustervms.py
:meth:`ClusterVms.place`): filter, weigh, the name reserved by CAS on the chosen
host; the install request is then carried there.

``start`` starts a VM where it is defined, as libvirt users expect.  Only ``start
--place`` may start it elsewhere, and only when that is sound:

- its host is up and can take it: it starts there (a plain start);
- its host is up but cannot take it now (full, in maintenance, ...): the owner and
  name keys move to the host placement picks (one txn, :func:`hand_over`), then its
  definition moves there by an offline migration the VM's host runs (undefining its
  copy), and it starts there; a failed move gives the keys back;
- its host is down: the host placement picks claims it in one txn (owner key still
  absent, name key unchanged, the old host's record still gone: cluster/ha.py's
  claim) and defines and starts it.  Only a VM the cluster knows to be stopped
  (desired state ``shutoff``) or an HA VM (fenced by its host) is taken: a plain VM
  that ran on a host that is now cut off may still run there.

In every case its writable disks must be on shared pools the new host has too
(:func:`virtkit.cluster.placement.local_disks`); a VM with a local disk starts only
on its own host.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtkit.cluster import ha, placement, vms
from virtkit.cluster.etcd import Compare, EtcdUnavailable, KeyValue, Op
from virtkit.cluster.hosts import HOSTS, VMS, encode
from virtkit.cluster.vms import NAMES, OWNERS, SPECS
from virtkit.errors import Conflict, NotFound, VirtkitError

if TYPE_CHECKING:
    from virtkit.service.clustervms import ClusterVms

log = logging.getLogger(__name__)

DEFAULT_INSTALL_MEMORY = 1024
RUNNING_STATES = ("running", "paused", "in shutdown", "pmsuspended")


def install_spec(body: Any) -> dict[str, Any] | None:
    """What placement reads of an install request (the domain part, with the
    defaults install itself adds); None when it is not to be placed (a dry run, or a
    request the install handler refuses anyway)."""
    from virtkit.formats.virtinstall import parse_command_line

    if not isinstance(body, dict):
        return None
    try:
        if isinstance(body.get("argv"), list):
            body = parse_command_line([str(w) for w in body["argv"]]).to_dict()
    except (VirtkitError, ValueError, TypeError):
        return None
    domain = body.get("domain")
    if body.get("dry_run") or body.get("print_xml") or not isinstance(domain, dict) \
            or not isinstance(domain.get("name"), str):
        return None
    spec = dict(domain)
    if not isinstance(spec.get("memory"), dict):
        spec["memory"] = {"current": DEFAULT_INSTALL_MEMORY}
    if not isinstance(spec.get("vcpus"), dict):
        spec["vcpus"] = {"current": 1}
    pools = [{"pool": d["pool"]} for d in body.get("new_disks") or []
             if isinstance(d, dict) and d.get("pool")]
    disks = [d for d in spec.get("disks") or [] if isinstance(d, dict)]
    spec["disks"] = disks + pools
    spec["nics"] = [n for n in spec.get("nics") or [] if isinstance(n, dict)]
    if body.get("default_nic") and not spec["nics"]:
        spec["nics"] = [{"network": "default"}]
    try:
        placement.Need.of(spec)
    except (ValueError, TypeError, KeyError):
        return None
    return spec


@dataclass(frozen=True)
class StartPlan:
    """Where ``start --place`` starts a VM: ``how`` is ``home`` (where it is defined),
    ``move`` (its host is up but cannot take it: offline migration to ``host`` first)
    or ``claim`` (its host is down: ``host`` claims it)."""

    how: str
    host: str
    home: str
    name: str
    uuid: str


def _candidates_without(records: dict[str, dict[str, Any]], ledger: list[dict[str, Any]],
                        name: str) -> list[placement.Candidate]:
    """The hosts, with what the ledger commits less the VM's own entry."""
    return placement.candidates(records, [e for e in ledger if e.get("name") != name])


async def plan_start(cluster_vms: ClusterVms, ref: str, *, here_only: bool) -> StartPlan:
    """Decide where ``start --place`` starts VM ``ref`` (``here_only``: a forwarded
    request: this host must be the one, or it refuses)."""
    etcd = cluster_vms._etcd()
    where = await vms.locate(etcd, ref)
    if where is None or not where.get("uuid"):
        raise NotFound(f"no VM {ref!r} in the cluster", fix="see 'virtkit list --all'")
    name, uuid, home = where["name"], where["uuid"], str(where["host"])
    stored = await etcd.get(SPECS + uuid)
    if stored is None:
        raise NotFound(f"the cluster holds no spec of VM {name!r}",
                       fix=f"start it on host {home}")
    spec, desired = stored.json().get("spec") or {}, stored.json().get("desired")
    need = placement.Need.of(spec)
    records = await cluster_vms.host_records()
    ledger, _revision = await vms.ledger(etcd)
    hosts = _candidates_without(records, ledger, name)
    me = cluster_vms.host or ""
    if home in records:
        reason = placement.refusal(next(c for c in hosts if c.name == home), need)
        if reason is None or await _runs_on(etcd, home, uuid):
            return StartPlan("home", home, home, name, uuid)  # (a running one: its answer)
        how = "move"
    else:
        if not spec.get("ha") and desired != "shutoff":
            raise Conflict(f"VM {name!r} may still run on host {home}, which is down (not "
                           "HA, so not fenced there; the cluster last recorded it as "
                           f"{desired})", fix=f"start it when host {home} is back; a VM "
                           "that is not HA moves only when the cluster knows it stopped",
                           host=home)
        reason = "down"
        how = "claim"
    shared = (records.get(home) or {}).get("shared_pools")
    if how == "claim":  # the down host's pools: any up host's view of the shared ones
        shared = {k: v for r in records.values() for k, v in
                  (r.get("shared_pools") or {}).items()}
    local = placement.local_disks(spec, shared if isinstance(shared, dict) else {})
    if local:
        raise Conflict(f"VM {name!r} cannot start on host {home} ({reason}), and it can "
                       f"start nowhere else: {', '.join(local)} not on shared storage",
                       fix=f"start it on host {home} when it can take it, or move its "
                           "disks to a shared pool", host=home)
    others = [c for c in hosts if c.name != home]
    chosen = placement.check_pinned(me, others, need) if here_only \
        else placement.choose(others, need)
    log.info("cluster: start --place %s: host %s %s; %s chosen", name, home, reason,
             chosen.name)
    return StartPlan(how, chosen.name, home, name, uuid)


async def _runs_on(etcd: Any, host: str, uuid: str) -> bool:
    """Whether ``host``'s published VM summary shows ``uuid`` running."""
    summary = await etcd.get(VMS + host)
    return summary is not None and any(
        vm.get("uuid") == uuid and vm.get("state") in RUNNING_STATES
        for vm in summary.json().get("domains") or [])


async def hand_over(cluster_vms: ClusterVms, plan: StartPlan) -> tuple[KeyValue | None,
                                                                       KeyValue]:
    """Before the offline migration of a ``move``: the owner key onto the chosen
    host's lease and the name key's host with it, in one txn (both unchanged since
    read), so the destination's define there is its own and the copy left on the old
    host can no longer start.  Returns what :func:`take_back` restores."""
    etcd = cluster_vms._etcd()
    record = await etcd.get(HOSTS + plan.host)
    lease = int(record.json().get("lease") or 0) if record is not None else 0
    owner = await etcd.get(OWNERS + plan.uuid)
    held = await etcd.get(NAMES + plan.name)
    if not lease or held is None or held.json().get("uuid") != plan.uuid:
        raise Conflict(f"VM {plan.name!r} or host {plan.host} changed in the cluster "
                       "meanwhile", fix="try again")
    done = await etcd.txn(
        [Compare.mod_revision(NAMES + plan.name, "=", held.mod_revision),
         Compare.mod_revision(OWNERS + plan.uuid, "=", owner.mod_revision)
         if owner is not None else Compare.version(OWNERS + plan.uuid, "=", 0)],
        [Op.put(OWNERS + plan.uuid, encode({"host": plan.host, "name": plan.name}), lease),
         Op.put(NAMES + plan.name, encode({**held.json(), "host": plan.host}))])
    if not done.succeeded:
        raise Conflict(f"VM {plan.name!r} changed in the cluster meanwhile", fix="try again")
    return owner, held


async def take_back(cluster_vms: ClusterVms, plan: StartPlan, owner: KeyValue | None,
                    held: KeyValue) -> None:
    """The move failed: owner and name as they were (if still as :func:`hand_over`
    left them)."""
    etcd = cluster_vms._etcd()
    restore = [Op.put(OWNERS + plan.uuid, owner.value, owner.lease)] if owner is not None \
        else [Op.delete(OWNERS + plan.uuid)]
    current = await etcd.get(NAMES + plan.name)
    if current is not None and current.json().get("host") == plan.host:
        await etcd.txn([Compare.mod_revision(NAMES + plan.name, "=", current.mod_revision)],
                       [*restore, Op.put(NAMES + plan.name, held.value)])


async def claim_here(cluster_vms: ClusterVms, plan: StartPlan) -> None:
    """Its host is down: claim the VM here (one txn) and define it here; the caller
    starts it.  Conflict when another host claimed it, or its host came back."""
    etcd, lease = cluster_vms._etcd(), cluster_vms._lease()
    try:
        held = await etcd.get(NAMES + plan.name)
        stored = await etcd.get(SPECS + plan.uuid)
    except EtcdUnavailable as exc:
        raise Conflict(f"the cluster cannot be asked about VM {plan.name!r}: {exc}") from exc
    if held is None or stored is None or held.json().get("uuid") != plan.uuid:
        raise Conflict(f"VM {plan.name!r} changed in the cluster meanwhile", fix="try again")
    spec = stored.json().get("spec") or {}
    orphan = ha.Orphan(plan.uuid, plan.name, spec, plan.home, held.json(),
                       held.mod_revision)
    # the name key says where it came from: that host drops its copy when back
    marked = ha.Orphan(plan.uuid, plan.name, spec, plan.home,
                       {**held.json(), "placed_from": plan.home}, held.mod_revision)
    if not await ha.claim(etcd, marked, cluster_vms.host or "", lease):
        raise Conflict(f"VM {plan.name!r} was taken by another host, or host {plan.home} "
                       "came back, while this one claimed it",
                       fix="see 'virtkit list --all' and start it where it is")
    store = cluster_vms.cluster.store
    try:
        if store.find_domain(plan.uuid) is None:
            await asyncio.to_thread(cluster_vms.domains.define,
                                    {**spec, "uuid": plan.uuid})
    except BaseException:
        await ha.unclaim(etcd, orphan, lease)
        raise
    log.warning("cluster: VM %s claimed here to start (host %s is down)", plan.name,
                plan.home)


def answer_host(answer: dict[str, Any], plan: StartPlan) -> dict[str, Any]:
    return {**answer, "host": plan.host, "placed": plan.how}


async def forget_placed_away(cluster_vms: ClusterVms) -> list[str]:
    """This host's stopped VMs that ``start --place`` claimed on another host while
    this one was down (the name key says ``placed_from`` this host): the local
    definition goes, its disks stay (they are the shared images the VM runs on)."""
    me, etcd = cluster_vms.host, cluster_vms._etcd()
    gone: list[str] = []
    stopped = [vm for vm in cluster_vms._all_local() if not vm.running]
    if not stopped:
        return gone
    names = {kv.key.removeprefix(NAMES): kv.json() for kv in await etcd.range(NAMES)}
    for vm in stopped:
        value = names.get(vm.name) or {}
        if value.get("uuid") != vm.uuid or value.get("host") == me \
                or value.get("placed_from") != me:
            continue
        try:
            await cluster_vms.domains.undefine(vm.uuid)
        except VirtkitError as exc:
            log.error("cluster: VM %s runs on host %s now; its definition here could not "
                      "be removed: %s", vm.name, value.get("host"), exc)
            continue
        log.warning("cluster: VM %s was started on host %s while this host was down: its "
                    "definition here removed (disks kept)", vm.name, value.get("host"))
        gone.append(vm.name)
    return gone
