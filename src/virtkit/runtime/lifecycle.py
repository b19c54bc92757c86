"""Domain lifecycle: start, stop, pause, save, restore, and watching QEMU exit.

:class:`Lifecycle` owns one :class:`Vm` record per defined domain with its live
QEMU (if any).  Requests hold the VM's lock and check the transition table
(:mod:`virtkit.model.state`) before acting.  QEMU's exit is noticed through a
pidfd the moment it happens; the exit handler works out *why* (guest power-off,
our destroy, a crash) from the QMP events seen before it, records the new state,
publishes an event, and applies the domain's ``on_poweroff``/``on_crash``
policy.  When the daemon starts, :meth:`Lifecycle.reattach` finds the QEMU
processes earlier daemons left running and adopts them after checking they are
really ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from virtkit.errors import (
    NotFound,
    StateError,
    TimeoutExpired,
    VirtkitError,
)
from virtkit.host.pathpolicy import PathPolicy
from virtkit.model.domain import Domain, LifecycleAction, Nic
from virtkit.model.load import dump_domain
from virtkit.model.state import (
    ACTIVE_STATES,
    Action,
    State,
    allows,
    check_action,
    check_transition,
)
from virtkit.paths import StatePaths
from virtkit.qemu.argv import Layout
from virtkit.qemu.monitor import Monitor
from virtkit.qemu.process import QemuProcess
from virtkit.runtime import (
    blockjobs,
    devlayout,
    migration,
    orphans,
    poweroff,
    savefile,
    teardown,
)
from virtkit.runtime.confine import Confiner
from virtkit.runtime.events import EventBus
from virtkit.runtime.launcher import (
    CapsProvider,
    OpenTap,
    Running,
    TapProvider,
    launch,
    live_form,
)
from virtkit.runtime.operation import (
    MIGRATING_IN,
    InstallPhase,
    Operation,
    OpKind,
    RebootKind,
    ShutdownSeen,
    crash_policy,
    exit_outcome,
)
from virtkit.runtime.operation import (
    Vm as Vm,  # re-exported: the runtime and service name it from here
)
from virtkit.store.db import Store
from virtkit.unixsock import connect_unix

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
DESTROY_GRACE = 3.0
#: seconds a cleanly exited QEMU's last QMP events get to be read (see _on_exit)
EVENT_DRAIN_DELAY = 0.3
DEFAULT_SHUTDOWN_TIMEOUT = 120.0


def require_lock(vm: Vm, what: str) -> None:
    """A runtime step that must run under ``vm.lock`` checks it (as qemu.qmp's
    ``@require`` checks the runstate): a caller that forgot the lock fails at once."""
    assert vm.lock.locked(), f"{what} needs the lock of domain '{vm.name}'"


def requires_lock(method: Callable[Concatenate[Any, Vm, P], R]
                  ) -> Callable[Concatenate[Any, Vm, P], R]:
    """:func:`require_lock` for a method whose first argument is the :class:`Vm`."""
    @functools.wraps(method)
    def checked(self: Any, vm: Vm, /, *args: P.args, **kwargs: P.kwargs) -> R:
        require_lock(vm, method.__name__)
        return method(self, vm, *args, **kwargs)
    return checked


class Lifecycle:
    """Start, stop and supervise the QEMU processes of all domains."""

    def __init__(self, store: Store, bus: EventBus, paths: StatePaths,
                 caps_for: CapsProvider, spec_for: Callable[[str], Domain],
                 taps_for: TapProvider | None = None,
                 confiner: Confiner | None = None) -> None:
        self._taps_for = taps_for
        #: confines every QEMU (runtime/confine.py); None: QEMU runs as the daemon
        self.confiner = confiner
        #: the path policy of every file a guest is given (host/pathpolicy.py)
        self.policy = confiner.policy if confiner is not None else PathPolicy.for_root(paths.root)
        self._store = store
        self._bus = bus
        self._paths = paths
        self.paths = paths
        self._caps_for = caps_for
        self._spec_for = spec_for
        self._vms: dict[str, Vm] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: called right before every QEMU spawn with the domain it runs (the cluster's
        #: gate for HA VMs: arm the fence guard first, or refuse; service/cluster.py)
        self.spawn_gate: Callable[[Domain], None] | None = None

    def set_tap_provider(self, taps_for: TapProvider) -> None:
        """Open NIC taps with ``taps_for`` at every start (set once the networks exist)."""
        self._taps_for = taps_for

    # -- bookkeeping ------------------------------------------------------

    def vm(self, uuid: str, name: str | None = None) -> Vm:
        """The live record of a domain (created on first use, in its stored state)."""
        vm = self._vms.get(uuid)
        if vm is None:
            if name is None:
                raise NotFound(f"domain {uuid} not found")
            record = self._store.get_runtime(uuid)
            # setdefault: a worker thread (a request's info) may race the loop here
            vm = self._vms.setdefault(uuid, Vm(uuid, name, State(record.state),
                                               record.reason))
        elif name is not None:
            vm.name = name
        return vm

    def forget(self, uuid: str) -> None:
        self._vms.pop(uuid, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def live_change(self, uuid: str, name: str) -> AsyncIterator[Running]:
        """Hold the VM's lock over a change of its running devices (hotplug), then
        record the running configuration, so a daemon restart finds it."""
        vm = self.vm(uuid, name)
        async with vm.lock:
            running = vm.running
            if running is None or not allows(Action.LIVE_CHANGE, vm.state):
                raise StateError(f"domain '{vm.name}' is not running (it is {vm.state.value})",
                                 current=vm.state.value, requested="live change",
                                 fix="change its definition with --config instead")
            try:
                yield running
            finally:
                if vm.running is running:
                    self._record(vm)

    async def open_tap(self, domain: Domain, nic: Nic) -> tuple[OpenTap | None, bool]:
        """A tap for hot-adding ``nic`` to ``domain`` (None for user mode), and whether
        the domain's NICs use vhost-net."""
        caps, _binary = self._caps_for(domain)
        if nic.type == "user" or self._taps_for is None:
            return None, caps.vhost_net
        single = domain.model_copy(update={"nics": [nic]})
        taps = await asyncio.to_thread(self._taps_for, single)
        return taps.get(0), caps.vhost_net

    def finisher(self, uuid: str, name: str) -> Callable[[Callable[[], Awaitable[None]]], None]:
        """Run the end of a device removal the guest acknowledges late, then record it."""
        vm = self.vm(uuid, name)

        def schedule(work: Callable[[], Awaitable[None]]) -> None:
            async def run() -> None:
                try:
                    await asyncio.wait_for(work(), 3600)
                except (asyncio.CancelledError, TimeoutError, VirtkitError):
                    return  # QEMU ended, or the guest never let go
                async with vm.lock:
                    if vm.running is not None:
                        self._record(vm)
                self._bus.publish("device-removed", vm.uuid, domain=vm.name, uuid=vm.uuid,
                                  state=vm.state.value, reason="the guest released it")
            self._spawn(run())
        return schedule

    def _set_state(self, vm: Vm, state: State, reason: str = "", *, event: str | None = None,
                   **detail: Any) -> None:
        check_transition(vm.state, state, vm.name)
        vm.state, vm.reason = state, reason
        self._record(vm)
        if event:
            self._bus.publish(event, vm.uuid, domain=vm.name, uuid=vm.uuid,
                              state=state.value, reason=reason, **detail)

    def _operate(self, vm: Vm, op: Operation | None = None) -> Operation:
        """THE place a VM's operation changes (None: nothing in flight any more).  A
        power-off or reboot asked again keeps the deadline the first one started."""
        new = op if op is not None else Operation()
        if new.kind in (OpKind.SHUTDOWN, OpKind.REBOOT) and new.timer is None:
            new.timer = vm.op.timer
        vm.op = new
        return new

    @requires_lock
    def record(self, vm: Vm) -> None:
        """Write the runtime record after the caller (holding ``vm.lock``) changed the
        running configuration (a snapshot moved a disk onto an overlay)."""
        self._record(vm)

    def _record(self, vm: Vm) -> None:
        """Write the runtime record: state, pid, and the running configuration."""
        running = vm.running
        extra: dict[str, Any] = running.record() if running else {}
        self._store.set_runtime(
            vm.uuid, state=vm.state.value, reason=vm.reason,
            pid=running.process.pid if running else None,
            pid_start=running.process.start_time if running else None,
            started=vm.started if running else None, extra=extra,
        )

    # -- start ---------------------------------------------------------------

    async def start(self, uuid: str, name: str, *, paused: bool = False,
                    boot_spec: Domain | None = None, boot_after_install: bool = True) -> None:
        """Start the domain from its spec, or once from ``boot_spec`` (an install phase:
        when the guest powers off or reboots, the spec boots, unless
        ``boot_after_install`` is False)."""
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.START, vm.state, vm.name)
            self._refuse_preserved(vm, Action.START)
            install = InstallPhase(boot_spec, boot_after_install) \
                if boot_spec is not None else None
            await self._start_locked(vm, paused=paused, install=install)

    @staticmethod
    def _refuse_preserved(vm: Vm, action: Action) -> None:
        """A crashed domain whose QEMU is kept for inspection must be destroyed first."""
        if vm.running is not None:
            raise StateError(
                f"cannot {action.value} domain '{vm.name}': its crashed QEMU (pid "
                f"{vm.running.process.pid}) is preserved for inspection",
                current=vm.state.value, requested=action.value,
                fix=f"inspect it, then 'virtkit destroy {vm.name}'")

    async def _start_locked(self, vm: Vm, *, paused: bool, incoming_fd: int | None = None,
                            event: str = "started", install: InstallPhase | None = None,
                            run_spec: Domain | None = None, incoming: str | None = None,
                            reason: str | None = None, layout: Layout | None = None) -> None:
        domain = install.spec if install is not None else run_spec or self._spec_for(vm.uuid)
        before = vm.state

        def record_spawn(process: QemuProcess) -> None:
            self._store.set_runtime(vm.uuid, state=State.PAUSED.value, reason="starting",
                                    pid=process.pid, pid_start=process.start_time)

        try:
            running = await launch(domain, self._paths, self._caps_for,
                                   incoming_fd=incoming_fd, incoming=incoming,
                                   on_spawn=record_spawn,
                                   taps_for=self._taps_for, confiner=self.confiner,
                                   on_event=lambda e: self._on_qmp_event(vm, e),
                                   layout=layout, before_spawn=self.spawn_gate)
        except BaseException:
            self._store.set_runtime(vm.uuid, state=before.value, reason=vm.reason)
            raise
        self._adopt(vm, running)
        vm.install = install
        self._set_state(vm, State.PAUSED, "starting")
        try:
            if incoming_fd is not None:
                await blockjobs.await_migration(running.monitor, "restoring the saved state")
            if not paused:
                await running.monitor.cont()
        except BaseException:
            await self._kill(vm, "start failed")
            raise
        state = State.PAUSED if paused else State.RUNNING
        if reason is None:
            reason = "user" if paused else "installing" if install is not None else "booted"
        self._set_state(vm, state, reason, event=event)

    def _adopt(self, vm: Vm, running: Running) -> None:
        vm.running = running
        vm.exited.clear()
        self._operate(vm)
        vm.shutdown_seen = None
        vm.started = time.time()
        vm.links = {}
        running.process.watch(lambda: self._on_exit(vm, running))

    # -- stop ------------------------------------------------------------------

    async def destroy(self, uuid: str, name: str) -> None:
        """Stop at once: QMP ``quit``, then SIGTERM, then SIGKILL."""
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.DESTROY, vm.state, vm.name)
            await self._kill(vm, "destroyed")

    async def _kill(self, vm: Vm, reason: str, kind: OpKind = OpKind.STOP) -> None:
        """End QEMU on purpose (``kind`` STOP, or PANIC): its exit is recorded with
        ``reason``."""
        running = vm.running
        if running is None:
            self._set_state(vm, State.SHUTOFF, reason, event="stopped")
            return
        self._operate(vm, Operation(kind, reason=reason))
        with contextlib.suppress(Exception):
            await running.monitor.quit(timeout=DESTROY_GRACE)
        if not await running.process.wait(DESTROY_GRACE):
            await running.process.kill()
        await asyncio.wait_for(vm.exited.wait(), 10.0)

    async def shutdown(self, uuid: str, name: str, *, timeout: float | None = None,
                       wait: bool = False, reboot: bool = False,
                       modes: tuple[str, ...] = ("acpi",)
                       ) -> RebootKind | None:
        """Power-off (or reboot) by ACPI or through the guest agent, tried in the order of
        ``modes`` (virsh's ``--mode agent,acpi``); the guest gets ``timeout`` seconds.
        A reboot's kind is returned: in place, or a new QEMU for a changed definition."""
        vm = self.vm(uuid, name)
        timeout = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
        async with vm.lock:
            check_action(Action.REBOOT if reboot else Action.SHUTDOWN, vm.state, vm.name)
            op = await self._ask_power_off(vm, reboot, modes, timeout)
        pending = op.reboot
        if not wait:
            return pending
        if pending == "in-place":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(op.done.wait(), timeout)
            finished = op.rebooted
        else:
            finished = await self._wait_exited(vm, timeout)
        if not finished:
            raise TimeoutExpired(
                f"domain '{vm.name}' did not {'reboot' if reboot else 'shut down'} "
                f"within {timeout:g}s; the guest ignored the ACPI request",
                fix=f"use 'virtkit destroy {vm.name}' to stop it at once",
            )
        return pending

    async def _ask_power_off(self, vm: Vm, reboot: bool, modes: tuple[str, ...],
                             timeout: float) -> Operation:
        """Begin the SHUTDOWN or REBOOT operation and ask the guest (under the lock)."""
        require_lock(vm, "_ask_power_off")
        assert vm.running is not None
        pending = self._reboot_kind(vm) if reboot else None
        if pending == "in-place":  # a guest power-off then pauses QEMU, to reset it
            await poweroff.pause_on_power_off(vm.running)
        before = vm.op
        op = self._operate(vm, Operation(OpKind.REBOOT if reboot else OpKind.SHUTDOWN,
                                         reboot=pending))
        try:
            used = await poweroff.request_shutdown(vm.name, vm.running, modes,
                                                pending == "in-place")
        except BaseException:
            if vm.op is op:
                self._operate(vm, before)
            if pending == "in-place":
                await poweroff.restore_power_off(vm.running)
            raise
        if vm.state is State.RUNNING and not op.done.is_set():
            self._set_state(vm, State.SHUTTING_DOWN, "reboot" if reboot else used)
        if op.timer is None and vm.op is op:
            op.timer = self._deadline(vm, timeout)
        return op

    def _reboot_kind(self, vm: Vm) -> RebootKind:
        """In place when this QEMU runs what the definition says (no install phase, no
        changed definition or device layout, on_reboot=restart); else a new QEMU."""
        running = vm.running
        assert running is not None
        assert running.live is not None
        stored = self._spec_for(vm.uuid)
        same = vm.install is None and not running.layout_changed \
            and stored.on_reboot is LifecycleAction.RESTART \
            and live_form(stored) == running.live
        return "in-place" if same else "new-process"

    async def _reset_after_power_off(self, vm: Vm) -> None:
        """The guest powered off for an in-place reboot and QEMU paused (set-action):
        reset the machine and let it run again, as libvirt's "fake reboot" does."""
        async with vm.lock:
            running = vm.running
            if running is None or not vm.op.in_place_reboot:
                return
            try:
                await running.monitor.system_reset()
                await poweroff.restore_power_off(running)
                await running.monitor.cont()
            except VirtkitError as exc:
                log.error("in-place reboot of %s failed: %s", vm.name, exc)
                return
            vm.shutdown_seen = None
            self._rebooted(vm)

    def _rebooted(self, vm: Vm) -> None:
        op = vm.op
        op.rebooted = True
        op.done.set()
        self._operate(vm)
        self._set_state(vm, State.RUNNING, "rebooted", event="rebooted")

    async def _wait_exited(self, vm: Vm, timeout: float) -> bool:
        try:
            await asyncio.wait_for(vm.exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _deadline(self, vm: Vm, timeout: float) -> asyncio.Task[None]:
        task = asyncio.create_task(self._shutdown_deadline(vm, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown_deadline(self, vm: Vm, timeout: float) -> None:
        """If the guest ignores the power-off (or reboot) it was asked for, mark it
        running again and say so."""
        me = asyncio.current_task()
        try:
            exited = await self._wait_exited(vm, timeout)
            op = vm.op
            if not exited and op.timer is me and vm.state is State.SHUTTING_DOWN \
                    and vm.running is not None:
                if op.in_place_reboot:
                    await poweroff.restore_power_off(vm.running)
                op.done.set()
                self._operate(vm)
                self._set_state(vm, State.RUNNING, "shutdown timed out",
                                event="shutdown-timeout", timeout=timeout)
        finally:
            if vm.op.timer is me:
                vm.op.timer = None

    # -- pause, reset, save, restore ------------------------------------------

    async def suspend(self, uuid: str, name: str) -> None:
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.SUSPEND, vm.state, vm.name)
            assert vm.running is not None
            await vm.running.monitor.stop()
            self._set_state(vm, State.PAUSED, "user", event="paused")

    async def resume(self, uuid: str, name: str) -> None:
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.RESUME, vm.state, vm.name)
            assert vm.running is not None
            await vm.running.monitor.cont()
            self._set_state(vm, State.RUNNING, "user", event="resumed")

    async def reset(self, uuid: str, name: str) -> None:
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.RESET, vm.state, vm.name)
            assert vm.running is not None
            await vm.running.monitor.system_reset()
            self._bus.publish("reset", vm.uuid, domain=vm.name, uuid=vm.uuid,
                              state=vm.state.value, reason="user")

    async def save(self, uuid: str, name: str, path: Path, *, resume: bool | None = None,
                   progress: blockjobs.Progress | None = None, drop_cache: bool = False,
                   reason: str = "saved") -> None:
        """Write the VM's memory and device state to ``path`` and stop it (virsh save,
        managedsave).  ``resume`` overrides whether a restore resumes the vCPUs (virsh
        --running/--paused; default: as they are now); ``drop_cache`` drops the file's
        pages from the host's page cache once it is on disk (virsh --bypass-cache)."""
        vm = self.vm(uuid, name)
        async with vm.lock:
            check_action(Action.SAVE, vm.state, vm.name)
            running = vm.running
            assert running is not None
            was_running = vm.state is State.RUNNING
            partial = path.with_name(f".{path.name}.partial")
            try:
                await self._save_to(vm, running, partial, was_running,
                                    was_running if resume is None else resume,
                                    progress, drop_cache)
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                if was_running and vm.running is running:
                    with contextlib.suppress(Exception):
                        await running.monitor.cont()
                raise
            await self._kill(vm, reason)
            self._bus.publish("saved", vm.uuid, domain=vm.name, uuid=vm.uuid,
                              state=vm.state.value, reason=reason, path=str(path))

    async def _save_to(self, vm: Vm, running: Running, partial: Path, was_running: bool,
                       resume: bool, progress: blockjobs.Progress | None,
                       drop_cache: bool) -> None:
        monitor = running.monitor
        layout = await devlayout.check_restorable(vm.name, running)
        await monitor.stop()
        with open(partial, "xb") as stream:  # noqa: ASYNC230 - creating it is immediate; QEMU writes the stream
            # the running configuration (hot-plugged devices included, where QEMU put
            # them): restore builds QEMU with exactly the devices the stream carries
            live = running.live if running.live is not None else self._spec_for(vm.uuid)
            savefile.write_header(stream, dump_domain(live), running=resume,
                                  layout=layout.to_dict() if layout is not None else None)
            monitor.send_fd(stream.fileno())
            await monitor.getfd("virtkit-save")
            # QEMU's default migration limit (128 MiB/s) makes no sense for a local file
            await monitor.migrate_set_parameters({"max-bandwidth": 2**40})
            await monitor.migrate("fd:virtkit-save")
            await blockjobs.await_migration(monitor, "saving", progress)
            stream.flush()
            os.fsync(stream.fileno())
            if drop_cache:
                os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    async def restore(self, uuid: str, name: str, fd: int, *, running: bool,
                      saved: Domain | None = None, layout: Any = None) -> None:
        """Start QEMU from a save file opened at ``fd`` (positioned after the header),
        with the device set ``saved`` the file was written from (and the recorded
        ``layout`` of its hot-added devices, as the header has it)."""
        vm = self.vm(uuid, name)
        placed = devlayout.parse(layout, saved, "the save file's device layout") \
            if saved is not None else None
        async with vm.lock:
            check_action(Action.RESTORE, vm.state, vm.name)
            self._refuse_preserved(vm, Action.RESTORE)
            await self._start_locked(vm, paused=not running, incoming_fd=fd, event="restored",
                                     run_spec=saved, layout=placed)

    # -- for operations that hold ``vm.lock`` themselves (snapshots) ------------

    @requires_lock
    async def kill_locked(self, vm: Vm, reason: str) -> None:
        """Stop QEMU at once (the caller holds ``vm.lock``)."""
        await self._kill(vm, reason)

    @requires_lock
    async def start_locked(self, vm: Vm, *, paused: bool, incoming_fd: int | None = None,
                           event: str = "started", layout: Any = None) -> None:
        """Start QEMU from the stored spec (the caller holds ``vm.lock``); ``layout``:
        the recorded device layout of the run whose memory image it loads."""
        self._refuse_preserved(vm, Action.START)
        placed = devlayout.parse(layout, self._spec_for(vm.uuid), "the device layout")
        await self._start_locked(vm, paused=paused, incoming_fd=incoming_fd, event=event,
                                 layout=placed)

    @requires_lock
    async def start_incoming(self, vm: Vm, spec: Domain, layout: Any = None) -> Running:
        """Start QEMU paused with ``-incoming defer`` from ``spec`` (the running
        configuration a migration source sent, its hot-added devices placed as
        ``layout`` says); the caller holds ``vm.lock`` and then sends
        ``migrate-incoming`` (runtime/migration.py)."""
        self._refuse_preserved(vm, Action.START)
        placed = devlayout.parse(layout, spec, "the migration's device layout")
        await self._start_locked(vm, paused=True, run_spec=spec, incoming="defer",
                                 event="migrating-in", reason=MIGRATING_IN, layout=placed)
        self._operate(vm, Operation(OpKind.MIGRATING_IN))
        assert vm.running is not None
        return vm.running

    @requires_lock
    def set_state(self, vm: Vm, state: State, reason: str, event: str | None = None, *,
                  op: OpKind = OpKind.NONE) -> None:
        """Record a state change the caller made through QMP (it holds ``vm.lock``): a
        new state, or the same one for a new reason (an incoming migration kept paused
        goes from 'migrating in' to 'migrated').  It ends the operation in flight, or
        begins ``op`` (an outgoing migration's switch-over)."""
        self._operate(vm, Operation(op))
        if state is not vm.state or reason != vm.reason:
            self._set_state(vm, state, reason, event=event)

    # -- QEMU events and exit --------------------------------------------------

    def _on_qmp_event(self, vm: Vm, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("data", {})
        if kind == "SHUTDOWN":
            vm.shutdown_seen = ShutdownSeen.from_event(data)
            if vm.op.in_place_reboot and vm.shutdown_seen.guest:
                self._spawn(self._reset_after_power_off(vm))
        elif kind == "RESET" and vm.op.in_place_reboot and data.get("guest"):
            self._rebooted(vm)  # the guest agent's reboot: the guest reset itself
        elif kind == "GUEST_PANICKED":
            self._spawn(self._on_panic(vm, data))
        elif kind in ("STOP", "RESUME") and not vm.lock.locked() and vm.running is not None:
            if kind == "STOP" and vm.state is State.RUNNING:
                self._set_state(vm, State.PAUSED, "paused by QEMU", event="paused")
            elif kind == "RESUME" and vm.state is State.PAUSED:
                self._set_state(vm, State.RUNNING, "resumed by QEMU", event="resumed")
        elif kind == "VSERPORT_CHANGE" and vm.running is not None \
                and data.get("id") == "channel0":
            vm.running.agent_open = bool(data.get("open"))
            self._bus.publish("agent", vm.uuid, domain=vm.name, uuid=vm.uuid,
                              state=vm.state.value,
                              reason="connected" if vm.running.agent_open else "disconnected")
        elif kind == "WATCHDOG":
            self._bus.publish("watchdog", vm.uuid, domain=vm.name, uuid=vm.uuid,
                              state=vm.state.value, reason=str(data.get("action")))

    async def _on_panic(self, vm: Vm, data: dict[str, Any]) -> None:
        policy = self._spec_for(vm.uuid).on_crash
        async with vm.lock:
            if vm.running is None:
                return
            if policy is LifecycleAction.PRESERVE:
                self._set_state(vm, State.CRASHED, "guest panicked", event="crashed",
                                panic=data.get("info"))
                return
            await self._kill(vm, "panic", OpKind.PANIC)
        self._bus.publish("crashed", vm.uuid, domain=vm.name, uuid=vm.uuid,
                          state=State.CRASHED.value, reason="guest panicked")
        await self._after_crash(vm, policy)

    def _on_exit(self, vm: Vm, running: Running) -> None:
        """Called by the pidfd watcher the moment QEMU ends.

        A clean exit (status 0) with no SHUTDOWN event seen yet is concluded a moment
        later: the pidfd can wake the loop before the QMP socket's last bytes (that very
        event) are read, and a guest power-off must not be taken for a crash."""
        if vm.running is not running:
            return
        if running.process.exit_status() == 0 and vm.shutdown_seen is None \
                and not vm.op.ends_qemu:
            asyncio.get_running_loop().call_later(EVENT_DRAIN_DELAY, self._conclude_exit,
                                                  vm, running)
            return
        self._conclude_exit(vm, running)

    def _conclude_exit(self, vm: Vm, running: Running) -> None:
        """Record why QEMU ended, clean up after it, and apply the exit policy."""
        if vm.running is not running:
            return
        vm.running = None
        status = running.process.exit_status()
        teardown.after_exit(running, self.confiner, self._spawn)
        install, vm.install = vm.install, None
        domain = install.spec if install is not None else self._spec_for(vm.uuid)
        outcome = exit_outcome(vm.op, install, vm.shutdown_seen, status,
                               on_poweroff=domain.on_poweroff, on_crash=crash_policy(domain))
        self._operate(vm)
        self._set_state(vm, outcome.state, outcome.reason, event=outcome.event,
                        exit_status=status)
        vm.exited.set()
        if outcome.restart is not None:
            self._spawn(self._restart(vm, outcome.restart))
        elif outcome.ends_transient:
            self._forget_if_transient(vm)

    def _forget_if_transient(self, vm: Vm) -> None:
        """A transient domain (virsh create) is undefined when it stops for good."""
        try:
            transient = self._spec_for(vm.uuid).transient
        except VirtkitError:
            return
        if not transient:
            return
        self._store.delete_domain(vm.uuid)
        self.forget(vm.uuid)
        self._bus.publish("undefined", vm.uuid, domain=vm.name, uuid=vm.uuid,
                          state=vm.state.value, reason="transient domain stopped")

    async def _after_crash(self, vm: Vm, policy: LifecycleAction) -> None:
        if policy is LifecycleAction.RESTART:
            await self._restart(vm, "restarted")

    async def _restart(self, vm: Vm, event: str) -> None:
        async with vm.lock:
            if not allows(Action.START, vm.state):
                return
            try:
                await self._start_locked(vm, paused=False, event=event)
            except Exception as exc:
                log.error("could not restart %s: %s", vm.name, exc)
                self._bus.publish("error", vm.uuid, domain=vm.name, uuid=vm.uuid,
                                  state=vm.state.value, reason=f"restart failed: {exc}")

    # -- daemon start ------------------------------------------------------------

    async def reattach(self, domains: dict[str, str]) -> list[str]:
        """Adopt the QEMU processes an earlier daemon left; return what was repaired."""
        notes: list[str] = []
        for uuid, record in self._store.all_runtime().items():
            name = domains.get(uuid)
            if name is None:
                continue
            vm = self.vm(uuid, name)
            if record.pid is None or record.pid_start is None:
                if vm.state in ACTIVE_STATES:
                    self._set_state(vm, State.SHUTOFF, "daemon restarted", event="stopped")
                continue
            process = QemuProcess.adopt(record.pid, record.pid_start, uuid)
            if process is None:
                self._set_state(vm, State.SHUTOFF, "QEMU ended while the daemon was down",
                                event="stopped")
                notes.append(f"{name}: QEMU pid {record.pid} had ended; marked shutoff")
                continue
            notes.append(await self._reattach_one(vm, process, record.reason, record.extra))
        notes += self._kill_orphans(domains)
        if self.confiner is not None:
            alive = {uuid for uuid, vm in self._vms.items() if vm.running is not None}
            notes += await asyncio.to_thread(self.confiner.reconcile, alive)
        return notes

    def _kill_orphans(self, domains: dict[str, str]) -> list[str]:
        """Kill QEMUs of our domains that no record names (see runtime/orphans.py)."""
        known = {vm.running.process.pid for vm in self._vms.values() if vm.running}
        notes = []
        for orphan in orphans.find_orphans(self._paths.logs, set(domains), known):
            if orphans.kill_orphan(orphan):
                notes.append(f"{domains[orphan.uuid]}: unrecorded QEMU pid {orphan.pid} (a "
                             "start interrupted by a daemon crash) killed")
        return notes

    async def _reattach_one(self, vm: Vm, process: QemuProcess, reason: str,
                            extra: dict[str, Any]) -> str:
        run_dir = self._paths.run_dir(vm.uuid)
        monitor = Monitor(vm.name)
        monitor.subscribe(lambda e: self._on_qmp_event(vm, e))
        try:
            await monitor.connect(connect_unix(run_dir / "qmp.sock", timeout=5.0))
            status = (await monitor.query_status())["status"]
        except Exception as exc:
            status = "unknown"
            log.error("cannot reach the monitor of %s: %s", vm.name, exc)
        running = Running(process, monitor, run_dir, extra.get("accel", "?"), extra.get("vnc", {}),
                          {int(k): v for k, v in extra.get("taps", {}).items()})
        if self.confiner is not None:
            running.confinement = self.confiner.adopt(vm.uuid)
        try:
            running.attach_live(self._spec_for(vm.uuid), extra)
        except VirtkitError as exc:  # a record from an older daemon, or a damaged one
            log.error("cannot read the live configuration of %s: %s", vm.name, exc)
        self._adopt(vm, running)
        if status == "prelaunch" and reason == "starting":
            await self._kill(vm, "start interrupted by a daemon crash")
            return f"{vm.name}: half-started QEMU pid {process.pid} removed"
        if status == "shutdown":
            await self._kill(vm, "shutdown")
            return f"{vm.name}: QEMU pid {process.pid} had shut down; cleaned up"
        if status != "unknown" and reason != MIGRATING_IN:  # the record's, not an operation
            status = await migration.abandon_outgoing(monitor, status)
        if vm.state is not State.CRASHED:
            paused = status in ("paused", "prelaunch", "suspended", *migration.STOPPED_BY)
            state = State.PAUSED if paused else State.RUNNING
            vm.state = state  # QEMU's own status is the truth here, whatever was recorded
            # an incoming migration goes on: the source may still finish or delete it
            self._operate(vm, Operation.from_record(reason, status))
            self._set_state(vm, state, MIGRATING_IN if vm.migrating_in else "reattached")
        return f"{vm.name}: reattached to QEMU pid {process.pid} ({status})"

    async def close(self) -> None:
        """Detach from every QEMU (they keep running) and finish background tasks."""
        for vm in self._vms.values():
            if vm.op.timer is not None:
                vm.op.timer.cancel()
            if vm.running is not None:
                vm.running.process.close()
                await vm.running.monitor.close()
        for task in list(self._tasks):
            task.cancel()
