"""virsh's live block jobs on a running disk: blockcommit, blockpull, blockjob, blockresize.

One job per disk, as virsh has it; its QEMU job id is ``block-<target>``.  Jobs are
created with ``auto-dismiss`` off so their end (and error) is read before they go.
``--wait`` waits here (progress through :data:`Progress`); without it the job runs on
and ``blockjob`` shows, aborts or pivots it later.

Invariant kept (definitions name the files QEMU really uses): an active commit
that pivots moves the disk onto the base image, in the stored spec and the live
configuration (:func:`~virtkit.runtime.snapdisks.move_disks`).  A commit below the
top or a pull keeps the top file, so the definition does not change.  Files that a
job leaves unused stay in place, as libvirt leaves them, unless ``delete`` is asked.

The QMP calls are the small functions at the top (``qmp_*``): one command each.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from virtkit.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    QemuError,
    StateError,
    VirtkitError,
)
from virtkit.model.load import load_domain
from virtkit.model.state import Action, allows
from virtkit.qemu.argv import disk_slots
from virtkit.qemu.monitor import Monitor
from virtkit.runtime.blockjobs import Progress, _matches, run_job
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.snapdisks import device_ids, disk_on_target, move_disks, running_config
from virtkit.store.db import Store

#: virsh's names of QEMU's job types (blockjob --info)
JOB_NAMES = {"commit": "Block Commit", "active-commit": "Active Block Commit",
             "stream": "Block Pull", "mirror": "Block Copy"}
_PROTOCOL_DRIVERS = {"file", "host_device", "host_cdrom"}


# -- QMP, one command each ---------------------------------------------------------------

async def qmp_block_chain(monitor: Monitor, device_id: str) -> list[tuple[str, str, str]]:
    """(file, node name, format driver) of each image of a disk's chain, top first."""
    chain: list[str] = []
    top: tuple[str, str] | None = None
    for block in await monitor.query_block():
        inserted = block.get("inserted")
        if inserted and _matches(str(block.get("qdev", "")), device_id):
            top = (str(inserted["node-name"]), str(inserted["drv"]))
            image: dict[str, Any] | None = inserted["image"]
            while image:
                chain.append(os.path.abspath(image["filename"]))  # noqa: ASYNC240 - no I/O
                image = image.get("backing-image")
            break
    else:
        raise NotFound(f"QEMU has no disk device {device_id}")
    # the top by the device's own node name; the images below by file name, skipping
    # nodes the monitor still holds that are no longer in this chain
    nodes: dict[str, tuple[str, str]] = {}
    for node in await monitor.query_named_block_nodes():
        if node.get("drv") in _PROTOCOL_DRIVERS or not node.get("file"):
            continue
        nodes.setdefault(os.path.abspath(node["file"]),  # noqa: ASYNC240 - no I/O
                         (node["node-name"], node["drv"]))
    if top is not None and chain:
        nodes[chain[0]] = top
    return [(f, *nodes[f]) for f in chain if f in nodes]


async def qmp_release_nodes(monitor: Monitor, nodes: list[str]) -> None:
    """Close nodes a job took out of the chain that the monitor still holds (those
    opened by -blockdev or blockdev-add, not QEMU's own ``#block...``), so QEMU lets go
    of their files."""
    for node in nodes:
        if node.startswith("#"):
            continue
        for name in (node, f"file-{node}"):
            with contextlib.suppress(VirtkitError):
                await monitor.blockdev_del(name)


async def qmp_block_commit(monitor: Monitor, job: str, device_node: str, *,
                           top: str | None, base: str, speed: int) -> None:
    arguments: dict[str, Any] = {"job-id": job, "device": device_node, "base-node": base,
                                 "auto-dismiss": False}
    if top is not None:
        arguments["top-node"] = top
    if speed:
        arguments["speed"] = speed
    await monitor.block_commit(arguments)


async def qmp_block_stream(monitor: Monitor, job: str, device_node: str, *,
                           base: str | None, speed: int) -> None:
    arguments: dict[str, Any] = {"job-id": job, "device": device_node, "auto-dismiss": False}
    if base is not None:
        arguments["base-node"] = base
    if speed:
        arguments["speed"] = speed
    await monitor.block_stream(arguments)


async def qmp_job(monitor: Monitor, job: str) -> dict[str, Any] | None:
    """The job as ``query-jobs`` shows it (None when QEMU has none by that id)."""
    for entry in await monitor.query_jobs():
        if entry.get("id") == job:
            return dict(entry)
    return None


