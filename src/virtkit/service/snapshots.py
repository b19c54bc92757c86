"""The snapshot command API (virsh snapshot-*): every front end calls only this.

A snapshot belongs to one domain: every lookup is by (domain, name), so a
name of another domain's snapshot is NotFound naming the domain asked about.
Quiescing freezes the guest's file systems through the domain's guest agent
(``guest-fsfreeze-freeze``/``-thaw``); ``quiescer_for`` can replace that source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound
from virtkit.model.snapshot import check_name, descendants
from virtkit.runtime.blockjobs import Progress
from virtkit.runtime.events import EventBus
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.snapdisks import AgentQuiescer, BestEffortQuiescer, agent_of
from virtkit.runtime.snapshot_delete import SnapshotDeleter
from virtkit.runtime.snapshot_revert import SnapshotReverter
from virtkit.runtime.snapshots import CreateRequest, Quiescer, SnapshotRuntime, StartAs
from virtkit.service.models.snapshots import (
    SnapshotCreate,
    SnapshotDisk,
    SnapshotInfo,
    SnapshotsDeleted,
)
from virtkit.store.db import DomainRow, SnapshotRow, Store


def summary(snap: SnapshotRow, children: int = 0, **more: Any) -> SnapshotInfo:
    """One snapshot (snapshot-list --json, snapshot-info); ``more``: the fields
    snapshot-info, create and revert add (domain, quiesced, domain_state)."""
    record = snap.record
    return SnapshotInfo(
        name=snap.name, parent=snap.parent, created=snap.created,
        kind=snap.kind, memory=snap.memory, state=snap.state,
        current=snap.current, description=record.get("description", ""),
        memory_file=record.get("memory_file"), children=children,
        disks=[SnapshotDisk(**{k: d.get(k) for k in ("target", "mode", "file", "format",
                                                     "overlay")})
               for d in record.get("disks", [])],
        **more)


class SnapshotService:
    """Create, list, revert and delete the snapshots of domains."""

    def __init__(self, store: Store, lifecycle: Lifecycle, bus: EventBus,
                 memory_dir: Path) -> None:
        self._store = store
        self._life = lifecycle
        self._bus = bus
        self._runtime = SnapshotRuntime(lifecycle, store, memory_dir)
        self._deleter = SnapshotDeleter(lifecycle, store)
        self._reverter = SnapshotReverter(lifecycle, store, memory_dir)
        #: domain uuid -> a Quiescer (None: none); unset, the domain's guest agent is used
        self.quiescer_for: Callable[[str], Quiescer | None] | None = None

    def _domain(self, ref: str) -> DomainRow:
        return self._store.get_domain(ref)

    def _snap(self, row: DomainRow, name: str) -> SnapshotRow:
        snap = self._store.find_snapshot(row.uuid, name)
        if snap is None:
            raise NotFound(f"domain '{row.name}' has no snapshot '{name}'",
                           fix=f"see 'virtkit snapshot-list {row.name}'")
        return snap

    def _publish(self, kind: str, row: DomainRow, snapshot: str, **detail: Any) -> None:
        state = self._life.vm(row.uuid, row.name).state.value
        self._bus.publish(kind, row.uuid, domain=row.name, uuid=row.uuid, state=state,
                          reason=f"snapshot {snapshot}", snapshot=snapshot, **detail)

    def _children(self, uuid: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for snap in self._store.list_snapshots(uuid):
            if snap.parent:
                counts[snap.parent] = counts.get(snap.parent, 0) + 1
        return counts

    # -- reading -------------------------------------------------------------------

    def list(self, ref: str) -> list[SnapshotInfo]:
        """All snapshots of a domain, oldest first."""
        row = self._domain(ref)
        counts = self._children(row.uuid)
        return [summary(s, counts.get(s.name, 0)) for s in self._store.list_snapshots(row.uuid)]

    def info(self, ref: str, name: str) -> SnapshotInfo:
        row = self._domain(ref)
        snap = self._snap(row, name)
        return summary(snap, self._children(row.uuid).get(name, 0), domain=row.name)

    def current(self, ref: str) -> SnapshotInfo:
        """The snapshot the domain was last snapshotted or reverted to."""
        row = self._domain(ref)
        snap = next((s for s in self._store.list_snapshots(row.uuid) if s.current), None)
        if snap is None:
            raise NotFound(f"domain '{row.name}' has no current snapshot",
                           fix=f"take one: virtkit snapshot-create-as {row.name} NAME")
        return self.info(row.uuid, snap.name)

    def count(self, uuid: str) -> int:
        return len(self._store.list_snapshots(uuid))

    # -- changing ------------------------------------------------------------------

    async def create(self, ref: str, body: SnapshotCreate,
                     progress: Progress | None = None) -> SnapshotInfo:
        """snapshot-create-as: name (default: the time), description, kind
        (internal/external), disk_only, memspec, quiesce."""
        row = self._domain(ref)
        name = check_name(body.name or str(int(time.time())))
        if self._store.find_snapshot(row.uuid, name) is not None:
            raise Conflict(f"domain '{row.name}' already has a snapshot '{name}'",
                           fix="choose another name, or snapshot-delete it first")
        quiescer = self._quiescer(row) if body.quiesce else \
            self._automatic_quiescer(row, disk_only=body.disk_only)
        request = CreateRequest(name, body.description or "", body.kind, body.disk_only,
                                body.memspec or None, quiescer)
        snap = await self._runtime.create(row.uuid, row.name, request, progress)
        self._publish("snapshot-created", row, name, snapshot_kind=snap.kind)
        quiesced = quiescer is not None and getattr(quiescer, "froze", True)
        return summary(snap, domain=row.name, quiesced=quiesced)

    def _automatic_quiescer(self, row: DomainRow, *, disk_only: bool) -> Quiescer | None:
        """A disk-only snapshot of a running guest whose agent is connected freezes its
        file systems unasked (best effort): the images are then consistent, not merely
        crash-consistent.  Snapshots with memory need no freeze."""
        vm = self._life.vm(row.uuid, row.name)
        running = vm.running
        agent = agent_of(vm)
        if not disk_only or running is None or agent is None or \
                getattr(running, "agent_open", None) is not True:
            return None
        return BestEffortQuiescer(agent)

    def _quiescer(self, row: DomainRow) -> Quiescer:
        """The domain's guest agent as a freezer (or what ``quiescer_for`` gives)."""
        vm = self._life.vm(row.uuid, row.name)
        if vm.running is None:
            raise InvalidSpec(f"--quiesce needs a running domain; '{row.name}' is "
                              f"{vm.state.value} (there is no file system to freeze)",
                              field="quiesce", fix="drop --quiesce")
        quiescer: Quiescer | None
        if self.quiescer_for is not None:
            quiescer = self.quiescer_for(row.uuid)
        else:
            agent = agent_of(vm)
            quiescer = AgentQuiescer(agent) if agent is not None else None
        if quiescer is None:
            raise InvalidSpec(
                f"cannot quiesce domain '{row.name}': it has no guest agent to freeze its "
                "file systems", field="quiesce",
                fix="drop --quiesce, or give the domain a guest agent (guest_agent: true in "
                    "its spec) with qemu-guest-agent running in the guest")
        return quiescer

    async def revert(self, ref: str, name: str, start: str | None = None,
                     progress: Progress | None = None) -> SnapshotInfo:
        """snapshot-revert; ``start`` running/paused overrides the snapshot's state."""
        row = self._domain(ref)
        snap = self._snap(row, name)
        if start not in (None, "running", "paused"):
            raise InvalidSpec(f"start must be running or paused, not {start!r}", field="start")
        target: StartAs = "running" if start == "running" else "paused" if start else None
        await self._reverter.revert(row.uuid, row.name, snap, target, progress)
        self._publish("snapshot-reverted", row, name)
        info = self.info(row.uuid, name)
        info.domain_state = self._life.vm(row.uuid, row.name).state.value
        return info

    async def delete(self, ref: str, name: str, *, children: bool = False,
                     metadata: bool = False, progress: Progress | None = None
                     ) -> SnapshotsDeleted:
        """snapshot-delete; ``children`` also deletes every snapshot below it (deepest
        first); ``metadata`` forgets them and leaves images untouched."""
        row = self._domain(ref)
        snap = self._snap(row, name)
        names = [name]
        if children:
            parents = {s.name: s.parent for s in self._store.list_snapshots(row.uuid)}
            names = [*descendants(parents, name), name]
        notes: list[str] = []
        for each in names:
            current = self._snap(row, each) if each != name else snap
            notes += await self._deleter.delete(row.uuid, row.name, current,
                                                metadata_only=metadata, progress=progress)
            self._publish("snapshot-deleted", row, each)
        return SnapshotsDeleted(domain=row.name, deleted=names, notes=notes)

