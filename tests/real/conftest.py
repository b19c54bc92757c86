"""Fixtures for tests against a real virtkitd and real QEMU (TCG).

Each test gets its own daemon with its own short state root under /tmp.  At
teardown every QEMU that daemon recorded is killed by PID (after checking it is
ours), the daemon is killed by PID, and the root is removed -- also when the
test failed.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from virtkit.cli.client import Client
from virtkit.cli.wsclient import OP_BINARY, OP_CLOSE, WebSocket
from virtkit.images.tinyguest import BOOT_MARKER, TinyGuest, build_tiny_guest
from virtkit.paths import state_paths
from virtkit.qemu.process import is_our_qemu, proc_start_time
from virtkit.runtime.confine import Confiner
from virtkit.store.db import Store
from virtkit.unixsock import connect_unix

if TYPE_CHECKING:
    from tests.real.debianguest import DebianVm

BOOT_TIMEOUT = 90.0


@pytest.fixture(scope="session")
def tiny_guest() -> TinyGuest:
    return build_tiny_guest()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
              interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


#: the extended attribute that holds a file's POSIX ACL
POSIX_ACL = "system.posix_acl_access"


def file_access(path: Path | str) -> tuple[int, int, int, bytes | None]:
    """Owner, group, mode and POSIX ACL of ``path``: what a grant to a confined QEMU
    changes, and what must come back unchanged after it."""
    st = os.stat(path)
    try:
        acl: bytes | None = os.getxattr(path, POSIX_ACL)
    except OSError:
        acl = None
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), acl


@dataclass
class DaemonHandle:
    """A running virtkitd under test and helpers to drive it."""

    root: Path
    process: subprocess.Popen[bytes]
    client: Client
    guest: TinyGuest
    netns: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "VIRTKIT_ROOT": str(self.root), "VIRTKIT_NO_AUTOSTART": "1",
                "NO_COLOR": "1"}

    def cli_argv(self, *args: str) -> list[str]:
        """The argv that runs the real ``virtkit`` CLI (run it with ``env=self.env``)."""
        return [sys.executable, "-m", "virtkit.cli.main", *args]

    def cli(self, *args: str, check: bool = True, input_text: str | None = None,
            env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real ``virtkit`` CLI against this daemon."""
        result = subprocess.run([sys.executable, "-m", "virtkit.cli.main", *args],
                                env={**self.env, **(env or {})}, capture_output=True, text=True,
                                input=input_text, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"virtkit {' '.join(args)} failed: {result.stderr}")
        return result

    def spec(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A spec for the tiny guest (direct kernel boot, serial console, no NIC)."""
        spec: dict[str, Any] = {
            "name": name, "memory": 256, "vcpus": 1,
            "boot": {"kernel": str(self.guest.kernel), "initrd": str(self.guest.initrd),
                     "cmdline": self.guest.cmdline},
        }
        spec.update(overrides)
        return spec

    def define(self, name: str, **overrides: Any) -> dict[str, Any]:
        body = {"spec": self.spec(name, **overrides)}
        result: dict[str, Any] = self.client.post("/v1/domains", body)
        return result

    def info(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(self.client.domain_path(name))
        return result

    def state(self, name: str) -> str:
        return str(self.info(name)["state"])

    def console_log(self, name: str) -> str:
        data = self.client.get(self.client.domain_path(name, "/console/log"))
        return data.decode(errors="replace") if isinstance(data, bytes) else ""

    def wait_booted(self, name: str, count: int = 1, timeout: float = BOOT_TIMEOUT) -> None:
        wait_for(lambda: self.console_log(name).count(BOOT_MARKER) >= count, timeout,
                 f"boot marker #{count} of {name}")

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(lambda: (i := self.info(name))["state"] == state and i, timeout,
                        f"{name} to be {state}")

    def console_run(self, name: str, command: str, expect: str, timeout: float = 30.0) -> str:
        """Type ``command`` on the serial console and return output once ``expect`` shows.

        ``expect`` must not be in ``command`` itself: the guest's tty echoes the typed
        line at once, so such an ``expect`` matched before the command ran (a clone
        test destroyed its guest before its write).  Build it in the guest instead:
        ``echo done-$((6*7))`` expecting ``done-42``, or ``echo do''ne``."""
        assert expect not in command, (
            f"console_run: {expect!r} is in the command itself, so its echo would match "
            "before the command ran: make the guest compute it (echo done-$((6*7)))")
        ws = WebSocket.open(self.root / "virtkitd.sock",
                            self.client.domain_path(name, "/console"))
        try:
            ws.send(f"{command}\n".encode())
            seen = b""
            deadline = time.monotonic() + timeout
            ws.sock.settimeout(1.0)
            while expect.encode() not in seen:
                if time.monotonic() > deadline:
                    raise AssertionError(f"console of {name} never showed {expect!r}: {seen!r}")
                try:
                    opcode, payload = ws.receive()
                except TimeoutError:
                    continue
                if opcode == OP_CLOSE:
                    raise AssertionError(f"console of {name} closed: {payload!r}")
                if opcode == OP_BINARY:
                    seen += payload
            return seen.decode(errors="replace")
        finally:
            ws.close()

    def console_login(self, name: str, user: str, password: str, shell_prompt: str,
                      timeout: float = 600.0) -> str:
        """Log in on a getty's serial console, answering what the guest shows.

        Each prompt is answered when it appears (``login:`` with the user, ``Password:``
        with the password) and again whenever it reappears: on a loaded machine login(1)
        may give up after its own 60 s ("Login timed out") before a slow guest has checked
        the password, and getty then asks again.  A console that stays silent is nudged
        with an empty line, which makes getty print its prompt once more.  Returns the
        console output once ``shell_prompt`` shows."""
        ws = WebSocket.open(self.root / "virtkitd.sock",
                            self.client.domain_path(name, "/console"))
        try:
            ws.sock.settimeout(1.0)
            ws.send(b"\n")
            seen = ""
            answered = 0  # output up to here has been answered
            password_sent = False  # a shell prompt counts only after the password
            deadline = time.monotonic() + timeout
            quiet_since = time.monotonic()
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not log in on {name}'s console: {seen[-2000:]!r}")
                try:
                    opcode, payload = ws.receive()
                except TimeoutError:
                    if time.monotonic() - quiet_since > 30:
                        ws.send(b"\n")
                        quiet_since = time.monotonic()
                    continue
                if opcode == OP_CLOSE:
                    raise AssertionError(f"console of {name} closed: {payload!r}")
                if opcode != OP_BINARY:
                    continue
                seen += payload.decode(errors="replace")
                quiet_since = time.monotonic()
                fresh = seen[answered:]
                if password_sent and shell_prompt in fresh:
                    return seen
                prompt = re.search(r"(login:|Password:)\s*$", fresh)
                if prompt:
                    password_sent = prompt.group(1) == "Password:"
                    ws.send(f"{password if password_sent else user}\n".encode())
                    answered = len(seen)
        finally:
            ws.close()

    def kill9(self) -> None:
        """Kill the daemon with SIGKILL (no chance to clean up), as a crash would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> None:
        self.process = start_daemon(self.root, self.netns)

    def qemu_pids(self) -> list[int]:
        """PIDs of the QEMU processes this daemon's store knows and that are still ours."""
        store = Store(state_paths(self.root).database)
        try:
            return [r.pid for r in store.all_runtime().values()
                    if r.pid and r.pid_start and is_our_qemu(r.pid, r.pid_start, r.uuid)]
        finally:
            store.close()


def start_daemon(root: Path, netns: str | None = None,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start virtkitd for ``root`` (inside network namespace ``netns``, with ``extra``
    arguments) and wait for it."""
    read_fd, write_fd = os.pipe()
    prefix = ["ip", "netns", "exec", netns] if netns else []
    env = {**os.environ, LAG_LOG_ENV: str(root / LAG_LOG)}  # the loop-lag watchdog
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "virtkit.api.daemon", "--root", str(root),
         "--ready-fd", str(write_fd), *extra], pass_fds=[write_fd], start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL, stderr=open(root / "daemon.stderr", "ab"),  # noqa: SIM115
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline()
    if line.strip() != b"ready":
        process.kill()
        raise AssertionError("virtkitd did not start: "
                             + (root / "daemon.stderr").read_text(errors="replace"))
    return process


#: where each test daemon's loop-lag watchdog writes stalls (api/looplag.py)
LAG_LOG = "loop-lag.log"
LAG_LOG_ENV = "VIRTKITD_LOOP_LAG_LOG"


def loop_stalls(root: Path) -> str:
    """What the daemon's loop-lag watchdog saw: every stall of its event loop > 0.5 s,
    with the stack that blocked it ("" when none)."""
    try:
        return (root / LAG_LOG).read_text(errors="replace")
    except OSError:
        return ""


def kill_process(pid: int, start: int | None) -> None:
    """SIGKILL ``pid`` only if it is still the process that started at ``start``."""
    if start is not None and proc_start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_daemon(guest: TinyGuest, extra: tuple[str, ...] = ()) -> Iterator[DaemonHandle]:
    """A daemon with a fresh state root (``extra``: more virtkitd arguments), cleaned up
    (QEMUs, daemon, root) on exit."""
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    process = start_daemon(root, extra=extra)
    handle = DaemonHandle(root, process, Client(state_paths(root), timeout=180), guest)
    try:
        yield handle
    finally:
        cleanup(handle)


@pytest.fixture
def daemon(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    with running_daemon(tiny_guest) as handle:
        yield handle


@pytest.fixture(scope="module")
def module_daemon(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    """One daemon shared by a module's tests (for a guest that is slow to boot)."""
    with running_daemon(tiny_guest) as handle:
        yield handle


def cleanup(handle: DaemonHandle) -> None:
    """Kill every QEMU of this daemon (by PID, identity-checked), then the daemon(s), then
    give back what its confined QEMUs were granted (owners, ACL entries, cgroups)."""
    killed = [(pid, proc_start_time(pid)) for pid in handle.qemu_pids()]
    for pid, start in killed:
        kill_process(pid, start)
    with contextlib.suppress(ProcessLookupError):
        handle.process.kill()
    with contextlib.suppress(Exception):
        handle.process.wait(10)
    release_confinement(handle.root, killed)
    stalls = loop_stalls(handle.root)
    shutil.rmtree(handle.root, ignore_errors=True)
    if "STALL:" in stalls:
        pytest.fail(f"the daemon's event loop stalled (> 0.5 s):\n{stalls}", pytrace=False)


def exited(pid: int, start: int | None) -> bool:
    """``pid`` (started at ``start``) has ended: gone, reused, or a zombie.  A zombie has
    closed its files and left its cgroups; only its reaping is left, and the orphaned
    QEMUs of a killed daemon are reaped by PID 1, which on the CI machine (a microVM's
    init) does that only every couple of seconds: waiting for the reaping cost each
    teardown with a QEMU about 2 s."""
    if start is None or proc_start_time(pid) != start:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].startswith("Z")


def release_confinement(root: Path, killed: list[tuple[int, int | None]]) -> None:
    """What the daemon's reconcile would do at its next start: the daemon was killed,
    so ACL entries on shared folders (/root, pytest's base folder) would pile up."""
    deadline = time.monotonic() + 10
    while not all(exited(pid, start) for pid, start in killed):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        Confiner(state_paths(root), enabled=True).reconcile(set())


# -- a daemon inside network namespaces (networks, PXE) ------------------------------------

OUTSIDE_HOST, OUTSIDE_PEER = "198.51.100.1", "198.51.100.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns_daemon(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    with daemon_in_netns(tiny_guest) as handle:
        yield handle


@contextlib.contextmanager
def daemon_in_netns(tiny_guest: TinyGuest, extra: tuple[str, ...] = ()) -> Iterator[DaemonHandle]:
    """A daemon (with ``extra`` arguments) inside a "host" network namespace joined by a
    veth pair to an "outside" one; both namespaces, the daemon, its QEMUs and dnsmasqs
    are removed afterwards."""
    tag = secrets.token_hex(3)
    host, outside = f"vkt-{tag}-h", f"vkt-{tag}-o"
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    handle: DaemonHandle | None = None
    try:
        for ns in (host, outside):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"vk{tag}a", "netns", host, "type", "veth", "peer", "name",
            f"vk{tag}b", "netns", outside)
        _ip("-n", host, "addr", "add", f"{OUTSIDE_PEER}/24", "dev", f"vk{tag}a")
        _ip("-n", outside, "addr", "add", f"{OUTSIDE_HOST}/24", "dev", f"vk{tag}b")
        _ip("-n", host, "link", "set", f"vk{tag}a", "up")
        _ip("-n", outside, "link", "set", f"vk{tag}b", "up")
        process = start_daemon(root, host, extra)
        handle = DaemonHandle(root, process, Client(state_paths(root), timeout=180), tiny_guest,
                              netns=host)
        handle.outside = outside  # type: ignore[attr-defined]
        yield handle
    finally:
        if handle is not None:
            cleanup_networks(handle)
            cleanup(handle)
        for ns in (host, outside):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def cleanup_networks(handle: DaemonHandle) -> None:
    """Kill the dnsmasq processes of this daemon by the PIDs in their pid files.

    The daemon goes first: its network supervisor restarts a dnsmasq that dies, and a
    dnsmasq started after this sweep would outlive the test."""
    with contextlib.suppress(ProcessLookupError):
        handle.process.kill()
    with contextlib.suppress(Exception):
        handle.process.wait(10)
    for pidfile in (handle.root / "networks").glob("*/dnsmasq.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, OSError):
            pid = int(pidfile.read_text().strip())
            if str(handle.root) in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)


SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sshd() -> Iterator[tuple[int, Path]]:
    """A private sshd on 127.0.0.1 (key-only; root allowed) -> (port, folder with the
    client's key and known_hosts)."""
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (scripts/setup.sh test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="vk-sshd-"))
    folder.chmod(0o700)
    process = None
    try:
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(folder / name)], check=True)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        port = free_port()
        (folder / "known_hosts").write_text(
            f"[127.0.0.1]:{port} {(folder / 'host_key.pub').read_text()}")
        (folder / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder}/host_key\n"
            f"AuthorizedKeysFile {folder}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPidFile none\nAllowStreamLocalForwarding yes\n"
            "AllowTcpForwarding local\nX11Forwarding no\nPermitTTY no\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                                   stdout=subprocess.DEVNULL,
                                   stderr=open(folder / "sshd.log", "wb"))  # noqa: SIM115
        wait_for(lambda: _listening(port), 10, "sshd to listen")
        yield port, folder
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def qemu_processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every live qemu-system process on the host."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in os.path.basename(argv[0]):
            found.append((int(entry), argv))
    return found


@contextlib.contextmanager
def temporary_account(group: str | None) -> Iterator[tuple[str, int, int | None]]:
    """A new local account (no home, no shell), in ``group`` when given (the group is
    made if missing): (user, uid, the group's gid). Both are removed afterwards."""
    made = False
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
            made = True
    user = f"vkt{secrets.token_hex(3)}"
    groups = ["--groups", group] if group else []
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *groups,
                    user], check=True)
    try:
        yield user, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid if group else None
    finally:
        subprocess.run(["userdel", user], check=False)
        if made:
            subprocess.run(["groupdel", str(group)], check=False)


