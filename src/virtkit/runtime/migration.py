"""Live migration: the QEMU (QMP) steps of both ends; the protocol is docs/migration.md.

The destination end: :func:`listen_incoming` (after ``Lifecycle.start_incoming``
started QEMU with ``-incoming defer``) and :func:`finish_incoming`.  The source
end: :func:`migrate_out` drives one outgoing migration to the point where the
destination runs the VM, talking to the destination daemon through a
:class:`Destination` (implemented by the service layer's peer client: the runtime
knows nothing of HTTP).  Every failure before the destination runs the VM cancels
the migration, asks the destination to remove its QEMU, and leaves the VM running
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtkit.errors import (
    Conflict,
    DaemonUnreachable,
    NotFound,
    QemuError,
    TimeoutExpired,
    VirtkitError,
)
from virtkit.qemu.monitor import Monitor
from virtkit.qemu.qmp import MigrationStatus
from virtkit.runtime import storagecopy

log = logging.getLogger(__name__)

#: capabilities both ends must agree on (QEMU refuses a return path only one side has)
BOTH_ENDS = ("events", "return-path")
#: the source also stops before handing over, so a dead destination fails the migration
SOURCE_ONLY = ("pause-before-switchover",)
POLL = 0.05
#: QEMU run states a migration leaves the guest stopped in (not "paused" by anyone)
STOPPED_BY = ("inmigrate", "postmigrate", "finish-migrate")
#: query-migrate states of an outgoing migration still under way
UNDER_WAY = ("setup", "active", "pre-switchover", "device", "wait-unplug")
DEFAULT_TIMEOUT = 3600.0
#: the source asks the destination about the incoming migration this often between
#: ``incoming`` and ``finish`` (libvirt's keepalive); a refused connection or an
#: answer that it is gone stops the migration at once, this many unanswered asks too
KEEPALIVE_INTERVAL = 1.0
KEEPALIVE_MISSES = 3
#: the destination removes an unfinished incoming migration whose source has not
#: asked about it for this long (sent in the incoming call)
KEEPALIVE_SILENCE = 30.0


class MigrationOutcomeUnknown(VirtkitError):
    """The destination was asked to run the VM and no answer came: it may be running
    there, so the source must neither continue nor kill its copy."""

    http_status = 504


class RequestNotDelivered(DaemonUnreachable):
    """The request never reached the destination daemon (its connection was refused,
    or could not be made): it cannot have acted on it."""


class DestinationLost(VirtkitError):
    """The destination no longer holds the incoming migration (its daemon is down or
    restarted, or it removed it): the migration is stopped and the VM runs on here."""

    http_status = 502


class Destination(Protocol):
    """The destination daemon, as the source daemon sees it (service/peer.py)."""

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def status(self, migration: str) -> dict[str, Any]:
        """The incoming migration there (the keepalive); RequestNotDelivered when its
        daemon does not take connections, NotFound when it has no such migration."""
        ...

    async def finish(self, migration: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run the VM there; MigrationOutcomeUnknown when no answer came."""
        ...

    async def abort(self, migration: str) -> Any: ...


class PostcopyFailed(VirtkitError):
    """A post-copy migration failed after the switch-over: the destination ran the
    guest without all its memory and the source no longer runs it (the guest is
    lost; libvirt documents the same for post-copy)."""

    http_status = 500


@dataclass
class Options:
    """What ``virtkit migrate`` asked for (virsh's flag names)."""

    persistent: bool = False
    undefine_source: bool = False
    auto_converge: bool = False
    bandwidth_mib: int | None = None
    downtime_ms: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    #: --copy-storage-all: (device id, path on the destination) of each disk to copy
    copy_disks: list[tuple[str, str]] = field(default_factory=list)
    #: --copy-storage-inc: copy only top images; the destination has the backing chains
    copy_incremental: bool = False
    #: --postcopy: allow the switch to post-copy (migrate-postcopy, or
    #: --postcopy-after-precopy: after the first full pass over the memory)
    postcopy: bool = False
    postcopy_after_precopy: bool = False
    #: --postcopy-bandwidth: cap of the stream after the switch (QEMU's default: none)
    postcopy_bandwidth_mib: int | None = None
    #: the guest is paused here: it stays paused after a failure (never resumed by
    #: the migration's own clean-up) and arrives paused
    source_paused: bool = False
    #: --suspend: leave the guest paused on the destination
    suspend: bool = False


