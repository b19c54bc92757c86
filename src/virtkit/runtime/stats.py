"""Live statistics of one running domain: CPU, memory, balloon, vCPUs, disks, NICs.

One QMP round per domain: the commands are sent together on the one monitor
connection (QMP answers them in order) and awaited together, while the /proc
and /sys counters are read.  CPU percentages need two samples: the collector
keeps the previous sample of every domain and reports the CPU used between
the two, 100 % being one host CPU fully busy (as ``top`` counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from virtkit.errors import VirtkitError
from virtkit.host import procstat
from virtkit.model.domain import Domain
from virtkit.qemu.argv import disk_slots
from virtkit.runtime.launcher import Running

BALLOON_PATH = "/machine/peripheral/balloon0"
BALLOON_POLL_SECONDS = 2
#: seconds each statistics query may take
QUERY_TIMEOUT = 5.0


@dataclass
class Sample:
    """A CPU sample: when (monotonic seconds) and the CPU seconds used until then."""

    at: float
    cpu_s: float
    vcpus: dict[int, float]


def cpu_percent(before: Sample | None, after: Sample) -> float | None:
    """CPU use between two samples, 100 = one host CPU busy all the time."""
    if before is None or after.at - before.at < 0.01 or after.cpu_s < before.cpu_s:
        return None
    return round(100.0 * (after.cpu_s - before.cpu_s) / (after.at - before.at), 1)


class StatsCollector:
    """Collects the stats of running domains and remembers the previous CPU samples."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, int], Sample] = {}
        self._balloon_polling: set[tuple[str, int]] = set()

    def forget_missing(self, live: set[tuple[str, int]]) -> None:
        """Drop samples of processes that are gone (a restart starts a fresh series)."""
        for key in list(self._previous):
            if key not in live:
                del self._previous[key]
        self._balloon_polling &= live

    async def collect(self, domain: Domain, running: Running) -> dict[str, Any]:
        """Everything domstats reports about one running domain (its running
        configuration, hot-plugged devices included, when the runtime knows it)."""
        if running.live is not None:
            domain = running.live
        pid = running.process.pid
        key = (domain.uuid, pid)
        replies = await self._qmp_round(domain, running, key)
        now = time.monotonic()
        process = procstat.process_stat(pid)
        threads = procstat.thread_stats(pid)
        vcpu_threads = {int(cpu["cpu-index"]): int(cpu["thread-id"])
                        for cpu in replies.get("cpus") or []}
        sample = Sample(now, process.cpu_s if process else 0.0,
                        {index: threads[tid].cpu_s for index, tid in vcpu_threads.items()
                         if tid in threads})
        previous = self._previous.get(key)
        self._previous[key] = sample
        return {
            "cpu": {"time": round(sample.cpu_s, 3),
                    "user": round(process.user_s, 3) if process else None,
                    "system": round(process.system_s, 3) if process else None,
                    "percent": cpu_percent(previous, sample),
                    "threads": process.threads if process else None},
            "balloon": self._balloon(domain, replies, process),
            "vcpu": self._vcpus(domain, vcpu_threads, threads, previous, sample),
            "block": block_stats(domain, replies.get("blockstats") or [],
                                 running.disk_ids, replies.get("block") or []),
            "net": net_stats(domain, running),
        }

    async def _qmp_round(self, domain: Domain, running: Running,
                         key: tuple[str, int]) -> dict[str, Any]:
        """Send every query at once and gather the answers (failed ones are None)."""
        monitor = running.monitor
        queries: dict[str, Awaitable[Any]] = {
            "cpus": monitor.query_cpus_fast(timeout=QUERY_TIMEOUT),
            "blockstats": monitor.query_blockstats(timeout=QUERY_TIMEOUT),
            "block": monitor.query_block(timeout=QUERY_TIMEOUT),
        }
        if domain.balloon:
            if key not in self._balloon_polling:
                self._balloon_polling.add(key)
                queries["polling"] = monitor.qom_set(
                    BALLOON_PATH, "guest-stats-polling-interval", BALLOON_POLL_SECONDS,
                    timeout=QUERY_TIMEOUT)
            queries["balloon-info"] = monitor.query_balloon(timeout=QUERY_TIMEOUT)
            queries["guest-stats"] = monitor.qom_get(BALLOON_PATH, "guest-stats",
                                                     timeout=QUERY_TIMEOUT)
        results = await asyncio.gather(*queries.values(), return_exceptions=True)
        replies: dict[str, Any] = {}
        for name, result in zip(queries, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, VirtkitError):
                    raise result
                replies[name] = None
            else:
                replies[name] = result
        return replies

    @staticmethod
    def _balloon(domain: Domain, replies: dict[str, Any],
                 process: procstat.TaskStat | None) -> dict[str, Any]:
        """Memory in KiB as virsh reports it: current (balloon actual), maximum, rss,
        and the guest's own figures when the balloon driver reports them."""
        maximum = (domain.memory.max or domain.memory.current) * 1024
        result: dict[str, Any] = {"current": domain.memory.current * 1024, "maximum": maximum,
                                  "rss": process.rss_kib if process else None}
        balloon = replies.get("balloon-info")
        if balloon:
            result["current"] = int(balloon["actual"]) // 1024
        stats = (replies.get("guest-stats") or {}).get("stats") or {}
        names = {"stat-free-memory": "unused", "stat-available-memory": "available",
                 "stat-total-memory": "usable_total", "stat-disk-caches": "disk_caches",
                 "stat-swap-in": "swap_in", "stat-swap-out": "swap_out",
                 "stat-major-faults": "major_fault", "stat-minor-faults": "minor_fault"}
        for qemu_name, name in names.items():
            value = stats.get(qemu_name)
            if isinstance(value, int) and value >= 0:
                large = name in ("unused", "available", "usable_total", "disk_caches")
                result[name] = value // 1024 if large else value
        if "available" in result and "unused" in result:
            result["usage"] = result["available"] - result["unused"]
        updated = (replies.get("guest-stats") or {}).get("last-update")
        if isinstance(updated, int) and updated > 0:
            result["last_update"] = updated
        return result

    @staticmethod
    def _vcpus(domain: Domain, vcpu_threads: dict[int, int],
               threads: dict[int, procstat.TaskStat], previous: Sample | None,
               sample: Sample) -> dict[str, Any]:
        items = []
        for index, tid in sorted(vcpu_threads.items()):
            stat = threads.get(tid)
            before = previous.vcpus.get(index) if previous else None
            percent = None
            if before is not None and previous is not None and index in sample.vcpus:
                percent = cpu_percent(Sample(previous.at, before, {}),
                                      Sample(sample.at, sample.vcpus[index], {}))
            items.append({"id": index, "thread_id": tid,
                          "state": stat.state if stat else None,
                          "time": round(stat.cpu_s, 3) if stat else None,
                          "host_cpu": stat.processor if stat else None,
                          "affinity": procstat.affinity(tid), "percent": percent})
        return {"current": len(vcpu_threads) or domain.vcpus.current,
                "maximum": domain.vcpus.maximum, "vcpus": items}


