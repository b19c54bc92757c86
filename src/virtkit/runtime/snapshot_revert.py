"""Reverting a domain to a snapshot: internal or external, with or without memory.

Internal: with memory, ``snapshot-load`` (a job) in the running QEMU, or in one
started paused for it; disk-only, QEMU is stopped and ``qemu-img snapshot -a``
applies it.  External (libvirt cannot): a new overlay is made on the snapshot's
frozen image, the spec is pointed at it, and only then the overlay that was
current is discarded (unless a snapshot froze it, or it is a disk's original
image); with memory QEMU starts with ``-incoming`` from the memory file.  Frozen
images are never written, so every other snapshot stays valid.  The domain's
spec becomes the snapshot's, as libvirt does.

An internal snapshot lives inside its image, so reverting to it rewrites that
image.  When the image has since become the backing file of another image (the
base of a linked clone: ``virtkit clone --linked`` moved the domain onto an
overlay) the revert is refused: rewriting the base would change the clone's
data, and an internal snapshot's state cannot be put under a fresh overlay
without a full copy.  The overlay the domain ran on is discarded by a revert
that may go ahead (as the external revert discards its old top).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from virtkit.errors import Conflict, StateError
from virtkit.model.domain import Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.snapshot import SnapDisk, on_image
from virtkit.model.state import Action, State, allows
from virtkit.runtime import savefile
from virtkit.runtime.blockjobs import Progress, run_job, top_nodes
from virtkit.runtime.imageuse import ImageUse
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.snapdisks import device_ids, running_config
from virtkit.runtime.snapshots import StartAs, free_overlay, unlink_quietly
from virtkit.storage import qemuimg
from virtkit.store.db import SnapshotRow, Store


class SnapshotReverter:
    """Brings domains back to their snapshots; each revert holds the VM's lock."""

    def __init__(self, lifecycle: Lifecycle, store: Store, overlay_dir: Path) -> None:
        self._life = lifecycle
        self._store = store
        #: overlays of block-device disks go to <overlay_dir>/<uuid>/
        self._overlay_dir = overlay_dir
        self._images = ImageUse(store, lifecycle)

    async def revert(self, uuid: str, name: str, snap: SnapshotRow, start: StartAs,
                     progress: Progress | None = None) -> None:
        """Bring domain ``uuid`` back to ``snap``: disks, spec and (if saved) memory.

        ``start`` None: the state the snapshot was taken in if it has memory, else
        shut off; "running"/"paused" override it (a disk-only snapshot then boots).
        """
        vm = self._life.vm(uuid, name)
        async with vm.lock:
            if not allows(Action.REVERT, vm.state):
                raise StateError(f"cannot revert domain '{name}': it is {vm.state.value}",
                                 current=vm.state.value, requested="revert",
                                 fix=f"wait, or 'virtkit destroy {name}' first")
            target: StartAs = start
            if target is None and snap.memory and snap.state in ("running", "paused"):
                target = "running" if snap.state == "running" else "paused"
            if snap.kind == "internal":
                await self._revert_internal(vm, snap, target, progress)
            else:
                await self._revert_external(vm, snap, target)
            self._store.set_current_snapshot(uuid, snap.name)

    def _restore_spec(self, vm: Vm, snap: SnapshotRow, paths: dict[int, str]) -> Domain:
        """The domain's spec becomes the snapshot's, with disk ``index`` at ``paths``."""
        domain = load_domain(snap.record["spec"])
        for index, path in paths.items():
            domain.disks[index] = on_image(domain.disks[index], path, "qcow2")
        row = self._store.get_domain(vm.uuid)
        domain.name = row.name
        self._store.update_domain(vm.uuid, row.name, dump_domain(domain), None)
        return domain

    async def _revert_internal(self, vm: Vm, snap: SnapshotRow, target: StartAs,
                               progress: Progress | None) -> None:
        disks = [SnapDisk.from_dict(d) for d in snap.record["disks"]]
        part = [d for d in disks if d.mode == "internal"]
        self._refuse_shared_bases(vm, snap, part)
        stored = load_domain(self._store.get_domain(vm.uuid).spec)
        current = running_config(vm.running, stored)
        old_tops = [d.path for config in (stored, current) for d in config.disks
                    if d.path and d.format == "qcow2"]
        wanted = {d.path for d in load_domain(snap.record["spec"]).disks if d.path}
        moved = any(d.path and d.device.value == "disk" and d.path not in wanted
                    for d in current.disks)
        if vm.running is not None and (not snap.memory or moved
                                       or not allows(Action.SAVE, vm.state)
                                       or not _same_devices(vm.running, snap)):
            # a QEMU on other images (an overlay made since) or with other devices (a
            # hotplug since) cannot load the snapshot
            await self._life.kill_locked(vm, "reverting to a snapshot")
        domain = self._restore_spec(vm, snap, {})
        self._discard_tops(vm.uuid, old_tops, wanted)
        if not snap.memory:
            for disk in part:
                assert disk.file is not None
                qemuimg.internal_snapshot("apply", disk.file, snap.name)
            if target is not None:
                await self._life.start_locked(vm, paused=target == "paused", event="reverted")
            return
        if vm.running is None:  # with the devices hot-added when it was taken
            await self._life.start_locked(vm, paused=True, event="reverted",
                                          layout=snap.record.get("layout"))
        running = vm.running
        assert running is not None
        await running.monitor.stop()
        by_target = device_ids(running, running_config(running, domain))
        ids = [by_target[d.target] for d in part]
        nodes = await top_nodes(running.monitor, ids)
        names = [nodes[i].node for i in ids]
        job = f"snapload-{secrets.token_hex(4)}"
        await running.monitor.snapshot_load(job, snap.name, names[0], names)
        await run_job(running.monitor, job, progress=progress)
        if target == "paused":
            self._life.set_state(vm, State.PAUSED, "reverted to a snapshot", event="paused")
        else:
            await running.monitor.cont()
            self._life.set_state(vm, State.RUNNING, "reverted to a snapshot", event="resumed")

    def _refuse_shared_bases(self, vm: Vm, snap: SnapshotRow, part: list[SnapDisk]) -> None:
        """An internal snapshot is applied inside its image: refuse when that image now
        backs an image of another domain or volume (a linked clone's base)."""
        for disk in part:
            if disk.file is None:
                continue
            others = self._images.dependents(disk.file, exclude=vm.uuid)
            if others:
                who = ", ".join(sorted({u.via or "" for u in others}))
                domains = sorted({u.domain for u in others if u.domain})
                raise Conflict(
                    f"cannot revert '{vm.name}' to internal snapshot '{snap.name}': it lives "
                    f"inside {disk.file}, which is now the read-only base of {who}"
                    + (f" (domain {', '.join(domains)})" if domains else "")
                    + "; reverting would rewrite that base under them",
                    fix="delete or fully copy the images on top of it first (e.g. "
                        "'virtkit undefine CLONE --remove-all-storage', or qemu-img convert "
                        "them to stand-alone images), then revert", used_by=domains)

    async def _revert_external(self, vm: Vm, snap: SnapshotRow, target: StartAs) -> None:
        disks = [SnapDisk.from_dict(d) for d in snap.record["disks"]]
        part = [d for d in disks if d.mode == "external"]
        stored = load_domain(self._store.get_domain(vm.uuid).spec)
        old_tops = [d.path for config in (stored, running_config(vm.running, stored))
                    for d in config.disks if d.path and d.format == "qcow2"]
        fresh: dict[int, str] = {}
        with contextlib.ExitStack() as undo:
            for disk in part:
                assert disk.file
                assert disk.format
                assert disk.origin
                path = free_overlay(disk.origin, snap.name, self._overlay_dir / vm.uuid)
                size = int(qemuimg.image_info(disk.file, fmt=disk.format)["virtual-size"])
                qemuimg.create_overlay(path, disk.file, disk.format, size)
                undo.callback(unlink_quietly, path)
                fresh[disk.index] = path
            memory = self._open_memory(snap) if snap.memory else None
            undo.pop_all()
        if vm.running is not None:
            await self._life.kill_locked(vm, "reverting to a snapshot")
        self._restore_spec(vm, snap, fresh)
        self._discard_tops(vm.uuid, old_tops, set(fresh.values()))
        if memory is not None:
            try:
                await self._life.start_locked(vm, paused=target == "paused",
                                              incoming_fd=memory, event="reverted",
                                              layout=snap.record.get("layout"))
            finally:
                os.close(memory)
        elif target is not None:
            await self._life.start_locked(vm, paused=target == "paused", event="reverted")

    def _open_memory(self, snap: SnapshotRow) -> int:
        path = str(snap.record.get("memory_file"))
        if not os.path.isfile(path):
            raise Conflict(f"the memory file {path} of snapshot '{snap.name}' is gone, so "
                           "the snapshot cannot be reverted", fix=f"put the file back, or "
                           f"delete the snapshot: virtkit snapshot-delete DOMAIN {snap.name}")
        fd = os.open(path, os.O_RDONLY)
        try:
            savefile.read_header(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _discard_tops(self, uuid: str, old: list[str], keep: set[str]) -> None:
        """Remove the overlays that were current before a revert, unless a snapshot froze
        them (or they are a disk's original image, which we never delete)."""
        frozen = set()
        origins = set()
        for snap in self._store.list_snapshots(uuid):
            for disk in snap.record.get("disks", []):
                frozen.add(disk.get("file"))
                origins.add(disk.get("origin"))
        for path in dict.fromkeys(old):
            if path in frozen or path in origins or path in keep:
                continue
            if self._images.dependents(path) or self._images.users(path, exclude=uuid):
                continue  # another image is backed by it, or another domain uses it
            if os.path.isfile(path) and qemuimg.image_info(path, fmt="qcow2").get(
                    "backing-filename"):
                unlink_quietly(path)


def _same_devices(running: Running, snap: SnapshotRow) -> bool:
    """Whether ``running`` has the disks and NICs (QEMU ids, which were hot-added)
    of the run ``snap`` took its memory from, so ``snapshot-load`` fits it."""
    spec = load_domain(snap.record["spec"])
    layout = snap.record.get("layout") or {
        "boot_disks": len(spec.disks), "boot_nics": len(spec.nics),
        "disk_ids": list(range(len(spec.disks))), "nic_ids": list(range(len(spec.nics)))}
    return (running.boot_disks, running.boot_nics, list(running.disk_ids),
            list(running.nic_ids)) == (layout["boot_disks"], layout["boot_nics"],
                                       list(layout["disk_ids"]), list(layout["nic_ids"]))
