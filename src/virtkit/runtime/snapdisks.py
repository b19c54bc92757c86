"""Which configuration and which QEMU device a snapshot's disk is, running or not.

A running domain runs ``running.live`` (hotplug changes it, the stored spec only
with --config) and its disks have the QEMU ids ``disk{running.disk_ids[i]}``,
not their list positions: a hot-added disk takes a fresh number.  Snapshots of a
running domain are therefore planned on the live configuration and find disks by
target name; moving a disk onto another image (an overlay, a merged-into frozen
image) changes the stored spec and the live configuration alike.
"""

from __future__ import annotations

import logging

from virtkit.errors import VirtkitError
from virtkit.model.domain import Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.snapshot import on_image
from virtkit.qemu.agent import GuestAgent
from virtkit.qemu.argv import disk_slots
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.store.db import Store

log = logging.getLogger(__name__)


def running_config(running: Running | None, stored: Domain) -> Domain:
    """What QEMU runs now (the stored spec when it is not running)."""
    live = getattr(running, "live", None) if running is not None else None
    return live if isinstance(live, Domain) else stored


def device_ids(running: Running, config: Domain) -> dict[str, str]:
    """Target name (vda ...) -> QEMU device id (disk{n}) of each disk ``config`` has."""
    numbers = list(getattr(running, "disk_ids", []) or [])
    if len(numbers) != len(config.disks):
        numbers = list(range(len(config.disks)))
    return {slot.target: f"disk{numbers[slot.index]}" for slot in disk_slots(config)}


def targets(config: Domain) -> list[str]:
    return [slot.target for slot in disk_slots(config)]


def disk_on_target(config: Domain, target: str) -> tuple[int, str | None, str | None] | None:
    """(index, path, format) of the disk named ``target`` in ``config``."""
    for slot, disk in zip(disk_slots(config), config.disks, strict=True):
        if slot.target == target:
            return slot.index, disk.path, disk.format
    return None


def move_disks(store: Store, lifecycle: Lifecycle, vm: Vm,
               moves: dict[str, tuple[str, str | None]]) -> None:
    """Point the disks named by target at new images (path, format): in the stored spec
    and, when running, in the live configuration (recorded for a daemon restart)."""
    row = store.get_domain(vm.uuid)
    spec = load_domain(row.spec)
    changed = False
    for target, (path, fmt) in moves.items():
        found = disk_on_target(spec, target)
        if found is not None:
            spec.disks[found[0]] = on_image(spec.disks[found[0]], path, fmt)
            changed = True
    if changed:
        store.update_domain(vm.uuid, row.name, dump_domain(spec), None)
    running = vm.running
    live = getattr(running, "live", None)
    if running is not None and isinstance(live, Domain):
        for target, (path, fmt) in moves.items():
            found = disk_on_target(live, target)
            if found is not None:
                live.disks[found[0]] = on_image(live.disks[found[0]], path, fmt)
        lifecycle.record(vm)


class AgentQuiescer:
    """The guest agent's fsfreeze as a :class:`~virtkit.runtime.snapshots.Quiescer`."""

    def __init__(self, agent: GuestAgent) -> None:
        self._agent = agent

    async def freeze(self) -> int:
        return await self._agent.fsfreeze_freeze()

    async def thaw(self) -> int:
        return await self._agent.fsfreeze_thaw()


class BestEffortQuiescer:
    """Freeze through the agent if it can; if it cannot, the snapshot goes ahead
    crash-consistent (as without an agent) instead of failing.  Used when the user did
    not ask for --quiesce but the guest has a connected agent."""

    def __init__(self, agent: GuestAgent) -> None:
        self._inner = AgentQuiescer(agent)
        self._frozen = False
        #: whether the file systems were frozen for the snapshot
        self.froze = False

    async def freeze(self) -> int:
        try:
            count = await self._inner.freeze()
        except VirtkitError as exc:
            log.warning("snapshot without file system freeze: %s", exc)
            return 0
        self._frozen = self.froze = True
        return count

    async def thaw(self) -> int:
        if not self._frozen:
            return 0
        self._frozen = False
        return await self._inner.thaw()


def agent_of(vm: Vm) -> GuestAgent | None:
    """The guest agent client of a running domain (None without one)."""
    running = vm.running
    agent = getattr(running, "agent", None) if running is not None else None
    return agent if isinstance(agent, GuestAgent) else None