@dataclass
class Job:
    """One outgoing migration as domjobinfo/domjobabort see it."""

    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    mirrors: storagecopy.Mirrors | None = None
    postcopy: bool = False  # the migration may switch to post-copy
    postcopy_started: bool = False  # migrate-start-postcopy was sent: no way back
    #: set by virtkit migrate-postcopy: switch to post-copy now
    start_postcopy: asyncio.Event = field(default_factory=asyncio.Event)
    #: the outgoing stream was started (before that, query-migrate reports whatever
    #: migration this QEMU saw last: for a VM that arrived by migration, 'completed')
    streaming: bool = False
    #: time.monotonic() when the vCPUs were seen stopped for the switch-over
    stopped: float = 0.0
    #: why ``aborted`` was set: domjobabort, or the keepalive lost the destination
    why: str = "the migration was cancelled (domjobabort)"
    lost: bool = False
    #: bytes the disk mirrors copied (0 when no disk was copied: shared storage)
    disk_bytes: int = 0

    def stop(self, why: str, *, lost: bool = False) -> None:
        """Stop the migration at its next check (the caller cancels the stream)."""
        if not self.aborted.is_set():
            self.why, self.lost = why, lost
            self.aborted.set()

    def check(self) -> None:
        if self.aborted.is_set():
            raise (DestinationLost if self.lost else Conflict)(self.why)


def tcp_uri(host: str, port: int) -> str:
    """QEMU's ``tcp:HOST:PORT``, with an IPv6 address in brackets."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"tcp:{host}:{port}"


async def set_capabilities(monitor: Monitor, names: tuple[str, ...]) -> None:
    await monitor.migrate_set_capabilities(dict.fromkeys(names, True))


# -- the destination end ---------------------------------------------------------

async def listen_incoming(monitor: Monitor, address: str, *, postcopy: bool = False) -> str:
    """Make the paused ``-incoming defer`` QEMU listen on ``address`` (a port QEMU
    picks); the ``tcp:`` URI the source must send to."""
    await set_capabilities(monitor, BOTH_ENDS + (("postcopy-ram",) if postcopy else ()))
    await monitor.migrate_incoming(tcp_uri(address, 0))
    info = await monitor.query_migrate()
    for where in info.get("socket-address", []):
        if where.get("type") == "inet" and where.get("port"):
            return tcp_uri(address, int(where["port"]))
    raise QemuError("the incoming QEMU did not say which port it listens on",
                    reply=info)


async def finish_incoming(monitor: Monitor, *, run: bool = True,
                          settle: float = 30.0) -> None:
    """Check the whole state arrived (post-copy: the devices' state, the memory
    follows), then let the guest run (unless ``run`` is false: a paused guest, or
    --suspend, stays paused).

    The source sees ``postcopy-active`` as soon as it has *sent* the devices' state;
    this end may still be loading it for a moment (status ``active``, run state
    ``inmigrate``), so that is waited for up to ``settle`` seconds, as libvirt's
    destination waits for its own MIGRATION event.  Refusing there would lose the
    guest: after the switch the source cannot run it any more."""
    deadline = time.monotonic() + settle
    while True:
        info = await monitor.query_migrate()
        migrated = info.get("status")
        status = (await monitor.query_status())["status"]
        arrived = migrated in ("completed", "postcopy-active")
        if arrived and status == "paused":
            break
        still_loading = migrated == "active" or (arrived and status == "inmigrate")
        if not still_loading or time.monotonic() > deadline:
            raise Conflict(f"the incoming migration is not complete here "
                           f"(status {migrated or 'unknown'}, the QEMU is '{status}')")
        await asyncio.sleep(POLL)
    if run:
        await monitor.cont()


# -- the source end --------------------------------------------------------------

async def wait_status(monitor: Monitor, wanted: set[str], deadline: float,
                      what: str, job: Job | None = None) -> MigrationStatus:
    """Wait until ``query-migrate``'s status is one of ``wanted``; failed/cancelled
    raise QemuError with QEMU's reason, and so does ``job`` being stopped
    (domjobabort, the destination lost).  Woken by QEMU's MIGRATION events (the
    ``events`` capability), with polling as the fallback: at ``pre-switchover`` the
    guest is stopped, so every millisecond of waiting here is downtime."""
    event = monitor.expect("MIGRATION")
    try:
        while True:
            if job is not None:
                job.check()
            if event.done():  # registered again before asking, so no change is missed
                event = monitor.expect("MIGRATION")
            info = await monitor.query_migrate()
            status = info.get("status")
            if status in wanted:
                return info
            if status in ("failed", "cancelled"):
                raise QemuError(f"{what}: the migration {status}"
                                + (f": {info['error-desc']}" if info.get("error-desc")
                                   else ""))
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"{what}: not done in time (status {status})",
                                     fix="raise --timeout, or --bandwidth")
            await asyncio.wait({event}, timeout=POLL)
    finally:
        event.cancel()


async def configure_source(monitor: Monitor, options: Options) -> None:
    caps = BOTH_ENDS + SOURCE_ONLY + (("auto-converge",) if options.auto_converge else ()) \
        + (("postcopy-ram",) if options.postcopy else ())
    await set_capabilities(monitor, caps)
    params: dict[str, Any] = {
        # QEMU's default 128 MiB/s cap is for WANs; no cap unless asked
        "max-bandwidth": (options.bandwidth_mib or 0) * 2**20 or 2**40}
    if options.downtime_ms is not None:
        params["downtime-limit"] = options.downtime_ms
    if options.postcopy and options.postcopy_bandwidth_mib:
        params["max-postcopy-bandwidth"] = options.postcopy_bandwidth_mib * 2**20
    await monitor.migrate_set_parameters(params)


async def cancel(monitor: Monitor, *, resume: bool = True) -> None:
    """Cancel an outgoing migration and make sure the guest runs here again (stays
    paused, when ``resume`` is false: it was paused before the migration)."""
    try:  # no status: the stream never started (a failed disk copy), nothing to cancel
        started = (await monitor.query_migrate()).get("status") is not None
    except VirtkitError:
        started = True
    if started:
        with contextlib.suppress(VirtkitError):
            await monitor.migrate_cancel()
        with contextlib.suppress(VirtkitError):
            await wait_status(monitor, {"cancelled", "failed", "completed", "none"},
                              time.monotonic() + 30, "cancelling")
    if not resume:
        return
    with contextlib.suppress(VirtkitError):
        if (await monitor.query_status())["status"] != "running":
            await monitor.cont()


async def abandon_outgoing(monitor: Monitor, status: str) -> str:
    """After a daemon restart: an outgoing migration nobody drives any more is
    cancelled and the guest runs on here (with pause-before-switchover QEMU would
    otherwise wait at pre-switchover for ever).  A *completed* one is left stopped:
    the destination may run the VM.  Returns QEMU's run status afterwards."""
    try:
        # disk mirrors of a migration still copying storage (no stream yet)
        await storagecopy.cancel_leftovers(monitor)
        state = (await monitor.query_migrate()).get("status")
        if state not in UNDER_WAY:
            return status
        log.warning("cancelling an outgoing migration left by an earlier daemon")
        await cancel(monitor)
        return str((await monitor.query_status())["status"])
    except VirtkitError as exc:
        log.error("cannot check for an abandoned migration: %s", exc)
        return status


