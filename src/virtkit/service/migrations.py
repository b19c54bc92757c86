"""Live migration between two daemons (issue 8); the protocol is docs/migration.md.

Both ends live here: a daemon is the source of the migrations it is asked to make
(:meth:`MigrationService.migrate`) and the destination of those another daemon
sends it (:meth:`incoming`, :meth:`finish`, :meth:`abort`).  An incoming domain is
defined *transient* until :meth:`finish` (with ``persistent``) keeps it: every
QEMU exit before that removes the definition through the lifecycle's ordinary
transient-domain handling, so a failed migration leaves nothing behind here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from typing import Any

from virtkit.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    StateError,
    Unsupported,
    VirtkitError,
)
from virtkit.model.domain import Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.qemu.argv import disk_slots
from virtkit.runtime import migration, storagecopy
from virtkit.runtime.launcher import CapsProvider
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.service.copyplan import copied, copy_plan, disk_paths
from virtkit.service.domains import DomainService
from virtkit.service.offline_migration import OfflineMigrations, defined_here
from virtkit.service.peer import Peer
from virtkit.store.db import Store

MIGRATING_IN = "migrating in"
#: seconds past the source's own timeout an unfinished incoming migration is kept: a
#: source daemon that died mid-way must not leave a paused QEMU here for ever
DEADLINE_MARGIN = 60.0
MAX_DEADLINE = 7 * 86400.0
TCG_WARNING = ("the domain ran under TCG: QEMU 7.2's TCG can corrupt the memory of a guest "
               "that writes it during a live migration; migrate busy guests with KVM")


def _address(value: Any, field: str = "address") -> str:
    """An IP address for QEMU's migration socket (a host name could carry ``:``)."""
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise InvalidSpec(f"{field}: {value!r} is not an IP address", field=field,
                          fix="give the address the destination QEMU listens on, "
                              "e.g. 192.0.2.10") from None


