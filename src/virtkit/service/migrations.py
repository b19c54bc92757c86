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
import time
from typing import Any, cast

from virtkit.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    StateError,
    VirtkitError,
)
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import Action, State, allows
from virtkit.runtime import devlayout, migration, outgoing
from virtkit.runtime.launcher import CapsProvider
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.service.copyplan import copy_plan, disk_paths
from virtkit.service.domains import DomainService
from virtkit.service.incoming import (
    DEADLINE_MARGIN,
    MAX_DEADLINE,  # noqa: F401 (tests import it from here)
    IncomingMigrations,
    copy_request,
    deadline_of,
)
from virtkit.service.migration_journal import Journal
from virtkit.service.models.documents import DomainDocument, PeerAddress, PeerAnswer
from virtkit.service.models.migrations import (
    IncomingRemoved,
    IncomingRequest,
    IncomingStarted,
    IncomingStatus,
    JobAborted,
    JobInfo,
    MigrateRequest,
    MigrationResult,
    OfflineIncomingRequest,
    PostcopyRequested,
)
from virtkit.service.offline_migration import OfflineMigrations
from virtkit.service.peer import Peer
from virtkit.service.sharedstore import shared_on_both
from virtkit.store.db import Store

TCG_WARNING = ("the domain ran under TCG: QEMU 7.2's TCG can corrupt the memory of a guest "
               "that writes it during a live migration; migrate busy guests with KVM")
#: seconds the source keeps asking a destination that did not answer finish
RESOLVE_WINDOW = 60.0
_deadline = deadline_of


def _address(value: Any, field: str = "address") -> str:
    """An IP address for QEMU's migration socket (a host name could carry ``:``)."""
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise InvalidSpec(f"{field}: {value!r} is not an IP address", field=field,
                          fix="give the address the destination QEMU listens on, "
                              "e.g. 192.0.2.10") from None


def _options(body: MigrateRequest) -> migration.Options:
    """The migration's options; what the request model cannot say alone is refused
    here (flags that need or exclude each other)."""
    copying = body.copy_storage_all or body.copy_storage_inc
    if body.disk_paths and not copying:
        raise InvalidSpec("disk_paths only applies to disks copied by --copy-storage-all",
                          field="disk_paths", fix="add --copy-storage-all, or drop "
                                                  "--disk-path")
    if body.copy_storage_all and body.copy_storage_inc:
        raise InvalidSpec("--copy-storage-all and --copy-storage-inc exclude each other",
                          field="copy_storage_inc", fix="give one of them")
    postcopy = body.postcopy or body.postcopy_after_precopy
    if body.postcopy_bandwidth is not None and not postcopy:
        raise InvalidSpec("--postcopy-bandwidth only applies to a post-copy migration",
                          field="postcopy_bandwidth", fix="add --postcopy, or drop "
                                                          "--postcopy-bandwidth")
    return migration.Options(
        persistent=body.persistent, undefine_source=body.undefine_source,
        auto_converge=body.auto_converge,
        bandwidth_mib=body.bandwidth, downtime_ms=body.downtime_limit,
        timeout=float(body.timeout) if body.timeout else migration.DEFAULT_TIMEOUT,
        postcopy=postcopy, postcopy_after_precopy=body.postcopy_after_precopy,
        postcopy_bandwidth_mib=body.postcopy_bandwidth, suspend=body.suspend,
        copy_incremental=body.copy_storage_inc)


