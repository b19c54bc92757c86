"""Hotplug: change the devices of a running QEMU, step by step, with undo.

Each operation is a short sequence of QMP commands (a disk is ``blockdev-add``
twice, then ``device_add``).  Every step that succeeds registers its undo on an
``AsyncExitStack``; if a later step fails the stack unwinds, so a half-done
hotplug never stays behind, and the stack is dropped (``pop_all``) only once all
steps succeeded.  Removals ask the guest to let go (``device_del``) and wait for
QEMU's ``DEVICE_DELETED`` before freeing the back end; a guest that does not
answer gets a clear timeout, and the removal finishes whenever it does answer.

The functions change ``running.live`` (the running configuration) only after
QEMU did; the caller persists it.  Device names follow the argv builder:
``disk{n}``/``drive-disk{n}``, ``nic{n}``/``net{n}``, with ``n`` a fresh number
for every hot-added device.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, QemuError, TimeoutExpired
from virtkit.model.domain import Disk, DiskBus, DiskDevice, Domain, Machine, Nic
from virtkit.model.tuning import HostDev
from virtkit.qemu.argv import blockdev_nodes, disk_slots, hot_disk_device, nic_device
from virtkit.qemu.monitor import Monitor
from virtkit.qemu.qmp import HotpluggableCpu
from virtkit.runtime.launcher import OpenTap, Running
from virtkit.runtime.lifecycle import Vm
from virtkit.runtime.tuning import (
    bind_devices,
    pin_new_vcpus,
    release_hostdevs,
    vcpu_thread_ids,
)

#: seconds the guest gets to release a device before the removal is reported pending
#: (virsh waits 5 s too, then says "detach request sent"); the request does not block
#: longer: the removal finishes in the background whenever the guest lets go
UNPLUG_TIMEOUT = 5.0
#: the granularity Linux onlines hot-added memory in (a memory block)
MEMORY_BLOCK_MIB = 128

#: schedules the end of a removal the guest has not yet acknowledged (the lifecycle runs
#: it in the background and records the running configuration afterwards)
Finisher = Callable[[Callable[[], Awaitable[None]]], None]


def _live(running: Running) -> Domain:
    assert running.live is not None
    return running.live


def _next_number(numbers: list[int]) -> int:
    return max(numbers, default=-1) + 1


async def free_pcie_port(monitor: Monitor) -> str | None:
    """A PCIe root port with nothing plugged into it (q35), from ``query-pci``."""
    for bus in await monitor.query_pci():
        for device in bus.get("devices", []):
            bridge = device.get("pci_bridge")
            if bridge is not None and device.get("qdev_id", "").startswith("pci.") \
                    and not bridge.get("devices"):
                return str(device["qdev_id"])
    return None


async def _pci_ids(monitor: Monitor) -> set[str]:
    """The ids of every PCI device QEMU has now (one the guest has not released yet
    included), behind bridges too."""
    found: set[str] = set()

    def walk(devices: list[dict[str, Any]]) -> None:
        for device in devices:
            if device.get("qdev_id"):
                found.add(str(device["qdev_id"]))
            walk((device.get("pci_bridge") or {}).get("devices") or [])
    for bus in await monitor.query_pci():
        walk(bus.get("devices", []))
    return found


async def _placement(running: Running, what: str) -> dict[str, Any]:
    """Where a hot-added PCI device goes: a free root port on q35, the root bus on pc."""
    machine = _live(running).machine
    if machine is Machine.MICROVM:
        raise Conflict(f"a microvm domain has no PCI bus to hot-add a {what} to",
                       fix="add it with --config and restart the domain")
    if machine is not Machine.Q35:
        return {}
    port = await free_pcie_port(running.monitor)
    if port is None:
        raise Conflict(f"no free PCIe slot for another {what}: every hotplug port is in use",
                       fix="add it with --config and restart (the domain then gets new ports)")
    return {"bus": port}


async def _unplug(running: Running, device_id: str, timeout: float,
                  finish: Callable[[], Awaitable[None]], background: Finisher) -> bool:
    """device_del, wait for DEVICE_DELETED, then ``finish`` (free the back end).

    Returns False when the guest has not released the device within ``timeout``
    (as libvirt, the request then stays pending: ``finish`` runs in the background
    when the guest lets go, and the running configuration is recorded then)."""
    if device_id in running.unplugging:
        raise Conflict(f"the removal of {device_id} from '{_live(running).name}' is already "
                       "pending: the guest has not released the device yet",
                       fix="wait for the guest to let go, or restart the domain "
                           "(destroy, then start) to drop it at once")
    deleted = running.monitor.expect(
        "DEVICE_DELETED", lambda event: event.get("data", {}).get("device") == device_id)
    try:
        await running.monitor.device_del(device_id)
        running.layout_changed = True
    except BaseException:
        deleted.cancel()
        raise
    running.unplugging.add(device_id)
    try:
        await asyncio.wait_for(asyncio.shield(deleted), timeout)
    except TimeoutError:
        async def later() -> None:
            try:
                await deleted
                await finish()
            finally:
                running.unplugging.discard(device_id)
        background(later)
        return False
    except BaseException:
        running.unplugging.discard(device_id)
        raise
    try:
        await finish()
    finally:
        running.unplugging.discard(device_id)
    return True


def unplugging(running: Running) -> set[str]:
    """QEMU ids (disk3, nic1) of devices whose removal the guest has not acknowledged."""
    return running.unplugging


# -- disks ---------------------------------------------------------------------------------

def _target_for(running: Running, disk: Disk) -> str:
    """The disk's guest name: its own, or the next free one on its bus (vdb, sdc ...)."""
    live = _live(running)
    taken = {d.target for d in live.disks}
    if disk.target:
        if disk.target in taken:
            raise Conflict(f"target {disk.target} is already used by a disk of '{live.name}'",
                           fix="pick another target, or detach that disk first")
        return disk.target
    probe = live.model_copy(update={"disks": [*live.disks, disk]})
    slot = disk_slots(probe)[-1]
    prefix = slot.target[:2]
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if prefix + letter not in taken:
            return prefix + letter
    raise Conflict(f"no free {prefix}* target left")


