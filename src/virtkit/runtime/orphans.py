"""QEMU processes of this state root that no runtime record names.

A daemon killed while ``subprocess.Popen`` was starting QEMU (after the fork, before
the pid was written to the store) leaves a QEMU nobody knows: paused in
``prelaunch`` (``-S``) forever, holding its disk locks and taps.  Such a process is
found by two marks the launcher always gives it: ``-uuid UUID`` of one of our
domains on its command line, and its stdout open on this root's
``log/domains/UUID/qemu.log``.  A QEMU of another daemon (another state root, a
migration peer on this host) has the other root's log, so it is never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from virtkit.qemu.process import proc_cmdline, proc_start_time


@dataclass(frozen=True)
class Orphan:
    pid: int
    start_time: int
    uuid: str


def find_orphans(logs: Path, uuids: set[str], known: set[int]) -> list[Orphan]:
    """QEMUs of our domains (``uuids``) whose stdout is our log, not in ``known``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        argv = proc_cmdline(int(entry))
        if not argv or "qemu-system" not in os.path.basename(argv[0]):
            continue
        uuid = next((b for a, b in itertools.pairwise(argv) if a == "-uuid"), None)
        if uuid not in uuids:
            continue
        try:
            stdout = os.readlink(f"/proc/{entry}/fd/1")
        except OSError:
            continue
        if stdout != str(logs / "domains" / str(uuid) / "qemu.log"):
            continue
        start = proc_start_time(int(entry))
        if start is not None:
            found.append(Orphan(int(entry), start, str(uuid)))
    return found


def kill_orphan(orphan: Orphan) -> bool:
    """SIGKILL ``orphan`` through a pidfd opened before re-checking its identity (so a
    recycled pid is never signalled); True if it was killed."""
    try:
        pidfd = os.pidfd_open(orphan.pid)
    except OSError:
        return False
    try:
        if proc_start_time(orphan.pid) != orphan.start_time:
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        os.close(pidfd)


__all__ = ["Orphan", "find_orphans", "kill_orphan"]
