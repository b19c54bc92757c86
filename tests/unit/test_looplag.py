"""The event-loop lag watchdog (api/looplag.py) on a real process: a loop that blocks is
reported with its stack; a process that is stopped (SIGSTOP) and continued is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = """
import asyncio, sys, time
from pathlib import Path
from virtkit.api.looplag import LoopLagWatch

async def main():
    watch = LoopLagWatch(Path(sys.argv[1]))
    watch.start()
    print("ready", flush=True)
    command = await asyncio.to_thread(sys.stdin.readline)
    if command.strip() == "block":
        time.sleep(1.5)  # blocks the loop
    await asyncio.sleep(0.5)
    watch.stop()
    print("done", flush=True)

asyncio.run(main())
"""


def _run(tmp_path: Path, *, stop_for: float = 0.0, block: bool = False) -> str:
    log = tmp_path / "lag.log"
    process = subprocess.Popen([sys.executable, "-c", PROGRAM, str(log)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout is not None and process.stdin is not None
    try:
        assert process.stdout.readline().strip() == "ready"
        if stop_for:
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(stop_for)  # the length of the stop is what is tested
            os.kill(process.pid, signal.SIGCONT)
        process.stdin.write("block\n" if block else "go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "done"
    finally:
        process.kill()
        process.wait()
    return log.read_text() if log.exists() else ""


def test_a_blocked_loop_is_reported_with_its_stack(tmp_path: Path) -> None:
    text = _run(tmp_path, block=True)
    assert "STALL: the event loop has not run for" in text and "in main" in text
    assert "STALL ended after" in text


def test_a_stopped_and_continued_process_is_no_stall(tmp_path: Path) -> None:
    assert "STALL" not in _run(tmp_path, stop_for=1.5)
