"""Per-process and per-thread facts from /proc, and NIC counters from /sys/class/net.

``/proc/<pid>/stat`` fields (man 5 proc, 1-based): 3 state, 14 utime, 15 stime,
20 num_threads, 22 starttime, 24 rss (pages), 39 processor (the CPU it last ran
on).  Times are in clock ticks (``SC_CLK_TCK``).  The command name (field 2) may
contain spaces and parentheses, so the line is split after its last ``)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtkit.model.cpulist import format_cpulist

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TaskStat:
    """The parts of one stat line virtkit uses."""

    comm: str
    state: str
    user_s: float
    system_s: float
    threads: int
    rss_kib: int
    processor: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def parse_stat(line: str) -> TaskStat:
    """One ``/proc/.../stat`` line -> TaskStat (ValueError when malformed)."""
    open_paren, close_paren = line.index("("), line.rindex(")")
    comm = line[open_paren + 1:close_paren]
    rest = line[close_paren + 2:].split()
    # rest[0] is field 3 (state): field N is rest[N - 3]
    return TaskStat(comm=comm, state=rest[0], user_s=int(rest[11]) / TICK,
                    system_s=int(rest[12]) / TICK, threads=int(rest[17]),
                    rss_kib=int(rest[21]) * PAGE // 1024, processor=int(rest[36]))


def process_stat(pid: int, proc: Path = PROC) -> TaskStat | None:
    """The whole process (all threads summed by the kernel); None when it is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot (stat field 22): with the PID
    it names one process for good, as a PID alone does not once it is reused."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rpartition(")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    """The process's argv ([] when it is gone)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def terminate(pid: int, alive: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM ``pid`` (a child or not) and wait until ``alive()`` says it is gone, reaping
    it if it is our child; True when it ended within ``timeout``.  ``alive`` is the
    caller's identity check (PID + start time), so a reused PID is never waited on."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return not alive()


def thread_stats(pid: int, proc: Path = PROC) -> dict[int, TaskStat]:
    """Every thread of ``pid``: {tid: TaskStat}."""
    result = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            result[int(task.name)] = parse_stat((task / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return result


def thread_stat(pid: int, tid: int, proc: Path = PROC) -> TaskStat | None:
    try:
        return parse_stat((proc / str(pid) / "task" / str(tid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def affinity(tid: int) -> str | None:
    """The CPUs thread ``tid`` may run on, as a list ('0-1'); None when it is gone."""
    try:
        return format_cpulist(os.sched_getaffinity(tid))
    except OSError:
        return None


NIC_COUNTERS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def tap_counters(tap: str, sys_root: Path = Path("/sys")) -> dict[str, int] | None:
    """A tap's counters seen from the guest (libvirt's convention): what the tap
    transmits the guest receives, so rx and tx are swapped.  None when it is gone."""
    folder = sys_root / "class" / "net" / tap / "statistics"
    values: dict[str, int] = {}
    try:
        for name in NIC_COUNTERS:
            values[name] = int((folder / name).read_text())
    except (OSError, ValueError):
        return None
    swap = {"rx": "tx", "tx": "rx"}
    return {f"{swap[name[:2]]}{name[2:]}": value for name, value in values.items()}
