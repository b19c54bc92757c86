"""Self-fencing: a host that cannot renew its lease kills its HA VMs before the lease
can expire, so no other host ever restarts a VM that still runs here.

The timeline after the last successful renewal sent at ``r`` (etcd counts the lease's
TTL from when it receives the keepalive, so it cannot expire before ``r + ttl``):

- ``r + ttl - DAEMON_MARGIN``: the daemon kills its HA QEMUs (this module);
- ``r + ttl - GUARD_MARGIN``: the guard process kills whatever is left (cluster/guard.py),
  for a daemon that hangs or died;
- ``r + ttl``: the earliest the lease can expire; the other hosts see its record go on
  their watch and may restart the HA VMs from then on.

With TTL 5 s the daemon fences at +3.0 s and the guard at +3.5 s: at least 1.5 s before
any other host can claim a VM.  An etcd leader election (1 to 2 s without writes, measured
in docs/cluster.md) stays well inside the budget, so it disturbs no VM.

A daemon that starts while HA VMs run and cannot reach etcd does not know when the
lease was last renewed; it takes the deadline the guard holds (left by the daemon
before it: CLOCK_MONOTONIC is machine-wide) and fences as soon as that has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from virtkit.cluster.guard import Arming, FenceTarget, GuardLink, kill_targets

log = logging.getLogger(__name__)

#: seconds before the lease's earliest expiry at which the daemon fences
DAEMON_MARGIN = 2.0
#: ... and the guard (after the daemon, before the expiry)
GUARD_MARGIN = 1.5
#: how often the fencer looks at the clock
TICK = 0.1
#: how often the HA targets are looked up again (a new HA VM is covered within this)
REFRESH = 1.0


class Fencer:
    """Watches the host lease's age and fences this host's HA QEMUs in time.

    ``renewed()`` gives the CLOCK_MONOTONIC send time of the last successful renewal (0
    when there was none yet); ``targets()`` the HA QEMUs running here; ``fenced`` is told
    which were killed (the daemon records why they stopped).
    """

    def __init__(self, renewed: Callable[[], float], targets: Callable[[], list[FenceTarget]],
                 guard: GuardLink, *, ttl: float,
                 fenced: Callable[[list[FenceTarget]], None] | None = None,
                 tick: float = TICK, refresh: float = REFRESH) -> None:
        self.renewed = renewed
        self.targets = targets
        self.guard = guard
        self.ttl = ttl
        self.fenced = fenced
        self.tick = tick
        self.refresh = refresh
        previous = guard.current()
        #: the lease renewal (send time) the deadlines are counted from
        self.basis = (previous.deadline - ttl + GUARD_MARGIN if previous
                      else time.monotonic() - ttl)
        self._targets: list[FenceTarget] = []
        self._looked = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def deadline(self) -> float:
        """When the daemon fences unless the lease is renewed before."""
        return self.basis + self.ttl - DAEMON_MARGIN

    def fresh(self) -> bool:
        """True while the lease is renewed in time: starting an HA VM is safe."""
        return time.monotonic() < self.deadline

    def step(self, now: float | None = None) -> list[FenceTarget]:
        """One look: move the deadline on a renewal, arm the guard, fence when late.
        The targets killed (for tests and the caller's log)."""
        now = time.monotonic() if now is None else now
        self.basis = max(self.basis, self.renewed())
        if now - self._looked >= self.refresh:
            self._targets, self._looked = self.targets(), now
        self.guard.arm(Arming(self.basis + self.ttl - GUARD_MARGIN, tuple(self._targets)))
        if not self._targets or now < self.deadline:
            return []
        killed = kill_targets(self._targets)
        if killed:
            log.error("cluster: the host lease was last renewed %.1f s ago: fenced the HA "
                      "VMs %s before it can expire", now - self.basis,
                      ", ".join(t.uuid for t in killed))
            if self.fenced is not None:
                self.fenced(killed)
        self._targets = [t for t in self._targets if t not in killed]
        return killed

    async def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:
                log.exception("cluster: fencer step failed")
            await asyncio.sleep(self.tick)

    def start(self) -> None:
        self.guard.ensure()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """The loop ends; the guard stays armed with the last deadline (a daemon that
        does not come back in time must not leave HA VMs running)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