def _deadline(value: Any) -> float:
    """Seconds an incoming migration may stay unfinished (JSON allows Infinity/NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        return migration.DEFAULT_TIMEOUT + DEADLINE_MARGIN
    return min(float(value), MAX_DEADLINE)


def _options(body: dict[str, Any]) -> migration.Options:
    def number(key: str) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidSpec(f"{key} must be a whole number >= 0", field=key)
        return value
    timeout = number("timeout")
    copying = bool(body.get("copy_storage_all")) or bool(body.get("copy_storage_inc"))
    if body.get("disk_paths") and not copying:
        raise InvalidSpec("disk_paths only applies to disks copied by --copy-storage-all",
                          field="disk_paths", fix="add --copy-storage-all, or drop "
                                                  "--disk-path")
    if body.get("copy_storage_all") and body.get("copy_storage_inc"):
        raise InvalidSpec("--copy-storage-all and --copy-storage-inc exclude each other",
                          field="copy_storage_inc", fix="give one of them")
    postcopy = bool(body.get("postcopy")) or bool(body.get("postcopy_after_precopy"))
    postcopy_bandwidth = number("postcopy_bandwidth")
    if postcopy_bandwidth is not None and not postcopy:
        raise InvalidSpec("--postcopy-bandwidth only applies to a post-copy migration",
                          field="postcopy_bandwidth", fix="add --postcopy, or drop "
                                                          "--postcopy-bandwidth")
    return migration.Options(
        persistent=bool(body.get("persistent")),
        undefine_source=bool(body.get("undefine_source")),
        auto_converge=bool(body.get("auto_converge")),
        bandwidth_mib=number("bandwidth"), downtime_ms=number("downtime_limit"),
        timeout=float(timeout) if timeout else migration.DEFAULT_TIMEOUT,
        postcopy=postcopy, postcopy_after_precopy=bool(body.get("postcopy_after_precopy")),
        postcopy_bandwidth_mib=postcopy_bandwidth, suspend=bool(body.get("suspend")),
        copy_incremental=bool(body.get("copy_storage_inc")))


class MigrationService:
    """Outgoing and incoming live migrations of this daemon."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService,
                 caps_for: CapsProvider) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._caps_for = caps_for
        #: outgoing migrations now running
        self._jobs: dict[str, migration.Job] = {}
        #: incoming migrations copying storage: the images this daemon created for them
        #: (removed when the migration fails) and the NBD exports to stop at finish
        self._created: dict[str, list[storagecopy.CreatedImage]] = {}
        self._exports: dict[str, list[str]] = {}
        #: incoming migrations into a shut-off definition this daemon already had (the
        #: ping-pong case): the source's definition, kept here for finish --persistent
        self._adopted: dict[str, dict[str, Any]] = {}
        self.offline = OfflineMigrations(store, lifecycle, domains)
        self._watchdogs: set[asyncio.Task[None]] = set()

    # -- the destination end -------------------------------------------------------

    def _validate_incoming(self, body: dict[str, Any]) -> tuple[Domain, Domain, bool]:
        """The running configuration and the definition of an incoming domain, checked
        against this host, and whether it comes into a shut-off definition of the same
        UUID and name that is already here (libvirt allows that: a domain migrated back
        and forth between hosts that both keep it defined); nothing is started or
        stored yet."""
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise InvalidSpec("spec: the running configuration is missing", field="spec")
        definition = body.get("persistent_spec") or spec
        if not isinstance(definition, dict):
            raise InvalidSpec("persistent_spec must be a spec object", field="persistent_spec")
        live = load_domain(spec)
        slot = defined_here(self._store, live.uuid, live.name)
        if slot is not None and self._life.vm(slot.uuid, slot.name).running is not None:
            raise Conflict(f"domain '{live.name}' is already running on the destination",
                           fix="stop it there first")
        adopted = slot is not None
        live = self._domains.prepare(live)
        confiner = self._life.confiner
        if body.get("postcopy") and confiner is not None and confiner.userfaultfd_refused():
            raise Unsupported(
                "post-copy needs userfaultfd on the destination, which a confined QEMU (its "
                "own uid, no capabilities) may not use while vm.unprivileged_userfaultfd=0",
                fix="on the destination: sysctl vm.unprivileged_userfaultfd=1, or run its "
                    "daemon with --no-confine; or migrate without --postcopy")
        caps, _binary = self._caps_for(live)
        here = caps.machine_type(live.machine.value)
        there = body.get("machine_type")
        if there is not None and there != here:
            raise InvalidSpec(f"machine type {there} is not available on the destination "
                              f"(its QEMU makes {live.machine.value} {here})",
                              field="machine_type",
                              fix="migrate between hosts with the same QEMU machine version")
        accel = body.get("accelerator")
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

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, start QEMU paused waiting for the stream, listen on ``address``."""
        address = _address(body.get("address"))
        copies = self._copy_request(body)
        # the images first: the same checks as define then find them in place
        created = storagecopy.create_images(copies)
        try:
            live, definition, adopted = await asyncio.to_thread(self._validate_incoming, body)
        except BaseException:
            storagecopy.remove_images(created)
            raise
        if adopted:  # the definition here stays as it is unless finish says persistent
            row = self._store.get_domain(definition.uuid)
            self._adopted[row.uuid] = dump_domain(definition)
        else:
            row = self._store.insert_domain(definition.uuid, definition.name,
                                            dump_domain(definition))
        vm = self._life.vm(row.uuid, row.name)
        self._created[row.uuid] = created
        answer: dict[str, Any] = {"id": row.uuid, "domain": row.name}
        try:
            async with vm.lock:
                running = await self._life.start_incoming(vm, live)
                answer["uri"] = await migration.listen_incoming(
                    running.monitor, address, postcopy=bool(body.get("postcopy")))
                if copies:
                    devices = [str(disk["device"]) for disk in copies]
                    self._exports[row.uuid] = devices
                    answer["nbd"] = await storagecopy.export_disks(running.monitor, address,
                                                                   devices)
        except BaseException:
            await self._remove_incoming(vm, "incoming migration failed")
            self._drop_images(row.uuid, created)
            self._adopted.pop(row.uuid, None)
            raise
        task = asyncio.create_task(self._expire(vm, running, _deadline(body.get("deadline")),
                                                created))
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)
        return answer

    async def incoming_offline(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check a definition sent by ``migrate --offline``; create and serve the images
        of the disks it copies.  Defined here only by :meth:`finish`."""
        address = _address(body.get("address"))
        return await self.offline.incoming(body, self._copy_request(body), address)

    @staticmethod
    def _copy_request(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The disks to create for ``copy_storage``, each a writable disk of the spec
        at that path and device id (so no other file can be asked for)."""
        copy = body.get("copy_storage")
        if copy is None:
            return []
        disks = copy.get("disks") if isinstance(copy, dict) else None
        spec = body.get("spec")
        if not isinstance(disks, list) or not disks or not isinstance(spec, dict):
            raise InvalidSpec("copy_storage.disks: a list of disks to create",
                              field="copy_storage")
        live = load_domain(spec)
        slots = {slot.device_id: disk for slot, disk in
                 zip(disk_slots(live), live.disks, strict=True) if copied(disk)}
        for index, disk in enumerate(disks):
            wanted = slots.get(str(disk.get("device"))) if isinstance(disk, dict) else None
            if wanted is None or wanted.path != disk.get("path") \
                    or wanted.format not in (None, disk.get("format")):
                raise InvalidSpec(f"copy_storage.disks[{index}] is not a writable disk of "
                                  "the spec (device, path and format must match)",
                                  field=f"copy_storage.disks[{index}]")
        return disks

    def _drop_images(self, uuid: str, created: list[storagecopy.CreatedImage]) -> None:
        """Remove the images made for a failed incoming migration (only that one's)."""
        if self._created.get(uuid) is created:
            del self._created[uuid]
            self._exports.pop(uuid, None)
        storagecopy.remove_images(created)

    async def _expire(self, vm: Vm, running: Any, deadline: float,
                      created: list[storagecopy.CreatedImage]) -> None:
        """Remove the incoming QEMU (and its copied images) if nobody finished or
        deleted it in time."""
        await asyncio.sleep(deadline)
        if vm.running is running and vm.reason == MIGRATING_IN:
            await self._remove_incoming(vm, "incoming migration expired")
            self._adopted.pop(vm.uuid, None)
        if self._created.get(vm.uuid) is created and vm.running is not running:
            self._drop_images(vm.uuid, created)

    async def _remove_incoming(self, vm: Vm, reason: str) -> None:
        """Kill the incoming QEMU and remove the transient definition (idempotent); a
        definition that was here before the migration stays."""
        async with vm.lock:
            if vm.running is not None:
                with contextlib.suppress(VirtkitError, TimeoutError):
                    await self._life.kill_locked(vm, reason)
            row = self._store.find_domain(vm.uuid)
            if row is not None and row.spec.get("transient"):
                self._store.delete_domain(vm.uuid)
                self._life.forget(vm.uuid)

    def _incoming_vm(self, migration_id: str) -> Vm:
        row = self._store.find_domain(migration_id)
        if row is None:
            raise NotFound(f"no incoming migration {migration_id}")
        return self._life.vm(row.uuid, row.name)

    async def finish(self, migration_id: str, *, persistent: bool = False,
                     paused: bool = False) -> dict[str, Any]:
        """Run the fully received VM here (the source stopped its copy), or keep it
        paused (``paused``: it was paused there, or --suspend); for an offline
        migration, define it."""
        if self.offline.has(migration_id):
            return await self.offline.finish(migration_id)
        vm = self._incoming_vm(migration_id)
        async with vm.lock:
            running = vm.running
            if running is None or vm.reason != MIGRATING_IN:
                raise Conflict(f"domain '{vm.name}' is not an incoming migration here "
                               f"(it is {vm.state.value}, {vm.reason or 'no reason'})")
            try:
                exports = self._exports.get(vm.uuid)
                if exports:  # the source completed its mirrors before switch-over
                    await storagecopy.stop_exports(running.monitor, exports)
                await migration.finish_incoming(running.monitor, run=not paused)
            except BaseException:
                with contextlib.suppress(VirtkitError, TimeoutError):
                    await self._life.kill_locked(vm, "incoming migration failed")
                raise
            self._life.set_state(vm, State.PAUSED if paused else State.RUNNING, "migrated",
                                 event="migrated")
            self._created.pop(vm.uuid, None)  # the copies are the VM's disks now
            self._exports.pop(vm.uuid, None)
            row = self._store.get_domain(vm.uuid)
            # --persistent: the source's definition (it replaces one that was here)
            brought = self._adopted.pop(vm.uuid, None) or row.spec
            if persistent:
                self._store.update_domain(row.uuid, row.name,
                                          {**brought, "transient": False}, None)
        return self._domains.info(vm.uuid)

    async def abort(self, migration_id: str) -> dict[str, Any]:
        """Remove an incoming migration that was not finished; an unknown one is fine
        (the source may ask twice, or after the QEMU ended by itself)."""
        if await self.offline.abort(migration_id):
            return {"id": migration_id, "removed": True}
        row = self._store.find_domain(migration_id)
        created = self._created.get(migration_id)
        if row is None:
            if created is not None:  # its QEMU ended by itself; the images go now
                self._drop_images(migration_id, created)
            return {"id": migration_id, "removed": False}
        vm = self._life.vm(row.uuid, row.name)
        if vm.running is not None and vm.reason != MIGRATING_IN:
            raise Conflict(f"domain '{vm.name}' already runs here; it is no longer an "
                           "incoming migration")
        adopted = self._adopted.pop(row.uuid, None) is not None
        if vm.running is None and not row.spec.get("transient") and not adopted:
            # a definition that is no incoming migration (any more): nothing to remove
            return {"id": migration_id, "removed": False}
        await self._remove_incoming(vm, "incoming migration cancelled")
        if created is not None:
            self._drop_images(migration_id, created)
        return {"id": migration_id, "removed": True}

    # -- the source end ----------------------------------------------------------------

    async def migrate(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """Live-migrate running domain ``ref`` to the daemon ``body["destination"]``
        (with ``offline``: send its definition, service/offline_migration.py)."""
        offline = bool(body.get("offline"))
        if not offline and not body.get("live", True):
            raise InvalidSpec("a migration is live or offline", field="live",
                              fix="give --live (the domain runs on) or --offline "
                                  "(only its definition and disks move)")
        options = _options(body)
        mapping = disk_paths(body.get("disk_paths"))
        copy = mapping if body.get("copy_storage_all") or body.get("copy_storage_inc") \
            else None
        destination = body.get("destination")
        if not isinstance(destination, dict):
            raise InvalidSpec("destination: name the destination daemon", field="destination")
        address = _address(body.get("address", "127.0.0.1"))
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        peer = Peer(destination)
        if offline:
            try:
                result = await self.offline.migrate(row, peer, address, body, copy)
            finally:
                await peer.close()
            if options.undefine_source and self._store.find_domain(row.uuid) is not None:
                await self._domains.undefine(row.uuid)
            return {**result, "domain": row.name, "source": self._source_state(row.uuid)}
        try:
            async with vm.lock:
                self._jobs[vm.uuid] = job = migration.Job()
                try:
                    result = await self._migrate_locked(vm, row.spec, peer, address,
                                                        options, job, copy)
                finally:
                    self._jobs.pop(vm.uuid, None)
        finally:
            await peer.close()
        if options.undefine_source and self._store.find_domain(row.uuid) is not None:
            await self._domains.undefine(row.uuid)
        return {**result, "domain": row.name, "source": self._source_state(row.uuid)}

    async def _migrate_locked(self, vm: Vm, definition: dict[str, Any], peer: Peer,
                              address: str, options: migration.Options, job: migration.Job,
                              copy: dict[str, str] | None) -> dict[str, Any]:
        running = vm.running
        if vm.state not in (State.RUNNING, State.PAUSED) or running is None:
            raise StateError(f"cannot migrate domain '{vm.name}': it is {vm.state.value}",
                             current=vm.state.value, requested="migrate",
                             fix="only a running or paused domain is live-migrated; "
                                 "move a shut-off one with --offline")
        # a paused guest moves paused and stays paused whatever happens (virsh's too)
        options.source_paused = vm.state is State.PAUSED
        if options.source_paused and options.postcopy:
            raise StateError(f"domain '{vm.name}' is paused: post-copy needs a guest that "
                             f"runs on the destination while its memory arrives",
                             current=vm.state.value, requested="migrate --postcopy",
                             fix="migrate without --postcopy (a paused guest's memory "
                                 "does not change, so precopy always converges), or "
                                 "resume it first")
        await self._life.check_restorable(vm, running, "migrate")
        live = running.live if running.live is not None else load_domain(definition)
        caps, _binary = self._caps_for(live)
        if copy is not None:
            options.copy_disks, live, definition = copy_plan(live, definition, copy)
            if not options.copy_disks:
                raise InvalidSpec(f"domain '{vm.name}' has no writable disk to copy",
                                  field="copy_storage_all",
                                  fix="migrate without --copy-storage-all")
        incoming = {"spec": dump_domain(live), "persistent_spec": definition,
                    "postcopy": options.postcopy,
                    "deadline": options.timeout + DEADLINE_MARGIN,
                    "machine_type": caps.machine_type(live.machine.value),
                    "accelerator": running.accel, "address": address}
        try:
            result = await migration.migrate_out(running.monitor, peer, incoming, options,
                                                 job)
        except migration.PostcopyFailed:
            self._life.set_state(vm, State.PAUSED, "postcopy failed", event="paused")
            raise
        except migration.MigrationOutcomeUnknown:
            self._life.set_state(vm, State.PAUSED, "migration outcome unknown",
                                 event="paused")
            raise
        await self._life.kill_locked(vm, "migrated")
        if running.accel == "tcg":
            result["warnings"] = [TCG_WARNING]
        return result

    # -- domjobinfo / domjobabort ---------------------------------------------------------

    async def job_info(self, ref: str) -> dict[str, Any]:
        """The outgoing migration of ``ref`` now running (virsh domjobinfo), read from
        QEMU's ``query-migrate`` without waiting for the VM's lock (the job holds it)."""
        row = self._store.get_domain(ref)
        offline = self.offline.jobs.get(row.uuid)
        if offline is not None:
            done = sum(offline.done.values())
            return {"domain": row.name, "type": "unbounded",
                    "operation": "offline migration", "status": "copying disks",
                    "phase": "copying disks", "data_total": offline.total or None,
                    "data_processed": done, "data_remaining": offline.total - done,
                    "disk_total": offline.total, "disk_processed": done,
                    "disk_remaining": offline.total - done}
        job = self._jobs.get(row.uuid)
        running = self._life.vm(row.uuid, row.name).running
        if job is None or running is None:
            return {"domain": row.name, "type": "none"}
        info = await running.monitor.execute("query-migrate")
        ram = info.get("ram", {})
        ram_total = ram.get("total")
        if ram_total is None and running.live is not None:  # before the stream starts
            ram_total = running.live.memory.current * 2**20
        disk_done = disk_total = 0
        if job.mirrors is not None:
            with contextlib.suppress(VirtkitError):
                disk_done, disk_total = await job.mirrors.progress()
        total = (ram_total or 0) + disk_total
        processed = (ram.get("transferred") or 0) + disk_done
        remaining = ram.get("remaining", ram_total or 0) + max(disk_total - disk_done, 0)
        result = {"domain": row.name, "type": "unbounded", "operation": "outgoing migration",
                  "status": info.get("status") or job.phase, "phase": job.phase,
                  "elapsed_ms": round((time.monotonic() - job.started) * 1000),
                  "data_total": total or None, "data_processed": processed,
                  "data_remaining": remaining, "memory_total": ram_total,
                  "memory_processed": ram.get("transferred"),
                  "memory_remaining": ram.get("remaining"),
                  "dirty_rate": ram.get("dirty-pages-rate"),
                  "expected_downtime_ms": info.get("expected-downtime"),
                  "downtime_ms": info.get("downtime")}
        if job.mirrors is not None:
            result.update(disk_total=disk_total, disk_processed=disk_done,
                          disk_remaining=max(disk_total - disk_done, 0))
        return result

    async def job_abort(self, ref: str) -> dict[str, Any]:
        """Cancel the outgoing migration of ``ref`` (virsh domjobabort): the migration's
        own failure path then removes the destination's QEMU; the VM stays here."""
        row = self._store.get_domain(ref)
        offline = self.offline.jobs.get(row.uuid)
        if offline is not None:
            offline.aborted = True  # the copy's progress callback stops qemu-img
            return {"domain": row.name, "aborted": True}
        running = self._life.vm(row.uuid, row.name).running
        job = self._jobs.get(row.uuid)
        if job is None or running is None:
            raise Conflict(f"domain '{row.name}' has no job running",
                           fix="see 'virtkit domjobinfo'")
        if job.postcopy_started or job.phase == "post-copy":
            raise Conflict(f"the migration of '{row.name}' is in post-copy: the guest runs "
                           "on the destination and cannot come back",
                           fix="wait for it to complete")
        job.aborted.set()  # stops the disk copy phase; migrate_cancel the stream
        await running.monitor.execute("migrate_cancel")
        return {"domain": row.name, "aborted": True}

    async def job_postcopy(self, ref: str) -> dict[str, Any]:
        """virsh migrate-postcopy: switch the outgoing migration of ``ref`` to post-copy."""
        row = self._store.get_domain(ref)
        job = self._jobs.get(row.uuid)
        if job is None:
            raise Conflict(f"domain '{row.name}' has no migration running",
                           fix="see 'virtkit domjobinfo'")
        if not job.postcopy:
            raise Conflict(f"the migration of '{row.name}' was not started with --postcopy",
                           fix="start it with 'virtkit migrate --postcopy'")
        job.start_postcopy.set()
        return {"domain": row.name, "postcopy": "requested"}

    def _source_state(self, uuid: str) -> str:
        try:
            return str(self._domains.info(uuid)["state"])
        except NotFound:
            return "undefined"
