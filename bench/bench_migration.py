#!/usr/bin/env python3
"""Live migration: virtkit (two daemons) against raw QEMU with the same parameters.

    python bench/bench_migration.py run [--runs 3] [--memory 256 1024] [--no-storage]

An idle tiny guest (the given memory, 1 vCPU, TCG) booted on one side is migrated to
the other over tcp:127.0.0.1 on this host.  virtkit: two private daemons, the time is
the ``POST /v1/domains/{ref}/migrate`` request (destination validation, its QEMU start,
the stream, pause-before-switchover, finish, source stop).  Raw QEMU: the same argv
virtkitd built (sockets by path), the destination started with ``-incoming defer``,
the same capabilities (events, return-path, pause-before-switchover) and no bandwidth
cap, from spawning the destination QEMU to ``cont`` there.  Downtime is QEMU's own
``downtime`` figure of the completed migration on both sides.  Every process is
stopped by the PID recorded when it was started.

The copy-storage case (``--copy-storage-all``): the 256 MiB guest with a 256 MiB
qcow2 disk holding 64 MiB of random data.  virtkit: ``migrate`` with
``copy_storage_all`` and the copy mapped to another path (the destination creates
the image).  Raw QEMU, the same steps by hand: ``qemu-img create`` of the target,
the destination QEMU with the target image and ``-incoming defer``,
``nbd-server-start`` + ``block-export-add``; on the source ``blockdev-add`` of an NBD
client, ``blockdev-mirror sync=full`` to READY, the RAM migration to
``pre-switchover``, ``block-job-cancel``, ``blockdev-del``, ``migrate-continue``;
``nbd-server-stop`` and ``cont`` on the destination.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from virtkit.images.tinyguest import BOOT_MARKER, TinyGuest

BOOT_TIMEOUT = 120.0


class Qmp:
    """QMP with arguments (benchlib's _Qmp sends bare commands only)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline() or b'{"error": "closed"}')
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _wait_status(qmp: Qmp, wanted: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate")
        if info.get("status") == wanted:
            return info
        if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"raw migration: {info}")
        time.sleep(0.005)


def _caps(qmp: Qmp, names: tuple[str, ...]) -> None:
    qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": n, "state": True} for n in names]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_log(path: Path, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and BOOT_MARKER in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no boot marker in {path}")
        time.sleep(0.1)


class RawPair:
    """A raw source and destination QEMU of ``argv`` in a private folder each; every
    monitor is told to quit and every process is stopped on exit.  ``rewrite`` maps
    the destination's argv (a copied disk's new path)."""

    def __init__(self, argv: list[str], folder: Path,
                 rewrite: dict[str, str] | None = None) -> None:
        self.src_dir, self.dst_dir = folder / "src", folder / "dst"
        self.src_dir.mkdir()
        self.dst_dir.mkdir()
        self.src_argv, self.src_qmp_path = bl.raw_argv(argv, self.src_dir)
        dst_argv, self.dst_qmp_path = bl.raw_argv(argv, self.dst_dir)
        for old, new in (rewrite or {}).items():
            dst_argv = [a.replace(old, new) for a in dst_argv]
        self.dst_argv = dst_argv
        self.processes: list[subprocess.Popen[bytes]] = []
        self.monitors: list[Qmp] = []

    def __enter__(self) -> RawPair:
        return self

    def __exit__(self, *exc: object) -> None:
        for qmp in self.monitors:
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                qmp.execute("quit")
            qmp.close()
        for process in self.processes:
            bl.raw_qemu_stop(process, None)

    def _spawn(self, argv: list[str], folder: Path, qmp_path: Path) -> Qmp:
        with open(folder / "qemu.log", "ab") as log:
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=log,
                                                   start_new_session=True))
        qmp = Qmp(qmp_path)
        self.monitors.append(qmp)
        return qmp

    def boot_source(self) -> Qmp:
        """Start the source QEMU, let it run and wait for its guest to boot."""
        src = self._spawn(self.src_argv, self.src_dir, self.src_qmp_path)
        src.execute("cont")
        _wait_log(self.src_dir / "charserial0.log")
        return src

    def start_destination(self) -> Qmp:
        """The destination QEMU waiting for a stream (``-incoming defer``)."""
        dst = self._spawn([*self.dst_argv, "-incoming", "defer"], self.dst_dir,
                          self.dst_qmp_path)
        _caps(dst, ("events", "return-path"))
        return dst


def _seconds_and_downtime(start: float, info: dict[str, Any]) -> tuple[float, float | None]:
    """Elapsed seconds since ``start`` and QEMU's reported downtime in seconds."""
    seconds = time.perf_counter() - start
    downtime = info.get("downtime")
    return seconds, downtime / 1000 if downtime is not None else None


