"""A VM's in-flight operation changes in one place (Lifecycle._operate): what begins
and ends it, and that the shown reason decides nothing.  No QEMU: the Lifecycle runs
on a real store with its records and events; QEMU's events are fed by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from virtkit.model.host import HostCaps
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import State
from virtkit.paths import StatePaths
from virtkit.runtime import outgoing
from virtkit.runtime.events import EventBus
from virtkit.runtime.lifecycle import Lifecycle, Vm
from virtkit.runtime.operation import Operation, OpKind, ShutdownSeen
from virtkit.store.db import Store

UUID = "3c9d2e1f-8a7b-4c6d-9e0f-1a2b3c4d5e6f"


@pytest.fixture
def life(tmp_path: Path) -> Lifecycle:
    store = Store(tmp_path / "db")
    domain = load_domain({"name": "vm", "uuid": UUID, "memory": 64})
    store.insert_domain(UUID, "vm", dump_domain(domain))
    return Lifecycle(store, EventBus(store), StatePaths(tmp_path / "root"),
                     lambda _d: (HostCaps(accel="tcg"), "qemu"), lambda _uuid: domain)


def running_vm(life: Lifecycle, state: State = State.RUNNING) -> Vm:
    vm = life.vm(UUID, "vm")
    vm.state = state
    vm.running = SimpleNamespace(  # type: ignore[assignment]
        live=None, record=dict, process=SimpleNamespace(pid=4242, start_time=1))
    return vm


async def test_a_repeated_power_off_keeps_the_first_deadline(life: Lifecycle) -> None:
    vm = running_vm(life)
    timer: Any = asyncio.get_running_loop().create_future()
    life._operate(vm, Operation(OpKind.SHUTDOWN, timer=timer))
    again = life._operate(vm, Operation(OpKind.REBOOT, reboot="new-process"))
    assert vm.op is again and again.timer is timer
    stop = life._operate(vm, Operation.stop("destroyed"))
    assert stop.timer is None  # a destroy has no deadline
    assert life._operate(vm).kind is OpKind.NONE
    timer.cancel()


async def test_set_state_ends_the_operation_or_begins_the_switch_over(
        life: Lifecycle) -> None:
    vm = running_vm(life)
    async with vm.lock:
        outgoing.stopped_locked(life, vm)
        assert (vm.state, vm.reason, vm.op.kind) == (State.PAUSED, "migrating",
                                                      OpKind.MIGRATING_OUT)
        outgoing.held_locked(life, vm, "postcopy failed")
        assert vm.op.kind is OpKind.NONE


async def test_after_a_failed_migration_the_operation_decides_not_the_reason(
        life: Lifecycle) -> None:
    vm = running_vm(life, State.PAUSED)
    running = vm.running
    async with vm.lock:
        life.set_state(vm, State.PAUSED, "migrating")  # the words, not the operation
        await outgoing.after_failure_locked(life, vm, running,  # type: ignore[arg-type]
                                            (State.RUNNING, "booted"))
    assert (vm.state, vm.reason) == (State.PAUSED, "migrating")  # nothing to undo


def test_set_state_needs_the_lock(life: Lifecycle) -> None:
    vm = running_vm(life)
    with pytest.raises(AssertionError, match="needs the lock"):
        life.set_state(vm, State.PAUSED, "user")


async def test_the_guest_agents_reset_ends_an_in_place_reboot(life: Lifecycle) -> None:
    vm = running_vm(life, State.SHUTTING_DOWN)
    op = life._operate(vm, Operation(OpKind.REBOOT, reboot="in-place"))
    life._on_qmp_event(vm, {"event": "RESET", "data": {"guest": True}})
    assert op.done.is_set() and op.rebooted
    assert (vm.state, vm.reason, vm.op.kind) == (State.RUNNING, "rebooted", OpKind.NONE)


async def test_a_reset_without_a_reboot_asked_changes_nothing(life: Lifecycle) -> None:
    vm = running_vm(life, State.SHUTTING_DOWN)
    op = life._operate(vm, Operation(OpKind.SHUTDOWN))
    life._on_qmp_event(vm, {"event": "RESET", "data": {"guest": True}})
    assert vm.op is op and not op.done.is_set() and vm.state is State.SHUTTING_DOWN


def test_the_shutdown_event_is_kept_typed(life: Lifecycle) -> None:
    vm = running_vm(life)
    life._on_qmp_event(vm, {"event": "SHUTDOWN",
                            "data": {"guest": False, "reason": "host-signal"}})
    assert vm.shutdown_seen == ShutdownSeen(guest=False, reason="host-signal")


def test_an_incoming_migration_is_an_operation(life: Lifecycle) -> None:
    vm = running_vm(life, State.PAUSED)
    vm.reason = "migrating in"  # what is shown decides nothing
    assert not vm.migrating_in
    life._operate(vm, Operation(OpKind.MIGRATING_IN))
    assert vm.migrating_in
