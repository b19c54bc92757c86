"""virsh blockcopy: copy a running disk to another image, then pivot onto it or keep it.

The copy is QEMU's ``blockdev-mirror``: the destination is opened with ``blockdev-add``
(a new image made here first, or an existing one with ``--reuse-external``), the
mirror job (id ``block-<target>``, the disk's one job) copies the disk and then
follows the guest's writes (``ready``: "Now in mirroring phase").  Its end:

- **pivot** (``--pivot``, ``blockjob --pivot``): ``job-complete``; QEMU switches the
  device onto the copy, and so does the definition (stored spec and live
  configuration, :func:`~virtkit.runtime.snapdisks.move_disks`): a later destroy +
  start boots the copy.  The old image is closed and left in place.
- **finish** (``--finish``, or ``blockjob --abort`` of a copy that is ready, as in
  virsh): a soft ``block-job-cancel`` of the ready mirror; QEMU writes the last
  changes and closes the copy, which stands alone; the disk stays on its image.
- **abort** before the copy is ready, a failure, or ``--timeout``: the job is
  cancelled, the VM keeps running on its original disk, and a destination the daemon
  created is removed (only while it is still that file: device and inode are kept);
  a file it did not create (``--reuse-external``, ``--blockdev``) is never removed.

Planning (:func:`plan_copy`) is pure and decides the refusals: a destination that
exists without ``--reuse-external``, one of the disk's own images, another
domain's image, a format or size that cannot take the copy.  Copies run on a
running (or paused) domain only; an offline disk is copied with ``vol-clone`` or
``qemu-img convert``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, QemuError, TimeoutExpired
from virtkit.model.domain import Disk, Domain
from virtkit.model.load import load_domain
from virtkit.qemu.argv import blockdev_nodes
from virtkit.qemu.monitor import Monitor
from virtkit.runtime.blockjobs import Progress, _matches, run_job
from virtkit.runtime.blockops import BlockOps, Pending, job_id, qmp_block_chain, qmp_job
from virtkit.runtime.imageuse import ImageUse
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Vm
from virtkit.runtime.snapdisks import disk_on_target, move_disks, running_config
from virtkit.runtime.storagecopy import CreatedImage
from virtkit.storage import qemuimg

COPY_FORMATS = ("qcow2", "raw")
NODE_PREFIX = "copy-"
POLL = 0.05


# -- planning (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    """Where a copy goes, as the service resolved it (the path passed the path policy)."""

    path: str
    format: str | None = None  # None: the disk's format (new) or what the file holds
    reuse: bool = False  # copy into an existing file or device (never removed)
    blockdev: bool = False  # the path is a block device (implies reuse)


@dataclass(frozen=True)
class Existing:
    """What is at the destination path already."""

    format: str
    size: int
    backing: str | None
    block: bool = False


@dataclass(frozen=True)
class CopyPlan:
    """One copy, decided: what to create, how QEMU syncs, what the copy is backed by."""

    path: str
    format: str
    size: int
    sync: str  # "full" (a standalone copy) or "top" (--shallow: the top image only)
    create: bool
    backing_file: str | None = None
    backing_format: str | None = None
    backing_node: str | None = None


def plan_copy(chain: list[tuple[str, str, str]], size: int, dest: Destination,
              existing: Existing | None, *, shallow: bool, used_by: Sequence[str] = ()
              ) -> CopyPlan:
    """Decide a copy of the disk whose chain (file, node, format; top first) and virtual
    size are given, or refuse it naming the problem and the fix."""
    path = dest.path
    real = os.path.realpath(path)
    if real in {os.path.realpath(f) for f, _n, _d in chain}:
        raise InvalidSpec(f"{path} is an image of the disk itself", field="dest",
                          fix="copy to a new file")
    if used_by:
        raise Conflict(f"{path} is an image of {', '.join(used_by)}; a copy would write "
                       "over it", field="dest", used_by=list(used_by),
                       fix="copy to a new file")
    reuse = dest.reuse or dest.blockdev
    if existing is None and reuse:
        what = "block device" if dest.blockdev else "file"
        raise NotFound(f"--reuse-external: the {what} {path} does not exist", field="dest",
                       fix="create it first, or leave out --reuse-external to have "
                           "blockcopy create a new file")
    if existing is not None and not reuse:
        raise Conflict(f"{path} already exists; blockcopy never writes over a file it did "
                       "not create", field="dest",
                       fix="choose a new file name, or pass --reuse-external to copy into "
                           "this one (its data is overwritten)")
    if dest.blockdev and existing is not None and not existing.block:
        raise InvalidSpec(f"--blockdev: {path} is not a block device", field="dest",
                          fix="leave out --blockdev for a file")
    top_format = chain[0][2]
    fmt = dest.format or (existing.format if existing is not None else
                          ("raw" if dest.blockdev else top_format))
    if fmt not in COPY_FORMATS:
        raise InvalidSpec(f"cannot copy into format {fmt!r}", field="format",
                          fix=f"use one of {', '.join(COPY_FORMATS)}")
    backing = chain[1] if shallow and len(chain) > 1 else None
    if backing is not None and fmt != "qcow2":
        raise InvalidSpec(f"--shallow keeps the backing image {backing[0]}: the copy must "
                          f"be qcow2, not {fmt}", field="format",
                          fix="use --format qcow2, or copy the whole disk (no --shallow)")
    if existing is not None:
        if existing.size != size:
            raise InvalidSpec(f"{path} is {existing.size} bytes, the disk is {size}: a copy "
                              "must be the same size", field="dest",
                              fix=f"resize it first (qemu-img resize {path} {size})")
        want = os.path.realpath(backing[0]) if backing is not None else None
        have = os.path.realpath(existing.backing) if existing.backing else None
        if backing is not None and have != want:
            raise InvalidSpec(f"--shallow --reuse-external: {path} must be backed by "
                              f"{backing[0]} (it is backed by {have or 'nothing'})",
                              field="dest", fix=f"qemu-img rebase -u -b {backing[0]} "
                              f"-F {backing[2]} {path}")
        if backing is None and have is not None:
            raise InvalidSpec(f"{path} has a backing file ({have}); a full copy is written "
                              "into a standalone image", field="dest",
                              fix="use a standalone image, or --shallow")
    return CopyPlan(path, fmt, size, "top" if backing is not None else "full",
                    create=existing is None,
                    backing_file=backing[0] if backing else None,
                    backing_format=backing[2] if backing else None,
                    backing_node=backing[1] if backing else None)


def existing_image(path: str, fmt: str | None) -> Existing | None:
    """What is at ``path`` (None: nothing).  Blocks: run it in a thread."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    block = stat.S_ISBLK(st.st_mode)
    info = qemuimg.image_info(path, fmt=fmt)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    return Existing(str(info.get("format", fmt or "raw")), int(info["virtual-size"]),
                    str(backing) if backing else None, block)