def virtkit_once(guest: TinyGuest, memory: int, name: str) -> tuple[float, float | None,
                                                                      list[str]]:
    """One virtkit migration; its seconds, QEMU's downtime (s) and the source argv."""
    with bl.VirtkitDaemon() as source, bl.VirtkitDaemon() as destination:
        source.define(name, guest, memory)
        pid = source.client.post(f"/v1/domains/{name}/start")["pid"]
        argv = bl.proc_argv(pid)
        _wait_log(source.root / "log" / "domains" / source.client.get(
            f"/v1/domains/{name}")["uuid"] / "serial0.log")
        body = {"destination": {"socket": str(destination.paths.socket)},
                "address": "127.0.0.1"}
        seconds, result = bl.timed(lambda: source.client.post(
            f"/v1/domains/{name}/migrate", body))
        assert destination.state(name) == "running"
        # QEMU's own figure, comparable with raw QEMU's (downtime_ms is the guest-visible
        # pause, finish round trip included)
        downtime = result.get("qemu_downtime_ms", result.get("downtime_ms"))
        return seconds, downtime / 1000 if downtime is not None else None, argv


def _migrate(src: Qmp, dst: Qmp, port: int,
             at_switchover: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Migrate src to dst (already listening on ``port``) as virtkit does: return-path,
    pause-before-switchover (``at_switchover`` runs there), no bandwidth cap; the
    destination runs afterwards.  Returns the source's final query-migrate."""
    _caps(src, ("events", "return-path", "pause-before-switchover"))
    src.execute("migrate-set-parameters", {"max-bandwidth": 2**40})
    src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    _wait_status(src, "pre-switchover")
    at_switchover()
    src.execute("migrate-continue", {"state": "pre-switchover"})
    info = _wait_status(src, "completed")
    _wait_status(dst, "completed")
    return info


def raw_once(argv: list[str]) -> tuple[float, float | None]:
    """The same migration done by hand on raw QEMU processes."""
    with tempfile.TemporaryDirectory(prefix="vkbench-mig-") as tmp, \
            RawPair(argv, Path(tmp)) as pair:
        src = pair.boot_source()
        start = time.perf_counter()
        dst = pair.start_destination()
        port = _free_port()
        dst.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        info = _migrate(src, dst, port)
        dst.execute("cont")
        return _seconds_and_downtime(start, info)


DISK_SIZE = 256 * 2**20
DISK_DATA = 64 * 2**20


def _data_disk(folder: Path) -> Path:
    """A 256 MiB qcow2 image whose first 64 MiB are random data."""
    raw = folder / "seed.raw"
    with raw.open("wb") as out:
        for _ in range(DISK_DATA // 2**20):
            out.write(os.urandom(2**20))
    os.truncate(raw, DISK_SIZE)
    disk = folder / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
                   check=True)
    raw.unlink()
    return disk


def virtkit_storage_once(guest: TinyGuest, disk: Path, target: Path, name: str
                         ) -> tuple[float, float | None, list[str]]:
    """One virtkit --copy-storage-all migration; seconds, downtime (s), source argv."""
    with bl.VirtkitDaemon() as source, bl.VirtkitDaemon() as destination:
        spec = {**bl.tiny_spec(name, guest, 256),
                "disks": [{"path": str(disk), "format": "qcow2"}]}
        source.client.post("/v1/domains", {"spec": spec})
        pid = source.client.post(f"/v1/domains/{name}/start")["pid"]
        argv = bl.proc_argv(pid)
        _wait_log(source.root / "log" / "domains" / source.client.get(
            f"/v1/domains/{name}")["uuid"] / "serial0.log")
        body = {"destination": {"socket": str(destination.paths.socket)},
                "address": "127.0.0.1", "copy_storage_all": True,
                "disk_paths": {str(disk): str(target)}}
        seconds, result = bl.timed(lambda: source.client.post(
            f"/v1/domains/{name}/migrate", body))
        assert destination.state(name) == "running"
        # QEMU's own figure, comparable with raw QEMU's (downtime_ms is the guest-visible
        # pause, finish round trip included)
        downtime = result.get("qemu_downtime_ms", result.get("downtime_ms"))
        return seconds, downtime / 1000 if downtime is not None else None, argv


def _disk_node(qmp: Qmp) -> str:
    for block in qmp.execute("query-block"):
        if block.get("inserted") and "disk0" in str(block.get("qdev", "")):
            return str(block["inserted"]["node-name"])
    raise RuntimeError("no disk0 in query-block")


def _wait_mirror(qmp: Qmp, job: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["device"]: j for j in qmp.execute("query-block-jobs")}
        if jobs.get(job, {}).get("ready"):
            return
        if job not in jobs or time.monotonic() > deadline:
            raise RuntimeError(f"raw mirror: {jobs}")
        time.sleep(0.005)


def raw_storage_once(argv: list[str], disk: Path) -> tuple[float, float | None]:
    """The same copy-storage migration by hand on raw QEMU processes."""
    with tempfile.TemporaryDirectory(prefix="vkbench-migs-") as tmp:
        target = Path(tmp) / "dst" / "disk.qcow2"
        with RawPair(argv, Path(tmp), rewrite={str(disk): str(target)}) as pair:
            src = pair.boot_source()
            start = time.perf_counter()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target),
                            str(DISK_SIZE)], check=True)
            dst = pair.start_destination()
            port, nbd_port = _free_port(), _free_port()
            dst.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
            dst.execute("nbd-server-start", {"addr": {"type": "inet", "data": {
                "host": "127.0.0.1", "port": str(nbd_port)}}})
            dst.execute("block-export-add", {"type": "nbd", "id": "e0", "name": "disk0",
                                             "node-name": _disk_node(dst), "writable": True})
            src.execute("blockdev-add", {"driver": "nbd", "node-name": "nbd0",
                                         "export": "disk0", "server": {
                                             "type": "inet", "host": "127.0.0.1",
                                             "port": str(nbd_port)}})
            src.execute("blockdev-mirror", {"job-id": "m0", "device": _disk_node(src),
                                            "target": "nbd0", "sync": "full"})
            _wait_mirror(src, "m0")

            def complete_mirror() -> None:
                src.execute("block-job-cancel", {"device": "m0"})
                while src.execute("query-block-jobs"):
                    time.sleep(0.002)
                src.execute("blockdev-del", {"node-name": "nbd0"})

            info = _migrate(src, dst, port, complete_mirror)
            dst.execute("block-export-del", {"id": "e0", "mode": "hard"})
            dst.execute("nbd-server-stop")
            dst.execute("cont")
            return _seconds_and_downtime(start, info)