def finish_body(options: Options) -> dict[str, Any]:
    """What the destination's finish call is told: keep the definition, and whether
    the guest stays paused there (it was paused here, or --suspend)."""
    return {"persistent": options.persistent,
            "paused": options.source_paused or options.suspend}


@dataclass
class Hooks:
    """What the service layer is told during an outgoing migration."""

    #: the source's vCPUs stopped for the switch-over (record paused/'migrating'
    #: before the destination can run the VM: one runner per VM, reported states too)
    stopped: Callable[[], None] = lambda: None
    #: finish is about to be sent (from here a lost answer leaves the outcome unknown)
    finishing: Callable[[], None] = lambda: None


async def keepalive(destination: Destination, migration: str, job: Job,
                    interval: float | None = None, misses: int | None = None) -> None:
    """Ask the destination about the incoming migration every ``interval`` seconds
    until cancelled; stop the job when it is gone: its daemon refuses connections (it
    died: a restarted one removes unfinished incoming migrations), it no longer has
    the migration, or ``misses`` asks in a row got no answer."""
    interval = interval or KEEPALIVE_INTERVAL
    misses = misses or KEEPALIVE_MISSES
    failures = 0
    while True:
        await asyncio.sleep(interval)
        try:
            answer = await destination.status(migration)
        except RequestNotDelivered as exc:
            job.stop(f"the destination daemon is gone ({exc}); the migration was "
                     "stopped and the VM runs on here", lost=True)
            return
        except NotFound:
            job.stop("the destination no longer holds the incoming migration; it was "
                     "stopped and the VM runs on here", lost=True)
            return
        except VirtkitError as exc:
            failures += 1
            if failures >= misses:
                job.stop(f"the destination did not answer {misses} keepalives ({exc}); "
                         "the migration was stopped and the VM runs on here", lost=True)
                return
            continue
        failures = 0
        if not answer.get("incoming"):
            job.stop(f"the destination no longer holds the incoming migration (the domain "
                     f"is {answer.get('state')}: {answer.get('reason')}); the migration was "
                     "stopped and the VM runs on here", lost=True)
            return