async def attach_disk(running: Running, disk: Disk) -> Disk:
    """Hot-add ``disk`` (virtio or SCSI); returns it with its target set."""
    bus = disk.effective_bus
    if bus in (DiskBus.SATA, DiskBus.IDE):
        raise InvalidSpec(f"{bus.value} disks cannot be hot-plugged (QEMU's AHCI and IDE "
                          "have no hotplug)", field="bus",
                          fix="use --targetbus virtio (or scsi), or --config and a restart")
    if disk.device is DiskDevice.CDROM and bus is not DiskBus.SCSI:
        raise InvalidSpec("only a SCSI CD-ROM can be hot-plugged", field="device",
                          fix="use --targetbus scsi, or change-media on an existing CD-ROM")
    if disk.path is None:
        raise InvalidSpec("a hot-plugged disk needs a source path", field="path")
    target = _target_for(running, disk)
    disk = disk.model_copy(update={"target": target})
    number = _next_number(running.disk_ids)
    device_id, node = f"disk{number}", f"drive-disk{number}"
    monitor = running.monitor
    async with contextlib.AsyncExitStack() as undo:
        await _grant_medium(running, disk, undo)
        for blockdev in blockdev_nodes(disk, node):
            await monitor.blockdev_add(blockdev)
            undo.push_async_callback(_quietly, monitor.blockdev_del, blockdev["node-name"])
        if bus is DiskBus.VIRTIO:  # the device a rebuilt QEMU gets too (devlayout)
            device = hot_disk_device(disk, number)
            device.update(await _placement(running, "disk"))
        else:
            await _ensure_scsi_controller(running, undo)
            device = {"id": device_id, "drive": node, "bus": "scsi0.0",
                      "driver": "scsi-cd" if disk.device is DiskDevice.CDROM else "scsi-hd"}
            if disk.serial:
                device["serial"] = disk.serial
        await monitor.device_add(device)
        undo.pop_all()
    live = _live(running)
    running.live = live.model_copy(update={"disks": [*live.disks, disk]})
    running.disk_ids.append(number)
    running.layout_changed = True
    return disk