# -- the job ---------------------------------------------------------------------------

@dataclass
class CopyJob:
    """A copy that runs: what its end does."""

    disk: str
    device: str  # the QEMU device id (disk<n>)
    plan: CopyPlan
    node: str  # the copy's format node (file-<node> under it)
    created: CreatedImage | None
    #: the source's images and nodes a pivot leaves behind (closed then)
    old_files: tuple[str, ...]
    old_nodes: tuple[str, ...]
    #: the QEMU the copy runs in (a copy whose QEMU ended is swept away)
    qemu: Running | None = None


async def qmp_disk_size(monitor: Monitor, device_id: str) -> int:
    """The virtual size of a running disk (``query-block``)."""
    for block in await monitor.query_block():
        inserted = block.get("inserted")
        if inserted and _matches(str(block.get("qdev", "")), device_id):
            return int(inserted["image"]["virtual-size"])
    raise NotFound(f"QEMU has no disk device {device_id}")


async def _top_node(monitor: Monitor, device_id: str) -> str | None:
    for block in await monitor.query_block():
        inserted = block.get("inserted")
        if inserted and _matches(str(block.get("qdev", "")), device_id):
            return str(inserted.get("node-name"))
    return None


async def _quietly_del(monitor: Monitor, nodes: list[str]) -> None:
    for node in nodes:
        with contextlib.suppress(QemuError):
            await monitor.blockdev_del(node)


