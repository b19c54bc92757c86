"""Spawning, identifying, watching and killing QEMU processes.

QEMU runs in its own session (``start_new_session``), so it outlives the
daemon.  A process is identified by pid *and* its start time (field 22 of
``/proc/PID/stat``) *and* the ``-uuid`` on its command line, so a recycled pid
is never mistaken for our VM.  Exit is noticed at once through a pidfd, which
also makes signalling immune to pid reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import QemuError


def proc_start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_our_qemu(pid: int, start_time: int, uuid: str) -> bool:
    """True only if ``pid`` is still the QEMU we started for ``uuid``."""
    if proc_start_time(pid) != start_time:
        return False
    argv = proc_cmdline(pid)
    if not argv or "qemu-system" not in os.path.basename(argv[0]):
        return False
    return any(a == "-uuid" and b == uuid for a, b in itertools.pairwise(argv))


@dataclass
class QemuProcess:
    """A running QEMU: its identity, and the Popen handle when we are its parent."""

    pid: int
    start_time: int
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    _watching: bool = field(default=False, repr=False)

    @classmethod
    def spawn(cls, argv: list[str], *, pass_fds: list[int], log_path: Path,
              preexec: Callable[[], None] | None = None,
              wrapper: Sequence[str] = ()) -> QemuProcess:
        """Start QEMU in its own session with stdout/stderr appended to ``log_path``;
        ``preexec`` runs in the child before exec, or ``wrapper`` is a command that
        execs ``argv`` in the same process after it has set it up (confinement:
        runtime/confine.py; a wrapper keeps Python's cheap vfork, a preexec forks the
        whole daemon)."""
        if wrapper and shutil.which(argv[0]) is None:  # the wrapper would fail later
            raise QemuError(f"cannot run {argv[0]}: No such file or directory",
                            fix="install QEMU: apt-get install qemu-system-x86")
        with open(log_path, "ab") as log_file:
            try:
                popen = subprocess.Popen(
                    [*wrapper, *argv], stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=log_file,
                    pass_fds=pass_fds, start_new_session=True, close_fds=True,
                    preexec_fn=preexec,
                )
            except subprocess.SubprocessError as exc:
                raise QemuError(f"cannot confine {argv[0]}: {exc}",
                                fix="run virtkitd with --no-confine to start QEMU unconfined"
                                ) from exc
            except OSError as exc:
                raise QemuError(f"cannot run {argv[0]}: {exc.strerror}",
                                fix="install QEMU: apt-get install qemu-system-x86") from exc
        start = proc_start_time(popen.pid) or 0
        process = cls(popen.pid, start, popen)
        process.pidfd = os.pidfd_open(popen.pid)
        return process

    @classmethod
    def adopt(cls, pid: int, start_time: int, uuid: str) -> QemuProcess | None:
        """Re-attach to a QEMU started by an earlier daemon, if it is really ours."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        # The identity check after opening the pidfd closes the pid-reuse race.
        if not is_our_qemu(pid, start_time, uuid):
            os.close(pidfd)
            return None
        return cls(pid, start_time, None, pidfd)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return proc_start_time(self.pid) == self.start_time

    def exit_status(self) -> int | None:
        """The exit code (negative for a signal) when we are the parent and it has ended."""
        if self.popen is None:
            return None
        return self.popen.poll()

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` from the event loop as soon as the process ends."""
        assert self.pidfd is not None
        loop = asyncio.get_running_loop()

        def fired() -> None:
            loop.remove_reader(self.pidfd)  # type: ignore[arg-type]
            self._watching = False
            if self.popen is not None:
                self.popen.poll()
            on_exit()

        loop.add_reader(self.pidfd, fired)
        self._watching = True

    def signal(self, signum: int) -> None:
        """Send a signal through the pidfd (never to a recycled pid)."""
        if self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signum)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to end; True if it did."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.alive():
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def kill(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.signal(signal.SIGTERM)
        if not await self.wait(grace):
            self.signal(signal.SIGKILL)
            await self.wait(5.0)

    def close(self) -> None:
        """Release the pidfd (after the exit has been handled)."""
        if self.pidfd is not None:
            if self._watching:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(self.pidfd)
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None
