"""A real NFS server for tests: nfs-ganesha (VFS FSAL) + rpcbind in a network namespace
of their own, exporting one temporary folder read-write (no root squash) over NFSv3
and v4 on that namespace's loopback.  Daemons started in the same namespace reach it
at 127.0.0.1; nothing listens outside the namespace.  Both processes are stopped by
PID and the namespace removed afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONFIG = """
NFS_CORE_PARAM {{
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = "{state}"; }}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "/export";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
"""


@dataclass
class NfsServer:
    netns: str
    export: Path  # the exported folder, as this host's file system shows it
    host: str = "127.0.0.1"


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def nfs_server(netns: str | None = None, address: str | None = None) -> Iterator[NfsServer]:
    """The server in a namespace of its own (reached at 127.0.0.1 from inside it), or in
    ``netns`` (made and removed by the caller) where the hosts reach it at ``address``
    (the cluster tests: the namespace of their LAN's bridge)."""
    own = netns is None
    ns = netns or f"vknfs-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="vk-nfs-", dir="/tmp"))
    export, state = work / "export", work / "state"
    export.mkdir()
    state.mkdir()
    os.chmod(work, 0o755)
    (work / "ganesha.conf").write_text(CONFIG.format(export=export, state=state))
    started: list[subprocess.Popen[bytes]] = []
    try:
        if own:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        log = open(work / "server.log", "ab")  # noqa: SIM115
        started.append(subprocess.Popen(["ip", "netns", "exec", ns, "rpcbind", "-f"],
                                        stdout=log, stderr=log))
        time.sleep(0.2)  # rpcbind binds its sockets before ganesha registers with it
        started.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "ganesha.nfsd", "-F", "-f", str(work / "ganesha.conf"),
             "-L", str(work / "ganesha.log"), "-p", str(work / "ganesha.pid"),
             "-N", "NIV_EVENT"], stdout=log, stderr=log))
        _wait_exported(ns, export, started)
        yield NfsServer(ns, export, address or "127.0.0.1")
    finally:
        for process in reversed(started):
            _stop(process)
        if own:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _wait_exported(ns: str, export: Path, started: list[subprocess.Popen[bytes]]) -> None:
    """Until a libnfs mount of the export works from inside the namespace."""
    probe = ("from virtkit.storage.libnfs import Export\n"
             f"Export('127.0.0.1', {str(export)!r}).close()\n")
    deadline = time.monotonic() + 60
    while True:
        for process in started:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} ended ({process.returncode})")
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                                capture_output=True, text=True, check=False,
                                env={**os.environ})
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the NFS export never came up: {result.stderr[-500:]}")
        time.sleep(0.3)


__all__ = ["NfsServer", "nfs_server"]