def raw_request(sock_path: Path, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes as one request on a new connection (the request should say
    ``Connection: close``); (status, body) of the answer.  ``timeout`` bounds the
    connect and every read."""
    sock = connect_unix(sock_path, timeout=timeout)
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- the shared Debian guest (tests/real/debianguest.py) -----------------------------------

@pytest.fixture
def debian_vm(tiny_guest: TinyGuest) -> DebianVm:
    """The running Debian guest that every test naming this fixture shares (booted once:
    tests/real/debianguest.py says how to use it and what to leave behind)."""
    from tests.real.debianguest import SHARED

    return SHARED.ready(tiny_guest)


def _uses_debian_vm(item: pytest.Item | None) -> bool:
    return item is not None and "debian_vm" in getattr(item, "fixturenames", ())


def _debian_order(item: pytest.Item) -> int:
    """0: leaves the shared guest as it was; 1: changes it for good; 2: powers it off."""
    mark = item.get_closest_marker("changes_debian_guest")
    if mark is None:
        return 0
    return 2 if mark.kwargs.get("powers_off") else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that share the Debian guest run one after another (where the first of
    them is), those marked ``changes_debian_guest`` last among them and those that power
    it off at the very end: one boot serves them all."""
    users = [item for item in items if _uses_debian_vm(item)]
    if not users:
        return
    first = items.index(users[0])
    rest = [item for item in items if not _uses_debian_vm(item)]
    block = sorted(users, key=_debian_order)  # stable: each group in collection order
    items[:] = rest[:first] + block + rest[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Any:
    report = yield
    if report.failed and _uses_debian_vm(item):
        from tests.real.debianguest import SHARED

        SHARED.broken = True  # the next test gets a fresh guest
    return report


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the shared Debian guest after the last test of its group."""
    if _uses_debian_vm(item) and not _uses_debian_vm(nextitem):
        from tests.real.debianguest import SHARED

        SHARED.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Also when the run stopped early (-x, an interrupt): no shared guest outlives it."""
    shared = sys.modules.get("tests.real.debianguest")
    if shared is not None:
        shared.SHARED.close()