async def _resolve(peer: Peer, uuid: str, window: float) -> PeerAnswer | str | None:
    """After a finish that got no answer: ask the destination (for up to ``window``
    seconds, while its daemon may be restarting) whether it runs the VM.  Its domain
    info when it does (the finish went through: this end's copy must go); ``"here"``
    when it still held the unfinished incoming migration and removed it now at our
    request (it cannot run the VM any more); None when nothing certain was learnt —
    a destination without that migration may have run the VM and stopped it since,
    so only the admin can tell."""
    end = time.monotonic() + window
    while True:
        try:
            answer = await peer.status(uuid)
            if not answer.get("incoming"):
                if answer.get("state") in (State.RUNNING.value, State.PAUSED.value):
                    return answer
                return None
            if (await peer.abort(uuid)).get("removed"):
                return "here"
        except NotFound:
            return None
        except VirtkitError:
            pass  # unreachable (restarting?), or it began running: ask again
        if time.monotonic() > end:
            return None
        await asyncio.sleep(1.0)


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
        self._journal = Journal(lifecycle.paths.root / "migrations")
        self.incoming_end = IncomingMigrations(store, lifecycle, domains, caps_for,
                                               self._journal)
        self.offline = OfflineMigrations(store, lifecycle, domains)

    # -- the destination end (service/incoming.py) ---------------------------------

    async def incoming(self, body: IncomingRequest) -> IncomingStarted:
        """Validate, start QEMU paused waiting for the stream, listen on ``address``."""
        address = _address(body.address)
        return await self.incoming_end.incoming(body, address, copy_request(body))

    async def incoming_offline(self, body: OfflineIncomingRequest) -> IncomingStarted:
        """Check a definition sent by ``migrate --offline``; create and serve the images
        of the disks it copies.  Defined here only by :meth:`finish`."""
        address = _address(body.address)
        return await self.offline.incoming(body, copy_request(body), address)

    def status(self, migration_id: str) -> IncomingStatus:
        """An incoming migration here (the source's keepalive)."""
        if self.offline.has(migration_id):
            return IncomingStatus(id=migration_id, incoming=True, offline=True)
        return self.incoming_end.status(migration_id)

    async def finish(self, migration_id: str, *, persistent: bool = False,
                     paused: bool = False) -> dict[str, Any]:
        """Run the fully received VM here (the source stopped its copy), or keep it
        paused (``paused``: it was paused there, or --suspend); for an offline
        migration, define it."""
        if self.offline.has(migration_id):
            return await self.offline.finish(migration_id)
        return await self.incoming_end.finish(migration_id, persistent=persistent,
                                              paused=paused)

    async def abort(self, migration_id: str) -> IncomingRemoved:
        """Remove an incoming migration that was not finished; an unknown one is fine
        (the source may ask twice, or after the QEMU ended by itself)."""
        if await self.offline.abort(migration_id):
            return IncomingRemoved(id=migration_id, removed=True)
        return IncomingRemoved(id=migration_id,
                               removed=await self.incoming_end.abort(migration_id))

    async def recover(self) -> list[str]:
        """At daemon start, after QEMU reattach and before serving: settle the
        migrations an earlier daemon of this host left unfinished (both ends)."""
        return await self.incoming_end.recover() + await self._recover_outgoing()

    # -- the source end ----------------------------------------------------------------

    async def migrate(self, ref: str, body: MigrateRequest) -> MigrationResult:
        """Live-migrate running domain ``ref`` to the daemon ``body.destination``
        (with ``offline``: send its definition, service/offline_migration.py)."""
        offline = body.offline
        if not offline and not body.live:
            raise InvalidSpec("a migration is live or offline", field="live",
                              fix="give --live (the domain runs on) or --offline "
                                  "(only its definition and disks move)")
        options = _options(body)
        mapping = disk_paths(body.disk_paths)
        copy = mapping if body.copy_storage_all or body.copy_storage_inc else None
        destination = body.destination
        # an address given as null is refused, as any other that is not an IP address
        address = _address(body.address if "address" in body.model_fields_set
                           else "127.0.0.1")
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        peer = Peer(destination)
        if offline:
            try:
                finished, copied_disks = await self.offline.migrate(row, peer, address,
                                                                    body, copy)
            finally:
                await peer.close()
            if options.undefine_source and self._store.find_domain(row.uuid) is not None:
                await self._domains.undefine(row.uuid)
            return MigrationResult(destination=finished, offline=True,
                                   copied_disks=copied_disks, domain=row.name,
                                   source=self._source_state(row.uuid))
        try:
            async with vm.lock:
                self._jobs[vm.uuid] = job = migration.Job()
                try:
                    result = await self._migrate_locked(vm, row.spec, peer, address,
                                                        options, job, copy, destination)
                finally:
                    self._jobs.pop(vm.uuid, None)
                    self._journal.remove("out", vm.uuid)
        finally:
            await peer.close()
        if options.undefine_source and self._store.find_domain(row.uuid) is not None:
            await self._domains.undefine(row.uuid)
        return MigrationResult(**result, domain=row.name, source=self._source_state(row.uuid))

    async def _migrate_locked(self, vm: Vm, definition: DomainDocument, peer: Peer,
                              address: str, options: migration.Options, job: migration.Job,
                              copy: dict[str, str] | None,
                              destination: PeerAddress) -> dict[str, Any]:
        running = vm.running
        if not allows(Action.MIGRATE, vm.state) or running is None:
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
        # hot-added disks and NICs: the destination's QEMU gets them where they are here
        layout = await devlayout.check_restorable(vm.name, running, "migrate")
        live = running.live if running.live is not None else load_domain(definition)
        caps, _binary = self._caps_for(live)
        shared: list[dict[str, str]] = []
        if copy is not None:
            # disks on a shared pool both hosts have are the same image there: no copy
            shared = await shared_on_both(self._domains.storage, peer, live)
            options.copy_disks, live, definition = copy_plan(
                live, definition, copy, frozenset(d["path"] for d in shared))
            if not options.copy_disks and not shared:
                raise InvalidSpec(f"domain '{vm.name}' has no writable disk to copy",
                                  field="copy_storage_all",
                                  fix="migrate without --copy-storage-all")
        incoming = {"spec": dump_domain(live), "persistent_spec": definition,
                    "postcopy": options.postcopy,
                    "deadline": options.timeout + DEADLINE_MARGIN,
                    "machine_type": caps.machine_type(live.machine.value),
                    "accelerator": running.accel, "address": address}
        if layout is not None:
            incoming["layout"] = layout.to_dict()
        if shared:
            incoming["shared_disks"] = shared
        before = (vm.state, vm.reason)
        # for a restart of this daemon mid-way: whether finish may have been sent, and
        # (a local socket only: no secrets on disk) where to withdraw the incoming one
        record = {"phase": "sending", "paused": options.source_paused,
                  "destination": {"socket": destination["socket"]}
                  if isinstance(destination.get("socket"), str) else None}
        self._journal.write("out", vm.uuid, record)

        def stopped() -> None:  # invariant 2: paused before the destination may run it
            outgoing.stopped_locked(self._life, vm)

        def finishing() -> None:
            self._journal.write("out", vm.uuid, {**record, "phase": "finishing"})
        try:
            result = await migration.migrate_out(running.monitor, peer, incoming, options,
                                                 job, migration.Hooks(stopped, finishing))
        except migration.PostcopyFailed:
            outgoing.held_locked(self._life, vm, "postcopy failed")
            raise
        except migration.MigrationOutcomeUnknown as exc:
            outgoing.held_locked(self._life, vm, "migration outcome unknown")
            outcome = await _resolve(peer, vm.uuid, RESOLVE_WINDOW)
            if outcome is None:
                raise
            if outcome == "here":
                await outgoing.resume_here_locked(self._life, vm, running,
                                                  options.source_paused)
                raise migration.DestinationLost(
                    f"{exc}; the destination then confirmed it does not run the VM (its "
                    "incoming migration was removed): the VM runs on here") from exc
            result = {"destination": outcome, "downtime_ms": None, "postcopy": False,
                      "total_ms": round((time.monotonic() - job.started) * 1000),
                      "copied_disks": [d for d, _p in options.copy_disks],
                      "resolved": "finish got no answer; the destination then said it "
                                  "runs the VM"}
        except BaseException:
            await outgoing.after_failure_locked(self._life, vm, running, before)
            raise
        await outgoing.handed_over_locked(self._life, vm)
        result["shared_disks"] = [d["path"] for d in shared]
        result.setdefault("disk_bytes", job.disk_bytes)
        if running.accel == "tcg":
            result["warnings"] = [TCG_WARNING]
        return result

    async def _recover_outgoing(self) -> list[str]:
        """At daemon start: an outgoing migration an earlier daemon left.  The reattach
        already cancelled one still under way (the guest runs on here).  One whose
        stream had completed: if finish was never sent, the destination cannot run the
        VM (it only does in finish), so the guest goes on here and the incoming one
        there is withdrawn (or removed there when its keepalive silence ends); if
        finish may have been sent, the outcome is unknown and the VM stays paused."""
        notes = []
        for uuid, record in self._journal.entries("out").items():
            self._journal.remove("out", uuid)
            row = self._store.find_domain(uuid)
            vm = self._life.vm(row.uuid, row.name) if row is not None else None
            if vm is None or vm.running is None:
                if record.get("phase") != "finishing":
                    await self._withdraw(record.get("destination"), uuid)
                continue
            running = vm.running
            if await outgoing.runstate(running) not in migration.STOPPED_BY:
                # cancelled by the reattach (the guest runs on): the incoming one there
                # goes too (else its keepalive silence removes it)
                if record.get("phase") != "finishing":
                    await self._withdraw(record.get("destination"), uuid)
                continue
            if record.get("phase") == "finishing":
                outcome = None
                if isinstance(record.get("destination"), dict):
                    peer = Peer(cast(PeerAddress, record["destination"]), timeout=5.0)
                    try:
                        outcome = await _resolve(peer, uuid, 5.0)
                    finally:
                        await peer.close()
                if isinstance(outcome, dict):  # it runs there: the copy here goes
                    await outgoing.handed_over(self._life, vm)
                    notes.append(f"{vm.name}: its migration had finished (the destination "
                                 "runs it); the stopped copy here was removed")
                    continue
                if outcome == "here":
                    await outgoing.resume_here(self._life, vm, running,
                                               bool(record.get("paused")))
                    notes.append(f"{vm.name}: the destination does not run it; the VM "
                                 "runs on here")
                    continue
                await outgoing.hold(self._life, vm, "migration outcome unknown")
                notes.append(f"{vm.name}: the daemon died while the destination was asked "
                             "to run the VM; it stays paused here (check the destination, "
                             "then destroy or resume it here)")
                continue
            await self._withdraw(record.get("destination"), uuid)
            await outgoing.resume_here(self._life, vm, running, bool(record.get("paused")))
            notes.append(f"{vm.name}: its migration had not been finished by the daemon "
                         "that died; the VM runs on here")
        return notes

    @staticmethod
    async def _withdraw(destination: Any, uuid: str) -> None:
        """Best effort: remove the incoming migration on a destination on this host."""
        if not isinstance(destination, dict):
            return
        peer = Peer(destination, timeout=5.0)
        try:
            with contextlib.suppress(VirtkitError):
                await peer.abort(uuid)
        finally:
            await peer.close()

    # -- domjobinfo / domjobabort ---------------------------------------------------------

    async def job_info(self, ref: str) -> JobInfo:
        """The outgoing migration of ``ref`` now running (virsh domjobinfo), read from
        QEMU's ``query-migrate`` without waiting for the VM's lock (the job holds it)."""
        row = self._store.get_domain(ref)
        offline = self.offline.jobs.get(row.uuid)
        if offline is not None:
            done = sum(offline.done.values())
            return JobInfo(domain=row.name, type="unbounded",
                           operation="offline migration", status="copying disks",
                           phase="copying disks", data_total=offline.total or None,
                           data_processed=done, data_remaining=offline.total - done,
                           disk_total=offline.total, disk_processed=done,
                           disk_remaining=offline.total - done)
        job = self._jobs.get(row.uuid)
        running = self._life.vm(row.uuid, row.name).running
        if job is None or running is None:
            return JobInfo(domain=row.name, type="none")
        # before the stream starts, query-migrate still shows the migration this QEMU
        # saw last (for a VM that arrived by migration: the incoming one, 'completed')
        info = await outgoing.stream_status(running) if job.streaming else {}
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
        result = JobInfo(domain=row.name, type="unbounded", operation="outgoing migration",
                         status=info.get("status") or job.phase, phase=job.phase,
                         elapsed_ms=round((time.monotonic() - job.started) * 1000),
                         data_total=total or None, data_processed=processed,
                         data_remaining=remaining, memory_total=ram_total,
                         memory_processed=ram.get("transferred"),
                         memory_remaining=ram.get("remaining"),
                         dirty_rate=ram.get("dirty-pages-rate"),
                         expected_downtime_ms=info.get("expected-downtime"),
                         downtime_ms=info.get("downtime"))
        if job.mirrors is not None:
            result = result.model_copy(update={
                "disk_total": disk_total, "disk_processed": disk_done,
                "disk_remaining": max(disk_total - disk_done, 0)})
        return result

    async def job_abort(self, ref: str) -> JobAborted:
        """Cancel the outgoing migration of ``ref`` (virsh domjobabort): the migration's
        own failure path then removes the destination's QEMU; the VM stays here."""
        row = self._store.get_domain(ref)
        offline = self.offline.jobs.get(row.uuid)
        if offline is not None:
            offline.aborted = True  # the copy's progress callback stops qemu-img
            return JobAborted(domain=row.name, aborted=True)
        running = self._life.vm(row.uuid, row.name).running
        job = self._jobs.get(row.uuid)
        if job is None or running is None:
            raise Conflict(f"domain '{row.name}' has no job running",
                           fix="see 'virtkit domjobinfo'")
        if job.postcopy_started or job.phase == "post-copy":
            raise Conflict(f"the migration of '{row.name}' is in post-copy: the guest runs "
                           "on the destination and cannot come back",
                           fix="wait for it to complete")
        job.stop("the migration was cancelled (domjobabort)")  # stops the disk copy
        if job.streaming:
            await outgoing.cancel_stream(running)
        return JobAborted(domain=row.name, aborted=True)

    async def job_postcopy(self, ref: str) -> PostcopyRequested:
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
        return PostcopyRequested(domain=row.name, postcopy="requested")

    def _source_state(self, uuid: str) -> str:
        try:
            return self._domains.info(uuid).state
        except NotFound:
            return "undefined"