def _stop_time(event: asyncio.Future[Any]) -> float | None:
    """The wall-clock time of QEMU's STOP event (QMP stamps every event), if seen."""
    if not event.done() or event.cancelled() or event.exception() is not None:
        return None
    stamp = event.result().get("timestamp") or {}
    if "seconds" not in stamp:
        return None
    return float(stamp["seconds"]) + float(stamp.get("microseconds", 0)) / 1e6


async def migrate_out(monitor: Monitor, destination: Destination, incoming: dict[str, Any],
                      options: Options, job: Job | None = None,
                      hooks: Hooks | None = None) -> dict[str, Any]:
    """Migrate the running VM behind ``monitor`` to ``destination``; when this returns,
    the VM runs there and the caller stops the QEMU here.  ``incoming`` is the body of
    the destination's incoming call.  Any failure before that raises with the VM
    running here and nothing left on the destination (except MigrationOutcomeUnknown:
    then the VM is paused here and may run there).

    The resolution rule (docs/migration.md): the destination runs the VM only after
    ``finish``; this end stops its QEMU only after a confirmed ``finish``.  A finish
    that never reached the destination (connection refused) or that it refused means
    it does not run the VM: the guest goes on here."""
    job = job or Job()
    hooks = hooks or Hooks()
    started = time.monotonic()
    deadline = started + options.timeout
    devices = [device for device, _path in options.copy_disks]
    top_only: frozenset[str] = frozenset()
    if devices:
        disks = await storagecopy.plan(monitor, devices,
                                       [path for _device, path in options.copy_disks],
                                       incremental=options.copy_incremental)
        top_only = frozenset(d["device"] for d in disks if "backing" in d)
        incoming = {**incoming, "copy_storage": {"disks": disks}}
    answer = await destination.incoming({"keepalive": KEEPALIVE_SILENCE, **incoming})
    migration, uri = str(answer["id"]), str(answer["uri"])
    # --bandwidth caps the disk copy as well as the memory stream (as virsh's does)
    mirrors = storagecopy.Mirrors(monitor, devices, (options.bandwidth_mib or 0) * 2**20,
                                  top_only)
    watch = asyncio.create_task(keepalive(destination, migration, job))
    stop_event = monitor.expect("STOP")
    try:
        try:
            info = await _send(monitor, mirrors, devices, answer, uri, options, job,
                               deadline, hooks)
        except BaseException:
            await mirrors.cancel()
            await cancel(monitor, resume=not options.source_paused)
            with contextlib.suppress(VirtkitError):
                await destination.abort(migration)
            raise
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch
        stopped_at = _stop_time(stop_event) or time.time() - (time.monotonic() - job.stopped)
    finally:
        stop_event.cancel()
    if info.get("status") == "postcopy-active":
        return await _finish_postcopy(monitor, destination, migration, options, job,
                                      started, deadline, hooks, stopped_at) | {
                                          "uri": uri, "copied_disks": devices,
                                          "disk_bytes": job.disk_bytes}
    hooks.finishing()
    try:
        finished = await destination.finish(migration, finish_body(options))
    except MigrationOutcomeUnknown:
        raise
    except BaseException:
        # never delivered, or the destination says it does not run the VM: it goes
        # on here (the destination removes what it holds, now or when it restarts)
        with contextlib.suppress(VirtkitError):
            await destination.abort(migration)
        if not options.source_paused:
            with contextlib.suppress(VirtkitError):
                await monitor.cont()
        raise
    ram = info.get("ram", {})
    return {"destination": finished, "total_ms": round((time.monotonic() - started) * 1000),
            "downtime_ms": _downtime(stopped_at, info), "qemu_downtime_ms": info.get("downtime"),
            "transferred": ram.get("transferred"),
            "uri": uri, "copied_disks": devices, "disk_bytes": job.disk_bytes,
            "postcopy": False}


