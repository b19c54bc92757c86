"""Taking and reverting snapshots of a domain, running or not (QMP and qemu-img).

Kinds (decided by :func:`virtkit.model.snapshot.plan_create`):

* **internal**: each qcow2 keeps the snapshot inside itself.  Running: QMP
  ``snapshot-save`` (a job; with the RAM in the first disk) or, disk-only,
  ``blockdev-snapshot-internal-sync`` in one ``transaction``.  Offline:
  ``qemu-img snapshot -c``.
* **external**: each disk's current image is frozen and a new qcow2 overlay on
  top takes the writes; the domain's spec then names the overlays (as libvirt
  does).  Running: overlay files made with ``qemu-img create -u``, opened with
  ``blockdev-add`` and put on top in one ``transaction`` of ``blockdev-snapshot``
  (atomic over all disks); with memory, the VM stays paused from before the
  overlays until its RAM is written to a file (a migration stream, as ``save``
  does), so disks and memory are of the same instant.

Every multi-step operation registers an undo after each step
(:class:`contextlib.AsyncExitStack`, ``pop_all`` on success): a failure half way
removes the overlays it made and leaves a running VM on its original chain.

Reverting an external snapshot (which libvirt cannot do) starts a fresh overlay
on the snapshot's frozen image, points the spec at it, and only then discards
the overlay that was current (unless another snapshot froze it); that is in
:mod:`virtkit.runtime.snapshot_revert`, deleting in :mod:`virtkit.runtime.snapshot_delete`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from virtkit.errors import Conflict, HostError, InvalidSpec, StateError
from virtkit.model.domain import Disk, Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.snapshot import (
    CreatePlan,
    Kind,
    overlay_name,
    plan_create,
)
from virtkit.model.state import ACTIVE_STATES, Action, State, allows
from virtkit.qemu.argv import blockdev_nodes
from virtkit.qemu.monitor import Monitor
from virtkit.runtime import devlayout, savefile
from virtkit.runtime.blockjobs import (
    Progress,
    TopNode,
    await_migration,
    commit,
    run_job,
    top_nodes,
)
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.snapdisks import device_ids, move_disks, running_config, targets
from virtkit.storage import qemuimg
from virtkit.store.db import SnapshotRow, Store

log = logging.getLogger(__name__)

#: node names of overlays we add start with this (so we know which nodes to blockdev-del).
NODE_PREFIX = "snap-"
StartAs = Literal["running", "paused"] | None


class Quiescer(Protocol):
    """Freezes and thaws the guest's file systems (the guest agent's fsfreeze)."""

    async def freeze(self) -> int:
        """Freeze every file system; return how many were frozen."""
        ...

    async def thaw(self) -> int:
        """Thaw them again; return how many were thawed."""
        ...


@dataclass
class CreateRequest:
    """What the user asked for (see ``virtkit snapshot-create-as``)."""

    name: str
    description: str = ""
    kind: Kind | None = None
    disk_only: bool = False
    memspec: str | None = None
    quiescer: Quiescer | None = None


def _memory_state(vm: Vm) -> Running | None:
    """The live QEMU if the VM runs or is paused; StateError in states with no snapshot."""
    if not allows(Action.SNAPSHOT, vm.state):
        raise StateError(f"cannot snapshot domain '{vm.name}': it is {vm.state.value}",
                         current=vm.state.value, requested="snapshot",
                         fix=f"wait until it runs or is shut off, or 'virtkit destroy {vm.name}'")
    return vm.running if vm.state in ACTIVE_STATES else None


class SnapshotRuntime:
    """Snapshot operations on one daemon's domains; each holds the VM's lock."""

    def __init__(self, lifecycle: Lifecycle, store: Store, memory_dir: Path) -> None:
        self._life = lifecycle
        self._store = store
        self._memory_dir = memory_dir

    # -- create ------------------------------------------------------------------

    async def create(self, uuid: str, name: str, request: CreateRequest,
                     progress: Progress | None = None) -> SnapshotRow:
        """Take snapshot ``request.name`` of domain ``uuid``; return its stored row."""
        vm = self._life.vm(uuid, name)
        async with vm.lock:
            running = _memory_state(vm)
            if running is not None and getattr(running, "unplugging", None):
                raise Conflict(f"cannot snapshot domain '{name}': the detach of "
                               f"{', '.join(sorted(running.unplugging))} is pending (the "
                               "guest has not released it), so QEMU still writes its image",
                               fix=f"wait for the guest to let go, or restart the domain "
                                   f"(virtkit destroy {name}; virtkit start {name})")
            if request.quiescer is not None and running is None:
                raise InvalidSpec("--quiesce needs a running domain (there is no file "
                                  "system to freeze)", field="quiesce", fix="drop --quiesce")
            row = self._store.get_domain(uuid)
            domain = running_config(running, load_domain(row.spec))
            existing = self._store.list_snapshots(uuid)
            plan = plan_create(domain.disks, targets(domain),
                               running=running is not None, kind=request.kind,
                               disk_only=request.disk_only, memspec=request.memspec,
                               existing_kinds={s.kind for s in existing})
            self._fill_external(uuid, plan, request.name, existing)
            layout = None
            if plan.memory and running is not None:
                layout = await devlayout.check_restorable(
                    vm.name, running, "snapshot",
                    alternative=", or take a disk-only snapshot (--disk-only)")
            memfile = self._memory_file(uuid, request) if plan.memory else None
            state = vm.state.value
            async with contextlib.AsyncExitStack() as undo:
                if running is not None:
                    await self._create_live(vm, running, domain, plan, request, memfile,
                                            undo, progress)
                else:
                    self._create_offline(plan, request.name, undo)
                snap = self._record(uuid, request, plan, domain, state, memfile, existing)
                if layout is not None:  # where the revert's QEMU puts hot-added devices
                    snap.record["layout"] = layout.to_dict()
                if plan.kind == "external":
                    self._point_spec_at(vm, plan, undo)
                self._store.insert_snapshot(snap)
                undo.pop_all()
            return snap

    def _fill_external(self, uuid: str, plan: CreatePlan, snap: str,
                       existing: list[SnapshotRow]) -> None:
        """Name each external disk's overlay after the disk's original image."""
        if plan.kind != "external":
            return
        origins = {d["target"]: d.get("origin") for s in existing
                   for d in s.record.get("disks", []) if d.get("origin")}
        for disk in plan.taking_part:
            assert disk.file is not None
            disk.origin = origins.get(disk.target) or disk.file
            disk.overlay = free_overlay(disk.origin, snap, self._memory_dir / uuid)

    def _memory_file(self, uuid: str, request: CreateRequest) -> Path:
        if request.memspec:
            path = Path(request.memspec)
            if not path.is_absolute() or not path.parent.is_dir():
                raise InvalidSpec(f"--memspec file {request.memspec} must be an absolute path "
                                  "in an existing folder", field="memspec")
        else:
            folder = self._memory_dir / uuid
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{request.name}.mem"
        if path.exists():
            raise Conflict(f"memory file {path} already exists", field="memspec",
                           fix="choose another --memspec file, or remove it")
        return path

    def _record(self, uuid: str, request: CreateRequest, plan: CreatePlan, domain: Domain,
                state: str, memfile: Path | None, existing: list[SnapshotRow]) -> SnapshotRow:
        parent = next((s.name for s in existing if s.current), None)
        record: dict[str, Any] = {
            "description": request.description, "spec": dump_domain(domain),
            "memory_file": str(memfile) if memfile else None,
            "disks": [d.to_dict() for d in plan.disks]}
        return SnapshotRow(uuid, request.name, parent, time.time(), plan.kind, plan.memory,
                           state, True, record)

    def _point_spec_at(self, vm: Vm, plan: CreatePlan,
                       undo: contextlib.AsyncExitStack) -> None:
        """The stored spec and the live configuration name the new overlays (both
        undone on failure)."""
        row = self._store.get_domain(vm.uuid)
        live = running_config(vm.running, load_domain(row.spec))
        saved_live = live.model_copy(deep=True)
        move_disks(self._store, self._life, vm,
                   {d.target: (str(d.overlay), "qcow2") for d in plan.taking_part})

        def restore() -> None:
            self._store.update_domain(vm.uuid, row.name, row.spec, None)
            if vm.running is not None and getattr(vm.running, "live", None) is not None:
                vm.running.live = saved_live
                self._life.record(vm)
        undo.callback(restore)

    def _create_offline(self, plan: CreatePlan, snap: str,
                        undo: contextlib.AsyncExitStack) -> None:
        for disk in plan.taking_part:
            assert disk.file is not None
            assert disk.format is not None
            if plan.kind == "internal":
                _refuse_duplicate_tag(disk.file, snap)
                qemuimg.internal_snapshot("create", disk.file, snap)
                undo.callback(qemuimg.internal_snapshot, "delete", disk.file, snap)
            else:
                assert disk.overlay is not None
                size = int(qemuimg.image_info(disk.file, fmt=disk.format)["virtual-size"])
                qemuimg.create_overlay(disk.overlay, disk.file, disk.format, size)
                undo.callback(unlink_quietly, disk.overlay)

    async def _create_live(self, vm: Vm, running: Running, domain: Domain, plan: CreatePlan,
                           request: CreateRequest, memfile: Path | None,
                           undo: contextlib.AsyncExitStack, progress: Progress | None) -> None:
        monitor = running.monitor
        by_target = device_ids(running, domain)
        ids = [by_target[d.target] for d in plan.taking_part]
        nodes = await top_nodes(monitor, ids)
        for disk, device_id in zip(plan.taking_part, ids, strict=True):
            disk.file, disk.format = nodes[device_id].file, nodes[device_id].driver
        quiescer = request.quiescer
        if quiescer is not None:
            await quiescer.freeze()
        try:
            if plan.kind == "internal":
                await self._internal_live(monitor, plan, request.name, nodes, ids, undo,
                                          progress)
            else:
                await self._external_live(vm, running, domain, plan, nodes, ids, memfile,
                                          undo, progress)
        finally:
            if quiescer is not None:
                await quiescer.thaw()

    async def _internal_live(self, monitor: Monitor, plan: CreatePlan, snap: str,
                             nodes: dict[str, TopNode], ids: list[str],
                             undo: contextlib.AsyncExitStack, progress: Progress | None) -> None:
        for node in nodes.values():
            _refuse_duplicate_tag(node.file, snap)
        names = [nodes[i].node for i in ids]
        if plan.memory:
            job = f"snapsave-{secrets.token_hex(4)}"
            await monitor.snapshot_save(job, snap, names[0], names)
            await run_job(monitor, job, progress=progress)
        else:
            await monitor.transaction([
                {"type": "blockdev-snapshot-internal-sync", "data": {"device": n, "name": snap}}
                for n in names])
        undo.push_async_callback(delete_internal_live, monitor, snap, names)

    async def _external_live(self, vm: Vm, running: Running, domain: Domain, plan: CreatePlan,
                             nodes: dict[str, TopNode], ids: list[str], memfile: Path | None,
                             undo: contextlib.AsyncExitStack, progress: Progress | None
                             ) -> None:
        monitor = running.monitor
        was_running = vm.state is State.RUNNING
        if was_running:
            await monitor.stop()
        migrated = False
        try:
            pairs = await self._add_overlays(running, domain, plan, nodes, ids, undo)
            await monitor.transaction([
                {"type": "blockdev-snapshot", "data": {"node": top, "overlay": overlay}}
                for top, overlay in pairs])
            undo.push_async_callback(_unsnap, monitor, pairs)
            for disk, device_id in zip(plan.taking_part, ids, strict=True):
                await reopen_read_only(monitor, domain.disks[disk.index], nodes[device_id])
            if memfile is not None:
                migrated = True
                await self._save_memory(running, memfile, domain, was_running, progress)
                undo.callback(unlink_quietly, str(memfile))
        finally:
            if was_running or migrated:
                # cont also re-activates the images a finished migration left inactive
                await monitor.cont()
            if migrated and not was_running:
                await monitor.stop()

    async def _add_overlays(self, running: Running, domain: Domain, plan: CreatePlan,
                            nodes: dict[str, TopNode], ids: list[str],
                            undo: contextlib.AsyncExitStack) -> list[tuple[str, str]]:
        """Create and open each overlay (not yet in the chain): [(top node, overlay node)].
        A confined QEMU is handed each new overlay (made here as root) before opening it."""
        monitor = running.monitor
        pairs = []
        token = secrets.token_hex(3)
        for disk, device_id in zip(plan.taking_part, ids, strict=True):
            assert disk.overlay is not None
            assert disk.file is not None
            top = nodes[device_id]
            size = int(qemuimg.image_info(top.file, fmt=top.driver)["virtual-size"])
            qemuimg.create_overlay(disk.overlay, top.file, top.driver, size)
            undo.callback(unlink_quietly, disk.overlay)
            if running.confinement is not None:
                running.confinement.grant_writable(disk.overlay)
                undo.callback(running.confinement.release_path, disk.overlay)
            node = f"{NODE_PREFIX}{token}-{disk.index}"
            spec_disk = domain.disks[disk.index].model_copy(
                update={"path": disk.overlay, "format": "qcow2"})
            protocol, fmt = blockdev_nodes(spec_disk, node)
            await monitor.blockdev_add(protocol)
            undo.push_async_callback(_blockdev_del, monitor, protocol["node-name"])
            await monitor.blockdev_add({**fmt, "backing": None})
            undo.push_async_callback(_blockdev_del, monitor, node)
            pairs.append((top.node, node))
        return pairs

    @staticmethod
    async def _save_memory(running: Running, memfile: Path, domain: Domain,
                           was_running: bool, progress: Progress | None) -> None:
        """Write the paused VM's RAM and device state to ``memfile`` (a save file)."""
        partial = memfile.with_name(f".{memfile.name}.partial")
        try:
            with open(partial, "xb") as stream:  # noqa: ASYNC230 - creating it is immediate; QEMU writes the stream
                savefile.write_header(stream, dump_domain(domain), running=was_running)
                running.monitor.send_fd(stream.fileno())
                await running.monitor.getfd("virtkit-snapshot")
                # QEMU throttles migration to 128 MiB/s by default; a file is no network
                await running.monitor.migrate_set_parameters({"max-bandwidth": 1 << 42})
                await running.monitor.migrate("fd:virtkit-snapshot")
                await await_migration(running.monitor, "saving the snapshot's memory",
                                      progress)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(partial, memfile)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise HostError(f"cannot write the memory file {memfile}: {exc.strerror}",
                            fix="choose a --memspec file in a writable folder") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def free_overlay(origin: str, snap: str, elsewhere: Path) -> str:
    """A free path for a new overlay: next to the disk's original image, or in
    ``elsewhere`` when that is a block device (no files can be made in /dev)."""
    if origin.startswith("/dev/"):
        elsewhere.mkdir(parents=True, exist_ok=True)
        origin = str(elsewhere / os.path.basename(origin))
    folder = os.path.dirname(origin)
    taken = {os.path.join(folder, n) for n in os.listdir(folder)}
    return overlay_name(origin, snap, taken)