class BlockCopyOps(BlockOps):
    """:class:`BlockOps` with blockcopy, and blockjob's pivot/abort of a copy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._copies: dict[tuple[str, str], CopyJob] = {}

    async def copy(self, uuid: str, name: str, target: str, dest: Destination, *,
                   shallow: bool = False, wait: bool = False, pivot: bool = False,
                   finish: bool = False, speed: int = 0, timeout: float | None = None,
                   progress: Progress | None = None) -> dict[str, Any]:
        """virsh blockcopy of disk ``target`` to ``dest``."""
        if pivot and finish:
            raise InvalidSpec("--pivot and --finish exclude each other", field="pivot")
        if timeout is not None and timeout <= 0:
            raise InvalidSpec("--timeout must be above 0 seconds", field="timeout")
        self._sweep(self._life.vm(uuid, name))
        vm, running = self._running(uuid, name, "copy a disk")
        async with vm.lock:
            monitor = running.monitor
            device = self._device(vm, running, target)
            await self._idle(vm, monitor, target)
            chain = await qmp_block_chain(monitor, device)
            size = await qmp_disk_size(monitor, device)
            existing, used = await asyncio.to_thread(self._inspect, dest)
            plan = plan_copy(chain, size, dest, existing, shallow=shallow, used_by=used)
            job = await self._start(vm, running, target, device, chain, plan, speed)
            result: dict[str, Any] = {"name": name, "disk": target, "job": "mirror",
                                      "dest": plan.path, "format": plan.format,
                                      "status": "started"}
            if not (wait or pivot or finish or timeout):
                return result
            try:
                await self._wait_ready(monitor, target, progress, timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._discard(vm, running, job, cancel=True)
                raise
            if pivot:
                await self._pivot_copy(vm, running, job, progress)
                result["status"] = "pivoted"
            elif finish:
                await self._finish_copy(vm, running, job)
                result["status"] = "copied"
            else:
                result["status"] = "ready"
            return result

    def _inspect(self, dest: Destination) -> tuple[Existing | None, list[str]]:
        """What is at the destination, and which domains use it (reads image headers)."""
        real = os.path.realpath(dest.path)
        used = sorted({u.who() for u in ImageUse(self._store, self._life).uses(pools=False)
                       if u.image == real})
        return existing_image(dest.path, dest.format), used

    async def _start(self, vm: Vm, running: Running, target: str, device: str,
                     chain: list[tuple[str, str, str]], plan: CopyPlan, speed: int) -> CopyJob:
        """Create the destination, open it, start the mirror; undone step by step."""
        monitor = running.monitor
        node = f"{NODE_PREFIX}{target}-{secrets.token_hex(3)}"
        async with contextlib.AsyncExitStack() as undo:
            created = None
            if plan.create:
                created = await asyncio.to_thread(_create, plan)
                undo.callback(created.remove)
            if running.confinement is not None:
                running.confinement.grant_writable(plan.path)
                undo.callback(running.confinement.release_path, plan.path)
            protocol, fmt = blockdev_nodes(self._disk_as(vm, running, target, plan), node)
            await monitor.blockdev_add(protocol)
            undo.push_async_callback(_quietly_del, monitor, [protocol["node-name"]])
            if plan.format == "qcow2":
                fmt["backing"] = plan.backing_node  # None: no backing (JSON null)
            await monitor.blockdev_add(fmt)
            undo.push_async_callback(_quietly_del, monitor, [node])
            arguments: dict[str, Any] = {"job-id": job_id(target), "device": chain[0][1],
                                         "target": node, "sync": plan.sync,
                                         "auto-dismiss": False}
            if speed:
                arguments["speed"] = speed
            await monitor.blockdev_mirror(arguments)
            kept = 1 if plan.sync == "top" else len(chain)
            job = CopyJob(target, device, plan, node, created,
                          tuple(f for f, _n, _d in chain[:kept]),
                          tuple(n for _f, n, _d in chain[:kept]), running)
            self._pending[(vm.uuid, target)] = Pending("mirror", plan.path, plan.format)
            self._copies[(vm.uuid, target)] = job
            undo.pop_all()
        return job

    def _disk_as(self, vm: Vm, running: Running, target: str, plan: CopyPlan) -> Disk:
        """The disk's spec with the copy's path and format (cache and aio kept)."""
        config: Domain = running_config(running,
                                        load_domain(self._store.get_domain(vm.uuid).spec))
        found = disk_on_target(config, target)
        assert found is not None
        return config.disks[found[0]].model_copy(
            update={"path": plan.path, "format": plan.format, "readonly": False})

    async def _wait_ready(self, monitor: Monitor, target: str, progress: Progress | None,
                          timeout: float | None) -> None:
        """Until the mirror is in sync (ready); its failure or ``timeout`` raises."""
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            job = await qmp_job(monitor, job_id(target))
            if job is None:
                raise QemuError(f"the copy of disk {target} disappeared")
            total = float(job.get("total-progress") or 0)
            if progress is not None and total:
                progress(float(job.get("current-progress") or 0), total)
            if job.get("status") == "ready":
                return
            if job.get("status") == "concluded":
                raise QemuError(f"the copy of disk {target} failed: "
                                f"{job.get('error', 'it ended')}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutExpired(f"the copy of disk {target} was not in sync within "
                                     f"{timeout:g}s: copy aborted",
                                     fix="raise --timeout, or the --bandwidth limit")
            await asyncio.sleep(POLL)

    async def _pivot_copy(self, vm: Vm, running: Running, job: CopyJob,
                          progress: Progress | None) -> None:
        """QEMU moves the device onto the copy; the definition follows; the old images
        are closed (their nodes deleted, the VM's grant on them taken back)."""
        monitor = running.monitor
        try:
            await monitor.job_complete(job_id(job.disk))
            await run_job(monitor, job_id(job.disk), progress=progress)
        except BaseException:
            # the copy is removed only while QEMU surely still runs on the original
            with contextlib.suppress(Exception):
                if await _top_node(monitor, job.device) != job.node:
                    await self._discard(vm, running, job, cancel=True)
            raise
        self._forget(vm, job.disk)
        move_disks(self._store, self._life, vm, {job.disk: (job.plan.path, job.plan.format)})
        await _quietly_del(monitor, [x for n in job.old_nodes if not n.startswith("#")
                                     for x in (n, f"file-{n}")])
        if running.confinement is not None:
            for file in job.old_files:
                running.confinement.release_path(file)

    async def _finish_copy(self, vm: Vm, running: Running, job: CopyJob) -> None:
        """End a ready mirror without pivoting: the copy is complete and closed."""
        monitor = running.monitor
        await monitor.block_job_cancel(job_id(job.disk))  # soft: a ready mirror completes
        try:
            await run_job(monitor, job_id(job.disk))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._discard(vm, running, job, cancel=False)
            raise
        self._forget(vm, job.disk)
        await self._close(running, job)

    async def _close(self, running: Running, job: CopyJob) -> None:
        await _quietly_del(running.monitor, [job.node, f"file-{job.node}"])
        if running.confinement is not None:
            running.confinement.release_path(job.plan.path)

    async def _discard(self, vm: Vm, running: Running, job: CopyJob, *, cancel: bool) -> None:
        """Abandon the copy: the job cancelled (waited for), its nodes closed, the
        destination removed if the daemon created it."""
        monitor = running.monitor
        try:
            if cancel:
                with contextlib.suppress(QemuError):
                    await monitor.block_job_cancel(job_id(job.disk), force=True)
            with contextlib.suppress(QemuError):
                if await qmp_job(monitor, job_id(job.disk)) is not None:
                    await run_job(monitor, job_id(job.disk), timeout=60)
        finally:
            self._forget(vm, job.disk)
            await self._close(running, job)
            if job.created is not None:
                await asyncio.to_thread(job.created.remove)

    def _copy_of(self, uuid: str, target: str) -> CopyJob | None:
        """The disk's copy job, if its job is still that copy (a copy whose QEMU ended
        is forgotten once another job takes the disk)."""
        pending = self._pending.get((uuid, target))
        if pending is None or pending.kind != "mirror":
            self._copies.pop((uuid, target), None)
            return None
        return self._copies.get((uuid, target))

    def _sweep(self, vm: Vm) -> None:
        """Copies whose QEMU has ended (the domain stopped or crashed mid-copy): their
        half-written destination is removed if the daemon created it."""
        for key, copy in list(self._copies.items()):
            if key[0] == vm.uuid and copy.qemu is not vm.running:
                self._forget(vm, key[1])
                if copy.created is not None:
                    copy.created.remove()

    def _forget(self, vm: Vm, target: str) -> None:
        self._pending.pop((vm.uuid, target), None)
        self._copies.pop((vm.uuid, target), None)

    async def _conclude(self, vm: Vm, monitor: Monitor, target: str,
                        job: dict[str, Any]) -> None:
        copy = self._copy_of(vm.uuid, target)
        if copy is None or vm.running is None:
            await super()._conclude(vm, monitor, target, job)
            return
        # a copy that ended by itself (an I/O error): nothing of it is kept
        await self._discard(vm, vm.running, copy, cancel=False)
        if job.get("error"):
            raise QemuError(f"the block job on disk {target} failed: {job['error']}")

    async def job(self, uuid: str, name: str, target: str, *, abort: bool = False,
                  pivot: bool = False, speed: int | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
        """blockjob; a copy's --pivot moves the disk onto it, --abort keeps a copy that
        is ready (virsh's "finish") and discards one that is not."""
        self._sweep(self._life.vm(uuid, name))
        copy = self._copy_of(uuid, target)
        if copy is None or not (abort or pivot):
            return await super().job(uuid, name, target, abort=abort, pivot=pivot,
                                     speed=speed, progress=progress)
        vm, running = self._running(uuid, name, "manage a block job")
        async with vm.lock:
            job = await qmp_job(running.monitor, job_id(target))
            if job is None or job.get("status") == "concluded":
                if job is not None:
                    await self._conclude(vm, running.monitor, target, dict(job))
                self._forget(vm, target)
                raise Conflict(f"no active block job on disk {target} of domain '{name}'")
            ready = job.get("status") == "ready"
            if pivot:
                if not ready:
                    raise Conflict(f"the copy of disk {target} cannot pivot yet "
                                   f"({job.get('status')})", fix="wait until blockjob "
                                   "--info says 100 % (the copy is in sync), or --abort")
                await self._pivot_copy(vm, running, copy, progress)
                status = "pivoted"
            elif ready:
                await self._finish_copy(vm, running, copy)
                status = "copied"
            else:
                await self._discard(vm, running, copy, cancel=True)
                status = "aborted"
        return {"name": name, "disk": target, "job": "mirror", "status": status,
                "dest": copy.plan.path}


def _create(plan: CopyPlan) -> CreatedImage:
    """The new destination image (refused if the path appeared meanwhile)."""
    if os.path.lexists(plan.path):
        raise Conflict(f"{plan.path} already exists; blockcopy never writes over a file "
                       "it did not create", field="dest", fix="choose a new file name")
    folder = os.path.dirname(plan.path)
    if not os.path.isdir(folder):
        raise InvalidSpec(f"the folder {folder} does not exist", field="dest",
                          fix="create it first, or copy into another folder")
    qemuimg.create(plan.path, plan.format, plan.size, backing=plan.backing_file,
                   backing_fmt=plan.backing_format)
    st = os.stat(plan.path)
    return CreatedImage(plan.path, st.st_dev, st.st_ino)