async def _ensure_scsi_controller(running: Running, undo: contextlib.AsyncExitStack) -> None:
    """A virtio-scsi controller ``scsi0``, hot-added first when the domain has none."""
    if any(d.effective_bus is DiskBus.SCSI for d in _live(running).disks):
        return
    controller = {"driver": "virtio-scsi-pci", "id": "scsi0",
                  **(await _placement(running, "SCSI controller"))}
    try:
        await running.monitor.device_add(controller)
    except QemuError as exc:
        if "Duplicate" not in exc.message:  # one left from an earlier SCSI disk
            raise
        return
    undo.push_async_callback(_quietly, running.monitor.device_del, "scsi0")


def _find_disk(running: Running, target: str) -> int:
    for position, disk in enumerate(_live(running).disks):
        if disk.target == target or disk.path == target:
            return position
    raise NotFound(f"domain '{_live(running).name}' has no disk {target}",
                   fix=f"see 'virtkit domblklist {_live(running).name}'")


async def detach_disk(running: Running, target: str, background: Finisher, *,
                      timeout: float = UNPLUG_TIMEOUT) -> bool:
    """Hot-remove the disk named by target (vdb) or source path; False: still pending."""
    position = _find_disk(running, target)
    disk = _live(running).disks[position]
    if disk.effective_bus in (DiskBus.SATA, DiskBus.IDE):
        raise InvalidSpec(f"{disk.effective_bus.value} disks cannot be hot-unplugged",
                          fix="remove it with --config and restart the domain")
    number = running.disk_ids[position]
    node = f"drive-disk{number}"

    async def finish() -> None:
        await _delete_medium_nodes(running.monitor, node)
        _forget_disk(running, number)

    return await _unplug(running, f"disk{number}", timeout, finish, background)


def _forget_disk(running: Running, number: int) -> None:
    if number not in running.disk_ids:
        return
    position = running.disk_ids.index(number)
    live = _live(running)
    gone = live.disks[position].path
    running.live = live.model_copy(update={
        "disks": [d for i, d in enumerate(live.disks) if i != position]})
    del running.disk_ids[position]
    _release_medium(running, gone)


async def _grant_medium(running: Running, disk: Disk, undo: contextlib.AsyncExitStack) -> None:
    """Let a confined QEMU open ``disk``'s image (and its backing chain) before
    ``blockdev-add``; the undo takes it back."""
    conf = running.confinement
    if conf is None or disk.path is None or \
            any(d.path == disk.path for d in _live(running).disks):
        return
    await asyncio.to_thread(conf.grant_image, disk.path, readonly=disk.readonly,
                            fmt=disk.format)
    undo.callback(conf.release_path, disk.path)


def _release_medium(running: Running, path: str | None) -> None:
    """Take back an image QEMU no longer has (unless another live disk uses it)."""
    conf = running.confinement
    if conf is None or path is None or any(d.path == path for d in _live(running).disks):
        return
    conf.release_path(path)


async def _delete_medium_nodes(monitor: Monitor, node: str) -> None:
    """Free a disk's format node and the protocol node below it."""
    await _quietly(monitor.blockdev_del, node)
    await _quietly(monitor.blockdev_del, f"file-{node}")


async def _quietly(call: Callable[..., Awaitable[None]], *args: Any) -> None:
    """An undo step (``call(*args)``, a QMP method): its failure (the thing is already
    gone) must not hide the real error."""
    with contextlib.suppress(QemuError, TimeoutExpired):
        await call(*args)


