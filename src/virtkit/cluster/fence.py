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

No HA VM is ever unguarded, by two rules (docs/cluster.md):

- *armed before spawn*: the launcher calls :meth:`Fencer.admit` right before it spawns
  the QEMU of an HA VM; it writes the VM's UUID into the guard's arm file first, and the
  guard and this fencer kill every QEMU of an armed UUID they find in /proc, not only
  the PIDs they were told (cluster/guard.py).  So a QEMU spawned a moment before the
  daemon hangs is fenced although its PID was never written down.
- *no start on a stale lease*: :meth:`Fencer.admit` refuses (StateError naming the
  lease's age) when the last renewal is older than ``ttl - DAEMON_MARGIN -
  START_MARGIN``: a host that may be fenced any moment must not start what it would
  have to kill (an HA start, an HA restart, a migration in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from virtkit.cluster.guard import (
    FAST_SWEEPS,
    SLOW_POLL,
    Arming,
    FenceTarget,
    GuardLink,
    kill_targets,
    net_namespace,
    qemus_here,
    to_fence,
)
from virtkit.errors import StateError

log = logging.getLogger(__name__)

#: seconds before the lease's earliest expiry at which the daemon fences
DAEMON_MARGIN = 2.0
#: ... and the guard (after the daemon, before the expiry)
GUARD_MARGIN = 1.5
#: an HA VM starts only when the daemon's fence is at least this far off
START_MARGIN = 0.5
#: how often the fencer looks at the clock
TICK = 0.1
#: how often the HA VMs are looked up again in the store (a VM spawned in between is
#: armed by :meth:`Fencer.admit` before its spawn)
REFRESH = 1.0
#: seconds a UUID armed by :meth:`Fencer.admit` stays armed when the store shows no
#: QEMU and no HA definition for it (a start that failed)
PENDING_KEEP = 5.0


@dataclass(frozen=True)
class HaVms:
    """This host's HA VMs as the store has them."""

    #: every HA VM defined here, whatever its state (all of them are armed)
    uuids: frozenset[str] = frozenset()
    #: the QEMUs of those that run, by PID
    targets: tuple[FenceTarget, ...] = ()
    #: every VM with a QEMU here, HA or not
    live: frozenset[str] = field(default_factory=frozenset)


class Fencer:
    """Watches the host lease's age and fences this host's HA QEMUs in time.

    ``renewed()`` gives the CLOCK_MONOTONIC send time of the last successful renewal (0
    when there was none yet); ``ha_vms()`` this host's HA VMs; ``fenced`` is told which
    QEMUs were killed (the daemon records why they stopped).
    """

    def __init__(self, renewed: Callable[[], float], ha_vms: Callable[[], HaVms],
                 guard: GuardLink, *, ttl: float,
                 fenced: Callable[[list[FenceTarget]], None] | None = None,
                 tick: float = TICK, refresh: float = REFRESH) -> None:
        self.renewed = renewed
        self.ha_vms = ha_vms
        self.guard = guard
        self.ttl = ttl
        self.fenced = fenced
        self.tick = tick
        self.refresh = refresh
        previous = guard.current()
        #: the lease renewal (send time) the deadlines are counted from
        self.basis = (previous.deadline - ttl + GUARD_MARGIN if previous
                      else time.monotonic() - ttl)
        self._known = HaVms()
        #: UUIDs armed by admit() the store does not show as HA yet: uuid -> when
        self._pending: dict[str, float] = {}
        self._looked = 0.0
        self._swept = 0.0
        self._netns = net_namespace("self")
        self._killed: set[FenceTarget] = set()
        #: set by start(): a guard that died is started again (admit, every look)
        self._supervise = False
        self._task: asyncio.Task[None] | None = None

    @property
    def deadline(self) -> float:
        """When the daemon fences unless the lease is renewed before."""
        return self.basis + self.ttl - DAEMON_MARGIN

    def fresh(self, now: float | None = None) -> bool:
        """True while the lease is renewed in time: starting an HA VM is safe (what
        :meth:`admit` checks: the fence at least ``START_MARGIN`` away)."""
        now = time.monotonic() if now is None else now
        return now - max(self.basis, self.renewed()) < self.ttl - DAEMON_MARGIN - START_MARGIN

    @property
    def armed(self) -> frozenset[str]:
        """The UUIDs whose QEMUs are fenced now if the lease is late."""
        return self._known.uuids | self._pending.keys()

    def _arm(self) -> None:
        self.guard.arm(Arming(self.basis + self.ttl - GUARD_MARGIN, self._known.targets,
                              self.armed))

    def _keep_guard(self) -> None:
        if self._supervise and self.guard.pid() is None:
            log.warning("cluster: the fence guard is not running; starting it again")
            self.guard.ensure()  # a new guard reads the arm file as it is

    def _look(self, now: float) -> None:
        self._keep_guard()
        self._known, self._looked = self.ha_vms(), now
        self._pending = {u: t for u, t in self._pending.items()
                         if u not in self._known.uuids
                         and (u in self._known.live or now - t < PENDING_KEEP)}

    def admit(self, uuid: str, name: str, now: float | None = None, *,
              action: str = "start HA VM") -> None:
        """Right before the QEMU of HA VM ``uuid`` is spawned (or a running VM is made
        HA): refuse when the lease is stale, else arm the guard for it (the arm file
        names it before this returns)."""
        now = time.monotonic() if now is None else now
        self.basis = max(self.basis, self.renewed())
        age, limit = now - self.basis, self.ttl - DAEMON_MARGIN - START_MARGIN
        if not self.fresh(now):
            since = (f"was last renewed {age:.1f} s ago" if self.renewed()
                     else f"has not been renewed by this daemon yet ({age:.1f} s counted)")
            raise StateError(
                f"cannot {action} '{name}' here: this host's cluster lease {since}, and "
                f"an HA VM starts only within {limit:.1f} s of a renewal (at "
                f"{self.ttl - DAEMON_MARGIN:.1f} s this host fences its HA VMs, at "
                f"{self.ttl:.1f} s other hosts may restart them)",
                requested="start",
                fix="check that etcd answers from this host ('virtkit cluster status'); "
                    "start the VM again once the lease is renewed, or on another host")
        self._pending[uuid] = now
        self._keep_guard()
        self._arm()

    def step(self, now: float | None = None) -> list[FenceTarget]:
        """One look: move the deadline on a renewal, arm the guard, fence when late.
        The QEMUs killed (for tests and the caller's log)."""
        now = time.monotonic() if now is None else now
        self.basis = max(self.basis, self.renewed())
        if now - self._looked >= self.refresh:
            self._look(now)
        self._arm()
        if now < self.deadline:
            self._killed.clear()
            return []
        if not self.armed:
            return []
        if now - self.deadline > FAST_SWEEPS and now - self._swept < SLOW_POLL:
            return []
        self._swept = now
        # every QEMU of an armed UUID: also one spawned since the last look
        killed = [t for t in kill_targets(to_fence(
            Arming(self.deadline, self._known.targets, self.armed),
            qemus_here(netns=self._netns))) if t not in self._killed]
        self._killed.update(killed)
        if killed:
            log.error("cluster: the host lease was last renewed %.1f s ago: fenced the HA "
                      "VMs %s before it can expire", now - self.basis,
                      ", ".join(t.uuid for t in killed))
            if self.fenced is not None:
                self.fenced(killed)
        return killed

    async def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:
                log.exception("cluster: fencer step failed")
            await asyncio.sleep(self.tick)

    def start(self) -> None:
        self._supervise = True
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
