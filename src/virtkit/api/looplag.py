"""A watchdog of the event loop's lag (``VIRTKITD_LOOP_LAG_LOG=FILE``; tests use it).

The daemon's rule is that its event loop never waits (docs/architecture.md): anything
that can block runs in a worker thread with a timeout.  This watchdog checks it: a task
on the loop stamps a heartbeat every 0.1 s, and a thread that does not need the loop
looks at the stamp; when the loop has not come back for longer than the limit
(``VIRTKITD_LOOP_LAG_MAX``, default 0.5 s) the thread writes ``STALL`` with the loop
thread's stack at that moment -- the code that blocks -- to the file, and how long the
stall lasted once it ends.  The real tests' daemon fixture fails a test whose daemon
stalled.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from pathlib import Path

INTERVAL = 0.1


class LoopLagWatch:
    """Heartbeat task + watcher thread; ``start()`` on the loop, ``stop()`` at the end."""

    def __init__(self, path: Path, limit: float = 0.5) -> None:
        self.path = path
        self.limit = limit
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread = threading.get_ident()

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())
        self._thread = threading.Thread(target=self._watch, name="loop-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None:
            self._thread.join(2)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(INTERVAL)

    def _watch(self) -> None:
        stalled_at: float | None = None
        looked = resumed = time.monotonic()
        while not self._stop.wait(INTERVAL):
            now = time.monotonic()
            if now - looked > INTERVAL + self.limit and stalled_at is None:
                # this thread did not run either: the whole process was stopped (SIGSTOP,
                # a frozen machine), which is no stall of the loop; count from now
                resumed = now
            looked = now
            lag = now - max(self._beat, resumed)
            if lag > self.limit and stalled_at is None:
                stalled_at = self._beat
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)\n"
                self._write(f"STALL: the event loop has not run for {lag:.2f} s; it is "
                            f"in:\n{stack}")
            elif lag <= self.limit and stalled_at is not None:
                self._write(f"STALL ended after {self._beat - stalled_at:.2f} s\n")
                stalled_at = None

    def _write(self, text: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {text}")