async def change_media(running: Running, target: str, path: str | None, *,
                       force: bool = False) -> Disk:
    """Eject the CD-ROM ``target`` (path None) or put ``path`` in it."""
    position = _find_disk(running, target)
    disk = _live(running).disks[position]
    if disk.device is not DiskDevice.CDROM:
        raise InvalidSpec(f"{disk.target} is not a CD-ROM; media can only be changed in one",
                          fix="use attach-disk/detach-disk for disks")
    device_id = f"disk{running.disk_ids[position]}"
    monitor = running.monitor
    current = await _medium_node(monitor, device_id)
    new_node = f"drive-{device_id}-{secrets.token_hex(3)}"
    async with contextlib.AsyncExitStack() as undo:
        if path is not None:
            medium = disk.model_copy(update={"path": path, "format": disk.format or "raw"})
            await _grant_medium(running, medium, undo)
            for blockdev in blockdev_nodes(medium, new_node):
                await monitor.blockdev_add(blockdev)
                undo.push_async_callback(_quietly, monitor.blockdev_del, blockdev["node-name"])
        try:
            await monitor.blockdev_open_tray(device_id, force=force)
        except QemuError as exc:
            raise Conflict(f"the guest has locked the tray of {disk.target}: {exc.message}",
                           fix="unmount the CD in the guest, or use --force") from None
        await monitor.blockdev_remove_medium(device_id)
        if path is not None:
            await monitor.blockdev_insert_medium(device_id, new_node)
        await monitor.blockdev_close_tray(device_id)
        undo.pop_all()
    if current is not None:
        await _delete_medium_nodes(monitor, current)
    changed = disk.model_copy(update={"path": path})
    disks = list(_live(running).disks)
    disks[position] = changed
    running.live = _live(running).model_copy(update={"disks": disks})
    if disk.path != path:
        _release_medium(running, disk.path)
    return changed


async def _medium_node(monitor: Monitor, device_id: str) -> str | None:
    """The format node of the medium in drive ``device_id``, None when empty."""
    for block in await monitor.query_block():
        if block.get("qdev") in (device_id, f"/machine/peripheral/{device_id}/virtio-backend"):
            inserted = block.get("inserted")
            return str(inserted["node-name"]) if inserted else None
    return None


# -- NICs ----------------------------------------------------------------------------------

async def attach_nic(running: Running, nic: Nic, tap: OpenTap | None, *,
                     vhost: bool) -> Nic:
    """Hot-add ``nic`` on ``tap`` (opened by the caller; None for user mode)."""
    live = _live(running)
    if nic.mac and any(other.mac == nic.mac for other in live.nics):
        raise Conflict(f"MAC {nic.mac} is already used by a NIC of '{live.name}'",
                       fix="give another --mac, or leave it out for a fresh one")
    number = _next_number(running.nic_ids)
    monitor = running.monitor
    async with contextlib.AsyncExitStack() as undo:
        if tap is not None:
            monitor.send_fd(tap.fd)
            await monitor.getfd(f"tap{number}")
            undo.push_async_callback(_quietly, monitor.closefd, f"tap{number}")
            netdev: dict[str, Any] = {"type": "tap", "id": f"net{number}",
                                      "fd": f"tap{number}", "vhost": vhost}
        else:
            netdev = {"type": "user", "id": f"net{number}", "restrict": nic.restrict}
        await monitor.netdev_add(netdev)
        undo.pop_all()  # the fd now belongs to the netdev
        undo.push_async_callback(_quietly, monitor.netdev_del, f"net{number}")
        device = nic_device(nic, number, pci=True, port=None)
        device.update(await _placement(running, "NIC"))
        await monitor.device_add(device)
        undo.pop_all()
    running.live = live.model_copy(update={"nics": [*live.nics, nic]})
    running.nic_ids.append(number)
    running.layout_changed = True
    if tap is not None:
        running.taps[number] = tap.name
    return nic


async def detach_nic(running: Running, mac: str, background: Finisher, *,
                     timeout: float = UNPLUG_TIMEOUT) -> bool:
    """Hot-remove the NIC with MAC ``mac``; False: the guest has not let go yet."""
    live = _live(running)
    matches = [i for i, nic in enumerate(live.nics) if (nic.mac or "").lower() == mac.lower()]
    if not matches:
        raise NotFound(f"domain '{live.name}' has no interface with MAC {mac}",
                       fix=f"see 'virtkit domiflist {live.name}'")
    number = running.nic_ids[matches[0]]

    async def finish() -> None:
        await _quietly(running.monitor.netdev_del, f"net{number}")
        if number in running.nic_ids:
            index = running.nic_ids.index(number)
            current = _live(running)
            running.live = current.model_copy(update={
                "nics": [n for i, n in enumerate(current.nics) if i != index]})
            del running.nic_ids[index]
        running.taps.pop(number, None)

    return await _unplug(running, f"nic{number}", timeout, finish, background)


# -- vCPUs and memory ----------------------------------------------------------------------

