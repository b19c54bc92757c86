"""Why QEMU ended and what follows (runtime/operation.py's exit_outcome), branch by
branch: the operation in flight, the install phase, the SHUTDOWN event and the exit
status decide; a display string never does."""

from __future__ import annotations

import pytest

from virtkit.model.domain import LifecycleAction
from virtkit.model.load import load_domain
from virtkit.model.state import State
from virtkit.runtime.operation import (
    MIGRATING_IN,
    ExitKind,
    ExitOutcome,
    InstallPhase,
    Operation,
    OpKind,
    ShutdownSeen,
    crash_policy,
    exit_outcome,
)

A = LifecycleAction
GUEST_OFF = ShutdownSeen(guest=True, reason="guest-shutdown")
GUEST_RESET = ShutdownSeen(guest=True, reason="guest-reset")
HOST_SIGNAL = ShutdownSeen(guest=False, reason="host-signal")
PHASE = InstallPhase(load_domain({"name": "inst", "memory": 64}))


def outcome(op: Operation | None = None, seen: ShutdownSeen | None = None,
            status: int | None = 0, *, install: InstallPhase | None = None,
            on_poweroff: LifecycleAction = A.DESTROY,
            on_crash: LifecycleAction = A.DESTROY) -> ExitOutcome:
    return exit_outcome(op or Operation(), install, seen, status,
                        on_poweroff=on_poweroff, on_crash=on_crash)


def test_guest_power_off() -> None:
    got = outcome(seen=GUEST_OFF)
    assert got == ExitOutcome(ExitKind.POWERED_OFF, State.SHUTOFF, "shutdown", "shutdown")
    assert got.ends_transient


def test_guest_power_off_with_on_poweroff_restart_boots_again() -> None:
    got = outcome(seen=GUEST_OFF, on_poweroff=A.RESTART)
    assert (got.kind, got.state, got.restart) == (ExitKind.POWERED_OFF, State.SHUTOFF,
                                                  "restarted")
    assert not got.ends_transient


def test_a_shutdown_request_the_guest_obeyed_is_a_power_off() -> None:
    got = outcome(Operation(OpKind.SHUTDOWN), GUEST_OFF)
    assert (got.kind, got.reason, got.restart) == (ExitKind.POWERED_OFF, "shutdown", None)


def test_reboot_by_a_new_qemu() -> None:
    got = outcome(Operation(OpKind.REBOOT, reboot="new-process"), GUEST_OFF)
    assert got == ExitOutcome(ExitKind.REBOOTING, State.SHUTOFF, "rebooting", "shutdown",
                              "rebooted")


def test_guest_reset_with_on_reboot_destroy() -> None:
    got = outcome(seen=GUEST_RESET, on_poweroff=A.RESTART)
    assert got == ExitOutcome(ExitKind.GUEST_RESET, State.SHUTOFF,
                              "guest rebooted (on_reboot=destroy)", "shutdown")


@pytest.mark.parametrize("reason", ["destroyed", "saved", "migrated", "start failed",
                                    "reverting to a snapshot"])
def test_our_own_stop(reason: str) -> None:
    for seen in (None, GUEST_OFF, HOST_SIGNAL):
        got = outcome(Operation.stop(reason), seen, status=-9)
        assert got == ExitOutcome(ExitKind.STOPPED, State.SHUTOFF, reason, "stopped")
        assert got.ends_transient


def test_stop_during_an_install_phase_is_no_install_end() -> None:
    got = outcome(Operation.stop("destroyed"), GUEST_OFF, install=PHASE)
    assert (got.kind, got.reason, got.restart) == (ExitKind.STOPPED, "destroyed", None)


def test_panic_stop() -> None:
    got = outcome(Operation(OpKind.PANIC, reason="panic"), status=-15, on_crash=A.RESTART)
    assert got == ExitOutcome(ExitKind.PANICKED, State.CRASHED, "guest panicked", "stopped")
    assert got.ends_transient  # the panic handler applies on_crash itself


def test_panic_during_an_install_phase() -> None:
    got = outcome(Operation(OpKind.PANIC), GUEST_OFF, install=PHASE)
    assert got.kind is ExitKind.PANICKED


