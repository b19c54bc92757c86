"""The statistics API: domstats, vcpuinfo, the Prometheus exposition, host capacity.

Every domain is collected concurrently (one QMP round each, see
runtime/stats.py), so asking for 20 domains costs about as much as asking for
one.  Groups follow ``virsh domstats``: state, cpu-total, balloon, vcpu,
interface, block.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import NoReturn

from virtkit.errors import InvalidSpec, StateError, VirtkitError
from virtkit.model.domain import Domain
from virtkit.model.load import load_domain
from virtkit.model.state import State
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.stats import StatsCollector
from virtkit.service import capacity, metrics
from virtkit.service.models.stats import Capacity, DomainStats, StateReason, VcpuInfo
from virtkit.store.db import DomainRow, Store

GROUPS = ("state", "cpu-total", "balloon", "vcpu", "interface", "block")
_GROUP_KEYS = {"cpu-total": "cpu", "balloon": "balloon", "vcpu": "vcpu", "interface": "net",
               "block": "block"}


def parse_groups(text: str | None) -> set[str]:
    """'state,cpu-total' -> {'state', 'cpu-total'}; empty or None means all groups."""
    if not text:
        return set(GROUPS)
    groups = {part.strip() for part in text.split(",") if part.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise InvalidSpec(f"unknown stats group {', '.join(sorted(unknown))}",
                          fix="use " + ", ".join(GROUPS))
    return groups


class StatsService:
    """Live statistics of domains and the host's allocation."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._life = lifecycle
        self._collector = StatsCollector()

    def _rows(self, refs: list[str] | None) -> list[DomainRow]:
        if not refs:
            return self._store.list_domains()
        return [self._store.get_domain(ref) for ref in refs]

    async def domstats(self, refs: list[str] | None = None, groups: set[str] | None = None,
                       *, active_only: bool = False) -> list[DomainStats]:
        """Stats of the named domains (all domains when none are named)."""
        groups = groups or set(GROUPS)
        rows = self._rows(refs)
        vms = [self._life.vm(row.uuid, row.name) for row in rows]
        if active_only:
            pairs = [(r, v) for r, v in zip(rows, vms, strict=True) if v.running is not None]
            rows, vms = [p[0] for p in pairs], [p[1] for p in pairs]
        self._collector.forget_missing(self._live_processes())
        results = await asyncio.gather(*(self._one(row, vm, groups)
                                         for row, vm in zip(rows, vms, strict=True)))
        return list(results)

    def _live_processes(self) -> set[tuple[str, int]]:
        live = set()
        for row in self._store.list_domains():
            running = self._life.vm(row.uuid, row.name).running
            if running is not None:
                live.add((row.uuid, running.process.pid))
        return live

    async def _one(self, row: DomainRow, vm: Vm, groups: set[str]) -> DomainStats:
        spec = vm.boot_spec if vm.boot_spec is not None else load_domain(row.spec)
        result = DomainStats(name=row.name, uuid=row.uuid)
        if "state" in groups:
            result.state = StateReason(state=vm.state.value, reason=vm.reason)
        running = vm.running
        if running is None or vm.state is State.SHUTOFF:
            return result
        result.pid = running.process.pid
        result.started = vm.started
        try:
            collected = await self._collector.collect(spec, running)
        except VirtkitError as exc:  # QEMU went away between the listing and the query
            result.error = exc.message
            return result
        for group, key in _GROUP_KEYS.items():
            if group in groups:
                setattr(result, key, collected[key])
        return result

    async def vcpuinfo(self, ref: str) -> VcpuInfo:
        """vCPU -> host thread, host CPU it last ran on, state, CPU time, affinity."""
        stats = (await self.domstats([ref], {"state", "vcpu", "cpu-total"}))[0]
        if stats.vcpu is None:
            raise_not_running(stats.name, "vcpuinfo")
        return VcpuInfo(name=stats.name, pid=stats.pid, state=stats.state,
                        vcpus=stats.vcpu["vcpus"], host_cpus=os.cpu_count())

    async def metrics(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every domain and the host."""
        stats = await self.domstats()
        return metrics.exposition([each.wire() for each in stats], self.capacity().wire(),
                                  time.time())

    def capacity(self) -> Capacity:
        """Allocated vCPUs and memory of running and defined domains vs the host."""
        rows = self._store.list_domains()
        running: list[Domain] = []
        defined: list[Domain] = []
        for row in rows:
            spec = load_domain(row.spec)
            defined.append(spec)
            live = self._life.vm(row.uuid, row.name).running
            if live is not None:
                running.append(live.live if live.live is not None else spec)
        return Capacity(**capacity.report(running, defined, os.environ))


def raise_not_running(name: str, what: str) -> NoReturn:
    raise StateError(f"cannot show {what} of domain '{name}': it is not running",
                     current="shutoff", requested=what, fix=f"virtkit start {name}")
