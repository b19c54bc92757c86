"""The fence guard: a small process per host that kills the HA QEMUs when the daemon
stops vouching for them in time.

Why a separate process: the daemon fences its HA VMs itself when it cannot renew its
host lease (cluster/fence.py), but a daemon that hangs (SIGSTOP, a deadlock, swapped
out) or dies cannot.  The other hosts restart an HA VM once this host's lease has
expired, so by then its QEMU must be gone whatever state the daemon is in.  Proxmox's
watchdog-mux plays this part; the hardware or softdog watchdog covers a hung kernel
(docs/cluster.md).

The protocol is one file the daemon rewrites (atomically) after every lease renewal,
and *before it spawns the QEMU of an HA VM*, ``arm.json``::

    {"deadline": <CLOCK_MONOTONIC seconds>, "uuids": [<HA VM UUID>, ...],
     "targets": [{"uuid", "pid", "start"}, ...]}

CLOCK_MONOTONIC is one clock for the whole machine, so the deadline means the same in
both processes and across a daemon restart.  ``uuids`` arms by identity: every HA VM
defined here, and any HA VM about to be spawned (written before the spawn).  Once the
clock passes the deadline the guard SIGKILLs every QEMU of an armed UUID: the ``targets``
it was told (PID, start time and ``-uuid`` checked: a reused PID is never hit) and every
other process it finds in /proc whose argv is a QEMU's with ``-uuid`` of an armed UUID
(:func:`qemus_here`).  So a QEMU spawned a moment before the daemon hung is killed too,
although no PID of it was ever written down.

Why no acknowledgement from the guard: the guard decides from the file as it is *at the
moment of fencing*.  Each fencing pass first lists the QEMUs in /proc, then reads the
file, then kills the listed QEMUs that file arms.  The daemon replaces the file (rename:
at once visible to every process; fsync only matters for a power loss, which ends the
QEMUs as well) before it forks a QEMU, so a QEMU in the list has its UUID in the file
read after the list.  A QEMU spawned after the list is caught by the next pass: the guard
repeats the pass every ``POLL`` while the deadline is past (every ``SLOW_POLL`` once it
is long past), it does not fence once and stop.

Only processes in the guard's own network namespace are looked at (``/proc/PID/ns/net``
compared with the guard's own).  On a real host that is every QEMU of the host (virtkit
starts QEMU in the daemon's namespace).  Test hosts are network namespaces on one
machine that share one /proc: without the restriction a fenced host's guard would kill
the copy another host restarted after the claim.

The guard outlives daemon restarts (as QEMUs do); the daemon adopts it by ``guard.pid``
(PID + start time) and starts a new one when it is gone.

Run as ``python -m virtkit.cluster.guard FOLDER``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from virtkit.host.procstat import PROC, cmdline, start_ticks, terminate

ARM_FILE = "arm.json"
PID_FILE = "guard.pid"
LOG_FILE = "guard.log"
FENCED_LOG = "fenced.log"
#: how often the guard reads the arm file: the slack it adds to a fence
POLL = 0.1
#: once the deadline is this long past, the fencing passes slow down to ``SLOW_POLL``
#: (by then every QEMU spawned before the deadline has long exec'd and been killed)
FAST_SWEEPS = 30.0
SLOW_POLL = 1.0
MODULE = "virtkit.cluster.guard"


@dataclass(frozen=True)
class FenceTarget:
    """One HA QEMU: its domain's UUID, PID and start time (clock ticks since boot)."""

    uuid: str
    pid: int
    start: int


@dataclass(frozen=True)
class Arming:
    """What the guard enforces: once CLOCK_MONOTONIC passes ``deadline``, kill every
    QEMU of an armed UUID (``uuids`` and the UUIDs of ``targets``)."""

    deadline: float
    targets: tuple[FenceTarget, ...]
    uuids: frozenset[str] = frozenset()

    @property
    def armed(self) -> frozenset[str]:
        return self.uuids | {t.uuid for t in self.targets}

    def to_json(self) -> bytes:
        return json.dumps({"deadline": self.deadline, "uuids": sorted(self.uuids),
                           "targets": [asdict(t) for t in self.targets]}).encode()

    @classmethod
    def parse(cls, data: bytes) -> Arming:
        """The arm file's content (ValueError/KeyError/TypeError when malformed)."""
        value = json.loads(data)
        targets = tuple(FenceTarget(str(t["uuid"]), int(t["pid"]), int(t["start"]))
                        for t in value["targets"])
        uuids = value.get("uuids", [])  # absent in the file of a daemon before it
        if not isinstance(uuids, list):
            raise TypeError("uuids is not a list")
        return cls(float(value["deadline"]), targets, frozenset(str(u) for u in uuids))


def qemu_uuid(argv: list[str]) -> str | None:
    """The ``-uuid`` of a QEMU command line (also while the confining wrapper that execs
    it still runs: any word naming ``qemu-system-*``); None for anything else."""
    if not any(os.path.basename(word).startswith("qemu-system") for word in argv):
        return None
    return next((b for a, b in itertools.pairwise(argv) if a == "-uuid"), None)