def _downtime(stopped_at: float, info: MigrationStatus) -> int:
    """The guest-visible pause: from this QEMU's vCPU stop to the destination's answer
    to finish (its ``cont`` came before that answer), never less than QEMU's own
    figure (which ends when this end has sent the last state)."""
    return max(round((time.time() - stopped_at) * 1000), int(info.get("downtime") or 0))


async def _send(monitor: Monitor, mirrors: storagecopy.Mirrors, devices: list[str],
                answer: dict[str, Any], uri: str, options: Options, job: Job,
                deadline: float, hooks: Hooks) -> MigrationStatus:
    """Copy the disks, send the memory, switch over: until the source's status is
    ``completed`` (or ``postcopy-active``)."""
    if devices:
        job.phase, job.mirrors = "copying disks", mirrors
        await mirrors.start(answer["nbd"])
        await mirrors.wait_ready(deadline, job.check)
    job.check()
    job.phase, job.postcopy = "sending memory", options.postcopy
    await configure_source(monitor, options)
    await monitor.migrate(uri)
    job.streaming = True
    trigger = asyncio.create_task(_postcopy_trigger(monitor, job, options)) \
        if options.postcopy else None
    try:
        await wait_status(monitor, {"pre-switchover"}, deadline, "sending the memory", job)
    finally:
        if trigger is not None:
            trigger.cancel()
            with contextlib.suppress(BaseException):
                await trigger
    # the vCPUs are stopped now (pause-before-switchover): say so before the
    # destination can possibly run the VM
    job.stopped = time.monotonic()
    job.phase = "switching over"
    hooks.stopped()
    job.check()  # the last point where a lost destination is simply cancelled
    if devices:
        job.disk_bytes = (await mirrors.progress())[0]
        await mirrors.complete()
    await monitor.migrate_continue("pre-switchover")
    return await wait_status(monitor, {"completed", "postcopy-active"}, deadline,
                             "switching over")


async def _postcopy_trigger(monitor: Monitor, job: Job, options: Options) -> None:
    """Switch to post-copy when asked (migrate-postcopy) or, with
    --postcopy-after-precopy, as soon as QEMU begins the second pass over the memory.

    The second pass is seen through QEMU's ``MIGRATION_PASS`` event (the ``events``
    capability), as libvirt does, with ``dirty-sync-count`` polled as the fallback: an
    idle guest's second pass lasts a few milliseconds before precopy converges, so a
    poll alone often misses the moment and the migration just ends in precopy."""
    second_pass = monitor.expect("MIGRATION_PASS",
                                 lambda event: int(event.get("data", {}).get("pass", 0)) >= 2)
    asked = asyncio.ensure_future(job.start_postcopy.wait())
    waited: set[asyncio.Future[Any]] = {asked, second_pass} \
        if options.postcopy_after_precopy else {asked}
    try:
        while not asked.done():
            if options.postcopy_after_precopy:
                if second_pass.done():
                    break
                ram = (await monitor.query_migrate()).get("ram") or {}
                if int(ram.get("dirty-sync-count") or 0) >= 2:
                    break
            await asyncio.wait(waited, timeout=POLL * 2)
    finally:
        second_pass.cancel()
        asked.cancel()
    job.phase, job.postcopy_started = "starting post-copy", True
    await monitor.migrate_start_postcopy()


async def _finish_postcopy(monitor: Monitor, destination: Destination, migration: str,
                           options: Options, job: Job, started: float,
                           deadline: float, hooks: Hooks, stopped_at: float
                           ) -> dict[str, Any]:
    """Post-copy: the destination has the devices' state and must run the guest now,
    while the rest of the memory follows.  From here no failure can bring the guest
    back here: it stays paused here (reason ``postcopy failed``) and the error says so."""
    job.phase = "post-copy"
    hooks.finishing()
    try:
        finished = await destination.finish(migration, finish_body(options))
        downtime = _downtime(stopped_at, {})
        info = await wait_status(monitor, {"completed"}, deadline, "post-copy")
    except BaseException as exc:
        raise PostcopyFailed(
            f"post-copy migration failed after the switch-over: {exc}",
            fix="the guest's memory is split between both hosts and it cannot run on; "
                "destroy both copies and start the domain again (post-copy trades this "
                "risk for a bounded migration time)") from exc
    ram = info.get("ram", {})
    return {"destination": finished, "total_ms": round((time.monotonic() - started) * 1000),
            "downtime_ms": max(downtime, int(info.get("downtime") or 0)),
            "qemu_downtime_ms": info.get("downtime"), "transferred": ram.get("transferred"),
            "postcopy": True}
