"""The domain command API: every front end (REST, CLI, web) calls only this.

Each method takes names, a definition (a JSON document or YAML text) or typed
values, validates them through the model and the host checks, drives the runtime,
and returns a typed result of service/models/domains.py.  Business rules live here
and below, never in front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, QemuError
from virtkit.formats.libvirt_xml import domain_from_xml, domain_to_xml
from virtkit.host import procstat
from virtkit.host.pathpolicy import PathPolicy
from virtkit.model.domain import Accelerator, Domain, Nic
from virtkit.model.load import (
    domain_to_yaml,
    domain_without_secrets,
    dump_domain,
    load_domain,
    parse_text,
    without_secrets,
)
from virtkit.model.state import ACTIVE_STATES, Action, State, check_action
from virtkit.runtime import hotplug, preflight, savefile, tuning
from virtkit.runtime.events import EventBus, EventDict
from virtkit.runtime.imageuse import ImageUse, Wanted, lock_conflict, wanted_disks
from virtkit.runtime.launcher import remove_nvram
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.qemunames import disk_slots
from virtkit.service import capacity
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.domains import (
    Autostart,
    DiskInfo,
    DomainInfo,
    DomainSpecText,
    DomainSummary,
    Interface,
    LinkSet,
    SecurityContext,
    Undefined,
    VncDisplay,
)
from virtkit.service.networks import NetworkService
from virtkit.service.storage import StorageService
from virtkit.storage.qemuimg import detect_format
from virtkit.store.db import DomainRow, Store

#: the intent kind of ``undefine --remove-all-storage`` (see service/provision.py)
UNDEFINE_STORAGE = "undefine-storage"



class DomainService:
    """Define, inspect and drive domains."""

    def __init__(self, store: Store, lifecycle: Lifecycle, bus: EventBus,
                 host_memory_mib: int | None = None,
                 storage: StorageService | None = None) -> None:
        self._storage = storage
        #: the pools' service (None in unit tests without storage)
        self.storage = storage
        self.networks: NetworkService | None = None  # set by the daemon
        self._store = store
        self._life = lifecycle
        self._bus = bus
        self._host_memory = host_memory_mib or preflight.host_memory_mib()
        #: virsh's small domain Ids: one per run (QEMU process), counted from 1
        self._ids: dict[str, tuple[int, int]] = {}
        self._last_id = 0
        self._ids_lock = threading.Lock()
        #: who else uses an image (one writer per image, bases stay read-only)
        self.images = ImageUse(store, lifecycle,
                               storage.pool_files if storage is not None else None)

    @property
    def policy(self) -> PathPolicy:
        """The path policy of every host file a guest is given (host/pathpolicy.py)."""
        return self._life.policy

    def subscribe_events(self) -> contextlib.AbstractContextManager[asyncio.Queue[EventDict]]:
        """A queue of every event published while the context is open (the API's stream)."""
        return self._bus.subscribe()

    def events_since(self, event_id: int) -> list[EventDict]:
        """The journaled events after ``event_id`` (a client catching up)."""
        return self._bus.since(event_id)

    # -- reading ----------------------------------------------------------

    def _row(self, ref: str) -> DomainRow:
        return self._store.get_domain(ref)

    def spec(self, ref: str) -> Domain:
        return load_domain(self._row(ref).spec)

    def _domain_id(self, uuid: str, pid: int | None) -> int | None:
        """The run's Id as virsh shows it: a small number given at first sight of each
        QEMU process, never reused while the daemon runs (None when shut off)."""
        if pid is None:
            return None
        with self._ids_lock:
            known = self._ids.get(uuid)
            if known is None or known[0] != pid:
                self._last_id += 1
                known = self._ids[uuid] = (pid, self._last_id)
            return known[1]
    @property
    def lifecycle(self) -> Lifecycle:
        return self._life

    def summary(self, ref: str) -> DomainSummary:
        """Name, uuid, state and the other list columns of one domain."""
        return self._summary(self._row(ref))

    def _summary(self, row: DomainRow, **more: Any) -> DomainSummary:
        """The list columns of ``row``, and the ``more`` fields of this answer."""
        vm = self._life.vm(row.uuid, row.name)
        spec = row.spec
        running = vm.running
        live = running.live if running is not None else None  # hotplug changes these
        return DomainSummary(
            name=row.name,
            uuid=row.uuid,
            state=vm.state.value,
            reason=vm.reason,
            vcpus=live.vcpus.current if live else spec["vcpus"]["current"],
            memory_mib=live.memory.current if live else spec["memory"]["current"],
            autostart=spec.get("autostart", False),
            pid=running.process.pid if running else None,
            id=self._domain_id(row.uuid, running.process.pid if running else None),
            title=spec.get("title"),
            managed_save=self.managed_image(row.uuid).exists(),
            **more,
        )

    def managed_image(self, uuid: str) -> Path:
        """Where ``virtkit managedsave`` keeps the domain's memory image."""
        return self._life.paths.managed_save / f"{uuid}.save"

    def list_domains(self, *, include_inactive: bool = True) -> list[DomainSummary]:
        """All domains (virsh list --all), or only the active ones."""
        rows = [self._summary(row) for row in self._store.list_domains()]
        if include_inactive:
            return rows
        return [row for row in rows if row.state in ACTIVE_STATES]

    def info(self, ref: str, *, secrets: bool = False) -> DomainInfo:
        """Everything about one domain: summary, spec, version, runtime facts; the
        spec's secrets (VNC password) only with ``secrets``."""
        row = self._row(ref)
        vm = self._life.vm(row.uuid, row.name)
        info = self._summary(row).wire()
        domain = load_domain(row.spec)
        info.update(
            title=domain.title,
            description=domain.description,
            version=row.version,
            spec=row.spec if secrets else without_secrets(row.spec),
            max_memory_mib=domain.memory.max or domain.memory.current,
            max_vcpus=domain.vcpus.maximum,
            machine=domain.machine.value,
            accelerator=vm.running.accel if vm.running else domain.accelerator.value,
            started=vm.started if vm.running else None,
            installing=vm.running is not None and vm.boot_spec is not None,
            vnc=self._vnc(vm.running.vnc if vm.running else None),
            disks=self.disks(row.uuid),
            console_log=str(self.console_log_path(row.uuid)),
            security=self._security(vm.running),
            # virsh dominfo's Persistent: a transient domain (virsh create, or one that
            # arrived by migration without --persistent) goes when it stops
            persistent=not row.spec.get("transient", False),
        )
        stat = procstat.process_stat(vm.running.process.pid) if vm.running else None
        info["cpu_time"] = round(stat.cpu_s, 3) if stat else None
        return DomainInfo(**info)

    @staticmethod
    def _security(running: Any) -> SecurityContext | None:
        """The running QEMU's security context (virsh dominfo's Security lines): its
        uid/gid label, cgroup and sandbox when confined, model ``none`` when not."""
        if running is None:
            return None
        if running.confinement is None:
            return SecurityContext(model="none", doi="0", label=None)
        return SecurityContext(**running.confinement.describe())

    def disks(self, ref: str, *, inactive: bool = False) -> list[DiskInfo]:
        """domblklist: the disks QEMU has now (hot-plugged ones included) when the
        domain runs, else (or with ``inactive``) the spec's."""
        row = self._row(ref)
        running = self._life.vm(row.uuid, row.name).running
        domain = running.live if running is not None and running.live is not None \
            and not inactive else load_domain(row.spec)
        return [self._disk_info(slot.target, slot.bus.value, disk)
                for slot, disk in zip(disk_slots(domain), domain.disks, strict=True)]

    def _disk_info(self, target: str, bus: str, disk: Any) -> DiskInfo:
        pool, volume = disk.pool, disk.volume
        if pool is None and disk.path and self._storage is not None:
            pool, volume = self._storage.locate(disk.path) or (None, None)
        return DiskInfo(target=target, bus=bus, path=disk.path, device=disk.device.value,
                        format=disk.format, pool=pool, volume=volume)

    @staticmethod
    def _vnc(vnc: dict[str, Any] | None) -> VncDisplay | None:
        """The running QEMU's VNC server (runtime/launcher.py's ``Running.vnc``)."""
        if not vnc or not vnc.get("port"):
            return None
        port = int(vnc["port"])
        return VncDisplay(**{**vnc, "display": f"{vnc.get('host')}:{port - 5900}"})

    def spec_yaml(self, ref: str, *, secrets: bool = False) -> DomainSpecText:
        """The spec as YAML text plus its version (for ``virtkit edit``, which asks
        for ``secrets`` so that saving the edit keeps the password)."""
        row = self._row(ref)
        return DomainSpecText(name=row.name, version=row.version,
                              yaml=domain_to_yaml(load_domain(row.spec), secrets=secrets))

    def dumpxml(self, ref: str, *, secrets: bool = False) -> str:
        """The domain as libvirt domain XML (``virsh dumpxml``; ``secrets``: with
        ``--security-info``, the graphics ``passwd``)."""
        row = self._row(ref)
        domain = load_domain(row.spec)
        running = self._life.vm(row.uuid, row.name).running
        if running is not None and running.accel == "tcg" \
                and domain.accelerator is Accelerator.AUTO:
            # libvirt's domain type says what it runs under: 'qemu' for TCG
            domain = domain.model_copy(update={"accelerator": Accelerator.TCG})
        return domain_to_xml(domain if secrets else domain_without_secrets(domain))

    def vncdisplay(self, ref: str) -> VncDisplay:
        row = self._row(ref)
        vm = self._life.vm(row.uuid, row.name)
        vnc = self._vnc(vm.running.vnc if vm.running else None)
        if vnc is None:
            if vm.running is None:
                raise Conflict(f"domain '{row.name}' is not running",
                               fix=f"start it: virtkit start {row.name}")
            raise NotFound(f"domain '{row.name}' has no VNC display",
                           fix="set graphics: vnc in its spec (virtkit edit) and restart it")
        return vnc

    def console_log_path(self, uuid: str, port: int = 0) -> Path:
        """Where serial port ``port`` is logged: its log_path, or the domain's log folder."""
        serials = self.spec(uuid).serials
        if port < len(serials) and serials[port].log_path:
            return Path(str(serials[port].log_path))
        return self._life.paths.logs / "domains" / uuid / f"serial{port}.log"

    def console_socket(self, ref: str, port: int = 0) -> tuple[str, Path]:
        """The name and serial socket of a running domain (for the console proxy)."""
        row = self._row(ref)
        vm = self._life.vm(row.uuid, row.name)
        if vm.running is None:
            raise Conflict(f"domain '{row.name}' is not running",
                           fix=f"start it: virtkit start {row.name} --console")
        domain = load_domain(row.spec)
        if port >= len(domain.serials):
            raise NotFound(f"domain '{row.name}' has no serial port {port}")
        return row.name, vm.running.run_dir / f"serial{port}.sock"

    # -- defining ----------------------------------------------------------------

    def _resolve_volumes(self, domain: Domain) -> Domain:
        """Give every ``pool``/``volume`` disk the path of its volume (refreshed each start)."""
        for index, disk in enumerate(domain.disks):
            if disk.pool is None or disk.volume is None:
                continue
            if self._storage is None:
                raise InvalidSpec(f"disks[{index}]: storage pools are not available here",
                                  field=f"disks[{index}].pool")
            disk.path = self._storage.resolve(disk.pool, disk.volume)
        return domain

    def prepare(self, domain: Domain, *, stored: SpecDocument | None = None) -> Domain:
        """Validate ``domain`` against the host and fill in host-given defaults;
        ``stored``: the definition it replaces (its paths were checked when named)."""
        return self._prepare(domain, stored)

    async def prepare_async(self, domain: Domain, *,
                            stored: SpecDocument | None = None) -> Domain:
        """:meth:`prepare` in a worker thread: it stats user paths and runs qemu-img."""
        return await asyncio.to_thread(self._prepare, domain, stored)

    def replace_spec(self, row: DomainRow, domain: Domain) -> None:
        """Store a prepared spec as the next version of ``row`` (device changes)."""
        updated = self._store.update_domain(row.uuid, domain.name, dump_domain(domain),
                                            row.version)
        self._bus.publish("updated", row.uuid, domain=updated.name, uuid=row.uuid,
                          state=self._life.vm(row.uuid, updated.name).state.value,
                          reason="devices changed", version=updated.version)

    def _prepare(self, domain: Domain, stored: SpecDocument | None = None) -> Domain:
        """Host checks and defaults that need the host: files, memory, formats, MACs.
        Every path passes the path policy (host/pathpolicy.py); a remote caller may name
        only pool volumes, but may keep the paths ``stored`` already names."""
        self._resolve_volumes(domain)
        preflight.check_files(domain, self._life.policy, trusted=_paths_of(stored))
        preflight.duplicate_paths(domain)
        self._check_images_defined(domain)
        self.check_fits_host(domain)
        preflight.resolve_filesystems(domain)
        for disk in domain.disks:
            if disk.path is not None and disk.format is None:
                disk.format = detect_format(disk.path)  # type: ignore[assignment]
        self._assign_macs(domain)
        return domain

    def check_fits_host(self, domain: Domain) -> None:
        """The checks of define that need no disk files: networks, memory, CPUs, host
        limits.  ``install --dry-run`` runs them too, so it refuses what the real run
        would (and the real run refuses before it creates any disk)."""
        self._check_networks(domain)
        preflight.check_memory(domain, self._host_memory)
        preflight.check_cpuset(domain)
        tuning.check_host(domain, at_start=False)

    def _check_images_defined(self, domain: Domain) -> None:
        """A disk this definition adds (or makes writable) must not clash with another
        domain's definition or running QEMU, nor write a file that backs another image.
        Disks the stored definition already has are not checked again here (start
        checks them), so a definition that clashes can still be edited to fix it."""
        stored = self._store.find_domain(domain.uuid) if domain.uuid else None
        before = set() if stored is None else {
            (os.path.realpath(w.path), w.writable)
            for w in wanted_disks(load_domain(stored.spec))}
        new = [w for w in wanted_disks(domain)
               if (os.path.realpath(w.path), w.writable) not in before]
        self.images.check(domain.name, domain.uuid, new, defined=True)

    def check_images_running(self, name: str, uuid: str | None,
                             wanted: list[Wanted]) -> None:
        """Before a QEMU opens ``wanted``: no running domain may use them against the
        rules, and no writable one may back another image."""
        self.images.check(name, uuid, wanted, defined=False)

    def lock_error(self, exc: QemuError) -> Conflict | None:
        """QEMU's image lock error as a Conflict naming the image and its holder."""
        return lock_conflict(exc, lambda path: self.images.users(path))

    def _check_networks(self, domain: Domain) -> None:
        """Every ``network:`` a NIC names must be defined (it may be started later)."""
        for index, nic in enumerate(domain.nics):
            if nic.type != "network" or nic.network is None:
                continue
            if self.networks is None:
                raise InvalidSpec(f"nics[{index}]: virtual networks are not available here",
                                  field=f"nics[{index}].network")
            try:
                self.networks.spec_of(nic.network)
            except NotFound:
                raise InvalidSpec(f"nics[{index}].network: network '{nic.network}' is not "
                                  "defined", field=f"nics[{index}].network",
                                  fix="see 'virtkit net-list --all'") from None

    def _live_nics(self, row: DomainRow) -> tuple[Any, list[tuple[int, Any]]]:
        """The VM record and its NICs with their QEMU numbers: the running configuration
        when QEMU runs (hot-added NICs included), else the spec's."""
        vm = self._life.vm(row.uuid, row.name)
        running = vm.running
        if running is not None and running.live is not None:
            return vm, list(zip(running.nic_ids, running.live.nics, strict=True))
        return vm, list(enumerate(load_domain(row.spec).nics))

    def interfaces(self, ref: str) -> list[Interface]:
        """domiflist/domifaddr: each NIC with its source, tap, link and leased addresses."""
        row = self._row(ref)
        vm, nics = self._live_nics(row)
        taps = vm.running.taps if vm.running else {}
        links = vm.links if vm.running else {}
        result = []
        for index, (number, nic) in enumerate(nics):
            addresses: list[str] = []
            prefix = None
            if nic.type == "network" and nic.network and self.networks is not None:
                addresses = [lease.ip for lease in self.networks.leases(nic.network)
                             if lease.mac.lower() == (nic.mac or "").lower()]
                with contextlib.suppress(NotFound):
                    subnet = self.networks.spec_of(nic.network).subnet
                    prefix = int(subnet.partition("/")[2]) if subnet else None
            result.append(Interface(
                index=index, type=nic.type, model=nic.model, mac=nic.mac,
                source=nic.network or nic.bridge or "user",
                tap=taps.get(number), link=links.get(number, nic.link),
                addresses=addresses, prefix=prefix))
        return result

    async def set_link(self, ref: str, nic_ref: str, state: str) -> LinkSet:
        """domif-setlink: the NIC named by MAC, tap name or index goes up or down, live."""
        if state not in ("up", "down"):
            raise InvalidSpec("link state must be up or down", field="state")
        row = self._row(ref)
        vm, nics = self._live_nics(row)
        if vm.running is None:
            raise Conflict(f"domain '{row.name}' is not running",
                           fix="links of a stopped domain are set in its spec (nics[].link)")
        for index, (number, nic) in enumerate(nics):
            if nic_ref in (nic.mac, vm.running.taps.get(number), str(index)):
                await hotplug.set_link(vm, number, state == "up")
                return LinkSet(name=row.name, index=index, mac=nic.mac, link=state)
        raise NotFound(f"domain '{row.name}' has no interface {nic_ref}",
                       fix=f"see 'virtkit domiflist {row.name}'")

    def _assign_macs(self, domain: Domain) -> None:
        if not domain.nics:
            return  # no need to read every other domain's spec
        used = {nic["mac"] for row in self._store.list_domains() if row.uuid != domain.uuid
                for nic in row.spec.get("nics", []) if nic.get("mac")}
        for index, nic in enumerate(domain.nics):
            if nic.mac is None:
                nic.mac = _new_mac(used)
            elif nic.mac in used:
                raise Conflict(f"nics[{index}].mac: {nic.mac} is used by another domain",
                               fix="leave mac out to get a fresh one")
            used.add(nic.mac)

    def define(self, data: SpecDocument | str, *, version: int | None = None,
               finish_intent: int | None = None) -> DomainInfo:
        """Create a domain, or replace the spec of the one with the same name or uuid.

        ``version``, when given, must match the stored version (optimistic
        concurrency: a stale edit is refused, not applied).  ``finish_intent`` (a new
        domain only) is removed in the transaction that inserts it.
        """
        raw = parse_text(data) if isinstance(data, str) else dict(data)
        existing = self._existing_for(raw)
        if existing is not None and not raw.get("uuid"):
            raw["uuid"] = existing.uuid
        domain = self._prepare(load_domain(raw), existing.spec if existing else None)
        spec = dump_domain(domain)
        if existing is None:
            if version is not None:
                raise NotFound(f"domain '{domain.name}' no longer exists",
                               fix="define it anew")
            row = self._store.insert_domain(domain.uuid, domain.name, spec,
                                            finish_intent=finish_intent)
            self._bus.publish("defined", row.uuid, domain=row.name, uuid=row.uuid,
                              state=State.SHUTOFF.value, reason="")
        else:
            if finish_intent is not None:
                raise Conflict(f"domain '{domain.name}' already exists",
                               fix="new disks are only made for a new domain")
            row = self._store.update_domain(existing.uuid, domain.name, spec, version)
            self._life.vm(row.uuid, row.name)
            self._bus.publish("updated", row.uuid, domain=row.name, uuid=row.uuid,
                              state=self._life.vm(row.uuid).state.value, reason="",
                              version=row.version)
        return self.info(row.uuid)

    def define_xml(self, text: str, *, force: bool = False) -> DomainInfo:
        """Define from libvirt domain XML; ``warnings``: what force dropped, and notes."""
        spec, warnings = domain_from_xml(text, force=force)
        info = self.define(spec)
        info.warnings = warnings
        return info

    async def create(self, data: SpecDocument | str | None = None, *, xml: str | None = None,
                     force: bool = False) -> DomainInfo:
        """virsh create: define a transient domain and start it; it is undefined when it
        stops.  If it does not start, it is not left defined."""
        warnings: list[str] = []
        if xml is not None:
            raw, warnings = domain_from_xml(xml, force=force)
        else:
            raw = parse_text(data) if isinstance(data, str) else dict(data or {})
        existing = self._existing_for(raw)
        if existing is not None:
            raise Conflict(f"domain '{existing.name}' already exists",
                           fix=f"start it (virtkit start {existing.name}), or choose "
                               "another name")
        info = await asyncio.to_thread(self.define, {**raw, "transient": True})
        try:
            info = await self.start(info.uuid)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.undefine(info.uuid)
            raise
        info.warnings = warnings
        return info

    def _existing_for(self, raw: SpecDocument) -> DomainRow | None:
        """The stored domain a define would replace; Conflict if name and uuid disagree."""
        # by exact name and by exact uuid only: a name is never taken for a uuid (nor
        # the reverse), so a define can only ever replace the object it names
        name, uuid = raw.get("name"), raw.get("uuid")
        by_name = self._store.find_domain_named(name) if isinstance(name, str) and name \
            else None
        by_uuid = self._store.find_domain_uuid(uuid) if isinstance(uuid, str) and uuid \
            else None
        if by_uuid is not None:
            if by_name is not None and by_name.uuid != by_uuid.uuid:
                raise Conflict(f"domain '{name}' already exists with uuid {by_name.uuid}",
                               fix="choose another name")
            if isinstance(name, str) and by_uuid.name != name:
                # libvirt's rule: a define never renames (virsh domrename does)
                raise Conflict(f"domain '{by_uuid.name}' already exists with uuid "
                               f"{by_uuid.uuid}", fix="leave uuid out to define a new "
                               "domain; to rename, edit the domain (virtkit edit)")
            return by_uuid
        if by_name is not None and uuid:
            raise Conflict(f"domain '{name}' already exists with uuid {by_name.uuid}",
                           fix="choose another name, or undefine the existing domain")
        return by_name

    def update(self, ref: str, data: SpecDocument | str, version: int) -> DomainInfo:
        """Replace the spec of ``ref`` if nobody changed it since ``version``."""
        row = self._row(ref)
        raw = parse_text(data) if isinstance(data, str) else dict(data)
        raw.setdefault("uuid", row.uuid)
        if raw["uuid"] != row.uuid:
            raise InvalidSpec("uuid: the uuid of a domain cannot be changed", field="uuid")
        domain = self._prepare(load_domain(raw), row.spec)
        updated = self._store.update_domain(row.uuid, domain.name, dump_domain(domain), version)
        self._bus.publish("updated", row.uuid, domain=updated.name, uuid=row.uuid,
                          state=self._life.vm(row.uuid, updated.name).state.value, reason="",
                          version=updated.version)
        return self.info(row.uuid)

    async def undefine(self, ref: str, *, nvram: bool = False,
                       snapshots_metadata: bool = False, managed_save: bool = False,
                       storage_of: Callable[[str], list[list[str]]] | None = None
                       ) -> Undefined:
        """Remove a stopped domain; one with snapshots only with ``snapshots_metadata``
        (their rows go, their images and memory files stay).

        With ``storage_of`` (``--remove-all-storage``), the volumes it names for the
        domain are recorded as an ``undefine-storage`` intent in the transaction that
        deletes the row; the answer carries ``volumes`` and ``intent`` for the caller,
        which removes them (service/provision.py)."""
        row = self._row(ref)
        vm = self._life.vm(row.uuid, row.name)
        async with vm.lock:
            check_action(Action.UNDEFINE, vm.state, row.name)
            snapshots = len(self._store.list_snapshots(row.uuid))
            if snapshots and not snapshots_metadata:
                raise Conflict(
                    f"domain '{row.name}' has {snapshots} snapshot(s)",
                    fix=f"delete them (virtkit snapshot-delete {row.name} NAME), or "
                        f"'virtkit undefine {row.name} --snapshots-metadata' to forget them "
                        "and keep their files")
            if vm.running is not None:
                raise Conflict(f"domain '{row.name}' still has a preserved QEMU process",
                               fix=f"destroy it first: virtkit destroy {row.name}")
            image = self.managed_image(row.uuid)
            if image.exists() and not managed_save:
                raise Conflict(f"domain '{row.name}' has a managed save image",
                               fix=f"'virtkit undefine {row.name} --managed-save' to remove "
                                   f"it too, or start it first (virtkit start {row.name})")
            volumes = storage_of(row.uuid) if storage_of is not None else []
            intent = self._store.delete_domain(
                row.uuid, intent=(UNDEFINE_STORAGE, {"name": row.name, "volumes": volumes})
                if storage_of is not None else None)
            self._life.forget(row.uuid)
            image.unlink(missing_ok=True)
        if nvram:
            remove_nvram(self._life.paths, row.uuid)
        self._bus.publish("undefined", row.uuid, domain=row.name, uuid=row.uuid,
                          state=State.SHUTOFF.value, reason="")
        if intent is not None:
            return Undefined(name=row.name, uuid=row.uuid, intent=intent, volumes=volumes)
        return Undefined(name=row.name, uuid=row.uuid)

    async def destroy_and_undefine(self, ref: str) -> None:
        """Stop ``ref`` if it runs and remove it: the undo of a failed install."""
        row = self._row(ref)
        if self._life.vm(row.uuid, row.name).state in ACTIVE_STATES:
            await self._life.destroy(row.uuid, row.name)
        await self.undefine(row.uuid)

    def set_autostart(self, ref: str, enabled: bool) -> Autostart:
        row = self._row(ref)
        spec = dict(row.spec, autostart=enabled)
        self._store.update_domain(row.uuid, row.name, spec, None)
        return Autostart(name=row.name, autostart=enabled)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, ref: str, *, paused: bool = False, boot_spec: Domain | None = None,
                    boot_after_install: bool = True, force_boot: bool = False
                    ) -> DomainInfo:
        """Start ``ref``; with ``boot_spec``, run that configuration once (an install
        phase), after which the domain's own spec boots unless ``boot_after_install``
        is False.  A managed save image is restored (and then removed) instead of a
        boot, unless ``force_boot`` discards it (virsh start --force-boot)."""
        row = self._row(ref)
        check_action(Action.START, self._life.vm(row.uuid, row.name).state, row.name)
        image = self.managed_image(row.uuid)
        if boot_spec is None and image.exists():
            if not force_boot:
                await self._restore_file(str(image), paused=paused, managed=True)
                image.unlink(missing_ok=True)
                return await asyncio.to_thread(self.info, row.uuid)
            image.unlink()
        row = await asyncio.to_thread(self._check_start, row, boot_spec)
        try:
            await self._life.start(row.uuid, row.name, paused=paused, boot_spec=boot_spec,
                                   boot_after_install=boot_after_install)
        except QemuError as exc:
            raise self.lock_error(exc) or exc from None
        return await asyncio.to_thread(self.info, row.uuid)

    def _check_start(self, row: DomainRow, boot_spec: Domain | None) -> DomainRow:
        """The checks before a start, in a worker thread (they stat user paths and run
        qemu-img): volumes resolved again, every path through the path policy (files
        change after define), host tuning, capacity."""
        domain = load_domain(row.spec)
        before = [disk.path for disk in domain.disks]
        self._resolve_volumes(domain)
        if [disk.path for disk in domain.disks] != before:
            row = self._store.update_domain(row.uuid, row.name, dump_domain(domain), None)
        preflight.check_files(domain, self._life.policy, remote=False)
        tuning.check_host(boot_spec or domain, at_start=True)
        capacity.check_start(boot_spec or domain, self._running_specs(), os.environ)
        if boot_spec is not None:
            self._resolve_volumes(boot_spec)
            preflight.check_files(boot_spec, self._life.policy, remote=False)
        # one writer per image: before the first grant of an image to a confined QEMU
        self.check_images_running(row.name, row.uuid, wanted_disks(boot_spec or domain))
        return row

    def _running_specs(self) -> list[Domain]:
        """What the domains with a QEMU run now, hot-plugged vCPUs and memory included
        (for overcommit accounting)."""
        specs = []
        for row in self._store.list_domains():
            running = self._life.vm(row.uuid, row.name).running
            if running is not None:
                specs.append(running.live if running.live is not None
                             else load_domain(row.spec))
        return specs

    async def shutdown(self, ref: str, *, timeout: float | None = None, wait: bool = False,
                       reboot: bool = False, mode: str = "acpi") -> DomainSummary:
        """shutdown/reboot; ``mode`` is virsh's ``--mode``: acpi, agent, or both in order."""
        modes = tuple(part.strip() for part in (mode or "acpi").split(",") if part.strip())
        unknown = [part for part in modes if part not in ("acpi", "agent")]
        if unknown or not modes:
            raise InvalidSpec(f"unknown shutdown mode {','.join(unknown) or mode!r}",
                              field="mode", fix="use acpi, agent, or agent,acpi")
        row = self._row(ref)
        kind = await self._life.shutdown(row.uuid, row.name, timeout=timeout, wait=wait,
                                         reboot=reboot, modes=modes)
        if kind == "new-process":
            return self._summary(row, note="the definition changed since this QEMU "
                                 "started, so the guest reboots into a new QEMU process "
                                 "that runs it")
        return self._summary(row)

    async def simple(self, ref: str, action: str) -> DomainSummary:
        """destroy, suspend, resume, reset: one call, no arguments."""
        row = self._row(ref)
        operations = {"destroy": self._life.destroy, "suspend": self._life.suspend,
                      "resume": self._life.resume, "reset": self._life.reset}
        if action not in operations:
            raise NotFound(f"unknown action '{action}'")
        await operations[action](row.uuid, row.name)
        return self._summary(row)

    def _check_save_target(self, target: Path, path: str) -> None:
        """The save file's checks, in a worker thread (they stat the user's path)."""
        self._life.policy.check(path, field="path", kind="new")
        if target.exists():
            raise Conflict(f"{path} already exists", fix="choose a new file name")
        if not target.parent.is_dir():
            raise InvalidSpec(f"folder {target.parent} does not exist", field="path")

    async def save(self, ref: str, path: str) -> DomainSummary:
        row = self._row(ref)
        target = Path(path)
        if not target.is_absolute():
            raise InvalidSpec(f"save file {path} must be an absolute path", field="path")
        await asyncio.to_thread(self._check_save_target, target, path)
        await self._life.save(row.uuid, row.name, target)
        return self._summary(row, path=str(target))

    async def restore(self, path: str, *, paused: bool = False) -> DomainInfo:
        """Restore a saved domain (defining it from the file if it is not defined)."""
        return self.info(await self._restore_file(path, paused=paused))

    async def _restore_file(self, path: str, *, paused: bool, managed: bool = False) -> str:
        """Restore from ``path``; ``managed``: the daemon's own managed save image (in
        its state folder, which the path policy keeps from guests)."""
        fd = await asyncio.to_thread(self._open_save_file, path, managed)
        try:
            header, row = await asyncio.to_thread(self._restore_checks, fd, path)
            domain = load_domain(header["spec"])
            try:
                await self._life.restore(row.uuid, row.name, fd,
                                         running=bool(header.get("running")) and not paused,
                                         saved=domain.model_copy(update={"name": row.name}),
                                         layout=header.get("layout"))
            except QemuError as exc:
                raise self.lock_error(exc) or exc from None
        finally:
            os.close(fd)
        return row.uuid

    def _open_save_file(self, path: str, managed: bool = False) -> int:
        if not managed:
            self._life.policy.check(path, field="path", kind="file")
        if not os.path.isfile(path):
            raise InvalidSpec(f"save file {path} does not exist", field="path")
        return os.open(path, os.O_RDONLY)

    def _restore_checks(self, fd: int, path: str) -> tuple[savefile.Header, DomainRow]:
        """Read the save file's header, define its domain if it is not defined, check its
        paths (a worker thread: it reads the file and stats user paths)."""
        header = savefile.read_header(fd, path)
        domain = load_domain(header["spec"])
        row = self._store.find_domain(domain.uuid)
        if row is None:
            self.define(header["spec"])
            row = self._row(domain.uuid)
        elif row.name != domain.name:
            raise Conflict(f"the saved domain is now named '{row.name}'")
        preflight.check_files(load_domain(row.spec), self._life.policy, remote=False)
        self.check_images_running(row.name, row.uuid, wanted_disks(domain))
        return header, row

    async def autostart_all(self) -> list[str]:
        """Start every autostart domain that is not running (daemon start-up)."""
        started = []
        for row in self._store.list_domains():
            if not row.spec.get("autostart"):
                continue
            if self._life.vm(row.uuid, row.name).state in ACTIVE_STATES:
                continue
            try:
                await self.start(row.uuid)
                started.append(row.name)
            except Exception as exc:
                self._bus.publish("error", row.uuid, domain=row.name, uuid=row.uuid,
                                  state=State.SHUTOFF.value, reason=f"autostart failed: {exc}")
        return started


def _paths_of(spec: SpecDocument | None) -> set[str]:
    """The host paths a stored definition names (a remote caller may keep them)."""
    if not spec:
        return set()
    return {item.path for item in preflight.guest_paths(load_domain(spec))}


def _new_mac(used: set[str]) -> str:
    """A fresh locally administered MAC under QEMU's 52:54:00 prefix."""
    rng = random.Random(time.time_ns() ^ os.getpid())  # noqa: S311 - MAC addresses, not secrets
    while True:
        mac = "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            return mac


__all__ = ["DomainService", "Nic"]