async def qmp_job_speed(monitor: Monitor, job: str, speed: int) -> None:
    await monitor.block_job_set_speed(job, speed)


async def qmp_block_resize(monitor: Monitor, node: str, size: int) -> None:
    await monitor.block_resize(node, size)


# -- the jobs ----------------------------------------------------------------------------

@dataclass
class Pending:
    """A job started without --wait: what a pivot must do to the definition."""

    kind: str  # commit, active-commit, stream
    base_file: str | None = None
    base_format: str | None = None
    #: the nodes the job takes out of the chain (closed once it has)
    dropped: tuple[str, ...] = ()


def job_id(target: str) -> str:
    return f"block-{target}"


def pick_image(chain: list[tuple[str, str, str]], target: str, ref: str, what: str
               ) -> int:
    """The chain position of ``ref``: a file name, or virsh's ``vda[N]`` (N images
    below the top)."""
    if ref.startswith(f"{target}[") and ref.endswith("]") and ref[len(target) + 1:-1].isdigit():
        index = int(ref[len(target) + 1:-1])
        if index < len(chain):
            return index
    else:
        wanted = os.path.abspath(ref)
        for index, (file, _node, _drv) in enumerate(chain):
            if file in (wanted, os.path.realpath(wanted)):
                return index
    raise InvalidSpec(f"{what} {ref!r} is not in the backing chain of disk {target} "
                      f"({' <- '.join(f for f, _n, _d in reversed(chain))})", field=what,
                      fix=f"give one of its files, or {target}[N] for N images below the top")


