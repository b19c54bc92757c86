"""QMP block-layer helpers for snapshots: finding a disk's nodes, running jobs.

A running disk's current top node is found through ``query-block`` by the
device id QEMU reports as ``qdev`` (never assumed from index-based node names:
hotplugged disks and earlier snapshots give nodes other names), and the nodes
under it through ``query-named-block-nodes`` by file name.  Jobs (block-commit,
snapshot-save ...) are created with ``auto-dismiss`` off and polled through
``query-jobs`` until they conclude, so their error is read before dismissal and
their progress can be shown.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtkit.errors import NotFound, QemuError, TimeoutExpired
from virtkit.qemu.monitor import Monitor

Progress = Callable[[float, float], None]
_PROTOCOL_DRIVERS = {"file", "host_device", "host_cdrom"}


@dataclass(frozen=True)
class TopNode:
    """A disk of a running VM as QEMU sees it now."""

    device_id: str
    node: str
    file: str
    driver: str


def _matches(qdev: str, device_id: str) -> bool:
    peripheral = f"/machine/peripheral/{device_id}"
    return qdev in (device_id, peripheral) or qdev.startswith(peripheral + "/")


async def top_nodes(monitor: Monitor, device_ids: list[str]) -> dict[str, TopNode]:
    """The top format node of each device (by device id), from ``query-block``."""
    found: dict[str, TopNode] = {}
    for block in await monitor.query_block():
        inserted = block.get("inserted")
        if not inserted:
            continue
        for device_id in device_ids:
            if _matches(str(block.get("qdev", "")), device_id):
                found[device_id] = TopNode(device_id, inserted["node-name"],
                                           os.path.abspath(inserted["file"]), inserted["drv"])  # noqa: ASYNC240 - QEMU's names are absolute: no I/O
    missing = [d for d in device_ids if d not in found]
    if missing:
        raise NotFound(f"QEMU has no disk device {', '.join(missing)}",
                       fix="the running disks differ from the spec; restart the domain")
    return found


async def node_by_file(monitor: Monitor) -> dict[str, str]:
    """File name -> format node name for every open image (backing images included)."""
    nodes: dict[str, str] = {}
    for node in await monitor.query_named_block_nodes():
        if node.get("drv") in _PROTOCOL_DRIVERS or not node.get("file"):
            continue
        nodes.setdefault(os.path.abspath(node["file"]), node["node-name"])  # noqa: ASYNC240 - as above
    return nodes


def chain_files(block_image: dict[str, Any]) -> list[str]:
    """The file names of an ``ImageInfo`` and its ``backing-image``s, top first."""
    files = []
    image: dict[str, Any] | None = block_image
    while image:
        files.append(os.path.abspath(image["filename"]))
        image = image.get("backing-image")
    return files


async def active_chain(monitor: Monitor, device_id: str) -> list[str]:
    """The files of a running disk's chain, top first."""
    for block in await monitor.query_block():
        inserted = block.get("inserted")
        if inserted and _matches(str(block.get("qdev", "")), device_id):
            return chain_files(inserted["image"])
    raise NotFound(f"QEMU has no disk device {device_id}")


async def run_job(monitor: Monitor, job_id: str, *, progress: Progress | None = None,
                  complete_when_ready: bool = False, until_ready: bool = False,
                  timeout: float = 3600.0) -> None:
    """Wait for job ``job_id`` to conclude (completing it when it is ready, for an active
    commit), report its progress, dismiss it, and raise its error if it failed.
    ``until_ready``: return once the job is ready (an active commit left to pivot)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        jobs = await monitor.query_jobs()
        job = next((j for j in jobs if j.get("id") == job_id), None)
        if job is None:
            raise QemuError(f"QEMU job {job_id} disappeared before it concluded")
        total = float(job.get("total-progress") or 0)
        if progress is not None and total:
            progress(float(job.get("current-progress") or 0), total)
        status = job.get("status")
        if status == "ready" and until_ready:
            return
        if status == "ready" and complete_when_ready:
            await monitor.job_complete(job_id)
            complete_when_ready = False
        elif status == "concluded":
            await monitor.job_dismiss(job_id)
            if job.get("error"):
                raise QemuError(f"QEMU job {job_id} failed: {job['error']}", job=job_id)
            return
        if time.monotonic() > deadline:
            await monitor.job_cancel(job_id)
            raise TimeoutExpired(f"QEMU job {job_id} did not finish within {timeout:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def commit(monitor: Monitor, job_id: str, top_device: str, *, top: str | None,
                 base: str, progress: Progress | None = None) -> None:
    """Merge node ``top`` (None: the active layer ``top_device``) into node ``base``."""
    arguments: dict[str, Any] = {"job-id": job_id, "device": top_device, "base-node": base,
                                 "auto-dismiss": False}
    if top is not None:
        arguments["top-node"] = top
    await monitor.block_commit(arguments)
    await run_job(monitor, job_id, progress=progress, complete_when_ready=top is None)


async def await_migration(monitor: Monitor, what: str, progress: Progress | None = None,
                          timeout: float = 3600.0) -> None:
    """Poll ``query-migrate`` until the stream (RAM to a file) completes, reporting the
    RAM transferred against the total (the total grows while the guest dirties pages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await monitor.query_migrate()
        status = info.get("status")
        ram = info.get("ram") or {}
        if progress is not None and ram.get("total"):
            progress(min(float(ram.get("transferred", 0)), float(ram["total"])),
                     float(ram["total"]))
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QemuError(f"{what} failed: {info.get('error-desc', status)}")
        await asyncio.sleep(0.02)
    raise TimeoutExpired(f"{what} took longer than {timeout:g}s")
