"""The device command API: virsh's attach-disk, detach-disk, attach-interface,
detach-interface, change-media, setvcpus, setmem, setmaxmem, and memory hot-add.

Every change names where it applies, as virsh does: ``live`` (the running QEMU),
``config`` (the stored definition, used from the next start) or both; neither
means "current": live when the domain runs, else config.  The new definition is
built and validated first (files exist, formats, MACs, networks), then QEMU is
changed, then the definition is stored, so a refused request changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, QemuError, StateError
from virtkit.formats.libvirt_device import device_from_xml
from virtkit.model.domain import Disk, DiskDevice, Domain, Nic
from virtkit.model.load import load_domain
from virtkit.model.state import Action, allows
from virtkit.model.units import parse_mib
from virtkit.runtime import hotplug
from virtkit.runtime.imageuse import wanted_images
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.qemunames import disk_slots
from virtkit.service.domains import DomainService
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.devices import (
    DeviceChanged,
    DiskAttached,
    DiskDetached,
    InterfaceAttached,
    InterfaceDetached,
    MediaChanged,
    MemoryAttached,
    MemorySet,
    VcpusSet,
)
from virtkit.service.tuning import TuningService
from virtkit.store.db import DomainRow, Store


class DeviceService:
    """Change a domain's devices, live and/or in its definition."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService,
                 tuning: TuningService | None = None) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._tuning = tuning

    async def device_xml(self, ref: str, xml: str, *, live: bool = False,
                         config: bool = False, detach: bool = False) -> DeviceChanged:
        """virsh attach-device / detach-device: one libvirt device element."""
        device = device_from_xml(xml)
        if device.kind == "hostdev":
            if self._tuning is None:
                raise InvalidSpec("PCI host devices are not available here")
            return await self._tuning.attach_hostdev(ref, xml, live=live, config=config,
                                                     detach=detach)
        if device.kind == "memory":
            if detach:
                raise InvalidSpec("memory cannot be unplugged here",
                                  fix="lower it with setmem (balloon) or --config and restart")
            return await self.attach_memory(ref, device.spec["size_mib"], live=live,
                                            config=config)
        if device.kind == "disk":
            if detach:
                target = device.spec.get("target") or device.spec.get("path")
                if not target:
                    raise InvalidSpec("name the disk to detach with <target dev='...'/> or "
                                      "its <source>", field="xml")
                return await self.detach_disk(ref, str(target), live=live, config=config)
            return await self.attach_disk(ref, device.spec, live=live, config=config)
        if detach:
            if not device.spec.get("mac"):
                raise InvalidSpec("name the interface to detach with <mac address='...'/>",
                                  field="xml")
            return await self.detach_interface(ref, device.spec["mac"], live=live,
                                               config=config)
        return await self.attach_interface(ref, device.spec, live=live, config=config)

    # -- where a change applies ------------------------------------------------------

    def _scope(self, ref: str, live: bool, config: bool) -> tuple[DomainRow, bool, bool]:
        """(row, change live?, change config?) following virsh's --live/--config/--current."""
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        active = vm.running is not None and allows(Action.LIVE_CHANGE, vm.state)
        if not live and not config:
            live, config = active, not active
        if live and not active:
            raise StateError(f"domain '{row.name}' is not running, so it has no live "
                             "configuration to change", current=vm.state.value,
                             requested="live change", fix="use --config (or leave out --live)")
        if config and load_domain(row.spec).transient:
            raise Conflict(f"domain '{row.name}' is transient: it has no stored definition",
                           fix="use --live")
        return row, live, config

    def _store_config(self, row: DomainRow, domain: Domain) -> None:
        self._domains.replace_spec(row, domain)

    async def _prepared(self, row: DomainRow, change: SpecDocument) -> Domain:
        """The stored definition with ``change`` applied, validated against the host (in a
        worker thread: it stats paths and runs qemu-img; new paths pass the path policy)."""
        raw = {**row.spec, **change}
        return await self._domains.prepare_async(load_domain(raw), stored=row.spec)

    # -- disks -----------------------------------------------------------------------

    async def attach_disk(self, ref: str, disk_spec: SpecDocument, *, live: bool = False,
                          config: bool = False) -> DiskAttached:
        """attach-disk: a new disk (path, or pool+volume) on the running VM and/or its spec;
        ``disk_spec`` is a disk of the spec (model/domain.py's Disk), validated here."""
        row, live, config = self._scope(ref, live, config)
        try:
            disk = Disk.model_validate(disk_spec)
        except ValueError as exc:
            raise InvalidSpec(f"disk: {_first_error(exc)}", field="disk") from None
        probe = await self._prepared(row, {"disks": [*row.spec.get("disks", []),
                                               disk.model_dump(mode="json",
                                                               exclude_none=True)]})
        disk = probe.disks[-1]  # path resolved from pool/volume, format detected
        if disk.path and not await asyncio.to_thread(Path(disk.path).exists):
            raise InvalidSpec(f"disk source {disk.path} does not exist", field="path",
                              fix="create it first (virtkit vol-create-as, or qemu-img create)")
        attached = disk
        if live:
            attached = await self._attach_live(row, disk)
        if config:
            target_disk = disk.model_copy(update={"target": attached.target})
            spec_disks = [*load_domain(row.spec).disks, target_disk]
            stored = await self._prepared(row, {"disks": [
                d.model_dump(mode="json", exclude_none=True) for d in spec_disks]})
            self._store_config(row, stored)
            if attached.target is None:  # the name the next start gives it
                attached = attached.model_copy(update={"target": self._targets(stored)[-1]})
        return DiskAttached(name=row.name, target=attached.target, path=disk.path,
                            live=live, config=config)

    async def _attach_live(self, row: DomainRow, disk: Disk) -> Disk:
        async with self._life.live_change(row.uuid, row.name) as running:
            assert running.live is not None
            if disk.path:
                self._refuse_present(row, running, disk.path)
                self._domains.check_images_running(
                    row.name, row.uuid, wanted_images([disk], prefix="disk"))
            try:
                return await hotplug.attach_disk(running, disk)
            except QemuError as exc:
                raise self._domains.lock_error(exc) or exc from None

    @staticmethod
    def _refuse_present(row: DomainRow, running: Any, path: str) -> None:
        """The image is a disk of this domain already (or still: an unplug the guest
        has not acknowledged yet keeps it attached)."""
        live = running.live
        for position, present in enumerate(live.disks):
            if present.path != path:
                continue
            number = running.disk_ids[position] if position < len(running.disk_ids) else -1
            if f"disk{number}" in hotplug.unplugging(running):
                raise Conflict(
                    f"{path} is still attached to '{row.name}' as {present.target}: its "
                    "detach is pending, the guest has not released the device yet",
                    fix=f"wait for the guest to let go (virtkit domblklist {row.name} shows "
                        f"when it is gone), or restart the domain (virtkit destroy "
                        f"{row.name}; virtkit start {row.name})")
            raise Conflict(f"{path} is already attached to '{row.name}' as {present.target}",
                           fix=f"detach it first (virtkit detach-disk {row.name} "
                               f"{present.target}), or attach another image")

    async def detach_disk(self, ref: str, target: str, *, live: bool = False,
                          config: bool = False) -> DiskDetached:
        """detach-disk by target (vdb) or source path."""
        row, live, config = self._scope(ref, live, config)
        spec = load_domain(row.spec)
        keep: list[Disk] | None = None
        if config:
            keep = [d for d, slot_target in zip(spec.disks, self._targets(spec), strict=True)
                    if target not in (slot_target, d.path)]
            if len(keep) == len(spec.disks):
                raise NotFound(f"the definition of '{row.name}' has no disk {target}",
                               fix=f"see 'virtkit domblklist {row.name} --inactive'")
        done = True
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                done = await hotplug.detach_disk(running, target,
                                                 self._life.finisher(row.uuid, row.name))
        if keep is not None:
            self._store_config(row, await self._prepared(row, {"disks": [
                d.model_dump(mode="json", exclude_none=True) for d in keep]}))
        return DiskDetached(name=row.name, target=target, live=live, config=config,
                            pending=not done)

    @staticmethod
    def _targets(domain: Domain) -> list[str]:
        return [slot.target for slot in disk_slots(domain)]

    async def change_media(self, ref: str, target: str, path: str | None, *,
                           live: bool = False, config: bool = False,
                           force: bool = False) -> MediaChanged:
        """change-media: eject (path None) or insert/update a CD-ROM's medium."""
        row, live, config = self._scope(ref, live, config)
        if path is not None:
            await asyncio.to_thread(self._life.policy.check, path, field="path", kind="file")
        if path is not None and not await asyncio.to_thread(Path(path).is_file):
            raise InvalidSpec(f"medium {path} does not exist", field="path",
                              fix="give the path of an ISO image")
        spec = load_domain(row.spec)
        disks = list(spec.disks)
        if config:
            positions = [i for i, t in enumerate(self._targets(spec))
                         if target in (t, disks[i].path)]
            if not positions or disks[positions[0]].device is not DiskDevice.CDROM:
                raise NotFound(f"the definition of '{row.name}' has no CD-ROM {target}",
                               fix=f"see 'virtkit domblklist {row.name} --inactive'")
            disks[positions[0]] = disks[positions[0]].model_copy(
                update={"path": path, "format": "raw" if path else None})
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                await hotplug.change_media(running, target, path, force=force)
        if config:
            self._store_config(row, await self._prepared(row, {"disks": [
                d.model_dump(mode="json", exclude_none=True) for d in disks]}))
        return MediaChanged(name=row.name, target=target, path=path, live=live,
                            config=config)

    # -- NICs ------------------------------------------------------------------------

    async def attach_interface(self, ref: str, nic_spec: SpecDocument, *,
                               live: bool = False, config: bool = False) -> InterfaceAttached:
        """attach-interface: a NIC on a virtual network or host bridge; ``nic_spec`` is
        a NIC of the spec (model/domain.py's Nic), validated here."""
        row, live, config = self._scope(ref, live, config)
        try:
            nic = Nic.model_validate(nic_spec)
        except ValueError as exc:
            raise InvalidSpec(f"interface: {_first_error(exc)}", field="interface") from None
        probe = await self._prepared(row, {"nics": [*row.spec.get("nics", []),
                                              nic.model_dump(mode="json", exclude_none=True)]})
        nic = probe.nics[-1]  # with a fresh MAC when none was given; network checked
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                assert running.live is not None
                tap, vhost = await self._life.open_tap(running.live, nic)
                try:
                    await hotplug.attach_nic(running, nic, tap, vhost=vhost)
                finally:
                    if tap is not None:
                        tap.close()  # QEMU holds its own copy; on failure the tap goes
        if config:
            self._store_config(row, await self._prepared(row, {"nics": [
                *row.spec.get("nics", []), nic.model_dump(mode="json", exclude_none=True)]}))
        return InterfaceAttached(name=row.name, mac=nic.mac, live=live, config=config)

    async def detach_interface(self, ref: str, mac: str, *, live: bool = False,
                               config: bool = False) -> InterfaceDetached:
        """detach-interface --mac MAC."""
        row, live, config = self._scope(ref, live, config)
        keep = None
        if config:
            nics = row.spec.get("nics", [])
            keep = [n for n in nics if (n.get("mac") or "").lower() != mac.lower()]
            if len(keep) == len(nics):
                raise NotFound(f"the definition of '{row.name}' has no interface {mac}",
                               fix=f"see 'virtkit domiflist {row.name}'")
        done = True
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                done = await hotplug.detach_nic(running, mac,
                                                self._life.finisher(row.uuid, row.name))
        if keep is not None:
            self._store_config(row, await self._prepared(row, {"nics": keep}))
        return InterfaceDetached(name=row.name, mac=mac, live=live, config=config,
                                 pending=not done)

    # -- vCPUs and memory ------------------------------------------------------------

    async def set_vcpus(self, ref: str, count: int, *, live: bool = False,
                        config: bool = False, maximum: bool = False) -> VcpusSet:
        """setvcpus COUNT (--maximum: the hot-plug ceiling, config only)."""
        if maximum and live:
            raise InvalidSpec("the maximum vCPU count cannot change while QEMU runs",
                              fix="use setvcpus --maximum --config and restart")
        row, live, config = self._scope(ref, False if maximum else live, True if maximum
                                        else config)
        vcpus = dict(row.spec.get("vcpus", {}))
        if maximum:
            vcpus["max"] = count
            vcpus["current"] = min(vcpus.get("current", 1), count)
        else:
            vcpus["current"] = count
        new = await self._prepared(row, {"vcpus": vcpus}) if config else None
        done = True
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                done = await hotplug.set_vcpus(running, count,
                                               self._life.finisher(row.uuid, row.name))
        if new is not None:
            self._store_config(row, new)
        return VcpusSet(name=row.name, vcpus=count, maximum=maximum, live=live,
                        config=config, pending=not done)

    async def set_memory(self, ref: str, size: int | str, *, live: bool = False,
                         config: bool = False, maximum: bool = False) -> MemorySet:
        """setmem (the balloon target live; the boot memory in config) or setmaxmem."""
        mib = _mib(size)
        if maximum and live:
            raise InvalidSpec("the maximum memory cannot change while QEMU runs",
                              fix="use setmaxmem --config and restart")
        row, live, config = self._scope(ref, False if maximum else live, True if maximum
                                        else config)
        memory = dict(row.spec.get("memory", {}))
        if maximum:
            memory["max"] = mib
            memory["current"] = min(memory["current"], mib)
        else:
            memory["current"] = mib
            if memory.get("max") is not None and memory["max"] < mib:
                raise InvalidSpec(f"memory {mib} MiB is above the maximum of {memory['max']} MiB",
                                  field="size", fix="raise it first with setmaxmem --config")
        new = await self._prepared(row, {"memory": memory}) if config else None
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                await hotplug.set_balloon(running, mib)
        if new is not None:
            self._store_config(row, new)
        return MemorySet(name=row.name, memory_mib=mib, maximum=maximum, live=live,
                         config=config)

    async def attach_memory(self, ref: str, size: int | str, *, live: bool = False,
                            config: bool = False) -> MemoryAttached:
        """Memory hot-add: a DIMM live; more boot memory in the definition."""
        mib = _mib(size)
        row, live, config = self._scope(ref, live, config)
        memory = dict(row.spec.get("memory", {}))
        memory["current"] = memory["current"] + mib
        if config and (memory.get("max") or memory["current"]) < memory["current"]:
            raise InvalidSpec(f"'{row.name}' would have {memory['current']} MiB, above its "
                              f"maximum of {memory['max']} MiB", field="size",
                              fix="raise it first with setmaxmem --config")
        new = await self._prepared(row, {"memory": memory}) if config else None
        total = memory["current"]
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                total = await hotplug.add_memory(running, mib)
        if new is not None:
            self._store_config(row, new)
        return MemoryAttached(name=row.name, memory_mib=total, live=live, config=config)


def _mib(size: int | str) -> int:
    """MiB from an API size: a number of MiB, or text with a unit ("1G", "524288K")."""
    try:
        mib = parse_mib(size, field="size")
    except ValueError as exc:
        raise InvalidSpec(str(exc), field="size", fix="write e.g. 1G, 512M or 524288K") from None
    if mib <= 0:
        raise InvalidSpec("size must be above 0", field="size")
    return mib


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc)