class BlockOps:
    """Block jobs of running domains."""

    def __init__(self, lifecycle: Lifecycle, store: Store) -> None:
        self._life = lifecycle
        self._store = store
        self._pending: dict[tuple[str, str], Pending] = {}

    def _running(self, uuid: str, name: str, what: str) -> tuple[Vm, Running]:
        vm = self._life.vm(uuid, name)
        if vm.running is None or not allows(Action.BLOCK_JOB, vm.state):
            raise StateError(f"cannot {what}: domain '{name}' is not running",
                             current=vm.state.value, requested=what,
                             fix=f"start it (virtkit start {name}); an offline disk is "
                                 "changed with qemu-img")
        return vm, vm.running

    def _device(self, vm: Vm, running: Running, target: str) -> str:
        config = running_config(running, load_domain(self._store.get_domain(vm.uuid).spec))
        ids = device_ids(running, config)
        found = disk_on_target(config, target)
        if target not in ids or found is None or not found[1]:
            raise NotFound(f"domain '{vm.name}' has no disk '{target}' with an image",
                           field="disk", fix=f"see 'virtkit domblklist {vm.name}'")
        return ids[target]

    async def _idle(self, vm: Vm, monitor: Monitor, target: str) -> None:
        job = await qmp_job(monitor, job_id(target))
        if job is None:
            self._pending.pop((vm.uuid, target), None)
            return
        if job.get("status") == "concluded":
            await self._conclude(vm, monitor, target, job)
            return
        kind = self._pending.get((vm.uuid, target), Pending(job.get("type", "")))
        raise Conflict(f"disk {target} of domain '{vm.name}' already has a block job "
                       f"({JOB_NAMES.get(kind.kind, kind.kind)}, {job.get('status')})",
                       fix=f"wait for it, or end it: virtkit blockjob {vm.name} {target} "
                           "--abort (or --pivot)")

    async def _conclude(self, vm: Vm, monitor: Monitor, target: str,
                        job: dict[str, Any]) -> None:
        """Dismiss a job that ended on its own; raise its error."""
        self._pending.pop((vm.uuid, target), None)
        await monitor.job_dismiss(job_id(target))
        if job.get("error"):
            raise QemuError(f"the block job on disk {target} failed: {job['error']}")

    def _grant(self, running: Running, chain: list[tuple[str, str, str]], upto: int) -> None:
        """A confined QEMU must own the images a job rewrites (chain[0..upto])."""
        if running.confinement is not None:
            for file, _node, _drv in chain[:upto + 1]:
                running.confinement.grant_writable(file)

    async def commit(self, uuid: str, name: str, target: str, *, active: bool = False,
                     pivot: bool = False, keep_overlay: bool = False, shallow: bool = False,
                     base: str | None = None, top: str | None = None, wait: bool = False,
                     delete: bool = False, speed: int = 0,
                     progress: Progress | None = None) -> dict[str, Any]:
        """virsh blockcommit: merge the images from ``top`` down into ``base``."""
        if (pivot or keep_overlay) and not active:
            raise InvalidSpec("--pivot and --keep-overlay end an active commit: add --active",
                              field="pivot")
        if pivot and keep_overlay:
            raise InvalidSpec("--pivot and --keep-overlay exclude each other", field="pivot")
        if shallow and base:
            raise InvalidSpec("--shallow and --base exclude each other", field="base")
        vm, running = self._running(uuid, name, "commit a disk")
        async with vm.lock:
            monitor = running.monitor
            device = self._device(vm, running, target)
            await self._idle(vm, monitor, target)
            chain = await qmp_block_chain(monitor, device)
            top_at = pick_image(chain, target, top, "top") if top else 0
            if top_at == 0 and not active:
                raise InvalidSpec(f"commit of the active layer of disk {target} needs "
                                  "--active", field="active",
                                  fix="add --active (and --pivot to move the disk onto "
                                      "the base), or name a lower --top")
            if top_at != 0 and active:
                raise InvalidSpec("--active commits the top image; --top names a lower one",
                                  field="active")
            if shallow:
                base_at = top_at + 1
            elif base:
                base_at = pick_image(chain, target, base, "base")
            else:
                base_at = len(chain) - 1
            if base_at <= top_at or base_at >= len(chain):
                raise InvalidSpec(f"disk {target} has nothing below "
                                  f"{chain[top_at][0]} to commit into", field="base",
                                  fix="a commit needs a backing image (take an external "
                                      "snapshot first)")
            self._grant(running, chain, base_at)
            base_file, base_node, base_drv = chain[base_at]
            kind = "active-commit" if active else "commit"
            job = job_id(target)
            await qmp_block_commit(monitor, job, chain[0][1],
                                   top=None if active else chain[top_at][1], base=base_node,
                                   speed=speed)
            self._pending[(uuid, target)] = Pending(
                kind, base_file, base_drv, tuple(n for _f, n, _d in chain[top_at:base_at]))
            result: dict[str, Any] = {"name": name, "disk": target, "job": kind,
                                      "base": base_file, "top": chain[top_at][0],
                                      "status": "started"}
            if not (wait or pivot or keep_overlay):
                return result
            if not active:
                await self._finish(vm, monitor, target, progress)
                result["status"] = "completed"
            else:
                await run_job(monitor, job, progress=progress, until_ready=True)
                if pivot:
                    await self._pivot(vm, running, target, progress)
                    result["status"] = "pivoted"
                elif keep_overlay:
                    await self._cancel(vm, monitor, target)
                    result["status"] = "completed"
                else:
                    result["status"] = "ready"
            if result["status"] in ("pivoted", "completed") and (pivot or not active):
                # the committed images: their data is in the base now, and they are
                # stale (the base below them changed); left in place unless --delete
                unused = [f for f, _n, _d in chain[top_at:base_at]]
                if delete:
                    result["deleted"] = self._delete(uuid, unused)
                else:
                    result["unused"] = unused
            return result

    def _delete(self, uuid: str, files: list[str]) -> list[str]:
        """--delete: remove committed images no snapshot names any more."""
        named = {str(d.get("file")) for snap in self._store.list_snapshots(uuid)
                 for d in snap.record.get("disks", [])}
        gone = []
        for file in files:
            if file not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file)
                gone.append(file)
        return gone

    async def _finish(self, vm: Vm, monitor: Monitor, target: str,
                      progress: Progress | None) -> None:
        """Wait for a job that ends by itself (a commit below the top, a pull)."""
        try:
            await run_job(monitor, job_id(target), progress=progress)
        finally:
            pending = self._pending.pop((vm.uuid, target), None)
        if pending is not None and pending.dropped:
            await qmp_release_nodes(monitor, list(pending.dropped))

    async def _pivot(self, vm: Vm, running: Running, target: str,
                     progress: Progress | None) -> None:
        """Complete a ready active commit: QEMU switches to the base; so does the spec."""
        pending = self._pending.get((vm.uuid, target))
        await running.monitor.job_complete(job_id(target))
        await self._finish(vm, running.monitor, target, progress)
        if pending is not None and pending.base_file is not None:
            move_disks(self._store, self._life, vm,
                       {target: (pending.base_file, pending.base_format)})

    async def _cancel(self, vm: Vm, monitor: Monitor, target: str) -> None:
        await monitor.job_cancel(job_id(target))
        try:
            await run_job(monitor, job_id(target))
        except QemuError as exc:  # a cancelled job reports "cancelled" as its error
            if "cancel" not in str(exc).lower():
                raise
        finally:
            self._pending.pop((vm.uuid, target), None)

    async def pull(self, uuid: str, name: str, target: str, *, base: str | None = None,
                   wait: bool = False, speed: int = 0, progress: Progress | None = None
                   ) -> dict[str, Any]:
        """virsh blockpull: copy the backing images' data into the top (down to
        ``base``, which the top then reads directly)."""
        vm, running = self._running(uuid, name, "pull into a disk")
        async with vm.lock:
            monitor = running.monitor
            device = self._device(vm, running, target)
            await self._idle(vm, monitor, target)
            chain = await qmp_block_chain(monitor, device)
            base_at = pick_image(chain, target, base, "base") if base else None
            if base_at == 0:
                raise InvalidSpec("the base of a pull is below the top image", field="base")
            await qmp_block_stream(monitor, job_id(target), chain[0][1],
                                   base=chain[base_at][1] if base_at else None, speed=speed)
            below = chain[1:base_at] if base_at else chain[1:]
            self._pending[(uuid, target)] = Pending("stream",
                                                    dropped=tuple(n for _f, n, _d in below))
            result: dict[str, Any] = {"name": name, "disk": target, "job": "stream",
                                      "top": chain[0][0], "status": "started"}
            if wait:
                await self._finish(vm, monitor, target, progress)
                result["status"] = "completed"
            return result

    async def job(self, uuid: str, name: str, target: str, *, abort: bool = False,
                  pivot: bool = False, speed: int | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
        """virsh blockjob: the disk's job (None when it has none); --abort, --pivot,
        --bandwidth act on it."""
        vm, running = self._running(uuid, name, "manage a block job")
        monitor = running.monitor
        self._device(vm, running, target)
        job = await qmp_job(monitor, job_id(target))
        if job is not None and job.get("status") == "concluded":
            await self._conclude(vm, monitor, target, job)
            job = None
        if job is None:
            self._pending.pop((uuid, target), None)
            if abort or pivot or speed is not None:
                raise Conflict(f"no active block job on disk {target} of domain '{name}'",
                               fix=f"start one: virtkit blockcommit/blockpull {name} {target}")
            return {"name": name, "disk": target, "job": None}
        pending = self._pending.get((uuid, target), Pending(str(job.get("type"))))
        if pivot:
            if pending.kind != "active-commit" or job.get("status") != "ready":
                raise Conflict(f"the job on disk {target} cannot pivot "
                               f"({JOB_NAMES.get(pending.kind, pending.kind)}, "
                               f"{job.get('status')})", fix="an active commit pivots once "
                               "it is ready (blockjob --info says 100 %); wait, or --abort")
            async with vm.lock:
                await self._pivot(vm, running, target, progress)
            return {"name": name, "disk": target, "job": pending.kind, "status": "pivoted"}
        if abort:
            async with vm.lock:
                await self._cancel(vm, monitor, target)
            return {"name": name, "disk": target, "job": pending.kind, "status": "aborted"}
        if speed is not None:
            await qmp_job_speed(monitor, job_id(target), speed)
        return {"name": name, "disk": target, "job": pending.kind,
                "status": job.get("status"), "cur": int(job.get("current-progress") or 0),
                "end": int(job.get("total-progress") or 0), "bandwidth": speed or 0}

    def live_users(self, path: str) -> list[tuple[Vm, str, bool]]:
        """(VM, disk target, writable) of each running domain whose live configuration
        has ``path`` as a disk (vol-resize of a volume in use)."""
        real = os.path.realpath(path)
        found = []
        for row in self._store.list_domains():
            vm = self._life.vm(row.uuid, row.name)
            if vm.running is None or not allows(Action.BLOCK_JOB, vm.state):
                continue
            config = running_config(vm.running, load_domain(row.spec))
            for slot, disk in zip(disk_slots(config), config.disks, strict=True):
                if disk.path and os.path.realpath(disk.path) == real:
                    found.append((vm, slot.target, not disk.readonly))
        return found

    async def resize(self, uuid: str, name: str, target: str, size: int) -> dict[str, Any]:
        """virsh blockresize: grow (or shrink) the top image live; the guest sees it."""
        if size <= 0:
            raise InvalidSpec("the new size must be above 0", field="size")
        vm, running = self._running(uuid, name, "resize a disk")
        async with vm.lock:
            device = self._device(vm, running, target)
            chain = await qmp_block_chain(running.monitor, device)
            if not chain:
                raise NotFound(f"disk {target} has no image open", field="disk")
            if size % 512:
                size += 512 - size % 512  # QEMU resizes in whole sectors
            await qmp_block_resize(running.monitor, chain[0][1], size)
        return {"name": name, "disk": target, "size": size}
