"""virtkitd: the daemon that owns the state and the QEMU processes.

Start-up order: take the instance lock (one daemon per state root), open the
store (migrating it), re-attach to the QEMU processes earlier daemons left
running (killing unrecorded ones of ours), repair networks, start pools, settle
what a killed daemon left half done (service/recovery.py; ``GET /v1/host/repairs``),
serve the API on the unix socket, then start autostart domains.
On SIGTERM/SIGINT the daemon detaches and exits; the VMs keep running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO, NoReturn

from aiohttp import web

from virtkit import __version__
from virtkit.api import limits, tlslisten
from virtkit.api.app import create_app
from virtkit.api.audit import AuditLog
from virtkit.api.clusterlisten import LISTENER, ClusterListener
from virtkit.api.looplag import LoopLagWatch
from virtkit.api.services import Services
from virtkit.api.websession import IDLE_SECONDS, SessionStore
from virtkit.errors import VirtkitError
from virtkit.model.load import load_domain
from virtkit.model.network import Network
from virtkit.paths import StatePaths, state_paths
from virtkit.runtime.confine import Confiner
from virtkit.runtime.events import EventBus
from virtkit.runtime.hostcaps import HostCapsProvider
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.nics import TapMaker
from virtkit.service.clones import CloneService
from virtkit.service.cluster import ClusterService
from virtkit.service.devices import DeviceService
from virtkit.service.domains import DomainService
from virtkit.service.guest import GuestService
from virtkit.service.host import HostService
from virtkit.service.hostguests import HostGuestsService
from virtkit.service.install import InstallService
from virtkit.service.limits import LimitsService
from virtkit.service.managedsave import ManagedSaveService
from virtkit.service.migrations import MigrationService
from virtkit.service.networks import NetworkService
from virtkit.service.provision import ProvisionService
from virtkit.service.recovery import RecoveryService
from virtkit.service.snapshots import SnapshotService
from virtkit.service.stats import StatsService
from virtkit.service.storage import StorageService
from virtkit.service.tls import TlsService
from virtkit.service.tokens import TokenService
from virtkit.service.tuning import TuningService
from virtkit.service.virsh import VirshService
from virtkit.store.db import IntentRow, Store
from virtkit.unixsock import bind_unix

log = logging.getLogger("virtkitd")

SOCKET_GROUP = "virtkit"
NETWORK_CHECK_INTERVAL = 3.0
#: seconds a connection may stay without a complete request (its headers) before it is
#: closed: the bound on slow ("slow-loris") and idle clients
IDLE_TIMEOUT = 15.0
#: request line, header line and header count limits (aiohttp answers 400 beyond them)
MAX_LINE = 8190
MAX_HEADERS = 64


def take_instance_lock(paths: StatePaths) -> IO[str]:
    """Hold an exclusive lock on the pidfile for the daemon's life, or exit with a clear error."""
    handle = open(paths.pidfile, "a+")  # noqa: SIM115 - held open for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise SystemExit(
            f"virtkitd: another daemon (pid {pid}) already serves {paths.root} (fix: stop it "
            f"first with 'kill {pid}': its VMs keep running (unless 'virtkit host guests' "
            "set a shutdown policy) and this daemon takes them over when it starts; or give "
            "this one another --root)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def setup_logging(paths: StatePaths, level: str) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(paths.daemon_log)]
    # private: it names every domain, path and argv, and confined QEMUs may traverse log/
    os.chmod(paths.daemon_log, 0o600)
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


#: members may use the read-only socket (libvirt's read-only socket, for monitoring)
READ_ONLY_GROUP = "virtkit-ro"


def _socket_group(name: str = SOCKET_GROUP) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


#: the web console's default port (Proxmox's, which administrators know)
WEB_PORT = 8006


