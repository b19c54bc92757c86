"""The destination end of live migrations (docs/migration.md): ``incoming``,
``status`` (the source's keepalive), ``finish``, ``abort``, and what a restarted
daemon does with the incoming migrations an earlier one left.

An incoming domain is defined *transient* until :meth:`finish` (with ``persistent``)
keeps it, or it lands in the shut-off definition of the same domain that was here
(ping-pong).  The resolution rule: this end runs the VM only in ``finish``; every
other end of an incoming migration — the source's ``DELETE``, its QEMU's exit, the
deadline, a source that stopped asking (keepalive), this daemon's restart — removes
the QEMU, the transient definition and the images it created, and leaves a
definition that was here as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from virtkit.errors import Conflict, InvalidSpec, NotFound, Unsupported, VirtkitError
from virtkit.model.domain import Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.runtime import migration, outgoing, storagecopy
from virtkit.runtime.launcher import CapsProvider, Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.qemunames import disk_slots
from virtkit.service import sharedstore
from virtkit.service.copyplan import align_disks, copied
from virtkit.service.domains import DomainService
from virtkit.service.migration_journal import Journal
from virtkit.service.models.documents import DomainDocument
from virtkit.service.models.migrations import (
    CopyDisk,
    IncomingRequest,
    IncomingStarted,
    IncomingStatus,
    NbdServer,
    OfflineIncomingRequest,
)
from virtkit.service.offline_migration import defined_here
from virtkit.store.db import Store

log = logging.getLogger(__name__)

#: seconds past the source's own timeout an unfinished incoming migration is kept: a
#: source daemon that died mid-way must not leave a paused QEMU here for ever
DEADLINE_MARGIN = 60.0
MAX_DEADLINE = 7 * 86400.0
#: the keepalive silence a source may ask for is capped like the deadline
MAX_SILENCE = 3600.0


def deadline_of(value: Any) -> float:
    """Seconds an incoming migration may stay unfinished (JSON allows Infinity/NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        return migration.DEFAULT_TIMEOUT + DEADLINE_MARGIN
    return min(float(value), MAX_DEADLINE)


def _silence(value: Any) -> float | None:
    """The keepalive silence the source asked for (None: it does not keep alive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        return None
    return min(float(value), MAX_SILENCE)


@dataclass
class Incoming:
    """One incoming migration not finished yet."""

    created: list[storagecopy.CreatedImage] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    #: it came into a shut-off definition that was here: the source's definition,
    #: which finish --persistent puts in its place
    adopted: DomainDocument | None = None
    #: the copied disks' device ids
    copied: set[str] = field(default_factory=set)
    silence: float | None = None
    seen: float = field(default_factory=time.monotonic)


class IncomingMigrations:
    """Incoming live migrations of this daemon."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService,
                 caps_for: CapsProvider, journal: Journal) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._caps_for = caps_for
        self._journal = journal
        self._pending: dict[str, Incoming] = {}
        self._watchdogs: set[asyncio.Task[None]] = set()

    def _check_image_paths(self, copies: list[CopyDisk]) -> None:
        """Every image a migration would create here passes the path policy first
        (host/pathpolicy.py): a source never makes this host write where a definition
        could not name."""
        for index, disk in enumerate(copies):
            self._domains.policy.check(disk.path, field=f"copy_storage.disks[{index}].path",
                                       kind="new")

    def validate(self, body: IncomingRequest) -> tuple[Domain, Domain, bool]:
        """The running configuration and the definition of an incoming domain, checked
        against this host, and whether it comes into a shut-off definition of the same
        UUID and name that is already here (libvirt allows that: a domain migrated back
        and forth between hosts that both keep it defined); nothing is started or
        stored yet."""
        spec = body.spec
        definition = body.persistent_spec or spec
        live = load_domain(spec)
        slot = defined_here(self._store, live.uuid, live.name)
        if slot is not None and self._life.vm(slot.uuid, slot.name).running is not None:
            raise Conflict(f"domain '{live.name}' is already running on the destination",
                           fix="stop it there first")
        adopted = slot is not None
        live = self._domains.prepare(live)
        sharedstore.check_here(self._domains.storage,
                               [disk.model_dump() for disk in body.shared_disks or []])
        confiner = self._life.confiner
        if body.postcopy and confiner is not None and confiner.userfaultfd_refused():
            raise Unsupported(
                "post-copy needs userfaultfd on the destination, which a confined QEMU (its "
                "own uid, no capabilities) may not use while vm.unprivileged_userfaultfd=0",
                fix="on the destination: sysctl vm.unprivileged_userfaultfd=1, or run its "
                    "daemon with --no-confine; or migrate without --postcopy")
        caps, _binary = self._caps_for(live)
        here = caps.machine_type(live.machine.value)
        there = body.machine_type
        if there is not None and there != here:
            raise InvalidSpec(f"machine type {there} is not available on the destination "
                              f"(its QEMU makes {live.machine.value} {here})",
                              field="machine_type",
                              fix="migrate between hosts with the same QEMU machine version")
        accel = body.accelerator
        if accel is not None and accel != caps.accel:
            raise InvalidSpec(f"the source runs the VM with {accel}, the destination would "
                              f"use {caps.accel}", field="accelerator",
                              fix="migrate between hosts with the same accelerator")
        for key, value in (("uuid", str(live.uuid)), ("name", live.name)):
            if definition.get(key, value) != value:
                raise InvalidSpec(f"persistent_spec.{key} is not the running domain's",
                                  field=f"persistent_spec.{key}")
        return live, self._domains.prepare(load_domain({
            **definition, "uuid": str(live.uuid), "name": live.name, "transient": True})), \
            adopted

    def _journal_write(self, uuid: str, pending: Incoming) -> None:
        self._journal.write("in", uuid, {
            "created": [[i.path, i.device, i.inode] for i in pending.created],
            "adopted": pending.adopted is not None})

    async def incoming(self, body: IncomingRequest, address: str,
                       copies: list[CopyDisk]) -> IncomingStarted:
        """Validate, start QEMU paused waiting for the stream, listen on ``address``."""
        uuid: str | None = str(load_domain(body.spec).uuid)
        pending = Incoming(silence=_silence(body.keepalive))
        if uuid is not None:
            if uuid in self._pending:
                raise Conflict(f"an incoming migration of {uuid} is already under way here")
            # before the first image or definition exists: a restart removes them
            self._journal_write(uuid, pending)

        def made(image: storagecopy.CreatedImage) -> None:
            pending.created.append(image)
            if uuid is not None:
                self._journal_write(uuid, pending)
        # the images first: the same checks as define then find them in place
        try:
            self._check_image_paths(copies)
            # worker threads: qemu-img creates the images, the checks stat user paths
            await asyncio.to_thread(storagecopy.create_images, image_list(copies),
                                    on_created=made)
            live, definition, adopted = await asyncio.to_thread(self.validate, body)
        except BaseException:
            storagecopy.remove_images(pending.created)
            if uuid is not None and uuid not in self._pending:
                self._journal.remove("in", uuid)
            raise
        pending.copied = {disk.device for disk in copies}
        if adopted:  # the definition here stays as it is unless finish says persistent
            row = self._store.get_domain(definition.uuid)
            pending.adopted = dump_domain(definition)
        else:
            row = self._store.insert_domain(definition.uuid, definition.name,
                                            dump_domain(definition))
        self._pending[row.uuid] = pending
        self._journal_write(row.uuid, pending)
        vm = self._life.vm(row.uuid, row.name)
        answer = IncomingStarted(id=row.uuid, domain=row.name)
        try:
            async with vm.lock:
                running = await self._life.start_incoming(vm, live, body.layout)
                uri = await migration.listen_incoming(running.monitor, address,
                                                      postcopy=body.postcopy)
                answer = answer.model_copy(update={"uri": uri})
                if copies:
                    pending.exports = sorted(pending.copied)
                    nbd = await storagecopy.export_disks(running.monitor, address,
                                                         pending.exports)
                    answer = answer.model_copy(update={"nbd": NbdServer.model_validate(nbd)})
        except BaseException:
            await self._remove(vm, "incoming migration failed", pending)
            raise
        pending.seen = time.monotonic()
        task = asyncio.create_task(self._watch(vm, running, pending,
                                               deadline_of(body.deadline)))
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)
        return answer

    def _forget(self, uuid: str, pending: Incoming) -> bool:
        """Drop ``pending`` (if it is still the one registered) and its journal."""
        if self._pending.get(uuid) is not pending:
            return False
        del self._pending[uuid]
        self._journal.remove("in", uuid)
        return True

    async def _watch(self, vm: Vm, running: Running, pending: Incoming,
                     deadline: float) -> None:
        """Remove the incoming migration when nobody finished or deleted it in time, or
        its source stopped asking about it (keepalive), or its QEMU ended."""
        end = time.monotonic() + deadline
        while self._pending.get(vm.uuid) is pending:
            now = time.monotonic()
            if vm.running is not running:  # the stream broke or was cancelled
                await self._remove(vm, "incoming migration failed", pending)
                return
            quiet = pending.silence is not None and now - pending.seen > pending.silence
            if now >= end or quiet:
                why = "expired" if now >= end else "abandoned by its source (no keepalive)"
                log.warning("incoming migration of %s %s", vm.name, why)
                await self._remove(vm, f"incoming migration {why}", pending)
                return
            await asyncio.sleep(min(end - now, 0.5))

    async def _remove(self, vm: Vm, reason: str, pending: Incoming | None, *,
                      force: bool = False) -> bool:
        """Kill the incoming QEMU, remove the transient definition and the images this
        migration created (idempotent); a definition that was here before stays as it
        was.  Nothing happens when the migration was finished in the meantime (checked
        under the VM's lock, which finish holds)."""
        async with vm.lock:
            if pending is not None and self._pending.get(vm.uuid) is not pending:
                return False  # finished, or removed by someone else
            if vm.running is not None:
                if not vm.migrating_in and not force:  # it runs here now
                    return False
                with contextlib.suppress(VirtkitError, TimeoutError):
                    await self._life.kill_locked(vm, reason)
            row = self._store.find_domain(vm.uuid)
            if row is not None and row.spec.get("transient"):
                self._store.delete_domain(vm.uuid)
                self._life.forget(vm.uuid)
            if pending is not None:
                self._forget(vm.uuid, pending)
                storagecopy.remove_images(pending.created)
            return True

    def status(self, migration_id: str) -> IncomingStatus:
        """The incoming migration ``migration_id`` (the source's keepalive asks this
        every second); asking counts as the source being alive."""
        pending = self._pending.get(migration_id)
        row = self._store.find_domain(migration_id)
        if row is None:
            raise NotFound(f"no incoming migration {migration_id}")
        vm = self._life.vm(row.uuid, row.name)
        incoming = pending is not None and vm.running is not None \
            and vm.migrating_in
        if pending is not None:
            pending.seen = time.monotonic()
        return IncomingStatus(id=row.uuid, domain=row.name, incoming=incoming,
                              state=vm.state.value, reason=vm.reason)

    async def finish(self, migration_id: str, *, persistent: bool = False,
                     paused: bool = False) -> dict[str, Any]:
        """Run the fully received VM here (the source stopped its copy), or keep it
        paused (``paused``: it was paused there, or --suspend)."""
        row = self._store.find_domain(migration_id)
        if row is None:
            raise NotFound(f"no incoming migration {migration_id}")
        vm = self._life.vm(row.uuid, row.name)
        async with vm.lock:
            running = vm.running
            pending = self._pending.get(vm.uuid)
            if running is None or not vm.migrating_in or pending is None:
                raise Conflict(f"domain '{vm.name}' is not an incoming migration here "
                               f"(it is {vm.state.value}, {vm.reason or 'no reason'})")
            try:
                if pending.exports:  # the source completed its mirrors before switch-over
                    await storagecopy.stop_exports(running.monitor, pending.exports)
                await migration.finish_incoming(running.monitor, run=not paused)
            except BaseException:
                with contextlib.suppress(VirtkitError, TimeoutError):
                    await self._life.kill_locked(vm, "incoming migration failed")
                raise
            self._life.set_state(vm, State.PAUSED if paused else State.RUNNING, "migrated",
                                 event="migrated")
            self._forget(vm.uuid, pending)  # the copies are the VM's disks now
            self._keep_definition(vm, running, pending, persistent)
        return self._domains.info(vm.uuid).wire()

    def _keep_definition(self, vm: Vm, running: Running, pending: Incoming,
                         persistent: bool) -> None:
        """The definition after finish: with ``persistent`` the source's (replacing one
        that was here), else the one here.  Either names the files the VM now runs
        from: the copied disks, and — for a definition that was here before (ping-pong)
        — every writable disk, whose files the VM may have changed while away."""
        row = self._store.get_domain(vm.uuid)
        spec = {**(pending.adopted or row.spec), "transient": False} if persistent \
            else row.spec
        if running.live is not None:
            keep_all = pending.adopted is not None and not persistent
            spec = align_disks(spec, running.live, None if keep_all else pending.copied)
        if spec != row.spec:
            self._store.update_domain(row.uuid, row.name, spec, None)

    async def abort(self, migration_id: str) -> bool:
        """Remove an incoming migration that was not finished; an unknown one is fine
        (the source may ask twice, or after the QEMU ended by itself)."""
        pending = self._pending.get(migration_id)
        row = self._store.find_domain(migration_id)
        if row is None:
            if pending is not None:  # its QEMU ended and took the transient definition
                self._forget(migration_id, pending)
                storagecopy.remove_images(pending.created)
            return False
        vm = self._life.vm(row.uuid, row.name)
        if pending is None:
            if vm.running is not None and not vm.migrating_in:
                raise Conflict(f"domain '{vm.name}' already runs here; it is no longer an "
                               "incoming migration")
            return False
        removed = await self._remove(vm, "incoming migration cancelled", pending)
        if not removed and vm.running is not None and not vm.migrating_in:
            raise Conflict(f"domain '{vm.name}' already runs here; it is no longer an "
                           "incoming migration")
        return removed

    # -- daemon start ------------------------------------------------------------

    async def recover(self) -> list[str]:
        """At daemon start (after QEMU reattach, before serving): an incoming migration
        an earlier daemon did not finish is removed — its QEMU killed, its transient
        definition and the images it created removed, a definition that was here kept
        as it was.  Its source saw this daemon go (keepalive) and runs the VM on; a
        finish that reaches this daemon later finds nothing and the source continues.
        One whose QEMU already runs (the daemon died inside finish, after ``cont``) is
        kept."""
        notes = []
        for uuid, record in self._journal.entries("in").items():
            created = [storagecopy.CreatedImage(str(p), int(d), int(i))
                       for p, d, i in record.get("created", [])]
            row = self._store.find_domain(uuid)
            vm = self._life.vm(row.uuid, row.name) if row is not None else None
            if vm is not None and await outgoing.kept_if_running(self._life, vm):
                self._journal.remove("in", uuid)
                notes.append(f"{vm.name}: incoming migration had finished; kept")
                continue
            pending = Incoming(created=created)
            if vm is not None:
                self._pending[uuid] = pending
                await self._remove(vm, "incoming migration abandoned by a daemon restart",
                                   pending, force=True)
            else:
                storagecopy.remove_images(created)
                self._journal.remove("in", uuid)
            name = row.name if row is not None else uuid
            notes.append(f"{name}: unfinished incoming migration removed (QEMU, transient "
                         f"definition, {len(created)} created image(s))")
        return notes


def copy_request(body: IncomingRequest | OfflineIncomingRequest) -> list[CopyDisk]:
    """The disks to create for ``copy_storage``, each a writable disk of the spec at
    that path and device id (so no other file can be asked for)."""
    if body.copy_storage is None:
        return []
    disks = body.copy_storage.disks
    live = load_domain(body.spec)
    slots = {slot.device_id: disk for slot, disk in
             zip(disk_slots(live), live.disks, strict=True) if copied(disk)}
    for index, disk in enumerate(disks):
        wanted = slots.get(disk.device)
        if wanted is None or wanted.path != disk.path \
                or wanted.format not in (None, disk.format):
            raise InvalidSpec(f"copy_storage.disks[{index}] is not a writable disk of "
                              "the spec (device, path and format must match)",
                              field=f"copy_storage.disks[{index}]")
    return disks


def image_list(copies: list[CopyDisk]) -> list[dict[str, JsonValue]]:
    """The images to create, as runtime/storagecopy.py and offlinecopy.py take them."""
    return [disk.model_dump(exclude_none=True) for disk in copies]