async def set_vcpus(running: Running, count: int, background: Finisher, *,
                    timeout: float = UNPLUG_TIMEOUT) -> bool:
    """Plug or unplug vCPUs until ``count`` are present (QMP CPU device objects).
    False: an unplug the guest has not acknowledged yet (it completes later)."""
    live = _live(running)
    if not 1 <= count <= live.vcpus.maximum:
        raise InvalidSpec(f"vCPU count {count} is outside 1..{live.vcpus.maximum} (the "
                          f"maximum '{live.name}' was started with)", field="count",
                          fix="raise the maximum with 'setvcpus --maximum --config' and restart")
    slots = await running.monitor.query_hotpluggable_cpus()
    present = [slot for slot in slots if slot.get("qom-path")]
    if count > len(present):
        known = set((await vcpu_thread_ids(running.monitor)).values())
        await _plug_vcpus(running, slots, count - len(present))
        await pin_new_vcpus(running.monitor, live, known)
    done = True
    if count < len(present) and running.accel != "kvm":
        raise Conflict(
            f"vCPU hot-unplug is refused for '{live.name}' under TCG: QEMU's TCG keeps a "
            "dangling reference to an unplugged vCPU and crashes at the next device or "
            "memory hotplug (seen with QEMU 7.2)",
            fix="take vCPUs offline in the guest (setvcpus --guest), or lower the count with "
                "--config and restart; with KVM the unplug works")
    if count < len(present):
        removable = sorted((slot for slot in present
                            if slot["qom-path"].startswith("/machine/peripheral/")),
                           key=lambda slot: _cpu_key(slot["props"]), reverse=True)
        wanted = len(present) - count
        if len(removable) < wanted:
            raise Conflict(f"'{live.name}' started with {len(present) - len(removable)} vCPUs; "
                           "only hot-added vCPUs can be unplugged",
                           fix="use 'setvcpus --guest' to take vCPUs offline in the guest, or "
                               "--config and a restart")
        for slot in removable[:wanted]:
            device_id = slot["qom-path"].rsplit("/", 1)[1]
            done = await _unplug(running, device_id, timeout, _count_vcpus(running),
                                 background) and done
    await _count_vcpus(running)()
    return done


def _count_vcpus(running: Running) -> Callable[[], Awaitable[None]]:
    """A step that sets the live vCPU count from what QEMU has."""
    async def count() -> None:
        slots = await running.monitor.query_hotpluggable_cpus()
        live = _live(running)
        present = sum(1 for slot in slots if slot.get("qom-path"))
        running.live = live.model_copy(update={
            "vcpus": live.vcpus.model_copy(update={"current": present})})
    return count


async def _plug_vcpus(running: Running, slots: list[HotpluggableCpu], how_many: int) -> None:
    absent = sorted((slot for slot in slots if not slot.get("qom-path")),
                    key=lambda slot: _cpu_key(slot["props"]))
    async with contextlib.AsyncExitStack() as undo:
        for slot in absent[:how_many]:
            device_id = "vcpu-" + "-".join(str(v) for v in _cpu_key(slot["props"]))
            await running.monitor.device_add({"driver": slot["type"], "id": device_id,
                                              **slot["props"]})
            undo.push_async_callback(_quietly, running.monitor.device_del, device_id)
        undo.pop_all()


def _cpu_key(props: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(props.get(key, 0)) for key in ("socket-id", "die-id", "core-id",
                                                     "thread-id"))