def run_storage(guest: TinyGuest, runs: int) -> tuple[dict[str, Any], list[str]]:
    samples: dict[str, list[float]] = {"virtkit": [], "raw": [], "virtkit_down": [],
                                       "raw_down": []}
    with tempfile.TemporaryDirectory(prefix="vkbench-migdisk-") as tmp:
        disk = _data_disk(Path(tmp))
        for index in range(runs):
            target = Path(tmp) / f"copy{index}.qcow2"
            seconds, down, argv = virtkit_storage_once(guest, disk, target, f"bms{index}")
            target.unlink()
            samples["virtkit"].append(seconds)
            if down is not None:
                samples["virtkit_down"].append(down)
            seconds, down = raw_storage_once(argv, disk)
            samples["raw"].append(seconds)
            if down is not None:
                samples["raw_down"].append(down)
    summary = {key: bl.summary(values) for key, values in samples.items()}
    row = ["256 MiB + 256 MiB disk (64 MiB data), --copy-storage-all",
           bl.fmt_s(summary["virtkit"]["median"]), bl.fmt_s(summary["raw"]["median"]),
           bl.fmt_x(bl.ratio(summary["virtkit"]["median"], summary["raw"]["median"])),
           bl.fmt_ms(summary["virtkit_down"]["median"]),
           bl.fmt_ms(summary["raw_down"]["median"])]
    return summary, row


def run(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    results: dict[str, Any] = {"host": bl.host_context(), "memory": {}}
    rows = []
    for memory in args.memory:
        samples: dict[str, list[float]] = {"virtkit": [], "raw": [], "virtkit_down": [],
                                           "raw_down": []}
        for index in range(args.runs):
            seconds, down, argv = virtkit_once(guest, memory, f"bm{memory}x{index}")
            samples["virtkit"].append(seconds)
            if down is not None:
                samples["virtkit_down"].append(down)
            seconds, down = raw_once(argv)
            samples["raw"].append(seconds)
            if down is not None:
                samples["raw_down"].append(down)
        summary = {key: bl.summary(values) for key, values in samples.items()}
        results["memory"][str(memory)] = summary
        rows.append([f"{memory} MiB", bl.fmt_s(summary["virtkit"]["median"]),
                     bl.fmt_s(summary["raw"]["median"]),
                     bl.fmt_x(bl.ratio(summary["virtkit"]["median"],
                                       summary["raw"]["median"])),
                     bl.fmt_ms(summary["virtkit_down"]["median"]),
                     bl.fmt_ms(summary["raw_down"]["median"])])
    if args.storage:
        results["copy_storage_all"], row = run_storage(guest, args.runs)
        rows.append(row)
    bl.print_table(f"live migration of an idle tiny guest, median of {args.runs}",
                   ["memory", "virtkit s", "raw QEMU s", "ratio", "virtkit downtime ms",
                    "raw downtime ms"], rows)
    path = bl.write_results("migration", results)
    print(f"\nresults: {path}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--memory", type=int, nargs="*", default=[256, 1024],
                   help="guest sizes of the shared-storage case (none: skip it)")
    p.add_argument("--no-storage", dest="storage", action="store_false",
                   help="skip the --copy-storage-all case")
    p.set_defaults(func=run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
