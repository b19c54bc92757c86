#!/usr/bin/env python3
"""Live migration: virtkit (two daemons) against raw QEMU with the same parameters.

    python bench/bench_migration.py run [--runs 3] [--memory 256 1024]

An idle tiny guest (the given memory, 1 vCPU, TCG) booted on one side is migrated to
the other over tcp:127.0.0.1 on this host.  virtkit: two private daemons, the time is
the ``POST /v1/domains/{ref}/migrate`` request (destination validation, its QEMU start,
the stream, pause-before-switchover, finish, source stop).  Raw QEMU: the same argv
virtkitd built (sockets by path), the destination started with ``-incoming defer``,
the same capabilities (events, return-path, pause-before-switchover) and no bandwidth
cap, from spawning the destination QEMU to ``cont`` there.  Downtime is QEMU's own
``downtime`` figure of the completed migration on both sides.  Every process is
stopped by the PID recorded when it was started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
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
        downtime = result.get("downtime_ms")
        return seconds, downtime / 1000 if downtime is not None else None, argv


def raw_once(argv: list[str]) -> tuple[float, float | None]:
    """The same migration done by hand on raw QEMU processes."""
    with tempfile.TemporaryDirectory(prefix="vkbench-mig-") as tmp:
        src_dir, dst_dir = Path(tmp, "src"), Path(tmp, "dst")
        src_dir.mkdir()
        dst_dir.mkdir()
        src_argv, src_qmp_path = bl.raw_argv(argv, src_dir)
        dst_argv, dst_qmp_path = bl.raw_argv(argv, dst_dir)
        processes: list[subprocess.Popen[bytes]] = []
        monitors: list[Qmp] = []
        try:
            with open(src_dir / "qemu.log", "ab") as log:
                processes.append(subprocess.Popen(src_argv, stdout=log, stderr=log,
                                                  start_new_session=True))
            src = Qmp(src_qmp_path)
            monitors.append(src)
            src.execute("cont")
            _wait_log(src_dir / "charserial0.log")
            start = time.perf_counter()
            with open(dst_dir / "qemu.log", "ab") as log:
                processes.append(subprocess.Popen([*dst_argv, "-incoming", "defer"],
                                                  stdout=log, stderr=log,
                                                  start_new_session=True))
            dst = Qmp(dst_qmp_path)
            monitors.append(dst)
            _caps(dst, ("events", "return-path"))
            port = _free_port()
            dst.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
            _caps(src, ("events", "return-path", "pause-before-switchover"))
            src.execute("migrate-set-parameters", {"max-bandwidth": 2**40})
            src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            _wait_status(src, "pre-switchover")
            src.execute("migrate-continue", {"state": "pre-switchover"})
            info = _wait_status(src, "completed")
            _wait_status(dst, "completed")
            dst.execute("cont")
            seconds = time.perf_counter() - start
            downtime = info.get("downtime")
            return seconds, downtime / 1000 if downtime is not None else None
        finally:
            for qmp in monitors:
                with contextlib.suppress(RuntimeError, OSError, ValueError):
                    qmp.execute("quit")
                qmp.close()
            for process in processes:
                bl.raw_qemu_stop(process, None)


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
    p.add_argument("--memory", type=int, nargs="+", default=[256, 1024])
    p.set_defaults(func=run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