def net_namespace(pid: int | str, proc: Path = PROC) -> str | None:
    """The network namespace of a process (``net:[inode]``), None when unreadable."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "net")
    except OSError:
        return None


def qemus_here(proc: Path = PROC, netns: str | None = None) -> list[FenceTarget]:
    """Every QEMU in /proc that is in our network namespace (``netns``: ours by
    default; see the module's doc for why), with the UUID its argv names.  A process
    whose namespace cannot be read is not ours to judge (another user's without our
    rights: we could not kill it either)."""
    own = netns if netns is not None else net_namespace("self", proc)
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(proc):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if own is not None and net_namespace(pid, proc) != own:
                continue
            uuid = qemu_uuid(cmdline(pid, proc))
            start = start_ticks(pid, proc) if uuid is not None else None
            if uuid is not None and start is not None:
                found.append(FenceTarget(uuid, pid, start))
    return found


def is_target_alive(target: FenceTarget, proc: Path = PROC) -> bool:
    """True only if ``target.pid`` is still the QEMU started for ``target.uuid``."""
    if start_ticks(target.pid, proc) != target.start:
        return False
    return qemu_uuid(cmdline(target.pid, proc)) == target.uuid


def kill_targets(targets: tuple[FenceTarget, ...] | list[FenceTarget], *,
                 proc: Path = PROC,
                 kill: Callable[[int, int], None] = os.kill) -> list[FenceTarget]:
    """SIGKILL every target that is still its QEMU; the ones killed."""
    killed = []
    for target in targets:
        if is_target_alive(target, proc):
            with contextlib.suppress(ProcessLookupError):
                kill(target.pid, signal.SIGKILL)
                killed.append(target)
    return killed


def read_arming(folder: Path) -> Arming | None:
    try:
        return Arming.parse((folder / ARM_FILE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_arming(folder: Path, arming: Arming) -> None:
    """Atomic rewrite (a reader sees the old or the new file, never half of one)."""
    temporary = folder / (ARM_FILE + ".tmp")
    temporary.write_bytes(arming.to_json())
    os.replace(temporary, folder / ARM_FILE)


def _log(folder: Path, record: dict[str, Any]) -> None:
    with open(folder / FENCED_LOG, "a") as log:
        log.write(json.dumps(record) + "\n")


def due(arming: Arming | None, now: float) -> bool:
    """True when ``arming`` is past its deadline with something armed: fence now."""
    return arming is not None and bool(arming.armed) and now >= arming.deadline


def to_fence(arming: Arming, found: list[FenceTarget]) -> list[FenceTarget]:
    """The QEMUs to kill: the targets told and the QEMUs ``found`` in /proc, those of
    an armed UUID, each once."""
    armed = arming.armed
    return list(dict.fromkeys([*arming.targets, *(t for t in found if t.uuid in armed)]))


def sweep(read: Callable[[], Arming | None], now: Callable[[], float], *,
          proc: Path = PROC, netns: str | None = None,
          kill: Callable[[int, int], None] = os.kill
          ) -> tuple[Arming | None, list[FenceTarget]]:
    """One fencing pass, in the order that makes the file's state at this moment
    decide: list the QEMUs here, *then* read the arming, then kill what it arms when its
    deadline has passed.  The arming read and the QEMUs killed."""
    found = qemus_here(proc, netns)
    arming = read()
    if arming is None or not due(arming, now()):
        return arming, []
    return arming, kill_targets(to_fence(arming, found), proc=proc, kill=kill)


def run(folder: Path, *, poll: float = POLL) -> None:
    """The guard's loop: fence while the deadline is past; until SIGTERM or the folder
    goes (the daemon's state folder removed: nothing is left to guard)."""
    last_good: list[Arming | None] = [read_arming(folder)]
    own = net_namespace("self")
    swept = 0.0
    logged: set[FenceTarget] = set()  # a killed QEMU may take a pass or two to go

    def read() -> Arming | None:
        last_good[0] = read_arming(folder) or last_good[0]
        return last_good[0]

    while folder.is_dir():
        now = time.monotonic()
        arming = read()
        slow = arming is not None and now - arming.deadline > FAST_SWEEPS
        if due(arming, now) and (not slow or now - swept >= SLOW_POLL):
            swept = now
            arming, killed = sweep(read, time.monotonic, netns=own)
            killed = [t for t in killed if t not in logged]
            logged.update(killed)
            if killed and arming is not None:
                late = time.monotonic() - arming.deadline
                print(f"guard: the daemon did not renew in time ({late:.2f} s past the "
                      f"deadline): killed {', '.join(t.uuid for t in killed)}", flush=True)
                _log(folder, {"time": time.time(), "late_s": round(late, 3),
                              "killed": [asdict(t) for t in killed]})
        time.sleep(poll)


class GuardLink:
    """The daemon's side: start or adopt the guard, and arm it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._child: subprocess.Popen[bytes] | None = None
        self._written: bytes | None = None

    def pid(self) -> int | None:
        """The running guard's PID (identity-checked), or None."""
        try:
            pid_text, start_text = (self.folder / PID_FILE).read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return None
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # reaped: no zombie left to look alive
        argv = cmdline(pid)
        if start_ticks(pid) != start or MODULE not in argv or str(self.folder) not in argv:
            return None
        return pid

    def ensure(self) -> int:
        """Start the guard unless ours runs already; its PID."""
        running = self.pid()
        if running is not None:
            return running
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / LOG_FILE, "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", MODULE, str(self.folder)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True, close_fds=True)
        self._child = child
        (self.folder / PID_FILE).write_text(f"{child.pid} {start_ticks(child.pid)}\n")
        return child.pid

    def current(self) -> Arming | None:
        """What the guard enforces now (left by this daemon or the one before it)."""
        return read_arming(self.folder)

    def arm(self, arming: Arming) -> None:
        """Make the guard enforce ``arming`` (written only when it changed)."""
        data = arming.to_json()
        if data != self._written:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_arming(self.folder, arming)
            self._written = data

    def stop(self, timeout: float = 5.0) -> None:
        """Disarm and end the guard (leaving the cluster)."""
        self.arm(Arming(0.0, ()))
        pid = self.pid()
        if pid is None:
            return
        terminate(pid, lambda: self.pid() is not None, timeout)
        (self.folder / PID_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} FOLDER", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is not for us
    run(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