def _sizes(blocks: list[dict[str, Any]], device_id: str) -> dict[str, int]:
    """virsh domstats' block.N.capacity/allocation/physical from query-block's image
    (guest size, host bytes in use, file size); empty when QEMU does not say."""
    for block in blocks:
        qdev = str(block.get("qdev", ""))
        image = (block.get("inserted") or {}).get("image") or {}
        if image and (qdev == device_id or qdev.split("/")[-2:-1] == [device_id]
                      or qdev.endswith("/" + device_id)):
            sizes = {"capacity": image.get("virtual-size"),
                     "allocation": image.get("actual-size")}
            filename = image.get("filename")
            if isinstance(filename, str) and filename.startswith("/"):
                with contextlib.suppress(OSError):
                    sizes["physical"] = os.stat(filename).st_size
            return {key: int(value) for key, value in sizes.items()
                    if isinstance(value, int)}
    return {}


def block_stats(domain: Domain, blockstats: list[dict[str, Any]],
                ids: list[int] | None = None, blocks: list[dict[str, Any]] | None = None
                ) -> list[dict[str, Any]]:
    """query-blockstats per disk, with average latencies in microseconds, and sizes from
    query-block (``blocks``).  ``ids`` are the QEMU numbers of the disks
    (``disk{n}``/``drive-disk{n}``; hot-added disks take fresh ones); by default their
    positions."""
    by_node = {entry.get("node-name"): entry for entry in blockstats}
    by_qdev = {str(entry.get("qdev", "")): entry for entry in blockstats}
    disks = []
    slots = disk_slots(domain)
    numbers = ids if ids is not None and len(ids) == len(slots) else \
        [slot.index for slot in slots]
    for slot, disk, number in zip(slots, domain.disks, numbers, strict=True):
        device_id = f"disk{number}"
        entry = by_node.get(f"drive-disk{number}") or next(
            (value for qdev, value in by_qdev.items()
             if qdev.split("/")[-2:-1] == [device_id] or qdev.endswith("/" + device_id)),
            None)
        if entry is None:
            continue
        stats = entry.get("stats", {})
        item: dict[str, Any] = {"name": slot.target, "path": disk.path}
        for kind in ("rd", "wr", "flush"):
            ops = int(stats.get(f"{kind}_operations", 0))
            total_ns = int(stats.get(f"{kind}_total_time_ns", 0))
            short = "fl" if kind == "flush" else kind
            item[f"{short}_reqs"] = ops
            item[f"{short}_times"] = total_ns
            item[f"{short}_latency_us"] = round(total_ns / ops / 1000, 1) if ops else None
            if kind != "flush":
                item[f"{short}_bytes"] = int(stats.get(f"{kind}_bytes", 0))
        item.update(_sizes(blocks or [], device_id))
        disks.append(item)
    return disks


def net_stats(domain: Domain, running: Running) -> list[dict[str, Any]]:
    """Counters of each NIC's tap (guest's view); user-mode NICs have no tap to read."""
    nics = []
    numbers = running.nic_ids if len(running.nic_ids) == len(domain.nics) else \
        list(range(len(domain.nics)))
    for number, nic in zip(numbers, domain.nics, strict=True):
        tap = running.taps.get(number)
        item: dict[str, Any] = {"name": tap or f"nic{number}", "mac": nic.mac,
                                "type": nic.type}
        counters = procstat.tap_counters(tap) if tap else None
        if counters is not None:
            item.update(counters)
        nics.append(item)
    return nics


async def vcpu_threads(running: Running) -> dict[int, int]:
    """vCPU index -> host thread id, from QMP query-cpus-fast."""
    with contextlib.suppress(VirtkitError):
        reply = await running.monitor.query_cpus_fast(timeout=5.0)
        return {int(cpu["cpu-index"]): int(cpu["thread-id"]) for cpu in reply}
    return {}
