"""What a migration does to the QEMU and the state of the VM at each end, below the
service: the service (service/migrations.py, service/incoming.py) keeps the policy
(the journal, the peer, which outcome to choose) and calls these steps.

Steps named ``*_locked`` need the VM's lock held by the caller (checked); the others
take it themselves.  The QMP protocol of the stream itself is runtime/migration.py.
"""

from __future__ import annotations

import contextlib

from virtkit.errors import VirtkitError
from virtkit.model.state import State
from virtkit.qemu.qmp import MigrationStatus
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle, Vm, require_lock
from virtkit.runtime.operation import OpKind

#: the source's state from its vCPUs' stop for the switch-over until it hands over
#: or resumes (libvirt's paused/migration): never 'running' while the destination may be
MIGRATING = "migrating"


async def runstate(running: Running) -> str:
    """QEMU's run state (``running``, ``paused``, ``postmigrate`` ...), or ``unknown``."""
    with contextlib.suppress(VirtkitError):
        return await running.monitor.runstate()
    return "unknown"


async def stream_status(running: Running) -> MigrationStatus:
    """QEMU's view of the migration stream (domjobinfo): query-migrate."""
    return await running.monitor.query_migrate()


async def cancel_stream(running: Running) -> None:
    """domjobabort while the stream runs: the migration's failure path does the rest."""
    await running.monitor.migrate_cancel()


# -- the source end ------------------------------------------------------------------

def stopped_locked(life: Lifecycle, vm: Vm) -> None:
    """The vCPUs stopped for the switch-over: paused before the destination may run it."""
    life.set_state(vm, State.PAUSED, MIGRATING, event="paused", op=OpKind.MIGRATING_OUT)


def held_locked(life: Lifecycle, vm: Vm, reason: str) -> None:
    """The guest stays paused here (post-copy failed, the outcome is unknown)."""
    life.set_state(vm, State.PAUSED, reason, event="paused")


async def handed_over_locked(life: Lifecycle, vm: Vm) -> None:
    """The destination runs the VM: this copy goes."""
    await life.kill_locked(vm, "migrated")


async def after_failure_locked(life: Lifecycle, vm: Vm, running: Running,
                               before: tuple[State, str]) -> None:
    """The migration failed and the guest goes on here: record what QEMU says
    (running again, or paused as it was before the migration)."""
    require_lock(vm, "after_failure_locked")
    if vm.running is None or vm.running is not running \
            or vm.op.kind is not OpKind.MIGRATING_OUT:
        return
    if await runstate(running) == "running":
        life.set_state(vm, State.RUNNING, "migration failed", event="resumed")
    else:
        life.set_state(vm, State.PAUSED, before[1] if before[0] is State.PAUSED
                       else "migration failed")


async def resume_here_locked(life: Lifecycle, vm: Vm, running: Running,
                             paused: bool) -> None:
    """The destination does not run the VM: it goes on here (paused, if it was
    paused before the migration)."""
    require_lock(vm, "resume_here_locked")
    if paused:
        life.set_state(vm, State.PAUSED, "migration failed")
        return
    with contextlib.suppress(VirtkitError):
        await running.monitor.cont()
        life.set_state(vm, State.RUNNING, "migration failed", event="resumed")


async def resume_here(life: Lifecycle, vm: Vm, running: Running, paused: bool) -> None:
    async with vm.lock:
        await resume_here_locked(life, vm, running, paused)


async def handed_over(life: Lifecycle, vm: Vm) -> None:
    async with vm.lock:
        await handed_over_locked(life, vm)


async def hold(life: Lifecycle, vm: Vm, reason: str) -> None:
    """Keep the VM paused for ``reason`` (no event: a daemon start records it)."""
    async with vm.lock:
        life.set_state(vm, State.PAUSED, reason)


# -- the destination end -------------------------------------------------------------

async def kept_if_running(life: Lifecycle, vm: Vm) -> bool:
    """At daemon start: an incoming VM whose QEMU already runs (the daemon died inside
    finish, after ``cont``) is the VM now; True when it was kept."""
    if vm.running is None or await runstate(vm.running) != "running":
        return False
    async with vm.lock:
        life.set_state(vm, State.RUNNING, "migrated")
    return True
