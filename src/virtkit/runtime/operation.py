"""What a domain's QEMU is in the middle of, and why it ended: one typed value each.

A :class:`Vm` (what the daemon knows of one domain now; runtime/lifecycle.py owns the
records) carries one :class:`Operation` — the request
in flight on its QEMU (a power-off, a reboot, our own stop, a panic's stop, an
incoming migration, an outgoing one's switch-over) — instead of a flag per request.
``Lifecycle._operate`` is the one place that sets and clears it; ``vm.reason`` is
what is *shown* (virsh's "running (booted)") and decides nothing.

An install phase (``virt-install``: the installer's one-run configuration) is not a
request but what this QEMU runs; it lasts through the requests made of it, so it is
its own value, :class:`InstallPhase`.  What QEMU reported of its end (the ``SHUTDOWN``
event) is evidence, :class:`ShutdownSeen`.

When QEMU ends, :func:`exit_outcome` — pure, unit-tested branch by branch — turns
those three and the exit status into an :class:`ExitOutcome`: the state, the shown
reason, the event, and the start that follows (if any).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from virtkit.model.domain import Domain, LifecycleAction
from virtkit.model.state import State
from virtkit.runtime.launcher import Running

#: a reboot: the guest resets inside this QEMU (libvirt's reboot), or a fresh QEMU
#: boots a changed definition
RebootKind = Literal["in-place", "new-process"]

#: the shown reason of a QEMU started for an incoming migration (kept in the runtime
#: record: a restarted daemon rebuilds the operation from it)
MIGRATING_IN = "migrating in"


class OpKind(StrEnum):
    """The request in flight on a domain's QEMU."""

    NONE = "none"
    #: a power-off was asked (ACPI or the guest agent); the guest has until the timer
    SHUTDOWN = "shutdown"
    #: a reboot was asked (``reboot``: in place or by a new QEMU)
    REBOOT = "reboot"
    #: we end this QEMU (destroy, save, migrated away, a failed start ...): its exit
    #: is recorded with ``reason``
    STOP = "stop"
    #: the guest panicked and on_crash is not preserve: this QEMU is being ended
    PANIC = "panic"
    #: QEMU waits for (or receives) an incoming migration stream
    MIGRATING_IN = "migrating in"
    #: an outgoing migration stopped the vCPUs for the switch-over
    MIGRATING_OUT = "migrating out"


@dataclass
class Operation:
    """One request in flight, with its data."""

    kind: OpKind = OpKind.NONE
    #: STOP: the reason the exit is recorded with
    reason: str = ""
    #: REBOOT: in place, or a new QEMU
    reboot: RebootKind | None = None
    #: SHUTDOWN/REBOOT: set when an in-place reboot ended (the guest runs again, or
    #: the deadline passed); ``rebooted`` says which
    done: asyncio.Event = field(default_factory=asyncio.Event)
    rebooted: bool = False
    #: SHUTDOWN/REBOOT: the deadline's task (the guest ignored the request: running)
    timer: asyncio.Task[None] | None = None

    @property
    def ends_qemu(self) -> bool:
        """We are ending this QEMU ourselves: its exit is expected."""
        return self.kind in (OpKind.STOP, OpKind.PANIC)

    @property
    def in_place_reboot(self) -> bool:
        return self.kind is OpKind.REBOOT and self.reboot == "in-place"

    @classmethod
    def stop(cls, reason: str) -> Operation:
        return cls(OpKind.STOP, reason=reason)

    @classmethod
    def from_record(cls, reason: str, qemu_status: str) -> Operation:
        """After a daemon restart: what a reattached QEMU was doing, from its record's
        reason and QEMU's run state (an incoming migration still receiving)."""
        if reason == MIGRATING_IN and qemu_status == "inmigrate":
            return cls(OpKind.MIGRATING_IN)
        return cls()


@dataclass(frozen=True)
class InstallPhase:
    """This QEMU runs an installer's one-run configuration (virt-install)."""

    spec: Domain
    #: when the guest powers off or reboots, the domain's own spec boots
    boot_after: bool = True


@dataclass(frozen=True)
class ShutdownSeen:
    """QEMU's ``SHUTDOWN`` event: who asked (the guest, or the host) and why."""

    guest: bool
    reason: str | None = None

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> ShutdownSeen:
        reason = data.get("reason")
        return cls(bool(data.get("guest")), reason if isinstance(reason, str) else None)


class ExitKind(StrEnum):
    """Why QEMU ended, as :func:`exit_outcome` concluded."""

    INSTALLED = "installed"
    PANICKED = "panicked"
    INCOMING_FAILED = "incoming failed"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    GUEST_RESET = "guest reset"
    POWERED_OFF = "powered off"
    HOST_SHUTDOWN = "host shutdown"
    CRASHED = "crashed"


