"""Copying local disks during a live migration (``--copy-storage-all``; docs/migration.md).

The destination creates an empty image per copied disk (same format and virtual
size; the same path as on the source unless the request maps it), starts its QEMU
with ``-incoming defer`` as usual and exports each disk's format node, writable,
from an NBD server on the migration address.  The source attaches an NBD client
node per disk and runs ``blockdev-mirror`` (``sync=full``) into it; once every
mirror is READY the RAM migration starts, and at ``pre-switchover`` (guest stopped)
``block-job-cancel`` completes each READY mirror with the copy identical to the
source.  Any failure cancels the mirrors and removes the client nodes here; the
destination removes its QEMU and the images *it* created (never a file that was
there before: creation refuses an existing path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, QemuError, TimeoutExpired, VirtkitError
from virtkit.qemu.monitor import Monitor
from virtkit.qemu.qmp import JobInfo
from virtkit.runtime.blockjobs import top_nodes
from virtkit.storage import qemuimg

#: job ids and node names of our mirrors: abandon_outgoing finds leftovers by them
JOB_PREFIX = "vkmig-"
NBD_PREFIX = "vkmig-nbd-"
COPY_FORMATS = ("qcow2", "raw")
POLL = 0.05
CONCLUDE_POLL = 0.005


@dataclass(frozen=True)
class CreatedImage:
    """An image the destination made for a copy: removed only while it is still that file."""

    path: str
    device: int
    inode: int

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == (self.device, self.inode):
                os.unlink(self.path)


# -- the destination end ---------------------------------------------------------

def create_images(disks: list[dict[str, Any]],
                  on_created: Callable[[CreatedImage], None] | None = None
                  ) -> list[CreatedImage]:
    """Create one empty image per copied disk (``{"path", "format", "size"}``); refuse a
    path that exists (it is never overwritten) or whose folder is missing.  On error
    the images made so far are removed again.  ``on_created`` hears of each image as
    soon as it exists (the destination journals it for a restart)."""
    created: list[CreatedImage] = []
    try:
        for index, disk in enumerate(disks):
            path, fmt, size = disk.get("path"), disk.get("format"), disk.get("size")
            field = f"copy_storage.disks[{index}]"
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidSpec(f"{field}.path must be an absolute path", field=field)
            if fmt not in COPY_FORMATS:
                raise InvalidSpec(f"{field}: cannot copy a {fmt} disk ({path})", field=field,
                                  fix="convert it to qcow2 or raw, or use shared storage")
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise InvalidSpec(f"{field}.size must be a positive byte count", field=field)
            if os.path.lexists(path):
                raise Conflict(f"{path} already exists on the destination; a copied disk "
                               "is never written over an existing file",
                               fix="remove it there, map the disk to another path "
                                   "(--disk-path SRC=DST), or migrate without "
                                   "--copy-storage-all if the storage is shared")
            if not os.path.isdir(os.path.dirname(path)):
                raise InvalidSpec(f"the folder of {path} does not exist on the destination",
                                  field=field, fix="create it there, or map the disk to "
                                                   "another path (--disk-path SRC=DST)")
            backing = disk.get("backing")
            if backing is not None:  # --copy-storage-inc: only the top image is copied
                if fmt != "qcow2" or not isinstance(backing, dict) \
                        or not isinstance(backing.get("path"), str):
                    raise InvalidSpec(f"{field}.backing: only a qcow2 top image with a "
                                      "backing path can be copied incrementally",
                                      field=field)
                if not os.path.isfile(backing["path"]):
                    raise InvalidSpec(
                        f"{path}: its backing image {backing['path']} does not exist on "
                        "the destination", field=field,
                        fix="copy the backing chain there first, or use "
                            "--copy-storage-all (copies the whole disk)")
                qemuimg.create(path, fmt, size, backing=backing["path"],
                               backing_fmt=str(backing.get("format") or "qcow2"))
            else:
                qemuimg.create(path, fmt, size)
            stat = os.stat(path)
            created.append(CreatedImage(path, stat.st_dev, stat.st_ino))
            if on_created is not None:
                on_created(created[-1])
    except BaseException:
        remove_images(created)
        raise
    return created


def remove_images(images: list[CreatedImage]) -> None:
    for image in images:
        image.remove()


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


async def export_disks(monitor: Monitor, address: str, device_ids: list[str]
                       ) -> dict[str, Any]:
    """Start an NBD server on ``address`` and export each disk's top node writable,
    named by its device id; the answer tells the source where to connect."""
    for attempt in range(5):  # the port is picked here, so another process may take it
        port = _free_port(address)
        try:
            await monitor.nbd_server_start({
                "type": "inet", "data": {"host": address, "port": str(port)}})
            break
        except QemuError:
            if attempt == 4:
                raise
    nodes = await top_nodes(monitor, device_ids)
    for device_id in device_ids:
        await monitor.block_export_add({
            "type": "nbd", "id": f"{JOB_PREFIX}{device_id}",
            "node-name": nodes[device_id].node, "name": device_id, "writable": True})
    return {"host": address, "port": port, "exports": device_ids}


async def stop_exports(monitor: Monitor, device_ids: list[str]) -> None:
    """Remove the exports and stop the NBD server (before the guest runs here)."""
    for device_id in device_ids:
        with contextlib.suppress(VirtkitError):
            await monitor.block_export_del(f"{JOB_PREFIX}{device_id}", mode="hard")
    await monitor.nbd_server_stop()


# -- the source end --------------------------------------------------------------

async def plan(monitor: Monitor, device_ids: list[str], paths: list[str], *,
               incremental: bool = False) -> list[dict[str, Any]]:
    """What the destination must create for each copied disk: its path there, the
    format and virtual size of the disk's top image here, and with ``incremental``
    (--copy-storage-inc) the backing image the copy of the top image goes on."""
    nodes = await top_nodes(monitor, device_ids)
    images: dict[str, dict[str, Any]] = {}
    for block in await monitor.query_block():
        inserted = block.get("inserted") or {}
        image = inserted.get("image") or {}
        if inserted.get("node-name") and image.get("virtual-size"):
            images[inserted["node-name"]] = image
    disks = []
    for device_id, path in zip(device_ids, paths, strict=True):
        node = nodes[device_id]
        if node.node not in images:
            raise QemuError(f"QEMU did not report the size of disk {device_id}")
        image = images[node.node]
        disk: dict[str, Any] = {"device": device_id, "path": path, "format": node.driver,
                                "size": int(image["virtual-size"])}
        base = image.get("backing-image")
        if incremental and base:
            disk["backing"] = {"path": os.path.abspath(base["filename"]),  # noqa: ASYNC240 - absolute: no I/O
                               "format": base.get("format")}
        disks.append(disk)
    return disks


class Mirrors:
    """The source's mirror jobs into the destination's NBD exports."""

    def __init__(self, monitor: Monitor, device_ids: list[str], speed: int = 0,
                 top_only: frozenset[str] = frozenset()) -> None:
        self._monitor = monitor
        self._devices = device_ids
        self._top_only = top_only  # devices whose backing chain the destination has
        self._speed = speed  # bytes/s of each mirror; 0: as fast as possible
        self._nodes: list[str] = []
        self._jobs: list[str] = []

    async def start(self, nbd: dict[str, Any]) -> None:
        tops = await top_nodes(self._monitor, self._devices)
        for device_id in self._devices:
            node = f"{NBD_PREFIX}{device_id}"
            await self._monitor.blockdev_add({
                "driver": "nbd", "node-name": node, "export": device_id,
                "server": {"type": "inet", "host": str(nbd["host"]),
                           "port": str(nbd["port"])}})
            self._nodes.append(node)
            job = f"{JOB_PREFIX}{device_id}"
            await self._monitor.blockdev_mirror({
                "job-id": job, "device": tops[device_id].node, "target": node,
                "sync": "top" if device_id in self._top_only else "full",
                "auto-dismiss": False, "speed": self._speed})
            self._jobs.append(job)

    async def _ours(self) -> dict[str, JobInfo]:
        return {str(j["id"]): j for j in await self._monitor.query_jobs()
                if j.get("id") in self._jobs}

    async def wait_ready(self, deadline: float, check: Callable[[], None] | None) -> None:
        """Until every mirror is READY (in sync, following the guest's writes);
        ``check`` raises when the migration must stop (domjobabort, destination lost)."""
        while True:
            jobs = await self._ours()
            for job_id in self._jobs:
                job = jobs.get(job_id)
                if job is None or job.get("status") in ("concluded", "aborting", "null"):
                    error = job.get("error", "it ended") if job else "it ended"
                    raise QemuError(f"copying disk {job_id.removeprefix(JOB_PREFIX)} "
                                    f"failed: {error}")
            if all(jobs[j].get("status") == "ready" for j in self._jobs):
                return
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise TimeoutExpired("copying the disks: not done in time",
                                     fix="raise --timeout, or --bandwidth")
            await asyncio.sleep(POLL)

    async def progress(self) -> tuple[int, int]:
        """Bytes copied and to copy, over all mirrors (the totals grow with guest writes)."""
        done = total = 0
        for job in (await self._ours()).values():
            done += int(job.get("current-progress") or 0)
            total += int(job.get("total-progress") or 0)
        return done, total

    async def complete(self) -> None:
        """At switch-over (guest stopped): cancelling a READY mirror leaves the copy
        identical to the source (QEMU's documented way to end a mirror without
        pivoting); an error here fails the migration."""
        for job in self._jobs:
            await self._monitor.block_job_cancel(job)
        await self._conclude(strict=True)

    async def _conclude(self, *, strict: bool, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        while self._jobs:
            jobs = await self._ours()
            for job_id in list(self._jobs):
                job = jobs.get(job_id)
                if job is None or job.get("status") == "concluded":
                    if job is not None:
                        with contextlib.suppress(VirtkitError):
                            await self._monitor.job_dismiss(job_id)
                        if job.get("error"):
                            failed.append(f"{job_id}: {job['error']}")
                    self._jobs.remove(job_id)
            if self._jobs and time.monotonic() > deadline:
                raise TimeoutExpired(f"the disk mirrors {', '.join(self._jobs)} did not end")
            if self._jobs:  # at switch-over the guest is stopped: every wait is downtime
                await asyncio.sleep(CONCLUDE_POLL)
        await self._remove_nodes()
        if failed and strict:
            raise QemuError("completing the disk copies failed: " + "; ".join(failed))

    async def _remove_nodes(self) -> None:
        for node in list(self._nodes):
            with contextlib.suppress(VirtkitError):
                await self._monitor.blockdev_del(node)
            self._nodes.remove(node)

    async def cancel(self) -> None:
        """Abandon the copies (failure path): the source disks stay in use, untouched."""
        for job in self._jobs:
            with contextlib.suppress(VirtkitError):
                await self._monitor.block_job_cancel(job, force=True)
        with contextlib.suppress(VirtkitError, TimeoutError):
            await self._conclude(strict=False)
        await self._remove_nodes()


async def cancel_leftovers(monitor: Monitor) -> None:
    """After a daemon restart: cancel mirrors and client nodes an earlier daemon left."""
    jobs = [str(j["id"]) for j in await monitor.query_jobs()
            if str(j.get("id", "")).startswith(JOB_PREFIX)]
    nodes = [str(n["node-name"]) for n in
             await monitor.query_named_block_nodes()
             if str(n.get("node-name", "")).startswith(NBD_PREFIX)]
    mirrors = Mirrors(monitor, [])
    mirrors._jobs, mirrors._nodes = jobs, nodes
    await mirrors.cancel()
