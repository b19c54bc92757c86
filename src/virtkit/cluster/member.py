"""The etcd member a host runs for the cluster: its command line (pure) and its process.

The member outlives the daemon (as QEMUs do): a daemon restart must not cost the
cluster a voter.  Its PID and start time are kept in ``<cluster>/etcd.pid``; the next
daemon adopts a running member after checking it is the same process (start time)
and ours (its command line names our data folder), else starts it again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import HostError
from virtkit.host.procstat import cmdline, start_ticks, terminate

ETCD = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass(frozen=True)
class MemberConfig:
    """One etcd member: ``name`` (the host's), its ``address`` (an IP the other hosts
    reach), the ``initial_cluster`` (``name=https://ip:2380,...``) and whether the
    cluster is ``new`` (init) or ``existing`` (join)."""

    name: str
    address: str
    data_dir: Path
    initial_cluster: str
    state: str  # "new" | "existing"
    ca: Path
    cert: Path
    key: Path
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    token: str = "virtkit"  # noqa: S105 - etcd's initial-cluster-token, a cluster label

    @property
    def client_url(self) -> str:
        return f"https://{_host(self.address)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{_host(self.address)}:{self.peer_port}"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


#: how much history members keep (a watch resumes within it; older, it restarts from now)
COMPACTION_RETENTION = "1h"
#: etcd's suggested maximum backend size (its default is 2 GiB)
BACKEND_QUOTA = 8 * 1024**3


def etcd_argv(config: MemberConfig) -> list[str]:
    """The member's command line: peer and client TLS with client certificates from the
    cluster's CA required on both (no anonymous client, no foreign peer).

    History is compacted hourly and the backend capped at etcd's suggested 8 GiB: every
    heartbeat is a new revision, and without compaction the default 2 GiB quota fills in
    weeks, after which etcd refuses every write (the NOSPACE alarm) and the cluster can
    neither claim nor fence-free restart anything."""
    return [
        ETCD, "--name", config.name, "--data-dir", str(config.data_dir),
        "--listen-peer-urls", config.peer_url,
        "--initial-advertise-peer-urls", config.peer_url,
        "--listen-client-urls", config.client_url,
        "--advertise-client-urls", config.client_url,
        "--initial-cluster", config.initial_cluster,
        "--initial-cluster-state", config.state,
        "--initial-cluster-token", config.token,
        "--cert-file", str(config.cert), "--key-file", str(config.key),
        "--trusted-ca-file", str(config.ca), "--client-cert-auth",
        "--peer-cert-file", str(config.cert), "--peer-key-file", str(config.key),
        "--peer-trusted-ca-file", str(config.ca), "--peer-client-cert-auth",
        "--auto-compaction-mode", "periodic", "--auto-compaction-retention", COMPACTION_RETENTION,
        "--quota-backend-bytes", str(BACKEND_QUOTA),
        "--logger", "zap", "--log-outputs", "stderr",
    ]


class MemberProcess:
    """The etcd process of this host (``folder`` = ``<root>/cluster``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pidfile = folder / "etcd.pid"
        self.log = folder / "etcd.log"
        self.data_dir = folder / "etcd"
        self._child: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The PID of our running member, or None (a stale pidfile is ignored)."""
        try:
            pid_text, start_text = self.pidfile.read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return None
        if start_ticks(pid) != start or str(self.data_dir) not in cmdline(pid):
            return None
        return pid

    def start(self, config: MemberConfig) -> int:
        """Start the member unless ours runs already; its PID."""
        self.reap()
        running = self.pid()
        if running is not None:
            return running
        if shutil.which(ETCD) is None:
            raise HostError("the etcd command is missing", fix="apt-get install etcd-server")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(etcd_argv(config), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log, start_new_session=True)
        self._child = process
        start = start_ticks(process.pid)
        self.pidfile.write_text(f"{process.pid} {start}\n")
        return process.pid

    def reap(self) -> None:
        """Collect our child if it exited (no zombie is left for ``pid()`` to see)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the member (by PID, identity-checked) and wait for it to end."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return
        if not terminate(pid, lambda: self.pid() is not None, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
