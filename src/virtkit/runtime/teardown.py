"""Taking back what a QEMU start set up: the steps of a failed start's undo stack
(runtime/launcher.py, an ``AsyncExitStack``) and of QEMU's end
(``Lifecycle._conclude_exit``, an ``ExitStack``) are the same functions, each
wrapped by :func:`step`, so a step that fails (a confinement release that raises)
is logged and never stops the ones after it: the run folder, the sockets, the
helpers, the host devices and the cgroup are taken back whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from virtkit.runtime.confine import Confinement, Confiner

if TYPE_CHECKING:  # the launcher uses this module's steps
    from virtkit.runtime.launcher import Running

log = logging.getLogger(__name__)

P = ParamSpec("P")


def step(what: str, fn: Callable[P, object], *args: P.args,
         **kwargs: P.kwargs) -> Callable[[], None]:
    """An undo step that never stops the ones after it (its failure is logged)."""
    def run() -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("clean-up step failed: %s", what)
    return run


def async_step(what: str, fn: Callable[P, Awaitable[object]], *args: P.args,
               **kwargs: P.kwargs) -> Callable[[], Awaitable[None]]:
    """:func:`step` for a coroutine function."""
    async def run() -> None:
        try:
            await fn(*args, **kwargs)
        except Exception:
            log.exception("clean-up step failed: %s", what)
    return run


def unlink_sockets(paths: Iterable[Path | str]) -> None:
    """Remove sockets the daemon bound for a QEMU (gone with it)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def kill_helpers(helpers: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill and reap helpers (virtiofsd) of a QEMU that did not start."""
    for helper in helpers:
        helper.kill()
        helper.wait(timeout=5)


def release_confinement(confiner: Confiner | None, conf: Confinement | None) -> None:
    """Give back the files, uid and cgroup granted to a QEMU that ended (or never
    started).  At once, not in a thread: a restart that follows grants them anew."""
    if confiner is not None:
        confiner.release(conf)


def after_exit(running: Running, confiner: Confiner | None,
               spawn: Callable[[Awaitable[Any]], None]) -> None:
    """Take back what an ended QEMU held, as a failed start's undo stack does (the same
    steps): every step runs even when one before it fails; what may block (reaping
    virtiofsd, rebinding host devices, closing the monitor) runs in ``spawn``'s tasks."""
    with contextlib.ExitStack() as undo:  # the steps run in reverse order of pushing
        confinement, running.confinement = running.confinement, None
        undo.callback(step("release the confinement", release_confinement, confiner,
                           confinement))
        if running.hostdev_drivers:
            undo.callback(step("give back the host devices", spawn,
                               asyncio.to_thread(running.release_hostdevs)))
        if running.helpers:
            undo.callback(step("reap virtiofsd", spawn, asyncio.to_thread(running.stop_helpers)))
        channels = running.live.channels if running.live is not None else []
        # bound by the daemon at start: gone with its QEMU
        undo.callback(step("remove the sockets", unlink_sockets, [
            *running.run_dir.glob("*.sock"), *(c.path for c in channels if c.path)]))
        if running.agent is not None:
            undo.callback(step("close the agent", spawn, running.agent.close()))
        undo.callback(step("close the monitor", spawn, running.monitor.close()))
        undo.callback(step("close the pidfd", running.process.close))
