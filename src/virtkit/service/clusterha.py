"""HA restart (docs/cluster.md, "HA and fencing"): this host restarts the HA VMs of a
host that died, restarts its own HA VMs that were fenced while it kept its lease, and
forgets its copy of a VM another host restarted while this one was away.

Runs when the hosts watch sees a host record go (its lease expired) and every few
seconds with the adopt loop (service/clustervms.py).  Which surviving host restarts an
orphaned VM is placement's choice (the same on every host: the same view, the same
weighing); the chosen host claims it by CAS (cluster/ha.py) and starts it.  If the
chosen host does not act within ``TAKEOVER_GRACE``, any host that can take it tries.

Before an orphan starts here, its rbd disks are fenced at the storage (the old host's
Ceph clients blocklisted, service/storagefence.py); a fence that fails gives the VM
back unstarted.

Nothing here starts an HA VM while this host's own lease is doubtful (the fencer's
``fresh()``): a host that may be fenced must not start what it would have to kill.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from virtkit.cluster import ha, placement
from virtkit.cluster.etcd import Etcd
from virtkit.cluster.vms import NAMES, OWNERS, SPECS
from virtkit.errors import Conflict, VirtkitError
from virtkit.service.storagefence import fence_storage

if TYPE_CHECKING:
    from virtkit.service.clustervms import ClusterVms

log = logging.getLogger(__name__)

#: seconds an orphan waits for the host placement chose before any host may take it
TAKEOVER_GRACE = 10.0


class HaRecovery:
    def __init__(self, vms: ClusterVms) -> None:
        self.vms = vms
        self._seen: dict[str, float] = {}  # orphan uuid -> when this host first saw it
        self._lock = asyncio.Lock()

    def _ready(self) -> tuple[Etcd, str, int] | None:
        """etcd, this host's name and lease, when this host may start HA VMs now."""
        cluster = self.vms.cluster
        agent, fencer, etcd = cluster.agent, cluster.fencer, cluster.etcd
        if agent is None or not agent.lease or etcd is None or cluster.host_name is None:
            return None
        if fencer is None or not fencer.fresh():
            return None
        return etcd, cluster.host_name, agent.lease

    async def once(self) -> list[str]:
        """One pass; the names of the VMs started here."""
        async with self._lock:
            ready = self._ready()
            if ready is None:
                return []
            etcd, me, lease = ready
            started = await self._take_orphans(etcd, me, lease)
            started += await self._restart_fenced(etcd, lease)
            await self._forget_moved(etcd, me)
            return started

    async def _take_orphans(self, etcd: Etcd, me: str, lease: int) -> list[str]:
        view = await ha.look(etcd)
        now = time.monotonic()
        current = {o.uuid for o in view.orphans}
        self._seen = {u: t for u, t in self._seen.items() if u in current}
        started = []
        for orphan in view.orphans:
            first = self._seen.setdefault(orphan.uuid, now)
            need = placement.Need.of(orphan.spec)
            try:
                chosen = placement.choose(placement.candidates(view.hosts, view.ledger), need)
            except Conflict as exc:
                log.error("cluster: HA VM %s (was on %s) cannot be restarted: %s",
                          orphan.name, orphan.was_on, exc)
                continue
            if chosen.name != me and now - first < TAKEOVER_GRACE:
                continue
            if not await ha.claim(etcd, orphan, me, lease):
                continue  # another host claimed it, or its host came back
            log.warning("cluster: HA VM %s (%s) claimed here: host %s is gone", orphan.name,
                        orphan.uuid, orphan.was_on)
            try:
                await fence_storage(self.vms.domains.storage, orphan.name, orphan.spec)
                await self._start_here(orphan)
            except VirtkitError as exc:
                log.error("cluster: HA VM %s claimed but not started here: %s; giving it "
                          "back", orphan.name, exc)
                await ha.unclaim(etcd, orphan, lease)
                continue
            log.warning("cluster: HA VM %s restarted here (host %s is gone)", orphan.name,
                        orphan.was_on)
            started.append(orphan.name)
        return started

    async def _start_here(self, orphan: ha.Orphan) -> None:
        domains, store = self.vms.domains, self.vms.cluster.store
        if store.find_domain(orphan.uuid) is None:
            await asyncio.to_thread(domains.define, {**orphan.spec, "uuid": orphan.uuid})
        await domains.start(orphan.uuid)

    async def _restart_fenced(self, etcd: Etcd, lease: int) -> list[str]:
        """This host's HA VMs that crashed (a fence, or QEMU died) while their owner key
        stayed on our lease and their desired state is running: nobody else may run
        them, so we start them again."""
        started = []
        for vm in self.vms.crashed_ha():
            owner = await etcd.get(OWNERS + vm.uuid)
            spec = await etcd.get(SPECS + vm.uuid)
            if owner is None or owner.lease != lease or spec is None \
                    or spec.json().get("desired") != "running":
                continue
            try:
                await self.vms.domains.start(vm.uuid)
            except VirtkitError as exc:
                log.error("cluster: HA VM %s not restarted: %s", vm.name, exc)
                continue
            log.warning("cluster: HA VM %s restarted here after it stopped", vm.name)
            started.append(vm.name)
        return started

    async def _forget_moved(self, etcd: Etcd, me: str) -> None:
        """A VM defined here that another host now owns (restarted there while this
        host was cut off or down): the local definition goes, its disks stay."""
        for vm in self.vms.stopped_ha():
            held = await etcd.get(NAMES + vm.name)
            owner = await etcd.get(OWNERS + vm.uuid)
            if held is None or owner is None:
                continue
            value = held.json()
            if value.get("uuid") != vm.uuid or value.get("host") == me \
                    or owner.json().get("host") == me:
                continue
            try:
                await self.vms.domains.undefine(vm.uuid)
            except VirtkitError as exc:
                log.error("cluster: VM %s runs on host %s now; its stale definition here "
                          "could not be removed: %s", vm.name, value.get("host"), exc)
                continue
            log.warning("cluster: VM %s runs on host %s now: removed its definition here "
                        "(disks kept)", vm.name, value.get("host"))
