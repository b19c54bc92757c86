"""The fence guard: a small process per host that kills the HA QEMUs when the daemon
stops vouching for them in time.

Why a separate process: the daemon fences its HA VMs itself when it cannot renew its
host lease (cluster/fence.py), but a daemon that hangs (SIGSTOP, a deadlock, swapped
out) or dies cannot.  The other hosts restart an HA VM once this host's lease has
expired, so by then its QEMU must be gone whatever state the daemon is in.  Proxmox's
watchdog-mux plays this part; the hardware or softdog watchdog covers a hung kernel
(docs/cluster.md).

The protocol is one file the daemon rewrites (atomically) after every lease renewal,
``arm.json``::

    {"deadline": <CLOCK_MONOTONIC seconds>, "targets": [{"uuid", "pid", "start"}, ...]}

CLOCK_MONOTONIC is one clock for the whole machine, so the deadline means the same in
both processes and across a daemon restart.  The guard polls the file; once the clock
passes the deadline it SIGKILLs every target that is still the process named (PID,
start time and ``-uuid`` checked: a reused PID is never hit) and appends what it did to
``fenced.log``.  An empty target list disarms it.  The guard outlives daemon restarts
(as QEMUs do); the daemon adopts it by ``guard.pid`` (PID + start time) and starts a
new one when it is gone.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from virtkit.host.procstat import cmdline, start_ticks, terminate

ARM_FILE = "arm.json"
PID_FILE = "guard.pid"
LOG_FILE = "guard.log"
FENCED_LOG = "fenced.log"
#: how often the guard reads the arm file: the slack it adds to a fence
POLL = 0.1
MODULE = "virtkit.cluster.guard"


@dataclass(frozen=True)
class FenceTarget:
    """One HA QEMU: its domain's UUID, PID and start time (clock ticks since boot)."""

    uuid: str
    pid: int
    start: int


@dataclass(frozen=True)
class Arming:
    """What the guard enforces: kill ``targets`` once CLOCK_MONOTONIC passes ``deadline``."""

    deadline: float
    targets: tuple[FenceTarget, ...]

    def to_json(self) -> bytes:
        return json.dumps({"deadline": self.deadline,
                           "targets": [asdict(t) for t in self.targets]}).encode()

    @classmethod
    def parse(cls, data: bytes) -> Arming:
        """The arm file's content (ValueError/KeyError/TypeError when malformed)."""
        value = json.loads(data)
        targets = tuple(FenceTarget(str(t["uuid"]), int(t["pid"]), int(t["start"]))
                        for t in value["targets"])
        return cls(float(value["deadline"]), targets)


def is_target_alive(target: FenceTarget) -> bool:
    """True only if ``target.pid`` is still the QEMU started for ``target.uuid``."""
    if start_ticks(target.pid) != target.start:
        return False
    argv = cmdline(target.pid)
    if not argv or "qemu-system" not in os.path.basename(argv[0]):
        return False
    return any(a == "-uuid" and b == target.uuid for a, b in itertools.pairwise(argv))


def kill_targets(targets: tuple[FenceTarget, ...] | list[FenceTarget]) -> list[FenceTarget]:
    """SIGKILL every target that is still its QEMU; the ones killed."""
    killed = []
    for target in targets:
        if is_target_alive(target):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGKILL)
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


def due(arming: Arming | None, now: float, fenced: set[FenceTarget]) -> list[FenceTarget]:
    """The targets to kill now: armed, past the deadline, not tried before."""
    if arming is None or not arming.targets or now < arming.deadline:
        return []
    return [t for t in arming.targets if t not in fenced]


def run(folder: Path, *, poll: float = POLL) -> None:
    """The guard's loop: fence when the deadline passes; until SIGTERM or the folder goes
    (the daemon's state folder removed: nothing is left to guard)."""
    fenced: set[FenceTarget] = set()
    arming = read_arming(folder)
    while folder.is_dir():
        arming = read_arming(folder) or arming
        pending = due(arming, time.monotonic(), fenced)
        if pending and arming is not None:
            killed = kill_targets(pending)
            fenced.update(pending)
            if killed:
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
