"""``virtkit migrate --offline``: moving a domain's definition (and with
``--copy-storage-all`` its disks) to another daemon; docs/migration.md.

As virsh: the definition is made persistent on the destination (``--persistent``
is implied); the domain is not started there and not stopped here.  A running
domain may be migrated offline without disks (its definition is copied; it keeps
running here); copying the disks of a running domain is refused (they change
under the copy: use ``--live --copy-storage-all``), and so is ``--undefinesource``
for a running domain.

Two steps on the destination, as for a live migration: ``POST
/v1/migrations/offline`` checks the definition as ``define`` would (with the copied
disks' images created first, served by qemu-nbd), ``POST .../finish`` stores it;
``DELETE`` removes what the first step made.  Nothing is defined there before
``finish``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, StateError, VirtkitError
from virtkit.model.domain import Disk, Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.runtime import offlinecopy, storagecopy
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.qemunames import disk_slots
from virtkit.service.copyplan import copy_plan
from virtkit.service.domains import DomainService
from virtkit.service.models.documents import DomainDocument, PeerAnswer
from virtkit.service.models.migrations import (
    CopyDisk,
    IncomingStarted,
    MigrateRequest,
    NbdServer,
    OfflineIncomingRequest,
)
from virtkit.service.peer import Peer
from virtkit.store.db import DomainRow, Store

#: an offline migration nobody finishes is removed after this long
DEADLINE = 3600.0


def defined_here(store: Store, uuid: str, name: str) -> DomainRow | None:
    """The definition of this very domain (same UUID *and* name) that the destination
    already has, which a migration may use (libvirt's ping-pong: a domain kept defined
    on both hosts); a different domain holding the name or the UUID is refused."""
    by_uuid, by_name = store.find_domain(uuid), store.find_domain(name)
    if by_uuid is not None and by_name is not None and by_uuid.uuid == by_name.uuid \
            and by_uuid.name == name and not by_uuid.spec.get("transient"):
        return by_uuid
    for ref, row in ((uuid, by_uuid), (name, by_name)):
        if row is not None:
            raise Conflict(f"a domain '{ref}' is already defined on the destination",
                           fix="undefine it there first (a definition of the same name "
                               "and UUID is fine)")
    return None


@dataclass
class Pending:
    """An offline migration received but not finished."""

    spec: DomainDocument
    created: list[storagecopy.CreatedImage]
    servers: offlinecopy.Servers
    expiry: asyncio.Task[None] | None = None


@dataclass
class Progress:
    """domjobinfo of an outgoing offline migration."""

    total: int = 0
    done: dict[str, int] = field(default_factory=dict)
    aborted: bool = False


class OfflineMigrations:
    """Both ends of offline migrations of this daemon."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._pending: dict[str, Pending] = {}
        self.jobs: dict[str, Progress] = {}

    # -- the destination end ---------------------------------------------------------

    async def incoming(self, body: OfflineIncomingRequest, copies: list[CopyDisk],
                       address: str) -> IncomingStarted:
        domain = load_domain({**body.spec, "transient": False})
        # finish's define() replaces a definition of this domain here (virsh define's)
        defined_here(self._store, domain.uuid, domain.name)
        if domain.uuid in self._pending or domain.name in {
                p.spec.get("name") for p in self._pending.values()}:
            raise Conflict(f"an offline migration of {domain.name} is already under way "
                           "to the destination", fix="wait for it, or cancel it")
        for index, disk in enumerate(copies):  # the path policy before anything is made
            self._domains.policy.check(disk.path, kind="new",
                                       field=f"copy_storage.disks[{index}].path")
        images = [disk.model_dump(exclude_none=True) for disk in copies]
        created = await asyncio.to_thread(storagecopy.create_images, images)
        servers = offlinecopy.Servers()
        try:
            prepared = await self._domains.prepare_async(domain)  # the images exist now
            nbd = await servers.serve(address, images) if copies else None
        except BaseException:
            await servers.stop()
            storagecopy.remove_images(created)
            raise
        pending = Pending(dump_domain(prepared), created, servers)
        self._pending[domain.uuid] = pending
        pending.expiry = asyncio.create_task(self._expire(domain.uuid, pending))
        return IncomingStarted(id=domain.uuid, domain=domain.name,
                               nbd=NbdServer.model_validate(nbd) if nbd else None)

    async def _expire(self, uuid: str, pending: Pending) -> None:
        await asyncio.sleep(DEADLINE)
        if self._pending.get(uuid) is pending:
            await self.abort(uuid)

    def has(self, migration_id: str) -> bool:
        return migration_id in self._pending

    async def finish(self, migration_id: str) -> dict[str, Any]:
        pending = self._pending.pop(migration_id)
        if pending.expiry is not None:
            pending.expiry.cancel()
        await pending.servers.stop()
        try:
            await asyncio.to_thread(offlinecopy.sync, [i.path for i in pending.created])
            return (await asyncio.to_thread(self._domains.define, pending.spec)).wire()
        except BaseException:
            storagecopy.remove_images(pending.created)
            raise

    async def abort(self, migration_id: str) -> bool:
        pending = self._pending.pop(migration_id, None)
        if pending is None:
            return False
        if pending.expiry is not None and pending.expiry is not asyncio.current_task():
            pending.expiry.cancel()
        await pending.servers.stop()
        storagecopy.remove_images(pending.created)
        return True

    # -- the source end --------------------------------------------------------------

    async def migrate(self, row: Any, peer: Peer, address: str, body: MigrateRequest,
                      copy: dict[str, str] | None) -> tuple[PeerAnswer, list[str]]:
        """Send the definition of ``row`` (and its disks with ``copy``: the path map);
        the destination's answer to finish (the domain there) and the disks copied."""
        vm = self._life.vm(row.uuid, row.name)
        if "live" in body.model_fields_set and body.live:
            raise InvalidSpec("--offline and --live exclude each other", field="live",
                              fix="give one of them")
        if body.postcopy or body.postcopy_after_precopy:
            raise InvalidSpec("--postcopy is for live migration", field="postcopy",
                              fix="leave out --offline")
        if body.copy_storage_inc:
            raise InvalidSpec("--copy-storage-inc is not available offline",
                              field="copy_storage_inc", fix="use --copy-storage-all")
        async with vm.lock:
            running = vm.state is not State.SHUTOFF
            if running and copy is not None:
                raise StateError(f"domain '{row.name}' is {vm.state.value}: its disks "
                                 "change while they are copied", current=vm.state.value,
                                 requested="migrate --offline --copy-storage-all",
                                 fix="shut it down first, or use --live --copy-storage-all")
            if running and body.undefine_source:
                raise StateError(f"domain '{row.name}' is {vm.state.value}: its definition "
                                 "cannot be removed here", current=vm.state.value,
                                 requested="migrate --offline --undefinesource",
                                 fix="shut it down first, or leave out --undefinesource")
            definition = row.spec
            planned: list[dict[str, Any]] = []
            if copy is not None:
                domain = await self._domains.prepare_async(load_domain(definition))
                copies, _moved, definition = copy_plan(domain, definition, copy)
                sources = {slot: disk.path for slot, disk in _by_device(domain).items()}
                planned = await asyncio.to_thread(offlinecopy.plan, [
                    (device, str(sources[device]), target) for device, target in copies])
            answer = await peer.offline({
                "spec": definition, "address": address,
                **({"copy_storage": {"disks": [{k: v for k, v in d.items() if k != "source"}
                                               for d in planned]}} if planned else {})})
            migration = str(answer["id"])
            job = self.jobs[row.uuid] = Progress(total=sum(d["size"] for d in planned))
            try:
                for disk in planned:
                    nbd = answer["nbd"]
                    await asyncio.to_thread(offlinecopy.send, disk, nbd["host"],
                                            int(nbd["ports"][disk["device"]]),
                                            _reporter(job, disk))
                if job.aborted:
                    raise Conflict("the migration was cancelled (domjobabort)")
                finished = await peer.finish(migration, {"persistent": True})
            except BaseException:
                with contextlib.suppress(VirtkitError):
                    await peer.abort(migration)
                raise
            finally:
                self.jobs.pop(row.uuid, None)
        return finished, [str(d["device"]) for d in planned]


def _by_device(domain: Domain) -> dict[str, Disk]:
    return {slot.device_id: disk for slot, disk in
            zip(disk_slots(domain), domain.disks, strict=True)}


def _reporter(job: Progress, disk: dict[str, Any]) -> Any:
    def report(percent: float, _total: float) -> None:
        if job.aborted:
            raise Conflict("the migration was cancelled (domjobabort) while copying "
                           f"{disk['source']}")
        job.done[str(disk["device"])] = int(disk["size"] * percent / 100)
    return report
