"""The device layout of a running QEMU, for a QEMU that is to take its state.

A memory image (save file, memory snapshot, migration stream) can only be loaded
into a QEMU with the same devices at the same PCI addresses.  Started from a spec,
QEMU lays devices out in list order; a hot-added disk or NIC instead sits where
hotplug put it (a free q35 root port, the first free slot of pc's root bus) with a
fresh id number.  :func:`capture` reads that from QEMU (``query-pci``) into a
:class:`~virtkit.qemu.argv.Layout`, which the save file header, the snapshot record
or the migration request carries; :func:`parse` reads it back and the restoring
QEMU is built by the same ``build_argv`` with it (hot-added devices with their ids
and placements), so every path that loads a memory image shares this one code path.

vCPUs hot-added with ``device_add`` (``setvcpus --live``) are recorded too
(:func:`hot_vcpus`: id, CPU type, topology): the rebuilt QEMU starts with that many
fewer on ``-smp`` and adds them with the same ids, as libvirt does for hotpluggable
vCPUs, so a later unplug finds them where it expects.

What cannot be rebuilt is refused before anything is written: a device the QEMU
was started with that was unplugged (the boot part's addresses would shift), an
unplug still pending, a hot-added SCSI disk or controller, hot-added memory.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from virtkit.errors import Conflict, InvalidSpec
from virtkit.model.domain import DiskBus, Domain
from virtkit.qemu.argv import Layout, hot_vcpu_device
from virtkit.qemu.monitor import Monitor
from virtkit.runtime.launcher import Running

_OURS = re.compile(r"^(disk|nic)[0-9]+$|^scsi0$")


class NotRebuildable(Exception):
    """The running device set could not be rebuilt by a fresh QEMU (says why)."""


def _pci_devices(devices: list[dict[str, Any]], bus: str | None
                 ) -> dict[str, dict[str, str]]:
    """{qdev id: placement} of every PCI device below ``bus`` (None: the root bus)."""
    found: dict[str, dict[str, str]] = {}
    for device in devices:
        qdev = str(device.get("qdev_id") or "")
        slot, function = int(device.get("slot", 0)), int(device.get("function", 0))
        where = {"addr": f"{slot:#x}" + (f".{function}" if function else "")}
        if bus is not None:
            where = {"bus": bus, **where}
        if qdev:
            found[qdev] = where
        bridge = device.get("pci_bridge")
        if isinstance(bridge, dict):
            found.update(_pci_devices(bridge.get("devices", []), qdev or None))
    return found


async def capture(running: Running) -> Layout | None:
    """The layout of ``running``: None when no disk or NIC was hot-added or removed
    (a QEMU built from the running configuration alone matches); NotRebuildable
    when no QEMU could be built to match."""
    if not running.layout_changed:
        return None
    live = running.live
    boot_disks, boot_nics = running.boot_disks, running.boot_nics
    if live is None or boot_disks is None or boot_nics is None:
        raise NotRebuildable("had a disk or NIC hot-plugged or unplugged while running "
                             "(before this daemon recorded where QEMU put it)")
    if running.unplugging:
        raise NotRebuildable(f"has the removal of {', '.join(sorted(running.unplugging))} "
                             "pending")
    if list(running.disk_ids[:boot_disks]) != list(range(boot_disks)) or \
            list(running.nic_ids[:boot_nics]) != list(range(boot_nics)):
        raise NotRebuildable("had a disk or NIC hot-plugged or unplugged while running (a "
                             "device it was started with is gone, so a fresh QEMU would "
                             "put the others elsewhere)")
    hot_disks = live.disks[boot_disks:]
    if any(d.effective_bus is not DiskBus.VIRTIO or d.path is None for d in hot_disks):
        raise NotRebuildable("has a hot-added SCSI disk")
    hot = [f"disk{n}" for n in running.disk_ids[boot_disks:]] + \
        [f"nic{n}" for n in running.nic_ids[boot_nics:]]
    placed: dict[str, dict[str, str]] = {}
    for bus in await running.monitor.query_pci():
        placed.update(_pci_devices(bus.get("devices", []), None))
    boot = {f"disk{n}" for n in range(boot_disks)} | {f"nic{n}" for n in range(boot_nics)}
    if any(d.effective_bus is DiskBus.SCSI for d in live.disks[:boot_disks]):
        boot.add("scsi0")
    strays = sorted(q for q in placed if _OURS.match(q) and q not in boot and q not in hot)
    if strays:
        raise NotRebuildable(f"still holds {', '.join(strays)}, which its configuration "
                             "no longer names")
    missing = [q for q in hot if q not in placed]
    if missing:
        raise NotRebuildable(f"has no PCI address for {', '.join(missing)}")
    return Layout(boot_disks, boot_nics, tuple(running.disk_ids), tuple(running.nic_ids),
                  {q: placed[q] for q in hot})


def parse(raw: Any, domain: Domain, where: str) -> Layout | None:
    """The layout recorded with a memory image (None: none recorded)."""
    if raw is None:
        return None
    try:
        return Layout.from_dict(raw, domain)
    except ValueError as exc:
        raise InvalidSpec(f"{where}: {exc}", field="layout") from None


async def check_restorable(name: str, running: Running, what: str = "save",
                           alternative: str = "") -> Layout | None:
    """A memory image (save file, memory snapshot, migration) can only be loaded
    into the same device set with the same QEMU ids and PCI addresses: the layout
    of hot-added disks and NICs that the loading QEMU is built with (None: none).
    What a fresh QEMU could not rebuild is refused before anything is written or
    stopped."""
    fix = f"restart the domain (virtkit shutdown {name}; virtkit start {name}) " \
        f"first{alternative}"
    layout = None
    try:
        layout = await capture(running)
        why = await _hot_added_memory(running.monitor)
        vcpus = await hot_vcpus(running.monitor)
    except NotRebuildable as exc:
        why = str(exc)
    if why is not None:
        raise Conflict(f"cannot {what} domain '{name}' with its memory: it {why}, and "
                       "a freshly started QEMU could not take that state", fix=fix)
    if vcpus:
        assert running.live is not None  # a running QEMU always has its configuration
        layout = dataclasses.replace(layout or Layout.unchanged(running.live), vcpus=vcpus)
    return layout


async def hot_vcpus(monitor: Monitor) -> tuple[dict[str, Any], ...]:
    """The vCPUs hot-added with device_add (under /machine/peripheral/), as a
    :class:`Layout` records them, in topology order; NotRebuildable for one that
    virtkit did not add (an id it would not give)."""
    found = []
    for cpu in await monitor.query_hotpluggable_cpus():
        path = str(cpu.get("qom-path", ""))
        if not path.startswith("/machine/peripheral/"):
            continue
        qdev = path.rsplit("/", 1)[1]
        try:
            found.append(hot_vcpu_device({"id": qdev, "driver": cpu.get("type"),
                                          "props": dict(cpu.get("props", {}))}))
        except ValueError:
            raise NotRebuildable(f"has a hot-added vCPU {qdev!r} that virtkit cannot "
                                 "rebuild") from None
    order = ("socket-id", "die-id", "cluster-id", "core-id", "thread-id")
    return tuple(sorted(found, key=lambda v: tuple(v["props"].get(k, 0) for k in order)))


async def _hot_added_memory(monitor: Monitor) -> str | None:
    """Why a fresh QEMU could not take this one's state (hot-added memory)."""
    if await monitor.query_memory_devices():
        return "has hot-added memory"
    return None
