"""A real one-node Ceph for tests: one monitor and one bluestore OSD on a 4 GiB sparse
file, no cephx (``auth_*_required = none``), no manager, in a temporary folder.

The monitor listens on a loopback address of its own (127.A.B.C, ports 3300 and 6789),
so two runs (or another helper's) never meet; nothing listens outside loopback.  Both
daemons run in the foreground, are stopped by PID, and the folder is removed afterwards,
also when the start fails half-way.  No loop device and no kernel module is used: QEMU
reaches the cluster through librbd, virtkit through the ``rbd``/``ceph`` commands.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CONF = """[global]
fsid = {fsid}
mon_host = [v2:{ip}:3300,v1:{ip}:6789]
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_crush_chooseleaf_type = 0
mon_warn_on_pool_no_redundancy = false
run_dir = {work}/run
admin_socket = {work}/run/$name.asok
log_file = {work}/log/$name.log
pid_file = {work}/run/$name.pid
ms_bind_ipv4 = true
ms_bind_ipv6 = false
osd_objectstore = bluestore
osd_memory_target = 536870912
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
crash_dir = {work}/crash

[mon.a]
mon_data = {work}/mon
public_addr = {ip}

[osd.0]
osd_data = {work}/osd
bluestore_block_path = {work}/osd.block
bluestore_block_size = 4294967296
bluestore_block_create = true
public_addr = {ip}
cluster_addr = {ip}
"""


@dataclass
class CephServer:
    work: Path
    conf: Path  # a ceph.conf for the ceph/rbd commands (tests only; virtkit needs none)
    ip: str
    pool: str = "rbd"
    netns: str | None = None  # the namespace the daemons run in (None: this one)

    @property
    def monitor(self) -> str:
        return f"{self.ip}:6789"

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def ceph(self, *args: str, check: bool = True) -> str:
        return _run([*self.prefix(), "ceph", "-c", str(self.conf), *args], check=check)

    def rbd(self, *args: str, check: bool = True) -> str:
        return _run([*self.prefix(), "rbd", "-c", str(self.conf), *args], check=check)


def _run(argv: list[str], *, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-800:]}")
    return done.stdout


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def ceph_server(netns: str | None = None, ip: str | None = None) -> Iterator[CephServer]:
    """``netns``/``ip``: run the daemons in that namespace on that (existing) address;
    by default here, on a loopback address of their own."""
    ip = ip or f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    work = Path(tempfile.mkdtemp(prefix="vk-ceph-", dir="/var/tmp"))
    for sub in ("mon", "osd", "run", "log", "crash"):
        (work / sub).mkdir()
    conf = work / "ceph.conf"
    fsid = str(uuid.uuid4())
    conf.write_text(CONF.format(fsid=fsid, ip=ip, work=work))
    server = CephServer(work, conf, ip, netns=netns)
    inside = server.prefix()
    started: list[subprocess.Popen[bytes]] = []
    log = open(work / "log" / "daemons.out", "ab")  # noqa: SIM115
    try:
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
              f"[v2:{ip}:3300,v1:{ip}:6789]", str(work / "monmap")])
        _run(["ceph-mon", "-c", str(conf), "--mkfs", "-i", "a", "--monmap",
              str(work / "monmap")])
        started.append(subprocess.Popen([*inside, "ceph-mon", "-f", "-c", str(conf), "-i", "a"],
                                        stdout=log, stderr=log))
        _wait(lambda: _answers(server, "ceph", "mon", "stat"), started, "the monitor")
        osd_uuid = str(uuid.uuid4())
        server.ceph("osd", "new", osd_uuid)
        _run([*inside, "ceph-osd", "-c", str(conf), "-i", "0", "--mkfs", "--osd-uuid",
              osd_uuid],
             timeout=120)
        started.append(subprocess.Popen([*inside, "ceph-osd", "-f", "-c", str(conf), "-i", "0"],
                                        stdout=log, stderr=log))
        _wait(lambda: _osd_up(server), started, "the OSD")
        server.ceph("osd", "pool", "create", server.pool, "8", "8")
        server.ceph("osd", "pool", "application", "enable", server.pool, "rbd")
        # without a manager nothing reports placement groups: an rbd command answers
        # once the pool's are active
        _wait(lambda: _answers(server, "rbd", "ls", server.pool), started,
              "the pool's placement groups")
        yield server
    finally:
        for process in reversed(started):
            _stop(process)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _osd_up(server: CephServer) -> str:
    out = server.ceph("osd", "dump", "--format", "json", check=False)
    with contextlib.suppress(ValueError):
        if any(o.get("up") for o in json.loads(out).get("osds", [])):
            return "up"
    return ""


def _answers(server: CephServer, tool: str, *args: str) -> bool:
    done = subprocess.run([*server.prefix(), tool, "-c", str(server.conf), *args],
                          capture_output=True,
                          timeout=20, check=False)
    return done.returncode == 0


def _wait(probe: Callable[[], object], started: list[subprocess.Popen[bytes]],
          what: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        for process in started:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} ended ({process.returncode})")
        try:
            if probe():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never came up")
        time.sleep(0.3)


__all__ = ["CephServer", "ceph_server"]
