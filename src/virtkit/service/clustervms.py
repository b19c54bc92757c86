"""This host's VMs in the cluster (docs/cluster.md): names, specs, desired state and
ownership kept in step with the local store (cluster/vms.py has the keys), placement
of new VMs, and where a request for a VM of another host must go.

The API calls it around the local handlers (api/forward.py): before a define (name
clash, placement), after it (the claim: a clash found only now undoes the define),
after an undefine/start/stop/edit, and around a migration's finish on the
destination (the ownership moves before the guest resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from virtkit.cluster import placement, vms
from virtkit.cluster.etcd import Etcd, EtcdUnavailable, KeyValue
from virtkit.cluster.hosts import HOSTS
from virtkit.errors import Conflict, HostError, StateError, VirtkitError
from virtkit.formats.libvirt_xml import domain_from_xml
from virtkit.host import qemubin
from virtkit.model.load import dump_domain, load_domain, parse_text
from virtkit.model.pool import SHARED_TYPES
from virtkit.service import clusterplace
from virtkit.service.clusterha import HaRecovery
from virtkit.service.domains import DomainService
from virtkit.service.forward import Owner, owner_of

if TYPE_CHECKING:
    from virtkit.service.cluster import ClusterService
    from virtkit.store.db import Store

log = logging.getLogger(__name__)

#: how often this host's VMs are checked against etcd (owner keys made again, etc.)
ADOPT_INTERVAL = 5.0
#: placements retried when a concurrent one changed the ledger
PLACE_ATTEMPTS = 8
RUNNING = ("running", "paused", "in shutdown", "pmsuspended")


class HostDown(HostError):
    """The host that owns a VM is down or cannot be reached."""

    code = "host-down"
    http_status = 503


class ClusterVms:
    def __init__(self, cluster: ClusterService, domains: DomainService) -> None:
        self.cluster = cluster
        self.domains = domains
        self.problems: list[str] = []
        self.ha = HaRecovery(self)
        #: VMs whose offline migration here is being finished: owned here already,
        #: defined in a moment (the adopt loop must not take them for gone)
        self.arriving: set[str] = set()
        #: whether an id is an offline migration received here, not finished yet
        #: (service/offline_migration.py; set by the API's assembly)
        self.offline_incoming: Callable[[str], bool] = lambda _id: False

    # -- state ---------------------------------------------------------------------------

    @property
    def host(self) -> str | None:
        return self.cluster.host_name

    @property
    def active(self) -> bool:
        return self.cluster.host_name is not None and self.cluster.etcd is not None

    def _etcd(self) -> Etcd:
        etcd = self.cluster.etcd
        if etcd is None:
            raise StateError("this host is in no cluster")
        return etcd

    def _lease(self) -> int:
        agent = self.cluster.agent
        if agent is None or not agent.lease:
            raise HostDown("this host holds no cluster lease yet (etcd unreachable?)",
                           fix="check 'virtkit cluster status'")
        return agent.lease

    def local(self, ref: str) -> vms.Local | None:
        row = self.cluster.store.find_domain(ref)
        if row is None:
            return None
        state = self.cluster.store.get_runtime(row.uuid).state
        return vms.Local(row.name, row.uuid, row.spec, state in RUNNING)

    def _all_local(self) -> list[vms.Local]:
        runtime = self.cluster.store.all_runtime()
        return [vms.Local(row.name, row.uuid, row.spec,
                          row.uuid in runtime and runtime[row.uuid].state in RUNNING)
                for row in self.cluster.store.list_domains()]

    def _local_ha(self, states: tuple[str, ...]) -> list[vms.Local]:
        runtime = self.cluster.store.all_runtime()
        return [vms.Local(row.name, row.uuid, row.spec, False)
                for row in self.cluster.store.list_domains()
                if row.spec.get("ha") and (runtime[row.uuid].state if row.uuid in runtime
                                           else "shutoff") in states]

    def crashed_ha(self) -> list[vms.Local]:
        """This host's HA VMs whose QEMU ended without being asked to (fenced, crashed)."""
        return self._local_ha(("crashed",))

    def stopped_ha(self) -> list[vms.Local]:
        return self._local_ha(("crashed", "shutoff"))

    # -- where requests go ---------------------------------------------------------------

    async def locate(self, ref: str) -> dict[str, Any] | None:
        """The cluster's record of VM ``ref`` when it is not this host's (else None)."""
        if self.local(ref) is not None:
            return None
        try:
            return await vms.locate(self._etcd(), ref)
        except EtcdUnavailable as exc:
            raise HostDown(f"VM {ref!r} is not on this host, and the cluster cannot be "
                           f"asked where it is: {exc}", fix="check 'virtkit cluster status'"
                           ) from exc

    async def owner(self, host: str, *, read_only: bool = False) -> Owner:
        """How to reach ``host``'s daemon (service/forward.py); HostDown when the host
        is down."""
        return owner_of(host, await self.api_of(host), self.cluster.api.client_tls(),
                        read_only=read_only)

    async def api_of(self, host: str) -> dict[str, Any]:
        """How to reach ``host``'s daemon (from its live record); HostDown when the
        host is down."""
        record = await self._etcd().get(HOSTS + host)
        if record is None:
            raise HostDown(f"host {host} is down (its cluster lease expired)",
                           fix=f"wait for host {host} to come back, or see "
                               "'virtkit cluster list'", host=host)
        api = record.json().get("api")
        if not isinstance(api, dict):
            raise HostDown(f"host {host} does not say how to reach its daemon (an older "
                           "virtkit?)", fix=f"upgrade virtkit on host {host}", host=host)
        return api

    # -- define / undefine / state -------------------------------------------------------

    @staticmethod
    def spec_of(body: dict[str, Any]) -> dict[str, Any] | None:
        """The validated spec a define request carries (None when it cannot be read
        here: the local handler then answers the error)."""
        try:
            if isinstance(body.get("xml"), str):
                spec, _warnings = domain_from_xml(body["xml"], force=bool(body.get("force")))
                return {**dump_domain(load_domain(spec)), "given_uuid": bool(spec.get("uuid"))}
            data = body.get("yaml") if isinstance(body.get("yaml"), str) else body.get("spec")
            if isinstance(data, str):
                data = parse_text(data)
            if isinstance(data, dict):
                return {**dump_domain(load_domain(data)), "given_uuid": bool(data.get("uuid"))}
        except (VirtkitError, ValueError, TypeError):
            return None
        return None

    async def check_name(self, name: str) -> None:
        await vms.check_name(self._etcd(), name, None, self.host or "")

    async def place(self, spec: dict[str, Any], pinned: str | None = None
                    ) -> tuple[str, bytes]:
        """Choose the host for a new VM (``pinned``: check that host passes the
        filter) and reserve its name there (by CAS: a placement that raced another
        weighs again, so two at once never both take the last room)."""
        etcd = self._etcd()
        need = placement.Need.of(spec)
        for _ in range(PLACE_ATTEMPTS):
            records = await self.host_records()
            ledger, revision = await vms.ledger(etcd)
            hosts = placement.candidates(records, ledger)
            chosen = placement.choose(hosts, need) if pinned is None \
                else placement.check_pinned(pinned, hosts, need)
            reservation = await vms.reserve(etcd, spec["name"], chosen.name, spec, revision)
            if reservation is not None:
                log.info("cluster: VM %s placed on %s", spec["name"], chosen.name)
                return chosen.name, reservation
        raise Conflict("placement kept racing other placements", fix="try again")

    async def host_records(self) -> dict[str, dict[str, Any]]:
        """The up hosts' live records, ``maintenance`` set on those being evacuated."""
        etcd = self._etcd()
        records = {kv.key.removeprefix(HOSTS): kv.json() for kv in await etcd.range(HOSTS)}
        own = records.get(self.host or "")
        if own is not None:  # a pool or network started here since the last heartbeat
            for key, now in local_facts(self.cluster.store).items():  # counts at once
                own[key] = sorted({*own.get(key, []), *now}) if isinstance(now, list) \
                    else {**own.get(key, {}), **now}
        for kv in await etcd.range(vms.MAINTENANCE):
            record = records.get(kv.key.removeprefix(vms.MAINTENANCE))
            if record is not None:
                record["maintenance"] = True
        return records

    async def unreserve(self, name: str, reservation: bytes) -> None:
        with contextlib.suppress(VirtkitError):
            await vms.unreserve(self._etcd(), name, reservation)

    async def defined(self, uuid: str) -> None:
        """Claim a VM just defined (or redefined) here; when the cluster refuses (the
        name is another host's), the define is undone and the Conflict raised."""
        vm = self.local(uuid)
        if vm is None:
            return
        try:
            await vms.claim(self._etcd(), self.host or "", self._lease(), vm)
        except Conflict:
            if vm.spec.get("transient") is not True and not vm.running:
                await self.domains.undefine(uuid)
            raise
        except EtcdUnavailable as exc:
            if not vm.running:
                await self.domains.undefine(uuid)
            raise HostDown(f"the cluster cannot record VM {vm.name!r} (etcd): {exc}; it "
                           "was not defined", fix="check 'virtkit cluster status'") from exc

    async def may_start(self, vm: vms.Local) -> None:
        """A VM starts only on its owner: refused (naming the owner) when another host
        owns it, or when etcd cannot say (a VM never runs on two hosts)."""
        try:
            await vms.ensure_owner(self._etcd(), self.host or "", self._lease(), vm)
            # recorded before QEMU starts: a start whose answer is lost with etcd still
            # leaves "running" behind, so no host takes the VM for a stopped one
            # (start --place of a VM whose host is down: service/clusterplace.py)
            await vms.set_desired(self._etcd(), vm.uuid, "running")
        except EtcdUnavailable as exc:
            raise HostDown(f"cannot confirm in the cluster that VM {vm.name!r} is this "
                           f"host's to run: {exc}", fix="check 'virtkit cluster status'; "
                           "a VM starts only while etcd answers") from exc

    async def undefined(self, vm: vms.Local) -> None:
        try:
            await vms.release(self._etcd(), vm.name, vm.uuid)
        except EtcdUnavailable as exc:  # the adopt loop removes the name later
            log.warning("cluster: cannot release VM %s yet: %s", vm.name, exc)

    async def desired(self, uuid: str, state: str) -> None:
        try:
            await vms.set_desired(self._etcd(), uuid, state)
        except EtcdUnavailable as exc:
            log.warning("cluster: cannot record VM %s as %s: %s", uuid, state, exc)

    # -- migration -----------------------------------------------------------------------

    async def take_over(self, uuid: str, *, arriving: bool = False) -> KeyValue | None:
        """On a migration's destination, before the guest resumes here or (offline,
        ``arriving``: not defined here yet) before it is defined here (see
        cluster/vms.py :func:`take_over`); refuses (the source keeps the VM) when etcd
        cannot be written or the ownership changed meanwhile."""
        if self.local(uuid) is None and not arriving:
            return None
        try:
            return await vms.take_over(self._etcd(), uuid, self.host or "", self._lease())
        except EtcdUnavailable as exc:
            raise HostDown(f"cannot take ownership of VM {uuid} in the cluster: {exc}",
                           fix="the source keeps running it; check 'virtkit cluster "
                               "status' and migrate again") from exc

    async def record(self, uuid: str) -> None:
        """After an offline migration's define here (the keys are ours already): the
        cluster's spec of it as defined here (its disks may have new paths)."""
        vm = self.local(uuid)
        if vm is None:
            return
        try:
            await vms.claim(self._etcd(), self.host or "", self._lease(), vm)
        except VirtkitError as exc:  # the keys are ours: only the spec is stale
            log.warning("cluster: the spec of VM %s migrated here is not recorded: %s",
                        vm.name, exc)

    async def give_back(self, uuid: str, previous: KeyValue) -> None:
        try:
            await vms.give_back(self._etcd(), uuid, previous, self._lease())
        except VirtkitError as exc:
            log.error("cluster: cannot give VM %s back to its source: %s", uuid, exc)

    # -- background ----------------------------------------------------------------------

    async def adopt_once(self) -> None:
        agent = self.cluster.agent
        if agent is None or not agent.lease or self.host is None:
            return
        etcd = self._etcd()
        self.problems = await vms.adopt(etcd, self.host, agent.lease, self._all_local())
        gone = await vms.forget_gone(
            etcd, self.host, lambda: {vm.uuid for vm in self._all_local()} | self.arriving)
        if gone:
            log.info("cluster: released the names of VMs no longer here: %s", gone)
        await clusterplace.forget_placed_away(self)

    async def run(self) -> None:
        await learn_machines()
        while True:
            try:
                await self.adopt_once()
                await self.ha.once()
            except EtcdUnavailable as exc:
                log.warning("cluster: VM records not checked: %s", exc)
            except Exception:
                log.exception("cluster: VM records not checked")
            await asyncio.sleep(ADOPT_INTERVAL)