async def add_memory(running: Running, mib: int) -> int:
    """Hot-add a DIMM of ``mib`` MiB; returns the new total."""
    live = _live(running)
    if mib <= 0 or mib % MEMORY_BLOCK_MIB:
        raise InvalidSpec(f"hot-added memory must be a multiple of {MEMORY_BLOCK_MIB} MiB "
                          f"(Linux onlines it in blocks of that size); got {mib} MiB",
                          field="size")
    ceiling = live.memory.max or live.memory.current
    if live.memory.current + mib > ceiling:
        raise InvalidSpec(f"'{live.name}' would have {live.memory.current + mib} MiB, above its "
                          f"maximum of {ceiling} MiB", field="size",
                          fix="set memory.max (setmaxmem --config) and restart to allow more")
    dimms = await running.monitor.query_memory_devices()
    number = len(dimms)
    while True:  # a free id: an earlier failed attempt may have left a number taken
        backend = f"memdimm{number}"
        try:
            await running.monitor.object_add({
                "qom-type": "memory-backend-ram", "id": backend, "size": mib * 2**20})
            break
        except QemuError as exc:
            if "attempt to add duplicate" not in exc.message and "Duplicate" not in exc.message:
                raise
            number += 1
    try:
        await running.monitor.device_add({"driver": "pc-dimm", "id": f"dimm{number}",
                                          "memdev": backend})
    except BaseException:
        await _quietly(running.monitor.object_del, backend)
        raise
    memory = live.memory.model_copy(update={"current": live.memory.current + mib})
    running.live = live.model_copy(update={"memory": memory})
    return memory.current


async def set_balloon(running: Running, mib: int) -> int:
    """setmem --live: ask the balloon driver to leave the guest ``mib`` MiB."""
    live = _live(running)
    if not live.balloon:
        raise Conflict(f"'{live.name}' has no memory balloon device",
                       fix="set balloon: true in its spec and restart, or use --config")
    if not 64 <= mib <= live.memory.current:
        raise InvalidSpec(f"memory {mib} MiB is outside 64..{live.memory.current} MiB (the "
                          "memory the guest has)", field="size",
                          fix="to give more than it has, hot-add memory (attach-memory)")
    await running.monitor.balloon(mib * 2**20)
    return mib


async def attach_hostdev(running: Running, dev: HostDev, sys_root: Path) -> None:
    """Hot-add PCI host device ``dev`` (vfio-pci) under a fresh id (the caller holds
    the VM's lock: Lifecycle.live_change); a refusal gives the device back to its
    driver."""
    live = _live(running)
    if any(d.address == dev.address for d in live.hostdevs):
        raise Conflict(f"host device {dev.address} is already attached to '{live.name}'")
    taken = await _pci_ids(running.monitor)  # a detached one may still be there
    number = _next_number(running.hostdev_ids)
    while f"hostdev{number}" in taken:
        number += 1
    device: dict[str, Any] = {"driver": "vfio-pci", "host": dev.address,
                              "id": f"hostdev{number}"}
    async with contextlib.AsyncExitStack() as undo:
        bound = await asyncio.to_thread(bind_devices, [dev], sys_root)
        undo.push_async_callback(asyncio.to_thread, release_hostdevs, bound, sys_root)
        if live.machine is Machine.Q35:
            port = await free_pcie_port(running.monitor)
            if port is None:
                raise Conflict("no free PCIe slot for the host device: every hotplug port "
                               "is in use", fix="attach it with --config and restart")
            device["bus"] = port
        await running.monitor.device_add(device)
        undo.pop_all()
    running.hostdev_drivers.update(bound)
    running.hostdev_ids.append(number)
    running.live = live.model_copy(update={"hostdevs": [*live.hostdevs, dev]})


async def detach_hostdev(running: Running, address: str) -> None:
    """Ask the guest to release host device ``address`` (device_del); its driver is
    given back when QEMU ends, as for a device it started with."""
    live = _live(running)
    index = next((i for i, d in enumerate(live.hostdevs) if d.address == address), None)
    if index is None:
        raise NotFound(f"the running '{live.name}' has no host device {address}",
                       fix="detach it with --config only")
    await running.monitor.device_del(f"hostdev{running.hostdev_ids[index]}")
    del running.hostdev_ids[index]
    running.live = live.model_copy(update={"hostdevs": [
        d for i, d in enumerate(live.hostdevs) if i != index]})


async def set_link(vm: Vm, number: int, up: bool) -> None:
    """domif-setlink: NIC ``nic{number}`` of the running ``vm`` goes up or down.  Not
    under the VM's lock (as before): a link flip is one QMP command and must not wait
    for a long migration or snapshot holding it."""
    running = vm.running
    if running is None:
        raise Conflict(f"domain '{vm.name}' is not running",
                       fix="links of a stopped domain are set in its spec (nics[].link)")
    await running.monitor.set_link(f"nic{number}", up)
    vm.links[number] = "up" if up else "down"
