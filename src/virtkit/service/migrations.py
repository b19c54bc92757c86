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

from virtkit.errors import Conflict, InvalidSpec, NotFound, StateError, VirtkitError
from virtkit.model.domain import Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.runtime import migration
from virtkit.runtime.launcher import CapsProvider
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.service.domains import DomainService
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
    return migration.Options(
        persistent=bool(body.get("persistent")),
        undefine_source=bool(body.get("undefine_source")),
        auto_converge=bool(body.get("auto_converge")),
        bandwidth_mib=number("bandwidth"), downtime_ms=number("downtime_limit"),
        timeout=float(timeout) if timeout else migration.DEFAULT_TIMEOUT)


class MigrationService:
    """Outgoing and incoming live migrations of this daemon."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService,
                 caps_for: CapsProvider) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._caps_for = caps_for
        #: outgoing migrations now running: {uuid: monotonic start time}
        self._jobs: dict[str, float] = {}
        self._watchdogs: set[asyncio.Task[None]] = set()

    # -- the destination end -------------------------------------------------------

    def _validate_incoming(self, body: dict[str, Any]) -> tuple[Domain, Domain]:
        """The running configuration and the definition of an incoming domain, checked
        against this host; nothing is started or stored yet."""
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise InvalidSpec("spec: the running configuration is missing", field="spec")
        definition = body.get("persistent_spec") or spec
        if not isinstance(definition, dict):
            raise InvalidSpec("persistent_spec must be a spec object", field="persistent_spec")
        live = load_domain(spec)
        for ref in (live.uuid, live.name):
            if self._store.find_domain(ref) is not None:
                raise Conflict(f"a domain '{ref}' is already defined on the destination",
                               fix="undefine it there first")
        live = self._domains.prepare(live)
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
            **definition, "uuid": str(live.uuid), "name": live.name, "transient": True}))

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, start QEMU paused waiting for the stream, listen on ``address``."""
        address = _address(body.get("address"))
        live, definition = self._validate_incoming(body)
        row = self._store.insert_domain(definition.uuid, definition.name,
                                        dump_domain(definition))
        vm = self._life.vm(row.uuid, row.name)
        try:
            async with vm.lock:
                running = await self._life.start_incoming(vm, live)
                uri = await migration.listen_incoming(running.monitor, address)
        except BaseException:
            await self._remove_incoming(vm, "incoming migration failed")
            raise
        task = asyncio.create_task(self._expire(vm, running, _deadline(body.get("deadline"))))
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)
        return {"id": row.uuid, "uri": uri, "domain": row.name}

    async def _expire(self, vm: Vm, running: Any, deadline: float) -> None:
        """Remove the incoming QEMU if nobody finished or deleted it in time."""
        await asyncio.sleep(deadline)
        if vm.running is running and vm.reason == MIGRATING_IN:
            await self._remove_incoming(vm, "incoming migration expired")

    async def _remove_incoming(self, vm: Vm, reason: str) -> None:
        """Kill the incoming QEMU and remove the transient definition (idempotent)."""
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

    async def finish(self, migration_id: str, *, persistent: bool = False) -> dict[str, Any]:
        """Run the fully received VM here (the source stopped its copy)."""
        vm = self._incoming_vm(migration_id)
        async with vm.lock:
            running = vm.running
            if running is None or vm.reason != MIGRATING_IN:
                raise Conflict(f"domain '{vm.name}' is not an incoming migration here "
                               f"(it is {vm.state.value}, {vm.reason or 'no reason'})")
            try:
                await migration.finish_incoming(running.monitor)
            except BaseException:
                with contextlib.suppress(VirtkitError, TimeoutError):
                    await self._life.kill_locked(vm, "incoming migration failed")
                raise
            self._life.set_state(vm, State.RUNNING, "migrated", event="migrated")
            row = self._store.get_domain(vm.uuid)
            if persistent:
                self._store.update_domain(row.uuid, row.name,
                                          {**row.spec, "transient": False}, None)
        return self._domains.info(vm.uuid)

    async def abort(self, migration_id: str) -> dict[str, Any]:
        """Remove an incoming migration that was not finished; an unknown one is fine
        (the source may ask twice, or after the QEMU ended by itself)."""
        row = self._store.find_domain(migration_id)
        if row is None:
            return {"id": migration_id, "removed": False}
        vm = self._life.vm(row.uuid, row.name)
        if vm.running is not None and vm.reason != MIGRATING_IN:
            raise Conflict(f"domain '{vm.name}' already runs here; it is no longer an "
                           "incoming migration")
        if vm.running is None and not row.spec.get("transient"):
            raise Conflict(f"domain '{vm.name}' is defined here and not an incoming migration")
        await self._remove_incoming(vm, "incoming migration cancelled")
        return {"id": migration_id, "removed": True}

    # -- the source end ----------------------------------------------------------------

    async def migrate(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """Live-migrate running domain ``ref`` to the daemon ``body["destination"]``."""
        if not body.get("live", True):
            raise InvalidSpec("only live migration is implemented so far", field="live")
        if body.get("copy_storage_all"):
            raise InvalidSpec("--copy-storage-all is not implemented yet: the disks must "
                              "be on storage both hosts share", field="copy_storage_all")
        options = _options(body)
        destination = body.get("destination")
        if not isinstance(destination, dict):
            raise InvalidSpec("destination: name the destination daemon", field="destination")
        address = _address(body.get("address", "127.0.0.1"))
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        peer = Peer(destination)
        try:
            async with vm.lock:
                self._jobs[vm.uuid] = time.monotonic()
                try:
                    result = await self._migrate_locked(vm, row.spec, peer, address, options)
                finally:
                    self._jobs.pop(vm.uuid, None)
        finally:
            await peer.close()
        if options.undefine_source and self._store.find_domain(row.uuid) is not None:
            await self._domains.undefine(row.uuid)
        return {**result, "domain": row.name, "source": self._source_state(row.uuid)}

    async def _migrate_locked(self, vm: Vm, definition: dict[str, Any], peer: Peer,
                              address: str, options: migration.Options) -> dict[str, Any]:
        running = vm.running
        if vm.state is not State.RUNNING or running is None:
            raise StateError(f"cannot migrate domain '{vm.name}': it is {vm.state.value}",
                             current=vm.state.value, requested="migrate",
                             fix="only a running domain is live-migrated")
        await self._life.check_restorable(vm, running, "migrate")
        live = running.live if running.live is not None else load_domain(definition)
        caps, _binary = self._caps_for(live)
        incoming = {"spec": dump_domain(live), "persistent_spec": definition,
                    "deadline": options.timeout + DEADLINE_MARGIN,
                    "machine_type": caps.machine_type(live.machine.value),
                    "accelerator": running.accel, "address": address}
        try:
            result = await migration.migrate_out(running.monitor, peer, incoming, options)
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
        started = self._jobs.get(row.uuid)
        running = self._life.vm(row.uuid, row.name).running
        if started is None or running is None:
            return {"domain": row.name, "type": "none"}
        info = await running.monitor.execute("query-migrate")
        ram = info.get("ram", {})
        return {"domain": row.name, "type": "unbounded", "operation": "outgoing migration",
                "status": info.get("status"),
                "elapsed_ms": round((time.monotonic() - started) * 1000),
                "data_total": ram.get("total"), "data_processed": ram.get("transferred"),
                "data_remaining": ram.get("remaining"), "dirty_rate": ram.get("dirty-pages-rate"),
                "expected_downtime_ms": info.get("expected-downtime"),
                "downtime_ms": info.get("downtime")}

    async def job_abort(self, ref: str) -> dict[str, Any]:
        """Cancel the outgoing migration of ``ref`` (virsh domjobabort): the migration's
        own failure path then removes the destination's QEMU; the VM stays here."""
        row = self._store.get_domain(ref)
        running = self._life.vm(row.uuid, row.name).running
        if row.uuid not in self._jobs or running is None:
            raise Conflict(f"domain '{row.name}' has no job running",
                           fix="see 'virtkit domjobinfo'")
        await running.monitor.execute("migrate_cancel")
        return {"domain": row.name, "aborted": True}

    def _source_state(self, uuid: str) -> str:
        try:
            return str(self._domains.info(uuid)["state"])
        except NotFound:
            return "undefined"