def test_incoming_migration_that_ends() -> None:
    got = outcome(Operation(OpKind.MIGRATING_IN), status=1, on_crash=A.RESTART)
    assert got == ExitOutcome(ExitKind.INCOMING_FAILED, State.SHUTOFF,
                              "incoming migration failed", "stopped")
    assert got.ends_transient  # the transient incoming definition goes


def test_incoming_migration_killed_on_purpose_keeps_its_reason() -> None:
    got = outcome(Operation.stop("incoming migration cancelled"))
    assert got.reason == "incoming migration cancelled"


def test_install_finished_boots_the_spec() -> None:
    for op in (Operation(), Operation(OpKind.SHUTDOWN),
               Operation(OpKind.REBOOT, reboot="new-process")):
        got = outcome(op, GUEST_OFF, install=PHASE)
        assert got == ExitOutcome(ExitKind.INSTALLED, State.SHUTOFF, "install finished",
                                  "installed", "installed")


def test_install_finished_with_noreboot() -> None:
    got = outcome(seen=GUEST_RESET, install=InstallPhase(PHASE.spec, boot_after=False))
    assert (got.kind, got.restart) == (ExitKind.INSTALLED, None)
    assert got.ends_transient


def test_installer_crash_is_a_crash() -> None:
    got = outcome(status=-11, install=PHASE)
    assert (got.kind, got.state) == (ExitKind.CRASHED, State.CRASHED)


def test_host_side_shutdown() -> None:
    got = outcome(seen=HOST_SIGNAL)
    assert got == ExitOutcome(ExitKind.HOST_SHUTDOWN, State.SHUTOFF,
                              "destroyed (host-signal)", "stopped")
    assert outcome(seen=ShutdownSeen(guest=False)).reason == "destroyed (host)"


@pytest.mark.parametrize(("status", "why"), [
    (-9, "QEMU exited unexpectedly (killed by signal 9)"),
    (1, "QEMU exited unexpectedly (exit status 1)"),
    (0, "QEMU exited unexpectedly (exit status 0)"),
    (None, "QEMU exited unexpectedly"),
])
def test_crash(status: int | None, why: str) -> None:
    got = outcome(status=status)
    assert got == ExitOutcome(ExitKind.CRASHED, State.CRASHED, why, "crashed")
    assert not got.ends_transient  # kept to inspect


def test_crash_with_on_crash_restart() -> None:
    got = outcome(Operation(OpKind.SHUTDOWN), status=-9, on_crash=A.RESTART)
    assert (got.kind, got.restart) == (ExitKind.CRASHED, "restarted")
    assert not got.ends_transient


def test_crash_during_an_outgoing_switch_over() -> None:
    got = outcome(Operation(OpKind.MIGRATING_OUT), status=-9)
    assert got.kind is ExitKind.CRASHED


def test_shutdown_event_is_read_typed() -> None:
    assert ShutdownSeen.from_event({"guest": True, "reason": "guest-shutdown"}) == GUEST_OFF
    assert ShutdownSeen.from_event({}) == ShutdownSeen(False, None)
    assert ShutdownSeen.from_event({"guest": 1, "reason": 5}) == ShutdownSeen(True, None)


def test_operation_from_a_reattached_record() -> None:
    assert Operation.from_record(MIGRATING_IN, "inmigrate").kind is OpKind.MIGRATING_IN
    assert Operation.from_record(MIGRATING_IN, "paused").kind is OpKind.NONE
    assert Operation.from_record("booted", "inmigrate").kind is OpKind.NONE


def test_operation_properties() -> None:
    assert Operation.stop("x").ends_qemu and Operation(OpKind.PANIC).ends_qemu
    assert not any(Operation(kind).ends_qemu for kind in OpKind
                   if kind not in (OpKind.STOP, OpKind.PANIC))
    assert Operation(OpKind.REBOOT, reboot="in-place").in_place_reboot
    assert not Operation(OpKind.REBOOT, reboot="new-process").in_place_reboot
    assert not Operation(OpKind.SHUTDOWN).in_place_reboot


def test_an_ha_vm_is_never_restarted_by_its_local_crash_policy() -> None:
    """The cluster restarts an HA VM after a claim; a local restart could run it beside
    the copy another host started after this one was fenced."""
    spec = {"name": "vm", "memory": 64, "on_crash": "restart"}
    assert crash_policy(load_domain(spec)) is LifecycleAction.RESTART
    assert crash_policy(load_domain({**spec, "ha": True})) is LifecycleAction.DESTROY
