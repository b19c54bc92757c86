"""Deleting a snapshot without losing data, also from the middle of a chain.

Internal snapshots are independent inside each qcow2: ``snapshot-delete`` (a
QMP job) while running, ``qemu-img snapshot -d`` otherwise.

An external snapshot's frozen image F is read by the images above it.  When
exactly one image C reads F (the active top, or another snapshot's frozen
image), C is committed down into F and removed; whatever read C now reads F,
which holds the same data (:func:`virtkit.model.snapshot.plan_delete`).  That
keeps every other snapshot's view intact, so they still revert correctly.
Running: ``block-commit`` (an active commit with pivot when C is the top, an
intermediate one otherwise), waited to completion through ``query-jobs``;
offline: ``qemu-img commit`` and ``rebase -u`` of C's readers.  When several
images read F (after a revert branched the chain) F stays, and the answer
says so; an F nothing reads any more is removed, unless it is the disk's
original image.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

from virtkit.errors import Conflict, QemuError
from virtkit.model.load import load_domain
from virtkit.model.snapshot import DeleteStep, SnapDisk, plan_delete
from virtkit.runtime.blockjobs import Progress, active_chain, commit, node_by_file, top_nodes
from virtkit.runtime.imageuse import ImageUse, lock_conflict
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.snapdisks import device_ids, disk_on_target, move_disks, running_config
from virtkit.runtime.snapshots import delete_internal_live
from virtkit.storage import qemuimg
from virtkit.store.db import SnapshotRow, Store


class SnapshotDeleter:
    """Removes snapshots and merges what they froze back into the chains."""

    def __init__(self, lifecycle: Lifecycle, store: Store) -> None:
        self._life = lifecycle
        self._store = store
        self._images = ImageUse(store, lifecycle)

    async def delete(self, uuid: str, name: str, snap: SnapshotRow, *, metadata_only: bool,
                     progress: Progress | None = None) -> list[str]:
        """Delete ``snap``; return notes on what happened to its files."""
        vm = self._life.vm(uuid, name)
        notes: list[str] = []
        async with vm.lock:
            running = vm.running
            if not metadata_only:
                disks = [SnapDisk.from_dict(d) for d in snap.record.get("disks", [])]
                if snap.kind == "internal":
                    await self._delete_internal(running, vm, snap, disks, progress)
                else:
                    for disk in disks:
                        if disk.mode == "external":
                            notes.append(await self._delete_external(
                                running, vm, snap, disk, progress))
                memfile = snap.record.get("memory_file")
                if memfile:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(memfile)
            self._store.delete_snapshot(uuid, snap.name)
            if snap.current:
                self._store.set_current_snapshot(uuid, snap.parent)
        return [n for n in notes if n]

    async def _delete_internal(self, running: Running | None, vm: Vm, snap: SnapshotRow,
                               disks: list[SnapDisk], progress: Progress | None) -> None:
        part = [d for d in disks if d.mode == "internal" and d.file]
        held = [d for d in part if d.file and snap.name in qemuimg.internal_snapshots(d.file)]
        if not held:
            return
        if running is not None:
            config = running_config(running, load_domain(self._store.get_domain(vm.uuid).spec))
            by_target = device_ids(running, config)
            nodes = await top_nodes(running.monitor, [by_target[d.target] for d in held])
            await delete_internal_live(running.monitor, snap.name,
                                       [n.node for n in nodes.values()], progress)
            return
        for disk in held:
            assert disk.file is not None
            qemuimg.internal_snapshot("delete", disk.file, snap.name)

    def _readers(self, vm: Vm, snap: SnapshotRow, target: str) -> tuple[dict[str, str | None],
                                                                        str | None]:
        """Every image still in use on disk ``target`` -> its backing file, and the top
        (of the running configuration when it runs)."""
        config = running_config(vm.running, load_domain(self._store.get_domain(vm.uuid).spec))
        found = disk_on_target(config, target)
        top = (found[1], found[2]) if found is not None else (None, None)
        images: dict[str, str | None] = {top[0]: top[1]} if top[0] else {}
        for other in self._store.list_snapshots(vm.uuid):
            if other.name == snap.name:
                continue
            images.update({d["file"]: d.get("format") for d in other.record.get("disks", [])
                           if d.get("target") == target and d.get("mode") == "external"
                           and d.get("file")})
        return {image: _backing(image, fmt) for image, fmt in images.items()}, top[0]

    async def _delete_external(self, running: Running | None, vm: Vm, snap: SnapshotRow,
                               disk: SnapDisk, progress: Progress | None) -> str:
        assert disk.file is not None
        assert disk.format is not None
        readers, top = self._readers(vm, snap, disk.target)
        step = plan_delete(disk.file, readers, ours=disk.file != disk.origin)
        if step.action == "keep":
            return f"{disk.target}: kept {disk.file}: {step.why}"
        if step.action == "drop":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(disk.file)
            return ""
        assert step.child is not None
        self._refuse_shared(vm, snap, step, readers)
        chain: list[str] = []
        device_id = ""
        if running is not None:
            config = running_config(running, load_domain(self._store.get_domain(vm.uuid).spec))
            device_id = device_ids(running, config)[disk.target]
            chain = await active_chain(running.monitor, device_id)
        if running is not None and step.child in chain:
            if running.confinement is not None and step.frozen in chain:
                # block-commit reopens the frozen image (and rewrites the layers above
                # it) read-write: a confined QEMU must own them for that
                for image in chain[:chain.index(step.frozen) + 1]:
                    running.confinement.grant_writable(image)
            try:
                await self._merge_live(running, device_id, step, progress)
            except QemuError as exc:  # a lock another QEMU holds: a conflict, not a bug
                conflict = lock_conflict(exc, lambda path: self._images.users(path))
                if conflict is None:
                    raise
                raise conflict from exc
        else:
            self._merge_offline(step, disk.format, readers, progress)
        self._after_merge(vm, snap, disk, step, top)
        os.unlink(step.child)
        return ""

    def _refuse_shared(self, vm: Vm, snap: SnapshotRow, step: DeleteStep,
                       readers: dict[str, str | None]) -> None:
        """The merge writes ``step.frozen`` and removes ``step.child``: refuse (409) when
        anything outside this domain's own chain uses either (another domain's disk, a
        linked clone or other pool volume on top of the frozen image): its data would
        change, or its file vanish (invariant 1, docs/architecture.md)."""
        assert step.child is not None
        own = {os.path.realpath(image) for image in (*readers, step.child, step.frozen)}
        touched = ((step.frozen, "written"), (step.child, "removed"))
        # one look at every use (domains' disks and chains, the folder's images) serves
        # both images: a disk of another domain, or a backing use outside our chain
        uses = self._images.uses(exclude=vm.uuid, folders={
            os.path.dirname(os.path.realpath(image)) for image, _what in touched})
        for image, what in touched:
            real = os.path.realpath(image)
            others = [use for use in uses if use.image == real and (
                use.via is None or os.path.realpath(use.via) not in own)]
            if others:
                use = others[0]
                raise Conflict(
                    f"deleting snapshot '{snap.name}' of '{vm.name}' merges {step.child} "
                    f"into {step.frozen}, so {image} would be {what}; but {use.who()} "
                    "uses it" + ("" if use.via is None else " as a backing file"),
                    fix=f"keep the snapshot, or forget it and keep its files "
                        f"('virtkit snapshot-delete {vm.name} {snap.name} --metadata'), or "
                        "first remove or flatten what uses the image", used_by=use.domain,
                    path=image)

    async def _merge_live(self, running: Running, device_id: str, step: DeleteStep,
                          progress: Progress | None) -> None:
        monitor = running.monitor
        assert step.child is not None
        nodes = await node_by_file(monitor)
        top = (await top_nodes(monitor, [device_id]))[device_id]
        if step.frozen not in nodes or step.child not in nodes:
            raise QemuError(f"QEMU does not have {step.child} over {step.frozen} open",
                            fix="shut the domain off and delete the snapshot again")
        child_node = nodes[step.child]
        job = f"snapmerge-{secrets.token_hex(3)}"
        await commit(monitor, job, top.node, top=None if step.child == top.file else child_node,
                     base=nodes[step.frozen], progress=progress)
        if not child_node.startswith("#"):
            # a node opened by -blockdev or blockdev-add (drive-diskN, snap-...) is held by
            # the monitor and outlives the commit, still claiming its backing: free it
            for node in (child_node, f"file-{child_node}"):
                with contextlib.suppress(Exception):
                    await monitor.blockdev_del(node)

    @staticmethod
    def _merge_offline(step: DeleteStep, fmt: str, readers: dict[str, str | None],
                       progress: Progress | None) -> None:
        assert step.child is not None
        qemuimg.commit(step.child, "qcow2", progress=progress)
        for image, backing in readers.items():
            if backing == step.child:
                qemuimg.set_backing(image, step.frozen, fmt)

    def _after_merge(self, vm: Vm, snap: SnapshotRow, disk: SnapDisk, step: DeleteStep,
                     top: str | None) -> None:
        """Whatever named the merged child now names the frozen image it went into."""
        uuid = vm.uuid
        if step.child == top:
            move_disks(self._store, self._life, vm, {disk.target: (step.frozen, disk.format)})
        for other in self._store.list_snapshots(uuid):
            if other.name == snap.name:
                continue
            record: dict[str, Any] = dict(other.record)
            changed = False
            for entry in record.get("disks", []):
                if entry.get("target") == disk.target and entry.get("file") == step.child:
                    entry["file"], entry["format"] = step.frozen, disk.format
                    changed = True
            if changed:
                self._store.update_snapshot(uuid, other.name, record=record)


def _backing(image: str, fmt: str | None) -> str | None:
    """The absolute backing file of ``image`` (None for a base image or a raw one)."""
    if fmt != "qcow2" or not os.path.exists(image):
        return None
    info = qemuimg.image_info(image, fmt=fmt)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    return os.path.abspath(backing) if backing else None