def _refuse_duplicate_tag(path: str, snap: str) -> None:
    if snap in qemuimg.internal_snapshots(path):
        raise Conflict(f"image {path} already holds an internal snapshot named '{snap}'",
                       fix="choose another name (qemu-img snapshot -l lists them)")


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _blockdev_del(monitor: Monitor, node: str) -> None:
    with contextlib.suppress(Exception):
        await monitor.blockdev_del(node)


async def reopen_read_only(monitor: Monitor, disk: Disk, frozen: TopNode) -> None:
    """Invariant 1 (a file that backs another image is never writable): reopen the
    protocol node under the image an overlay now covers with ``auto-read-only``
    (``blockdev-reopen``): QEMU then holds the file O_RDONLY while nothing needs to
    write it (running or paused), and O_RDWR only while a commit merges into it."""
    spec = disk.model_copy(update={"path": frozen.file, "format": frozen.driver})
    protocol, _fmt = blockdev_nodes(spec, frozen.node)
    nodes = await monitor.query_named_block_nodes()
    if not any(n.get("node-name") == protocol["node-name"] for n in nodes):
        # a node QEMU opened itself (a chain's image after a merge): its options are
        # not ours to restate, so it stays as QEMU has it (issue 15, left to do)
        log.warning("%s stays writable in QEMU: its node %s was not opened by virtkit",
                    frozen.file, frozen.node)
        return
    await monitor.blockdev_reopen([{**protocol, "auto-read-only": True}])


async def _unsnap(monitor: Monitor, pairs: list[tuple[str, str]]) -> None:
    """Undo of blockdev-snapshot: merge each new overlay back into the node it covered
    (an active commit; the device is then back on its original top)."""
    for top, overlay in pairs:
        await commit(monitor, f"undo-{secrets.token_hex(3)}", overlay, top=None, base=top)


async def delete_internal_live(monitor: Monitor, snap: str, nodes: list[str],
                               progress: Callable[[float, float], None] | None = None) -> None:
    """Delete internal snapshot ``snap`` from the images a running QEMU holds."""
    job = f"snapdel-{secrets.token_hex(4)}"
    await monitor.snapshot_delete(job, snap, nodes)
    await run_job(monitor, job, progress=progress)
