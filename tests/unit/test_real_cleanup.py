"""The real tests' teardown (tests/real/conftest.py) counts a killed QEMU as ended once
it is a zombie: the orphaned QEMUs of a killed daemon are reaped by PID 1, which on the
CI machine does that only every couple of seconds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.real.conftest import exited, wait_for
from virtkit.qemu.process import proc_start_time


def test_a_zombie_has_exited_a_live_process_has_not() -> None:
    live = subprocess.Popen(["sleep", "60"])
    try:
        start = proc_start_time(live.pid)
        assert start is not None and not exited(live.pid, start)
        live.kill()
        # not reaped yet: still in /proc, as a zombie
        wait_for(lambda: Path(f"/proc/{live.pid}/stat").read_text().rsplit(") ", 1)[1]
                 .startswith("Z"), 10, "the killed process to be a zombie")
        assert Path(f"/proc/{live.pid}").exists()
        assert exited(live.pid, start)
    finally:
        live.kill()
        live.wait()
    assert exited(live.pid, start)  # reaped: gone
    assert exited(os.getpid(), None)  # no start time recorded: nothing to wait for
    own = proc_start_time(os.getpid())
    assert not exited(os.getpid(), own)
    assert own is not None and exited(os.getpid(), own + 1)  # a reused pid
