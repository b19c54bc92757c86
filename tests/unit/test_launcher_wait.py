"""launcher._wait_exit waits on QEMU's pidfd instead of polling, and leaves no reader
behind (QemuProcess.watch adds its own on the same pidfd)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from virtkit.qemu.process import QemuProcess
from virtkit.runtime import launcher


async def test_wait_exit_returns_when_the_process_ends_and_removes_its_reader(
        tmp_path: Path) -> None:
    process = QemuProcess.spawn(["sleep", "0.2"], pass_fds=[], log_path=tmp_path / "log")
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(launcher._wait_exit(process), 10)
    assert not process.alive()
    assert process.pidfd is not None
    assert not loop.remove_reader(process.pidfd)  # False: no reader was left registered
    exited = asyncio.Event()
    process.watch(exited.set)  # the watch that follows a start can take the pidfd over
    await asyncio.wait_for(exited.wait(), 10)


async def test_wait_exit_cancelled_removes_its_reader(tmp_path: Path) -> None:
    process = QemuProcess.spawn(["sleep", "30"], pass_fds=[], log_path=tmp_path / "log")
    try:
        waiter = asyncio.create_task(launcher._wait_exit(process))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert process.pidfd is not None
        assert not asyncio.get_running_loop().remove_reader(process.pidfd)
    finally:
        assert process.popen is not None
        process.popen.kill()
        process.popen.wait(timeout=10)