@dataclass(frozen=True)
class ExitOutcome:
    """The state after QEMU ended, its shown reason and event, and what follows."""

    kind: ExitKind
    state: State
    reason: str
    event: str
    #: the event of the start that follows (None: the domain stays down)
    restart: str | None = None

    @property
    def ends_transient(self) -> bool:
        """A transient domain (virsh create) goes with it: it stopped for good.  A crash
        keeps it (its crash policy decides; the record is there to inspect)."""
        return self.restart is None and self.kind is not ExitKind.CRASHED


def crash_policy(domain: Domain) -> LifecycleAction:
    """What a crash of ``domain`` leads to here.  An HA VM is never restarted by its local
    policy: the cluster restarts it after a claim (service/clusterha.py), and it may have
    crashed because this host fenced it for a lost lease (cluster/fence.py)."""
    return LifecycleAction.DESTROY if domain.ha else domain.on_crash


def exit_outcome(op: Operation, install: InstallPhase | None, seen: ShutdownSeen | None,
                 status: int | None, *, on_poweroff: LifecycleAction,
                 on_crash: LifecycleAction) -> ExitOutcome:
    """Why QEMU ended and what follows, from the operation in flight, the install
    phase it ran (if any), the SHUTDOWN event seen (if any) and its exit status;
    ``on_poweroff``/``on_crash`` are those of the configuration it ran."""
    if install is not None and not op.ends_qemu and seen is not None and seen.guest:
        # the installer powered off or rebooted: the install phase is over
        return ExitOutcome(ExitKind.INSTALLED, State.SHUTOFF, "install finished", "installed",
                           "installed" if install.boot_after else None)
    if op.kind is OpKind.PANIC:
        return ExitOutcome(ExitKind.PANICKED, State.CRASHED, "guest panicked", "stopped")
    if op.kind is OpKind.MIGRATING_IN:
        # the stream broke or the source cancelled: QEMU exits by design, no crash
        # policy applies, and a transient incoming definition goes with it
        return ExitOutcome(ExitKind.INCOMING_FAILED, State.SHUTOFF,
                           "incoming migration failed", "stopped")
    if op.kind is OpKind.STOP:
        return ExitOutcome(ExitKind.STOPPED, State.SHUTOFF, op.reason, "stopped")
    if seen is not None and seen.guest:
        if op.kind is OpKind.REBOOT:
            return ExitOutcome(ExitKind.REBOOTING, State.SHUTOFF, "rebooting", "shutdown",
                               "rebooted")
        if seen.reason == "guest-reset":
            return ExitOutcome(ExitKind.GUEST_RESET, State.SHUTOFF,
                               "guest rebooted (on_reboot=destroy)", "shutdown")
        restart = "restarted" if on_poweroff is LifecycleAction.RESTART else None
        return ExitOutcome(ExitKind.POWERED_OFF, State.SHUTOFF, "shutdown", "shutdown",
                           restart)
    if seen is not None:
        return ExitOutcome(ExitKind.HOST_SHUTDOWN, State.SHUTOFF,
                           f"destroyed ({seen.reason or 'host'})", "stopped")
    why = "QEMU exited unexpectedly"
    if status is not None and status < 0:
        why += f" (killed by signal {-status})"
    elif status is not None:
        why += f" (exit status {status})"
    restart = "restarted" if on_crash is LifecycleAction.RESTART else None
    return ExitOutcome(ExitKind.CRASHED, State.CRASHED, why, "crashed", restart)


@dataclass
class Vm:
    """What the daemon knows about one domain right now."""

    uuid: str
    name: str
    state: State = State.SHUTOFF
    reason: str = ""
    running: Running | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: the request in flight on its QEMU (runtime/operation.py); only
    #: ``Lifecycle._operate`` changes it; ``reason`` is what is shown
    op: Operation = field(default_factory=Operation)
    #: the install phase this QEMU runs (None: the domain's own spec)
    install: InstallPhase | None = None
    #: QEMU's SHUTDOWN event, once seen (who asked: the guest or the host)
    shutdown_seen: ShutdownSeen | None = None
    started: float | None = None
    links: dict[int, str] = field(default_factory=dict)

    @property
    def boot_spec(self) -> Domain | None:
        """The one-run configuration QEMU runs now (an install phase), None: the spec."""
        return self.install.spec if self.install is not None else None

    @property
    def migrating_in(self) -> bool:
        """QEMU waits for (or receives) an incoming migration."""
        return self.op.kind is OpKind.MIGRATING_IN
