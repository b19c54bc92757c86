"""Three virtkit "hosts" on one machine for the cluster tests: each a daemon in its own
network namespace (with its etcd member once it is in a cluster), joined by a bridge in
a fourth namespace.  Everything is removed afterwards: daemons, etcd members, guards,
QEMUs, namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.real.conftest import (
    DaemonHandle,
    cleanup,
    qemu_processes,
    start_daemon,
    wait_for,
)
from virtkit.cli.client import Client
from virtkit.host.procstat import start_ticks
from virtkit.paths import state_paths

ADDRESSES = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def kill_member(root: Path) -> None:
    """The host's etcd member and fence guard (both outlive their daemon on purpose)."""
    kill_by_pidfile(root / "cluster" / "etcd.pid")
    kill_by_pidfile(root / "cluster" / "guard" / "guard.pid")


@contextlib.contextmanager
def three_hosts(extra: dict[str, tuple[str, ...]] | None = None
                ) -> Iterator[dict[str, DaemonHandle]]:
    """``extra``: more daemon arguments for some hosts (``{"a": ("--web", ...)}``)."""
    tag = secrets.token_hex(3)
    lan = f"vkc-{tag}-lan"
    spaces = {name: f"vkc-{tag}-{name}" for name in ADDRESSES}
    handles: dict[str, DaemonHandle] = {}
    try:
        ip("netns", "add", lan)
        ip("-n", lan, "link", "add", "br0", "type", "bridge")
        ip("-n", lan, "link", "set", "br0", "up")
        for name, ns in spaces.items():
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", f"vkc{tag}{name}", "netns", ns, "type", "veth", "peer", "name",
                f"vkc{tag}{name}p", "netns", lan)
            ip("-n", ns, "addr", "add", f"{ADDRESSES[name]}/24", "dev", f"vkc{tag}{name}")
            ip("-n", ns, "link", "set", f"vkc{tag}{name}", "up")
            ip("-n", lan, "link", "set", f"vkc{tag}{name}p", "master", "br0")
            ip("-n", lan, "link", "set", f"vkc{tag}{name}p", "up")
        #: the bridge side of each host's cable: down = the host is cut off
        ports = {name: f"vkc{tag}{name}p" for name in ADDRESSES}
        for name, ns in spaces.items():
            root = Path(tempfile.mkdtemp(prefix=f"vkc{name}-", dir="/tmp"))
            process = start_daemon(root, ns, (extra or {}).get(name, ()))
            handles[name] = DaemonHandle(root, process,
                                         Client(state_paths(root), timeout=90),
                                         None, netns=ns)  # type: ignore[arg-type]
            handles[name].lan = (lan, ports[name])  # type: ignore[attr-defined]
        yield handles
    finally:
        # every host is cleaned up even when one's cleanup fails (a stalled loop fails
        # the test there): QEMUs, daemon, etcd member and guard of each
        failures = []
        for handle in handles.values():
            with contextlib.suppress(ProcessLookupError):
                handle.process.kill()
            with contextlib.suppress(Exception):
                handle.process.wait(10)
            kill_member(handle.root)
            try:
                cleanup(handle)
            except BaseException as exc:  # re-raised once the others are cleaned up
                failures.append(exc)
        for ns in [*spaces.values(), lan]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if failures:
            raise failures[0]


def qemus_of(uuid: str) -> list[int]:
    """Every live QEMU on this machine started for ``uuid`` (on any host)."""
    return [pid for pid, argv in qemu_processes()
            if any(a == b"-uuid" and v == uuid.encode() for a, v in itertools.pairwise(argv))]


def kill_by_pidfile(path: Path) -> None:
    """SIGKILL the process a ``PID START`` file names, if it is still that process."""
    try:
        pid, start = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return
    if start_ticks(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _member_log_on_failure(handle: DaemonHandle) -> Iterator[None]:
    """A failed init or join names what the host's etcd member and daemon logged (the
    teardown removes both files)."""
    try:
        yield
    except AssertionError as exc:
        tails = []
        for path in (handle.root / "cluster" / "etcd.log",
                     state_paths(handle.root).daemon_log):
            try:
                tails.append(f"--- {path}:\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-25:]))
            except OSError:
                tails.append(f"--- {path}: (none)")
        raise AssertionError(f"{exc}\n" + "\n".join(tails)) from exc


def form_cluster(handles: dict[str, DaemonHandle], name: str = "lab") -> None:
    """a makes the cluster, b joins through a, c through b; returns when all three see
    three hosts up."""
    a, b, c = handles["a"], handles["b"], handles["c"]
    with _member_log_on_failure(a):
        a.cli("cluster", "init", "--name", "a", "--address", ADDRESSES["a"],
              "--cluster", name)
    with _member_log_on_failure(b):
        b.cli("cluster", "join", str(a.root / "virtkitd.sock"), "--name", "b",
              "--address", ADDRESSES["b"])
    with _member_log_on_failure(c):
        c.cli("cluster", "join", str(b.root / "virtkitd.sock"), "--name", "c",
              "--address", ADDRESSES["c"])
    for handle in handles.values():
        wait_for(lambda h=handle: len(up_hosts(h)) == 3, 30, "three hosts up")


def up_hosts(handle: DaemonHandle) -> set[str]:
    return {row["name"] for row in handle.client.get("/v1/cluster/hosts")
            if row["state"] == "up"}


def resume(handle: DaemonHandle) -> None:
    """SIGCONT a daemon the test SIGSTOPped (its loop-lag watchdog knows a stopped
    process from a stalled loop: api/looplag.py)."""
    os.kill(handle.process.pid, signal.SIGCONT)
