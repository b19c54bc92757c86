"""The host-tuning API: vcpupin, emulatorpin, KSM, nodedev-list, PCI host devices.

``--live`` acts on the running QEMU (sched_setaffinity of its threads, QMP
device_add); ``--config`` changes the stored spec (applied at the next start);
neither means live when the domain runs and config when it does not, as virsh
does.  Host checks come first, so a bad request changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from virtkit.errors import InvalidSpec, StateError
from virtkit.formats.libvirt_common import XmlReader, parse_document
from virtkit.formats.libvirt_tuning import hostdev_in
from virtkit.host import ksm, numa, pci, procstat
from virtkit.model.cpulist import format_cpulist
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.tuning import HostDev
from virtkit.runtime import hotplug, tuning
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.stats import vcpu_threads
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.devices import HostdevChanged
from virtkit.service.models.tuning import (
    EmulatorPin,
    HugePageSize,
    KsmStatus,
    NumaInfo,
    NumaNode,
    PciDevice,
    PinTable,
    VcpuPin,
)
from virtkit.store.db import DomainRow, Store


def _scope(live: bool, config: bool, running: bool, name: str, what: str) -> tuple[bool, bool]:
    """(live, config) as virsh decides them; refuse --live on a domain that is not running."""
    if not live and not config:
        return running, not running
    if live and not running:
        raise StateError(f"cannot {what} of domain '{name}' --live: it is not running",
                         current="shutoff", requested=what,
                         fix=f"use --config, or 'virtkit start {name}' first")
    return live, config


class TuningService:
    """Pinning, KSM, host devices."""

    def __init__(self, store: Store, lifecycle: Lifecycle, sys_root: Path = numa.SYS) -> None:
        self._store = store
        self._life = lifecycle
        self._sys = sys_root

    def _running(self, row: DomainRow) -> Running | None:
        return self._life.vm(row.uuid, row.name).running

    def _save_spec(self, row: DomainRow, changes: SpecDocument) -> None:
        spec = {**row.spec, **changes}
        domain = load_domain(spec)  # validation: vCPU numbers, CPU list syntax
        self._store.update_domain(row.uuid, row.name, dump_domain(domain), row.version)

    # -- pinning ---------------------------------------------------------------------------

    async def pin_table(self, ref: str) -> PinTable:
        """The affinity of every vCPU and of the emulator threads (live, or from the spec)."""
        row = self._store.get_domain(ref)
        domain = load_domain(row.spec)
        running = self._running(row)
        every = format_cpulist(tuning.host_cpus())
        default = domain.vcpus.cpuset or every
        if running is None:
            vcpus = [VcpuPin(vcpu=index, affinity=domain.cputune.vcpupin.get(index, default))
                     for index in range(domain.vcpus.maximum)]
            return PinTable(name=row.name, live=False, vcpus=vcpus,
                            emulator=domain.cputune.emulatorpin or default)
        threads = await vcpu_threads(running)
        vcpus = [VcpuPin(vcpu=index, thread_id=tid, affinity=procstat.affinity(tid))
                 for index, tid in sorted(threads.items())]
        others = [tid for tid in tuning.thread_ids(running.process.pid)
                  if tid not in threads.values()]
        emulator = {procstat.affinity(tid) for tid in others} - {None}
        return PinTable(name=row.name, live=True, vcpus=vcpus,
                        emulator=", ".join(sorted(str(text) for text in emulator)) or None)

    async def vcpupin(self, ref: str, vcpu: int | None, cpulist: str | None, *,
                      live: bool = False, config: bool = False) -> PinTable:
        """virsh vcpupin: pin one vCPU (or show the table without a CPU list)."""
        row = self._store.get_domain(ref)
        domain = load_domain(row.spec)
        if cpulist is None:
            table = await self.pin_table(ref)
            if vcpu is not None:
                table.vcpus = [item for item in table.vcpus if item.vcpu == vcpu]
            return table
        if vcpu is None:
            raise InvalidSpec("vcpupin: name the vCPU to pin", fix="virtkit vcpupin DOMAIN "
                              "VCPU CPULIST")
        if not 0 <= vcpu < domain.vcpus.maximum:
            raise InvalidSpec(f"vcpupin: domain '{row.name}' has no vCPU {vcpu} (it has "
                              f"0-{domain.vcpus.maximum - 1})", field="vcpu",
                              fix=f"pick a vCPU from 0-{domain.vcpus.maximum - 1}")
        cpus = tuning.check_cpus(cpulist, "vcpupin")
        running = self._running(row)
        live, config = _scope(live, config, running is not None, row.name, "pin vCPUs")
        if live:
            assert running is not None
            threads = await vcpu_threads(running)
            if vcpu not in threads:
                raise StateError(f"vCPU {vcpu} of '{row.name}' is not online",
                                 fix="pin it with --config; it applies when it is plugged")
            tuning.pin(threads[vcpu], cpus)
        if config:
            pins = {**domain.cputune.vcpupin, vcpu: format_cpulist(cpus)}
            self._save_spec(row, {"cputune": {**domain.cputune.model_dump(), "vcpupin": pins}})
        return await self.vcpupin(ref, vcpu, None)

    async def emulatorpin(self, ref: str, cpulist: str | None, *, live: bool = False,
                          config: bool = False) -> EmulatorPin:
        """virsh emulatorpin: pin QEMU's non-vCPU threads (or show their affinity)."""
        row = self._store.get_domain(ref)
        domain = load_domain(row.spec)
        if cpulist is not None:
            cpus = tuning.check_cpus(cpulist, "emulatorpin")
            running = self._running(row)
            live, config = _scope(live, config, running is not None, row.name,
                                  "pin the emulator")
            if live:
                assert running is not None
                threads = set((await vcpu_threads(running)).values())
                for tid in tuning.thread_ids(running.process.pid):
                    if tid not in threads:
                        tuning.pin(tid, cpus)
            if config:
                self._save_spec(row, {"cputune": {**domain.cputune.model_dump(),
                                                  "emulatorpin": format_cpulist(cpus)}})
        table = await self.pin_table(ref)
        return EmulatorPin(name=table.name, live=table.live, emulator=table.emulator)

    # -- host ------------------------------------------------------------------------------

    def ksm(self, action: str | None = None) -> KsmStatus:
        """KSM status, or switch it on/off."""
        if action is None or action == "status":
            return KsmStatus(**ksm.status(self._sys))
        if action not in ("on", "off"):
            raise InvalidSpec(f"ksm: unknown action '{action}'", fix="use on, off or status")
        return KsmStatus(**ksm.set_run(1 if action == "on" else 0, self._sys))

    def nodedev_list(self, cap: str | None = None) -> list[PciDevice]:
        """Host devices: PCI functions (with IOMMU group, driver, SR-IOV VFs)."""
        if cap not in (None, "pci"):
            raise InvalidSpec(f"nodedev-list: capability '{cap}' is not listed", fix="use "
                              "--cap pci (the devices virtkit can pass through)")
        return [PciDevice(**device.to_dict()) for device in pci.list_devices(self._sys)]

    def numa_nodes(self) -> NumaInfo:
        return NumaInfo(nodes=[NumaNode(**node.__dict__) for node in numa.host_nodes(self._sys)],
                        hugepages=[HugePageSize(size_kib=h.size_kib, total=h.total, free=h.free)
                                   for h in numa.hugepages(self._sys).values()])

    # -- PCI host devices ------------------------------------------------------------------

    async def attach_hostdev(self, ref: str, xml: str, *, live: bool = False,
                             config: bool = False, detach: bool = False) -> HostdevChanged:
        """attach-device / detach-device of a libvirt ``<hostdev type='pci'>`` snippet."""
        row = self._store.get_domain(ref)
        domain = load_domain(row.spec)
        dev = _parse_hostdev(xml)
        running = self._running(row)
        verb = "detach the host device" if detach else "attach the host device"
        live, config = _scope(live, config, running is not None, row.name, verb)
        present = [d for d in domain.hostdevs if d.address == dev.address]
        if detach and not present:
            raise InvalidSpec(f"domain '{row.name}' has no host device {dev.address}",
                              fix="see 'virtkit dumpxml " + row.name + "'")
        if not detach:
            if present:
                raise InvalidSpec(f"host device {dev.address} is already attached to "
                                  f"'{row.name}'")
            await asyncio.to_thread(pci.check_passthrough, dev.address, managed=dev.managed,
                                    sys_root=self._sys)
        if live:
            async with self._life.live_change(row.uuid, row.name) as running:
                if detach:
                    await hotplug.detach_hostdev(running, dev.address)
                else:
                    await hotplug.attach_hostdev(running, dev, self._sys)
        if config:
            kept = [d.model_dump() for d in domain.hostdevs if d.address != dev.address]
            self._save_spec(row, {"hostdevs": kept if detach else [*kept, dev.model_dump()]})
        return HostdevChanged(name=row.name, address=dev.address, live=live, config=config)


def _parse_hostdev(xml: str) -> HostDev:
    element = parse_document(xml, "hostdev", command="attach-device (a <hostdev>)")
    reader = XmlReader(element, force=False, reasons={})
    spec: SpecDocument = {}
    hostdev_in(reader, element, spec)
    reader.finish("hostdev")
    try:
        return HostDev(**spec["hostdevs"][0])
    except (ValueError, KeyError) as exc:
        raise InvalidSpec(f"the hostdev XML is not usable: {exc}") from None
