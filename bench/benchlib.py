"""Shared pieces of the spine benchmarks: timing, statistics, tables, results,
and the three things being compared -- a virtkitd, raw QEMU, and libvirt.

Everything that starts something (a daemon, a VM, a libvirt domain, libvirtd
itself) is a context manager whose ``close`` undoes it, so a benchmark that
fails half-way still leaves the machine as it found it.  Processes are only
ever stopped by the PID we recorded when we started them.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit import __version__ as VIRTKIT_VERSION
from virtkit.cli.client import Client
from virtkit.images.tinyguest import TinyGuest, build_tiny_guest
from virtkit.paths import state_paths

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LIBVIRT_URI = "qemu:///system"


# -- timing and statistics -------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took (wall clock, perf_counter) and what it returned."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw samples (seconds or whatever unit came in)."""
    if not samples:
        return {"n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples),
            "max": max(samples), "samples": list(samples)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print(f"\n== {title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/NAME-<timestamp>.json`` and ``results/NAME-latest.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    text = json.dumps(data, indent=2, default=str) + "\n"
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


# -- host context ---------------------------------------------------------------------


def _qemu_processes() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if not raw:
            continue
        argv0 = raw.split(b"\0", 1)[0].decode(errors="replace")
        if "qemu-system" in os.path.basename(argv0):
            found.append((int(entry), raw.replace(b"\0", b" ").decode(errors="replace")))
    return found


def foreign_qemu_count(own_markers: Iterable[str] = ()) -> int:
    """QEMU processes on the host that this benchmark did not start (noise)."""
    markers = [m for m in own_markers if m]
    return sum(1 for _pid, cmd in _qemu_processes() if not any(m in cmd for m in markers))


def wait_quiet(timeout: float, own_markers: Iterable[str] = ()) -> dict[str, Any]:
    """Wait up to ``timeout`` s for a quiet host: no QEMU of others, 1-min load < 1.5."""
    start = time.monotonic()
    while True:
        foreign, load = foreign_qemu_count(own_markers), loadavg()[0]
        quiet = foreign == 0 and load < 1.5
        if quiet or time.monotonic() - start >= timeout:
            return {"quiet": quiet, "waited_s": round(time.monotonic() - start, 1),
                    "foreign_qemu_processes": foreign, "loadavg1": load}
        time.sleep(2)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _version_of(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else None


def git_commit() -> str | None:
    """The commit benchmarked: run_all.sh's snapshot, else the checkout's HEAD (+ dirty)."""
    if os.environ.get("VIRTKIT_BENCH_COMMIT"):
        return os.environ["VIRTKIT_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain",
                                "--", "src"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    commit = out.stdout.strip() or None
    if commit and dirty.stdout.strip():
        commit += " (src/ modified)"
    return commit


def host_context() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "virtkit": VIRTKIT_VERSION,
        "virtkit_commit": git_commit(),
        "virtkit_source": str(Path(sys.modules["virtkit"].__file__ or "?").parent),
        "virtkit_bytecode_compiled": bool(list(
            (Path(sys.modules["virtkit"].__file__ or "/").parent / "cli").glob(
                "__pycache__/*.pyc"))),
        "qemu": _version_of(["qemu-system-x86_64", "--version"]),
        "libvirt": _version_of(["libvirtd", "--version"]) if shutil.which("libvirtd") else None,
        "loadavg": loadavg(),
        "foreign_qemu_processes": foreign_qemu_count(),
    }


# -- the virtkit side ---------------------------------------------------------------


def virtkit_cli() -> list[str]:
    """The real ``virtkit`` console script (not a pyenv shim in front of it)."""
    beside = Path(sys.executable).parent / "virtkit"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("virtkit")
    if found:
        return [found]
    return [sys.executable, "-m", "virtkit.cli.main"]


def tiny_guest() -> TinyGuest:
    return build_tiny_guest()


def tiny_spec(name: str, guest: TinyGuest, memory: int = 256) -> dict[str, Any]:
    return {"name": name, "memory": memory,
            "boot": {"kernel": str(guest.kernel), "initrd": str(guest.initrd),
                     "cmdline": guest.cmdline}}


def proc_rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid`` (one we started), then SIGKILL if it does not go."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)


class VirtkitDaemon:
    """A private virtkitd on a fresh state root; closes by destroying its VMs and stopping it."""

    def __init__(self, log_level: str = "info", extra: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vkbench-vk-"))
        self.extra = extra
        self.paths = state_paths(self.root)
        self.client = Client(self.paths)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_level = log_level

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI subprocesses talking to this daemon (never auto-starting one)."""
        return {**os.environ, "VIRTKIT_ROOT": str(self.root), "VIRTKIT_NO_AUTOSTART": "1",
                "NO_COLOR": "1"}

    def start(self) -> VirtkitDaemon:
        read_fd, write_fd = os.pipe()
        stderr = open(self.root / "virtkitd.stderr", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "virtkit.api.daemon", "--root", str(self.root),
                 "--ready-fd", str(write_fd), "--log-level", self._log_level, *self.extra],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=[write_fd],
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
            stderr.close()
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"virtkitd did not start; see {self.root}/virtkitd.stderr")
        return self

    def __enter__(self) -> VirtkitDaemon:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def define(self, name: str, guest: TinyGuest, memory: int = 256) -> dict[str, Any]:
        return dict(self.client.post("/v1/domains", {"spec": tiny_spec(name, guest, memory)}))

    def state(self, name: str) -> str:
        return str(self.client.get(f"/v1/domains/{name}")["state"])

    def qemu_pids(self) -> list[int]:
        """QEMU processes started by this daemon (their argv names files under our root)."""
        marker = str(self.root)
        return [pid for pid, cmd in _qemu_processes() if marker in cmd]

    def close(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                with contextlib.suppress(Exception):
                    for row in self.client.get("/v1/domains"):
                        if row["state"] not in ("shutoff", "crashed") or row.get("pid"):
                            with contextlib.suppress(Exception):
                                self.client.post(f"/v1/domains/{row['name']}/destroy")
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            for pid in self.qemu_pids():  # anything the daemon could not destroy
                _stop_pid(pid, timeout=3)
            shutil.rmtree(self.root, ignore_errors=True)


# -- raw QEMU -----------------------------------------------------------------------


def proc_argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def raw_argv(argv: list[str], workdir: Path) -> tuple[list[str], Path]:
    """``argv`` with every ``-chardev socket,...,fd=N`` turned into a path-based socket
    in ``workdir`` (and logfiles moved there); returns the argv and the QMP socket path."""
    out: list[str] = []
    qmp: Path | None = None
    previous = ""
    for arg in argv:
        if previous == "-chardev" and arg.startswith("socket,"):
            options = arg.split(",")
            ident = next(o[3:] for o in options if o.startswith("id="))
            path = workdir / f"{ident}.sock"
            rewritten = []
            for option in options:
                if option.startswith("fd="):
                    rewritten.append(f"path={path}")
                elif option.startswith("logfile="):
                    rewritten.append(f"logfile={workdir / (ident + '.log')}")
                else:
                    rewritten.append(option)
            if "server=on" not in rewritten:
                rewritten.append("server=on")
            if "wait=off" not in rewritten:
                rewritten.append("wait=off")
            arg = ",".join(rewritten)
            if ident == "charmonitor":
                qmp = path
        out.append(arg)
        previous = arg
    if qmp is None:
        raise ValueError("no -chardev socket,id=charmonitor in the argv")
    return out, qmp


class _Qmp:
    """The few lines of QMP the raw floor needs: greeting, capabilities, one command."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rwb")
        json.loads(self.file.readline())  # greeting

    def execute(self, command: str) -> Any:
        self.file.write(json.dumps({"execute": command}).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(f"QEMU closed the monitor during {command}")
            message = json.loads(line)
            if "return" in message:
                return message["return"]
            if "error" in message:
                raise RuntimeError(f"{command}: {message['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def raw_qemu_start(argv: list[str], qmp_path: Path,
                   log: Path) -> tuple[float, subprocess.Popen[bytes], _Qmp]:
    """Spawn QEMU (argv has -S), connect QMP, qmp_capabilities, cont. Returns the seconds
    from spawn until ``cont`` returned, the process and its monitor."""
    for stale in qmp_path.parent.glob("*.sock"):
        stale.unlink()
    with open(log, "ab") as log_file:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=log_file, start_new_session=True)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(qmp_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if process.poll() is not None:
                    raise RuntimeError(f"QEMU exited with {process.returncode}; see {log}") \
                        from None
                time.sleep(0.0005)
        qmp = _Qmp(sock)
        qmp.execute("qmp_capabilities")
        qmp.execute("cont")
        elapsed = time.perf_counter() - start
    except BaseException:
        raw_qemu_stop(process, None)
        raise
    return elapsed, process, qmp


def raw_qemu_start_prebound(argv_with_fds: list[str], workdir: Path,
                            log: Path) -> tuple[float, subprocess.Popen[bytes], _Qmp]:
    """Like :func:`raw_qemu_start` but as virtkitd does it: bind the chardev sockets
    first and pass them to QEMU as fds, so the monitor can be connected at once."""
    listeners: dict[str, socket.socket] = {}
    argv: list[str] = []
    previous = ""
    for arg in argv_with_fds:
        if previous == "-chardev" and arg.startswith("socket,"):
            options = arg.split(",")
            ident = next(o[3:] for o in options if o.startswith("id="))
            path = workdir / f"{ident}.sock"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(4)
            listeners[ident] = listener
            arg = ",".join(f"fd={listener.fileno()}" if o.startswith("fd=") else
                           f"logfile={workdir / (ident + '.log')}" if o.startswith("logfile=")
                           else o for o in options)
        argv.append(arg)
        previous = arg
    try:
        with open(log, "ab") as log_file:
            start = time.perf_counter()
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=log_file, start_new_session=True,
                                       pass_fds=[s.fileno() for s in listeners.values()])
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(workdir / "charmonitor.sock"))
            qmp = _Qmp(sock)
            qmp.execute("qmp_capabilities")
            qmp.execute("cont")
            elapsed = time.perf_counter() - start
        except BaseException:
            raw_qemu_stop(process, None)
            raise
    finally:
        for listener in listeners.values():
            listener.close()
    return elapsed, process, qmp


def raw_qemu_stop(process: subprocess.Popen[bytes], qmp: _Qmp | None) -> None:
    if qmp is not None:
        with contextlib.suppress(Exception):
            qmp.execute("quit")
        qmp.close()
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- libvirt --------------------------------------------------------------------------


def libvirt_installed() -> bool:
    return bool(shutil.which("libvirtd") and shutil.which("virsh"))


LIBVIRT_XML = """<domain type='qemu'>
  <name>{name}</name>
  <description>virtkit benchmark domain</description>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <cpu mode='maximum'/>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='virtio'/>
    <panic model='isa'/>
  </devices>
</domain>
"""


def _pidfile(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


@dataclass
class KvmPermissions:
    """Give /dev/kvm Debian's udev default (root:kvm 0660) while libvirt runs, then restore.

    Without udev this host leaves /dev/kvm root:root 0600.  libvirt probes QEMU's
    capabilities as root (KVM found) but checks the cache as the QEMU user
    (libvirt-qemu, in group kvm), which cannot open /dev/kvm, so it declares its
    capability cache stale and re-probes QEMU (about 4 s) on *every* start.  On a
    normal Debian host udev makes /dev/kvm root:kvm 0660 and that does not happen.
    """

    applied: bool = False
    saved: tuple[int, int, int] | None = None
    note: str = ""

    def apply(self) -> None:
        kvm = Path("/dev/kvm")
        if not kvm.exists():
            self.note = "/dev/kvm absent"
            return
        try:
            gid = grp.getgrnam("kvm").gr_gid
            pwd.getpwnam("libvirt-qemu")
        except KeyError:
            self.note = "no kvm group or libvirt-qemu user"
            return
        st = kvm.stat()
        if st.st_gid == gid and st.st_mode & 0o060 == 0o060:
            self.note = "already root:kvm 0660"
            return
        self.saved = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
        os.chown(kvm, st.st_uid, gid)
        os.chmod(kvm, 0o660)
        self.applied = True
        self.note = (f"/dev/kvm set to root:kvm 0660 (was uid {st.st_uid} gid {st.st_gid} "
                     f"{st.st_mode & 0o7777:o}) for the run, restored after")

    def restore(self) -> None:
        if self.applied and self.saved is not None:
            uid, gid, mode = self.saved
            os.chown("/dev/kvm", uid, gid)
            os.chmod("/dev/kvm", mode)
            self.applied = False


@dataclass
class Libvirt:
    """libvirtd (+ virtlogd) on qemu:///system and the benchmark's domains.

    Uses a libvirtd that is already running (and leaves it running); otherwise
    starts ``virtlogd -d`` and ``libvirtd -d`` and stops them by PID on close.
    """

    guest: TinyGuest
    fix_kvm_permissions: bool = True
    started_pids: dict[str, int] = field(default_factory=dict)
    reused: bool = False
    defined: list[str] = field(default_factory=list)
    kvm: KvmPermissions = field(default_factory=KvmPermissions)
    files: Path | None = None

    def __enter__(self) -> Libvirt:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def libvirtd_pid(self) -> int | None:
        return _pidfile(Path("/run/libvirtd.pid"))

    @property
    def virtlogd_pid(self) -> int | None:
        return _pidfile(Path("/run/virtlogd.pid"))

    def start(self) -> None:
        if self.fix_kvm_permissions:
            self.kvm.apply()
        # Kernel and initrd where the QEMU user can read them (root's home is 0700).
        self.files = Path(tempfile.mkdtemp(prefix="vkbench-lv-"))
        self.files.chmod(0o755)
        for source in (self.guest.kernel, self.guest.initrd):
            target = self.files / source.name
            shutil.copyfile(source, target)
            target.chmod(0o644)
        if self.libvirtd_pid is not None:
            self.reused = True
        else:
            if self.virtlogd_pid is None:
                subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
                pid = self._wait_pidfile(Path("/run/virtlogd.pid"))
                self.started_pids["virtlogd"] = pid
            subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
            self.started_pids["libvirtd"] = self._wait_pidfile(Path("/run/libvirtd.pid"))
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(["virsh", "-c", LIBVIRT_URI, "uri"], capture_output=True,
                                   text=True, timeout=30)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd does not answer: {probe.stderr.strip()}")
            time.sleep(0.2)

    @staticmethod
    def _wait_pidfile(path: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = _pidfile(path)
            if pid is not None:
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"{path} did not appear")

    def virsh(self, *args: str, check: bool = True, stdin: str | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True,
                                text=True, input=stdin, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
        return result

    def xml(self, name: str, memory: int = 256) -> str:
        assert self.files is not None
        return LIBVIRT_XML.format(name=name, memory=memory, cmdline=self.guest.cmdline,
                                  kernel=self.files / self.guest.kernel.name,
                                  initrd=self.files / self.guest.initrd.name)

    def define_many(self, names: Sequence[str], memory: int = 256) -> None:
        """Define domains through one virsh session reading commands on stdin."""
        assert self.files is not None
        xml_dir = self.files / "xml"
        xml_dir.mkdir(exist_ok=True)
        script = []
        for name in names:
            path = xml_dir / f"{name}.xml"
            path.write_text(self.xml(name, memory))
            script.append(f"define {path}")
        self.defined.extend(names)  # before running: close() undefines whatever got defined
        self.virsh(stdin="\n".join(script) + "\n")
        listed = set(self.virsh("list", "--all", "--name").stdout.split())
        missing = [n for n in names if n not in listed]
        if missing:
            raise RuntimeError(f"libvirt did not define {len(missing)} domains, e.g. {missing[0]}")

    def define(self, name: str, memory: int = 256) -> None:
        self.define_many([name], memory)

    def state(self, name: str) -> str:
        return self.virsh("domstate", name).stdout.strip()

    def qemu_pid(self, name: str) -> int | None:
        return _pidfile(Path(f"/run/libvirt/qemu/{name}.pid"))

    def close(self) -> None:
        try:
            if self.defined:
                names = list(self.defined)
                running = set()
                with contextlib.suppress(Exception):
                    running = set(self.virsh("list", "--name").stdout.split())
                script = [f"destroy {n}" for n in names if n in running]
                script += [f"undefine {n}" for n in names]
                with contextlib.suppress(Exception):
                    self.virsh(stdin="\n".join(script) + "\n", check=False)
                for name in names:  # a QEMU libvirt could not destroy
                    pid = self.qemu_pid(name)
                    if pid is not None:
                        _stop_pid(pid, timeout=3)
                    # libvirt keeps a per-domain QEMU log after undefine; these are ours.
                    Path(f"/var/log/libvirt/qemu/{name}.log").unlink(missing_ok=True)
                self.defined.clear()
        finally:
            for what in ("libvirtd", "virtlogd"):
                pid = self.started_pids.pop(what, None)
                if pid is not None:
                    _stop_pid(pid)
            self.kvm.restore()
            if self.files is not None:
                shutil.rmtree(self.files, ignore_errors=True)
                self.files = None


# -- running benchmarks ---------------------------------------------------------------------


def run_benchmarks(suite: str, funcs: dict[str, Callable[[argparse.Namespace], Any]],
                   args: argparse.Namespace, plan: dict[str, dict[str, Any]]) -> None:
    """Run the benchmark ``args.bench`` of ``suite``, or with ``all`` every one in
    ``plan`` in order, each with its own options on top of the command line's."""
    if args.bench == "all":
        for name, extra in plan.items():
            print(f"\n##### {suite} {name}", flush=True)
            run_one(funcs[name], argparse.Namespace(**{**vars(args), **extra}))
        return
    run_one(funcs[args.bench], args)


def run_one(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """One benchmark, after waiting for a quiet host if ``--wait-quiet`` asks for it."""
    if args.wait_quiet:
        print(f"(host before run: {wait_quiet(args.wait_quiet)})", flush=True)
    start = time.perf_counter()
    func(args)
    print(f"({func.__name__} took {time.perf_counter() - start:.0f} s)", flush=True)