def host_facts(cluster: ClusterService) -> dict[str, Any]:
    """What placement and forwarding need in this host's live record: its active
    networks and pools, the shared pools by folder (which disks another host sees too:
    evacuate and start --place), machine types, what its VMs commit, and its API."""
    store, root = cluster.store, cluster.folder.parent
    accelerators = ["tcg"] + (["kvm"] if os.path.exists("/dev/kvm") else [])
    return {**local_facts(store), "accelerators": accelerators,
            **({"machines": list(_found_machines)} if _found_machines is not None else {}),
            "committed": _committed(store.list_domains()),
            "api": {**({"url": url} if (url := cluster.api.url()) else {}),
                    "socket": str(root / "virtkitd.sock"),
                    "socket_ro": str(root / "virtkitd-ro.sock")}}


def local_facts(store: Store) -> dict[str, Any]:
    """This host's active networks and pools, and its shared pools by folder."""
    pools = [o for o in store.list_pools() if o.state == "active"]
    return {"networks": sorted(o.name for o in store.list_objects("network")
                               if o.state == "active"),
            "pools": sorted(o.name for o in pools),
            "shared_pools": {o.name: str(o.spec.get("target", "")) for o in pools
                             if str(o.spec.get("type")) in _SHARED}}


_SHARED = frozenset(str(t) for t in SHARED_TYPES)
_MACHINES = ("q35", "pc", "microvm")


#: the machine types found by :func:`learn_machines` (None: not asked yet, so the
#: record leaves them out and placement's machine filter lets the host pass)
_found_machines: tuple[str, ...] | None = None


async def learn_machines() -> None:
    """Ask QEMU once, off the event loop, which machine types this host has."""
    global _found_machines
    if _found_machines is None:
        _found_machines = await asyncio.to_thread(_machines)


def _machines() -> tuple[str, ...]:
    """The machine types of the spec that this host's QEMU has."""
    try:
        names = qemubin.qemu_info().machine_names
    except (VirtkitError, OSError):
        return ()
    return tuple(m for m in _MACHINES if m in names)


def _committed(rows: list[Any]) -> dict[str, int]:
    needs = [vms.need_of(row.spec) for row in rows]
    return {"memory_mib": sum(n["memory_mib"] for n in needs),
            "vcpus": sum(n["vcpus"] for n in needs)}