class Daemon:
    """The assembled daemon: store, runtime, services and the API server."""

    def __init__(self, paths: StatePaths, *, default_network: bool = False,
                 listen_tls: tlslisten.TlsListen | None = None,
                 web_listen: tlslisten.TlsListen | None = None,
                 web_session_idle: float = IDLE_SECONDS,
                 idle_timeout: float = IDLE_TIMEOUT, confine: bool | None = None,
                 max_connections: int = limits.MAX_CONNECTIONS,
                 max_websockets: int = limits.MAX_WEBSOCKETS,
                 allowed_paths: tuple[str, ...] = (), cgroup_required: bool = True) -> None:
        self.paths = paths
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_websockets = max_websockets
        self.audit = AuditLog(paths.logs / "audit.log")
        self.store = Store(paths.database)
        self.bus = EventBus(self.store)
        self.caps = HostCapsProvider(paths.cache)
        self.confiner = Confiner(paths, enabled=confine, allowed_paths=allowed_paths,
                                 cgroup_required=cgroup_required,
                                 pool_dirs=self._pool_dirs)
        self.lifecycle = Lifecycle(self.store, self.bus, paths, self.caps,
                                   lambda uuid: load_domain(self.store.get_domain(uuid).spec),
                                   confiner=self.confiner)  # off: still reconciles
        self.storage = StorageService(self.store, self.lifecycle, self.bus, paths.images)
        self.domains = DomainService(self.store, self.lifecycle, self.bus,
                                     storage=self.storage)
        self.recovery = RecoveryService(self.store, self.storage)
        self.host = HostService(paths.cache, self.confiner.cgroup_status, cgroup_required)
        self.networks = NetworkService(self.store, self.bus, paths.networks)
        self.lifecycle.set_tap_provider(TapMaker(self._network_lookup))
        self.domains.networks = self.networks
        self.install = InstallService(self.domains, self.storage, paths.cache / "install")
        guest = GuestService(self.store, self.lifecycle)
        self.snapshots = SnapshotService(self.store, self.lifecycle, self.bus,
                                         paths.root / "snapshots")
        tuning = TuningService(self.store, self.lifecycle)
        self.cluster = ClusterService(self.store, paths.root / "cluster")
        self.lifecycle.spawn_gate = self.cluster.spawn_gate  # HA VMs: armed before spawn
        managed = ManagedSaveService(self.domains)
        self.guests = HostGuestsService(self.domains, managed, paths.root)
        self.services = Services(
            self.domains, self.host, self.storage, self.networks, self.install, guest=guest,
            devices=DeviceService(self.store, self.lifecycle, self.domains, tuning),
            clones=CloneService(self.store, self.lifecycle, self.domains, guest),
            migrations=MigrationService(self.store, self.lifecycle, self.domains, self.caps),
            snapshots=self.snapshots,
            stats=StatsService(self.store, self.lifecycle),
            tuning=tuning, tokens=TokenService(self.store), tls=TlsService(paths.root / "tls"),
            provision=ProvisionService(self.store, self.domains, self.storage),
            recovery=self.recovery,
            virsh=VirshService(self.store, self.lifecycle, paths.cache),
            cluster=self.cluster,
            managedsave=managed, guests=self.guests,
            limits=LimitsService(self.store, self.lifecycle))
        self.default_network = default_network
        self.listen_tls = listen_tls
        self.web_listen = web_listen
        self.web_sessions = SessionStore(idle_seconds=web_session_idle) if web_listen else None
        self._runner: web.AppRunner | None = None
        self._supervisor: asyncio.Task[None] | None = None
        #: the cluster API other hosts forward to (follows init/join/leave)
        self.cluster_listener = ClusterListener(self.cluster.api)

    def _pool_dirs(self) -> list[str]:
        """The folders of the dir and iso pools (the path policy's pool volumes)."""
        return [str(self.paths.images)] + [
            str(row.spec["target"]) for row in self.store.list_pools()
            if row.spec.get("type") != "logical" and row.spec.get("target")]

    def _network_lookup(self, name: str) -> tuple[Network, bool]:
        return self.networks.spec_of(name), self.networks.is_active(name)

    async def start(self) -> None:
        pending = self.recovery.pending()  # left by the daemon before this one
        self.recovery.check_names()  # names from before the naming rule: logged, reported
        names = {row.uuid: row.name for row in self.store.list_domains()}
        for note in await self.lifecycle.reattach(names):
            log.info("reconcile: %s", note)
            if not note.split(": ", 1)[-1].startswith("reattached"):
                self.recovery.note("domains", note)
        # unfinished migrations of the daemon before: before anything is served, so a
        # source's late finish finds nothing (docs/migration.md, resolution rule)
        if self.services.migrations is not None:
            for note in await self.services.migrations.recover():
                self.recovery.note("migrations", note)
        with contextlib.suppress(VirtkitError):
            await asyncio.to_thread(self.caps.accelerator)  # warm the probe cache
        await self._reconcile(pending)
        app = create_app(self.services, self.audit, self.web_sessions)
        app.middlewares.append(limits.websocket_limit(self.max_websockets))
        app[LISTENER] = self.cluster_listener
        self._runner = web.AppRunner(app, access_log=None,
                                     keepalive_timeout=self.idle_timeout,
                                     max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                                     max_headers=MAX_HEADERS)
        await self._runner.setup()
        self.cluster_listener.runner = self._runner
        sock = bind_unix(self.paths.socket, mode=0o660, backlog=128)
        gid = _socket_group()
        if gid is not None and os.geteuid() == 0:
            os.chown(self.paths.socket, 0, gid)
        await limits.BoundedSockSite(self._runner, sock,
                                     max_connections=self.max_connections).start()
        read_only = bind_unix(self.paths.socket_ro, mode=0o660, backlog=1024)
        ro_gid = _socket_group(READ_ONLY_GROUP)
        if ro_gid is not None and os.geteuid() == 0:
            os.chown(self.paths.socket_ro, 0, ro_gid)
        await limits.BoundedSockSite(self._runner, read_only,
                                     max_connections=self.max_connections).start()
        log.info("virtkitd %s serving %s", __version__, self.paths.socket)
        if self.listen_tls is not None:
            await tlslisten.start(self._runner, self.listen_tls)
            log.info("serving TLS on %s:%s (API token required)", self.listen_tls.host,
                     self.listen_tls.port)
        if self.web_listen is not None:
            await tlslisten.start(self._runner, self.web_listen, "--web")
            log.info("web console on https://%s:%s/ (login required)", self.web_listen.host,
                     self.web_listen.port)
        # the cluster after the API: a cut-off etcd delays only the host record
        await self.cluster.start()
        resumed = await self.guests.on_daemon_start()
        if resumed:
            log.info("guests started again (ON_BOOT=start): %s", ", ".join(resumed))
        started = await self.domains.autostart_all()
        if started:
            log.info("autostarted: %s", ", ".join(started))
        self._supervisor = asyncio.create_task(self._supervise_networks())

    async def _reconcile(self, pending: list[IntentRow]) -> None:
        """Before serving: networks repaired (or an interrupted start's leftovers taken
        down), pools started, then half-done operations settled and stale volume temps
        removed -- so no request of this daemon races its own clean-up."""
        if self.default_network:
            await asyncio.to_thread(self.networks.ensure_default)
        for note in await asyncio.to_thread(self.networks.reconcile):
            log.info("networks: %s", note)
            if not note.endswith(": autostarted"):
                self.recovery.note("networks", note)
        pools = await asyncio.to_thread(self.storage.autostart_pools)
        if pools:
            log.info("pools started: %s", ", ".join(pools))
        await asyncio.to_thread(self.recovery.recover, pending)

    async def _supervise_networks(self) -> None:
        """Every few seconds: repair active networks (a dead dnsmasq, lost rules)."""
        while True:
            await asyncio.sleep(NETWORK_CHECK_INTERVAL)
            try:
                for note in await asyncio.to_thread(self.networks.repair_active):
                    log.warning("networks: %s", note)
            except Exception:
                log.exception("network supervision failed")

    async def stop_guests(self) -> None:
        """The host guests policy (ON_SHUTDOWN), when the daemon is told to stop."""
        handled = await self.guests.on_daemon_stop()
        if handled:
            log.info("guests handled at stop: %s", ", ".join(handled))

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self.cluster.stop()
        await self.cluster_listener.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self.paths.socket.unlink(missing_ok=True)
        self.paths.socket_ro.unlink(missing_ok=True)
        await self.lifecycle.close()
        self.store.close()
        self.audit.close()


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify: contrib/virtkitd.service) that the API is served and
    the guests of ON_BOOT and autostart are started; False where no $NOTIFY_SOCKET."""
    address = os.environ.pop("NOTIFY_SOCKET", "")  # QEMUs and helpers must not inherit it
    if not address.startswith(("/", "@")):
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", address, exc)
            return False
    return True


async def serve(paths: StatePaths, ready_fd: int | None = None, *,
                default_network: bool = False,
                listen_tls: tlslisten.TlsListen | None = None,
                web_listen: tlslisten.TlsListen | None = None,
                web_session_idle: float = IDLE_SECONDS,
                idle_timeout: float = IDLE_TIMEOUT, confine: bool | None = None,
                max_connections: int = limits.MAX_CONNECTIONS,
                max_websockets: int = limits.MAX_WEBSOCKETS,
                allowed_paths: tuple[str, ...] = (), cgroup_required: bool = True,
                lag_log: Path | None = None, lag_limit: float = 0.5) -> None:
    watch = LoopLagWatch(lag_log, lag_limit) if lag_log is not None else None
    if watch is not None:
        watch.start()
    daemon = Daemon(paths, default_network=default_network, listen_tls=listen_tls,
                    web_listen=web_listen, web_session_idle=web_session_idle,
                    idle_timeout=idle_timeout, confine=confine,
                    max_connections=max_connections, max_websockets=max_websockets,
                    allowed_paths=allowed_paths, cgroup_required=cgroup_required)
    await daemon.start()
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    sd_notify("READY=1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await daemon.stop_guests()
    log.info("stopping; guests still running keep running")
    await daemon.stop()
    if watch is not None:
        watch.stop()


#: a file the loop-lag watchdog writes stalls to (api/looplag.py; the real tests set it)
LAG_LOG_ENV = "VIRTKITD_LOOP_LAG_LOG"


def _allowed(folders: list[str]) -> list[str]:
    """--allow-path folders: absolute, existing."""
    for folder in folders:
        if not os.path.isabs(folder) or not os.path.isdir(folder):
            raise SystemExit(f"virtkitd: --allow-path {folder}: not an absolute path of an "
                             "existing folder")
    return folders


def _tls_listen(paths: StatePaths, args: argparse.Namespace) -> tlslisten.TlsListen:
    """The TLS listener of ``--listen-tls``.  Without --tls-cert, a first start makes the
    CA and server certificate ``virtkit tls setup`` would (for --tls-hostname and this
    host's names), so the listener, then ``virtkit token create``, is all a host needs."""
    host, port = tlslisten.parse_address(args.listen_tls)
    tls = TlsService(paths.root / "tls")
    if args.tls_cert is None and args.tls_key is None and not tls.cert.exists():
        made = tls.setup(args.tls_hostname)
        print(f"virtkitd: made a TLS server certificate for {', '.join(made['hostnames'])}; "
              f"give clients {made['ca']} (server fingerprint SHA-256 "
              f"{made['fingerprint']})", file=sys.stderr)
    listen = tlslisten.TlsListen(host, port, args.tls_cert or tls.cert,
                                 args.tls_key or tls.key)
    tlslisten.check(listen)
    return listen


def _web_listen(paths: StatePaths, address: str, cert: Path | None,
                key: Path | None) -> tlslisten.TlsListen:
    """Where and with which certificate to serve the web console (one is made if none)."""
    host, port = tlslisten.parse_address(address, WEB_PORT, "--web")
    if (cert is None) != (key is None):
        raise VirtkitError("give both --web-cert and --web-key, or neither")
    if cert is None or key is None:
        names = [host] if host not in ("0.0.0.0", "::", "") else []  # noqa: S104 - a comparison
        cert, key = TlsService(paths.root / "tls").web_certificate(names)
    listen = tlslisten.TlsListen(host, port, cert, key)
    tlslisten.check(listen)
    return listen


def on_host_shutdown(root: Path | None) -> NoReturn:
    """``virtkitd --on-host-shutdown``: the CLI's ``host shutdown-guests`` (a client of
    the running daemon; the daemon module does not import the CLI), run in its place."""
    argv = [sys.executable, "-m", "virtkit.cli.main"]
    if root is not None:
        argv += ["--root", str(root.absolute())]
    os.execv(sys.executable, [*argv, "host", "shutdown-guests"])  # noqa: S606 - our own CLI, no shell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="virtkitd", description="the virtkit daemon")
    parser.add_argument("--root", type=Path, help="state root (default: $VIRTKIT_ROOT, "
                        "/var/lib/virtkit for root, ~/.local/share/virtkit otherwise)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--default-network", action="store_true",
                        help="define (and autostart) the 'default' NAT network if it is "
                        "missing, as libvirt's packages do at install time")
    parser.add_argument("--listen-tls", metavar="HOST:PORT",
                        default=os.environ.get("VIRTKITD_LISTEN_TLS") or None,
                        help="also serve the API over TCP with TLS; every request there needs "
                        "an API token (default: $VIRTKITD_LISTEN_TLS; off)")
    parser.add_argument("--tls-hostname", action="append", default=[], metavar="NAME",
                        help="with --listen-tls and no certificate yet: a name clients use "
                        "for this host, for the certificate made at the first start "
                        "(repeatable; this host's own names are always in it)")
    parser.add_argument("--tls-cert", type=Path, default=os.environ.get("VIRTKITD_TLS_CERT"),
                        help="server certificate (PEM; default <root>/tls/server.pem)")
    parser.add_argument("--tls-key", type=Path, default=os.environ.get("VIRTKITD_TLS_KEY"),
                        help="its private key (PEM; default <root>/tls/server-key.pem)")
    parser.add_argument("--web", metavar="HOST:PORT",
                        default=os.environ.get("VIRTKITD_WEB") or None,
                        help="serve the web console over HTTPS here, e.g. 127.0.0.1:8006 "
                        "(default: $VIRTKITD_WEB; off); login with a local account in the "
                        "virtkit group, or an API token")
    parser.add_argument("--web-cert", type=Path, default=os.environ.get("VIRTKITD_WEB_CERT"),
                        help="the web console's certificate (PEM; default: the one of 'virtkit "
                        "tls setup', else a self-signed one made in <root>/tls/web.pem)")
    parser.add_argument("--web-key", type=Path, default=os.environ.get("VIRTKITD_WEB_KEY"),
                        help="its private key (PEM)")
    parser.add_argument("--web-session-idle", type=float, metavar="SECONDS",
                        default=float(os.environ.get("VIRTKITD_WEB_SESSION_IDLE",
                                                     IDLE_SECONDS)),
                        help="log a browser out after this many idle seconds "
                        f"(default {IDLE_SECONDS})")
    parser.add_argument("--idle-timeout", type=float,
                        default=float(os.environ.get("VIRTKIT_IDLE_TIMEOUT", IDLE_TIMEOUT)),
                        help="close a connection that has not sent a complete request "
                        f"within this many seconds (default {IDLE_TIMEOUT:g})")
    parser.add_argument("--no-confine", action="store_true",
                        default=os.environ.get("VIRTKITD_NO_CONFINE", "") not in ("", "0"),
                        help="run QEMU as the daemon's own user, without a per-VM uid, "
                        "capability drop or cgroup (default: confined when run as root; "
                        "$VIRTKITD_NO_CONFINE=1)")
    parser.add_argument("--no-cgroup", action="store_true",
                        default=os.environ.get("VIRTKITD_NO_CGROUP", "") not in ("", "0"),
                        help="start confined QEMUs even where no cgroup can be made for them "
                        "(no memory, pids or device limits; dominfo and host check say so); "
                        "without it such a start fails ($VIRTKITD_NO_CGROUP=1)")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="a folder whose files guests may be given although the path "
                        "policy would refuse it (a system tree), and that remote callers may "
                        "name; repeatable; also one per line in <root>/allowed-paths "
                        "(docs/security.md)")
    parser.add_argument("--max-connections", type=int, default=limits.MAX_CONNECTIONS,
                        help="open connections on the unix socket at once; one more is "
                        f"answered 503 (default {limits.MAX_CONNECTIONS})")
    parser.add_argument("--max-websockets", type=int, default=limits.MAX_WEBSOCKETS,
                        help="open WebSockets (event streams, consoles) at once; one more "
                        f"is answered 503 (default {limits.MAX_WEBSOCKETS})")
    parser.add_argument("--on-host-shutdown", action="store_true",
                        help="do not serve: tell the running daemon to apply the host guests "
                        "policy now (ON_SHUTDOWN: managedsave or shut down every running "
                        "guest; 'virtkit host guests') and wait until it is done, one line "
                        "per guest -- virtkit-guests.service's ExecStop at host shutdown; "
                        "the same as 'virtkit host shutdown-guests'")
    parser.add_argument("--version", action="version", version=f"virtkitd {__version__}")
    args = parser.parse_args(argv)
    if args.on_host_shutdown:
        on_host_shutdown(args.root)
    paths = state_paths(args.root.absolute() if args.root else None)
    paths.make()
    listen_tls = None
    if args.listen_tls:
        try:
            listen_tls = _tls_listen(paths, args)
        except VirtkitError as exc:
            raise SystemExit(f"virtkitd: {exc}") from None
    web = None
    if args.web:
        try:
            web = _web_listen(paths, args.web, args.web_cert, args.web_key)
        except VirtkitError as exc:
            raise SystemExit(f"virtkitd: {exc}") from None
    lock = take_instance_lock(paths)
    setup_logging(paths, args.log_level)
    limits.raise_nofile_limit()
    try:
        asyncio.run(serve(paths, args.ready_fd, default_network=args.default_network,
                          listen_tls=listen_tls, web_listen=web,
                          web_session_idle=args.web_session_idle,
                          idle_timeout=args.idle_timeout,
                          confine=False if args.no_confine else None,
                          max_connections=args.max_connections,
                          max_websockets=args.max_websockets,
                          allowed_paths=tuple(_allowed(args.allow_path)),
                          cgroup_required=not args.no_cgroup,
                          lag_log=Path(lag) if (lag := os.environ.get(LAG_LOG_ENV)) else None,
                          lag_limit=float(os.environ.get("VIRTKITD_LOOP_LAG_MAX", "0.5"))))
    except VirtkitError as exc:
        raise SystemExit(f"virtkitd: {exc}") from None
    finally:
        lock.close()


if __name__ == "__main__":
    main()
