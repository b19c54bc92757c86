"""Start one QEMU process for a domain: sockets, spawn, QMP handshake, set-up.

The sequence follows the "start paused" pattern: QEMU is launched with ``-S``
so it executes no guest code; the daemon then does over QMP what argv cannot
express (VNC password, reading back the VNC port), and only the caller's
``cont`` makes the VM run.  If any step fails the process is killed, its run
folder removed and QEMU's own stderr returned in the error, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from virtkit.errors import QemuError, VirtkitError
from virtkit.model.domain import Domain, Firmware, parse_cpuset
from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.load import dump_domain, load_domain
from virtkit.paths import StatePaths
from virtkit.qemu.agent import GuestAgent
from virtkit.qemu.argv import Layout, build_argv, disk_slots
from virtkit.qemu.monitor import Monitor
from virtkit.qemu.process import QemuProcess
from virtkit.runtime import cgtune, teardown
from virtkit.runtime.confine import Confinement, Confiner
from virtkit.runtime.preflight import virtiofsd_binary
from virtkit.runtime.tuning import (
    apply_cputune,
    bind_hostdevs,
    release_hostdevs,
    vcpu_thread_ids,
)
from virtkit.unixsock import bind_unix, connect_unix

log = logging.getLogger(__name__)

#: Callable giving the host capabilities and QEMU binary a domain should start with.
CapsProvider = Callable[[Domain], tuple[HostCaps, str]]


class OpenTap(Protocol):
    """A tap device the daemon opened for a NIC (see runtime/nics.py)."""

    name: str
    fd: int

    def close(self) -> None: ...


#: Callable opening the taps of a domain's network/bridge NICs: {nic index: tap}.
TapProvider = Callable[[Domain], Mapping[int, OpenTap]]

QMP_HANDSHAKE_TIMEOUT = 15.0


def live_form(domain: Domain) -> Domain:
    """``domain`` as a fresh QEMU runs it (libvirt's live XML): every disk with the
    target its slot gives it.  A running configuration equal to this form of the
    definition runs exactly what the definition says."""
    targets = [slot.target for slot in disk_slots(domain)]
    disks = [disk.model_copy(update={"target": target})
             for disk, target in zip(domain.disks, targets, strict=True)]
    return domain.model_copy(update={"disks": disks})


@dataclass
class Running:
    """A live QEMU process of one domain and its monitor."""

    process: QemuProcess
    monitor: Monitor
    run_dir: Path
    accel: str
    vnc: dict[str, Any] = field(default_factory=dict)
    taps: dict[int, str] = field(default_factory=dict)
    #: virtiofsd processes serving the domain's virtiofs shares (they end with QEMU)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: managed PCI devices bound to vfio-pci for this run: {address: original driver}
    hostdev_drivers: dict[str, str | None] = field(default_factory=dict)
    #: the configuration QEMU runs now, every disk with its target (libvirt's live
    #: XML): hotplug changes it, the stored spec changes only with --config
    live: Domain | None = None
    #: QEMU id numbers of ``live.disks`` and ``live.nics`` (``disk{n}``/``drive-disk{n}``,
    #: ``nic{n}``/``net{n}``, ``taps[n]``); a hot-added device takes a fresh number
    disk_ids: list[int] = field(default_factory=list)
    nic_ids: list[int] = field(default_factory=list)
    #: QEMU id numbers of ``live.hostdevs`` (``hostdev{n}``), as for disks and NICs
    hostdev_ids: list[int] = field(default_factory=list)
    #: the guest agent client (None without ``guest_agent``)
    agent: GuestAgent | None = None
    #: whether the guest has its agent port open (QEMU's VSERPORT_CHANGE); None: unknown
    agent_open: bool | None = None
    #: a disk or NIC was hot-added or removed: a QEMU that takes this run's state must
    #: be built with the hot-added devices where QEMU put them (runtime/devlayout.py)
    layout_changed: bool = False
    #: how many of ``live.disks``/``live.nics`` were on QEMU's command line (the rest
    #: were hot-added); None: not known (a record from before this was kept)
    boot_disks: int | None = None
    boot_nics: int | None = None
    #: QEMU ids of devices asked to go (device_del) that the guest has not released yet
    unplugging: set[str] = field(default_factory=set)
    #: the uid/gid, cgroup and files granted to this QEMU (None: not confined)
    confinement: Confinement | None = None

    def attach_live(self, domain: Domain, extra: Mapping[str, Any] | None = None,
                    layout: Layout | None = None) -> None:
        """Record the running configuration: from a runtime record's ``extra`` after a
        daemon restart, else ``domain`` as started (device numbers = list positions,
        or ``layout``'s for a QEMU rebuilt with hot-added devices)."""
        if extra and extra.get("live"):
            self.live = load_domain(extra["live"])
            self.layout_changed = bool(extra.get("layout_changed"))
            self.disk_ids = [int(n) for n in extra.get("disk_ids", [])]
            self.nic_ids = [int(n) for n in extra.get("nic_ids", [])]
            self.hostdev_ids = [int(n) for n in extra.get("hostdev_ids", [])]
            boot = extra.get("boot_devices")
            if isinstance(boot, list) and len(boot) == 2:
                self.boot_disks, self.boot_nics = int(boot[0]), int(boot[1])
        else:
            self.live = live_form(domain)
            self.disk_ids = list(range(len(domain.disks)))
            self.nic_ids = list(range(len(domain.nics)))
            self.boot_disks, self.boot_nics = len(domain.disks), len(domain.nics)
            if layout is not None:
                self.layout_changed = True
                self.disk_ids, self.nic_ids = list(layout.disk_ids), list(layout.nic_ids)
                self.boot_disks, self.boot_nics = layout.boot_disks, layout.boot_nics
        if len(self.disk_ids) != len(self.live.disks) or \
                len(self.nic_ids) != len(self.live.nics):
            self.disk_ids = list(range(len(self.live.disks)))
            self.nic_ids = list(range(len(self.live.nics)))
            self.boot_disks = self.boot_nics = None
        if len(self.hostdev_ids) != len(self.live.hostdevs):  # as started (older records)
            self.hostdev_ids = list(range(len(self.live.hostdevs)))
        if self.live.guest_agent:
            self.agent = GuestAgent(self.run_dir / "agent.sock", self.live.name)

    def record(self) -> dict[str, Any]:
        """What the runtime record keeps of this process (never its argv)."""
        return {"accel": self.accel, "vnc": self.vnc, "taps": self.taps,
                "live": dump_domain(self.live) if self.live is not None else None,
                "disk_ids": self.disk_ids, "nic_ids": self.nic_ids,
                "hostdev_ids": self.hostdev_ids,
                "layout_changed": self.layout_changed,
                "boot_devices": None if self.boot_disks is None or self.boot_nics is None
                else [self.boot_disks, self.boot_nics],
                "security": self.confinement.describe() if self.confinement else None}

    def release_hostdevs(self) -> None:
        """Give managed PCI devices back to their drivers (after QEMU ended)."""
        release_hostdevs(self.hostdev_drivers)
        self.hostdev_drivers = {}

    def stop_helpers(self, grace: float = 2.0) -> None:
        """Reap the helpers (each ends when QEMU closes its socket); kill what lingers."""
        for helper in self.helpers:
            try:
                helper.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(timeout=5)


def socket_roles(domain: Domain) -> list[str]:
    """The unix sockets the daemon binds for QEMU: monitor, serial ports, agent."""
    roles = ["qmp"] + [f"serial{i}" for i in range(len(domain.serials))]
    if domain.guest_agent:
        roles.append("agent")
    return roles


def channel_sockets(domain: Domain, run_dir: Path) -> dict[int, Path]:
    """The unix socket of each named channel, bound by the daemon like the monitor's:
    the user's path, or ``channel-NAME.sock`` in the run folder."""
    return {index: Path(channel.path or run_dir / f"channel-{channel.name}.sock")
            for index, channel in enumerate(domain.channels)}


def qemu_log_tail(path: Path, limit: int = 2000) -> str:
    """The last lines QEMU wrote (its error messages), without timestamps noise."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()][-8:]
    return "\n".join(lines)[-limit:]


def prepare_nvram(domain: Domain, caps: HostCaps, paths: StatePaths) -> str | None:
    """Copy the OVMF variables template once per UEFI domain (its persistent NVRAM)."""
    if domain.firmware is not Firmware.UEFI:
        return None
    if not caps.ovmf_code or not caps.ovmf_vars:
        raise QemuError("UEFI firmware (OVMF) is not installed",
                        fix="apt-get install ovmf, or use firmware: bios")
    nvram = nvram_path(paths, domain.uuid)
    if not nvram.exists():
        shutil.copyfile(caps.ovmf_vars, nvram)
    return str(nvram)


def nvram_path(paths: StatePaths, uuid: str) -> Path:
    """The persistent UEFI variables of domain ``uuid``."""
    return paths.nvram / f"{uuid}_VARS.fd"


def remove_nvram(paths: StatePaths, uuid: str) -> None:
    """undefine --nvram: the domain's UEFI variables go (absent: nothing to do)."""
    nvram_path(paths, uuid).unlink(missing_ok=True)


def copy_nvram(paths: StatePaths, old_uuid: str, new_uuid: str) -> Path | None:
    """A clone takes the original's UEFI variables (boot entries); the copy, or None
    when the original has none."""
    nvram = nvram_path(paths, old_uuid)
    if not nvram.exists():
        return None
    copy = nvram_path(paths, new_uuid)
    try:
        shutil.copyfile(nvram, copy)
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return copy


async def launch(domain: Domain, paths: StatePaths, caps_for: CapsProvider, *,
                 incoming_fd: int | None = None, incoming: str | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_spawn: Callable[[QemuProcess], None] | None = None,
                 taps_for: TapProvider | None = None,
                 confiner: Confiner | None = None,
                 layout: Layout | None = None,
                 before_spawn: Callable[[Domain], None] | None = None) -> Running:
    """Spawn QEMU paused for ``domain`` and return it with a connected monitor.

    ``on_spawn`` is called right after the process exists, before anything can
    fail, so the caller can record its pid: a daemon killed at any later point
    finds the half-started QEMU on restart instead of leaving it orphaned.
    ``incoming_fd`` (a save file) or ``incoming`` (``defer``: an incoming live
    migration, started later with ``migrate-incoming``) makes QEMU wait for state.
    ``confiner`` runs QEMU as the domain's own uid, in its cgroup, with its files
    granted (runtime/confine.py); everything is taken back if the start fails.
    ``layout`` (a run with hot-added devices whose state QEMU is to take) puts those
    devices where that run had them (runtime/devlayout.py).  ``before_spawn`` is
    called right before the process is spawned, with nothing awaited in between: the
    cluster's gate for HA VMs (it arms the fence guard by UUID first, or refuses when
    the host's lease is stale: cluster/fence.py); what it raises fails the start.
    """
    caps, binary = caps_for(domain)
    run_dir = paths.run_dir(domain.uuid)
    log_dir = paths.logs / "domains" / domain.uuid
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, mode=0o750)
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    spawned: list[QemuProcess] = []
    try:
        # the undo stack: every step that succeeds pushes its undo; a failure unwinds
        # it, each undo running even when one before it fails (runtime/teardown.py)
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(teardown.step("remove the run folder", shutil.rmtree, run_dir,
                                        ignore_errors=True))
            running = await _start(
                domain, paths, caps, binary, run_dir, log_dir, undo, spawned.append,
                incoming_fd=incoming_fd, incoming=incoming, on_event=on_event,
                on_spawn=on_spawn, taps_for=taps_for, confiner=confiner, layout=layout,
                before_spawn=before_spawn)
            undo.pop_all()  # QEMU runs: its end (Lifecycle._conclude_exit) takes it back
        return running
    except BaseException as exc:
        if isinstance(exc, VirtkitError) and spawned and "stderr" not in exc.details:
            exc.details["stderr"] = qemu_log_tail(log_dir / "qemu.log")
        raise


async def _start(domain: Domain, paths: StatePaths, caps: HostCaps, binary: str,
                 run_dir: Path, log_dir: Path, undo: contextlib.AsyncExitStack,
                 spawned: Callable[[QemuProcess], None], *, incoming_fd: int | None,
                 incoming: str | None, on_event: Callable[[dict[str, Any]], None] | None,
                 on_spawn: Callable[[QemuProcess], None] | None,
                 taps_for: TapProvider | None, confiner: Confiner | None,
                 layout: Layout | None,
                 before_spawn: Callable[[Domain], None] | None = None) -> Running:
    """The steps of :func:`launch`, each pushing its undo on ``undo``."""
    qemu_log = log_dir / "qemu.log"
    # closed when this returns, started or not: QEMU holds its own copies (on failure,
    # closing a tap removes it)
    with contextlib.ExitStack() as held:
        listeners: dict[str, socket.socket] = {}
        for role in socket_roles(domain):
            listeners[role] = held.enter_context(bind_unix(run_dir / f"{role}.sock"))
        for index, path in channel_sockets(domain, run_dir).items():
            listeners[f"channel{index}"] = held.enter_context(bind_unix(path))
            undo.callback(teardown.step("remove a channel socket", teardown.unlink_sockets,
                                        [path]))
        nvram = prepare_nvram(domain, caps, paths)
        fds = {role: sock.fileno() for role, sock in listeners.items()}
        taps: Mapping[int, OpenTap] = {}
        if taps_for is not None and any(nic.type != "user" for nic in domain.nics):
            taps = await asyncio.to_thread(taps_for, domain)
            for tap in taps.values():
                held.callback(tap.close)
            fds.update({f"tap{index}": tap.fd for index, tap in taps.items()})
        pass_fds = list(fds.values())
        if incoming_fd is not None:
            incoming = f"fd:{incoming_fd}"
            pass_fds.append(incoming_fd)
        files = LaunchFiles(str(run_dir), str(log_dir), fds, nvram=nvram, incoming=incoming)
        conf: Confinement | None = None
        if confiner is not None:
            conf = await asyncio.to_thread(confiner.prepare, domain, caps, run_dir=run_dir,
                                           log_dir=log_dir, nvram=nvram)
            undo.callback(teardown.step("release the confinement",
                                        teardown.release_confinement, confiner, conf))
        helpers = await start_virtiofsd(domain, run_dir, log_dir,
                                        owner=(conf.uid, conf.gid) if conf else None)
        undo.callback(teardown.step("stop virtiofsd", teardown.kill_helpers, helpers))
        hostdevs = await asyncio.to_thread(bind_hostdevs, domain) if domain.hostdevs else {}
        undo.callback(teardown.step("give back the host devices", release_hostdevs, hostdevs))
        argv = build_argv(domain, caps, files, binary, layout)
        log.info("starting %s: %s", domain.name, " ".join(argv))
        if before_spawn is not None:
            before_spawn(domain)  # synchronous: nothing runs between it and the spawn
        process = QemuProcess.spawn(argv, pass_fds=pass_fds, log_path=qemu_log,
                                    **(conf.spawn_options() if conf else {}))
        spawned(process)
        undo.push_async_callback(teardown.async_step("end QEMU", _end, process))
        if on_spawn is not None:
            on_spawn(process)
        if domain.vcpus.cpuset is not None:
            pin_threads(process.pid, parse_cpuset(domain.vcpus.cpuset))
        monitor = await _handshake(domain, process, run_dir, qemu_log, on_event)
        if conf is not None:  # QEMU answers: its wrapper has joined the cgroup and exec'd it
            conf.joined(process.pid)
        numbers = list(layout.nic_ids) if layout is not None else list(range(len(domain.nics)))
        running = Running(process, monitor, run_dir, caps.accel,
                          taps={numbers[index]: tap.name for index, tap in taps.items()},
                          helpers=helpers, hostdev_drivers=hostdevs, confinement=conf)
        running.attach_live(domain, layout=layout)
        await _setup(domain, running)
        return running


async def _end(process: QemuProcess) -> None:
    """Kill a QEMU whose start failed, and let go of its pidfd."""
    try:
        await process.kill(grace=1.0)
    finally:
        process.close()


async def _handshake(domain: Domain, process: QemuProcess, run_dir: Path, qemu_log: Path,
                     on_event: Callable[[dict[str, Any]], None] | None) -> Monitor:
    """Connect the monitor; if QEMU dies first, raise with its stderr."""
    monitor = Monitor(domain.name)
    if on_event is not None:
        monitor.subscribe(on_event)
    sock = connect_unix(run_dir / "qmp.sock", timeout=5.0)
    connect = asyncio.create_task(monitor.connect(sock, timeout=QMP_HANDSHAKE_TIMEOUT))
    exited = asyncio.create_task(_wait_exit(process))
    done, _pending = await asyncio.wait({connect, exited}, return_when=asyncio.FIRST_COMPLETED)
    exited.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await exited  # its pidfd reader is gone before QemuProcess.watch adds its own
    if connect in done and connect.exception() is None:
        return monitor
    connect.cancel()
    with contextlib.suppress(BaseException):
        await connect
    await monitor.close()
    with contextlib.suppress(OSError):
        sock.close()
    await process.wait(2.0)
    stderr = qemu_log_tail(qemu_log)
    status = process.exit_status()
    raise QemuError(
        f"QEMU failed to start domain '{domain.name}'"
        + (f" (exit status {status})" if status is not None else "")
        + (f": {stderr.splitlines()[-1]}" if stderr else ""),
        stderr=stderr,
        fix="read the QEMU message above; the domain was not started and nothing was left running",
    )


async def _wait_exit(process: QemuProcess) -> None:
    """Return when QEMU has exited: its pidfd becomes readable (no polling)."""
    pidfd = process.pidfd
    assert pidfd is not None
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(pidfd, ended.set)
    try:
        if process.alive():
            await ended.wait()
    finally:
        loop.remove_reader(pidfd)


async def _setup(domain: Domain, running: Running) -> None:
    """The QMP set-up between launch and ``cont`` that argv cannot express."""
    if domain.graphics.type == "vnc":
        if domain.graphics.password:
            await running.monitor.set_password("vnc", domain.graphics.password)
        info = await running.monitor.query_vnc()
        running.vnc = {"host": info.get("host"), "port": int(info.get("service", 0) or 0)}
    for number, nic in zip(running.nic_ids, domain.nics, strict=True):
        if nic.link == "down":
            await running.monitor.set_link(f"nic{number}", False)
    if domain.cputune.vcpupin or domain.cputune.emulatorpin:
        apply_cputune(domain, running.process.pid, await vcpu_thread_ids(running.monitor))
    conf = running.confinement
    await cgtune.apply_at_start(domain, running.monitor, conf.cgroup if conf else None)


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of QEMU ``pid`` (vCPUs, I/O, main loop) to ``cpus``; threads
    started later inherit it.  libvirt's ``<vcpu cpuset=>`` does the same."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


VIRTIOFSD_READY_TIMEOUT = 10.0


async def start_virtiofsd(domain: Domain, run_dir: Path, log_dir: Path, *,
                          owner: tuple[int, int] | None = None
                          ) -> list[subprocess.Popen[bytes]]:
    """One virtiofsd per virtiofs share, listening on ``run_dir/fsN.sock`` (the socket
    QEMU's vhost-user-fs device connects to); returned once every socket exists, each
    handed to ``owner`` (a confined QEMU's uid/gid) so QEMU may connect to it."""
    shares = [(index, fs) for index, fs in enumerate(domain.filesystems)
              if fs.driver == "virtiofs"]
    if not shares:
        return []
    binary = virtiofsd_binary()
    if binary is None:
        raise QemuError("virtiofsd is not installed", fix="apt-get install virtiofsd, or use "
                        "driver: 9p for the shared folders")
    started: list[subprocess.Popen[bytes]] = []
    try:
        for index, fs in shares:
            # opening a log in the run's own folder and spawning return at once (the
            # readiness is awaited below)
            with open(log_dir / f"virtiofsd{index}.log", "ab") as out:  # noqa: ASYNC230
                started.append(subprocess.Popen(  # noqa: ASYNC220
                    [binary, f"--socket-path={run_dir / f'fs{index}.sock'}",
                     "-o", f"source={_fuse_escape(fs.source)}", "-o", "cache=auto"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True))
        deadline = time.monotonic() + VIRTIOFSD_READY_TIMEOUT
        for (index, fs), helper in zip(shares, started, strict=True):
            while not (run_dir / f"fs{index}.sock").exists():
                if helper.poll() is not None or time.monotonic() > deadline:
                    raise QemuError(f"virtiofsd for {fs.source} did not start (see "
                                    f"{log_dir / f'virtiofsd{index}.log'})")
                await asyncio.sleep(0.02)
            if owner is not None:
                os.chown(run_dir / f"fs{index}.sock", *owner)
    except BaseException:
        for helper in started:
            helper.kill()
            helper.wait(timeout=5)
        raise
    return started


def _fuse_escape(value: str) -> str:
    """Escape a value for virtiofsd's ``-o`` list (libfuse: backslash before ``,``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")
