#!/usr/bin/env python3
"""API throughput and latency under concurrent clients: virtkitd vs libvirtd.

    python bench/bench_api.py run      # list and dominfo, 20 clients, 20 defined VMs
    python bench/bench_api.py report   # markdown table from results/api-latest.json

virtkit: 20 asyncio clients in one process, each with its own keep-alive HTTP
connection to the daemon's unix socket (aiohttp's UnixConnector), calling
``GET /v1/domains`` (list) or ``GET /v1/domains/NAME`` (dominfo, the full record
with the spec).  libvirt: 20 threads in one process, each with its own
libvirt-python connection to libvirtd on qemu:///system, making the calls
``virsh list --all`` / ``virsh dominfo`` make (see libvirt_api_load.py), run
with the system Python where python3-libvirt is installed.  Both daemons hold 20
defined, shut-off tiny domains.  The rounds alternate virtkit and libvirt, so
both see the same host; the figures are medians over the rounds, and the ratios
come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

SYSTEM_PYTHON = "/usr/bin/python3"
WORKER = Path(__file__).resolve().parent / "libvirt_api_load.py"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _figures(wall: float, latencies: list[float]) -> dict[str, float]:
    return {"throughput_per_s": len(latencies) / wall, "p50_ms": statistics.median(latencies)
            * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3, "calls": len(latencies)}


async def _virtkit_round(socket_path: Path, op: str, names: list[str], clients: int,
                         requests: int) -> dict[str, float]:
    latencies: list[float] = []
    sessions = [aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path),
                                                                       limit=1))
                for _ in range(clients)]
    try:
        def path(i: int) -> str:
            return "/v1/domains" if op == "list" else f"/v1/domains/{names[i % len(names)]}"

        for session in sessions:  # open (and warm) every connection once
            async with session.get(f"http://virtkit{path(0)}") as response:
                await response.read()

        async def client(index: int, session: aiohttp.ClientSession) -> None:
            for i in range(requests):
                began = time.perf_counter()
                async with session.get(f"http://virtkit{path(index + i)}") as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{op}: HTTP {response.status}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client(i, s) for i, s in enumerate(sessions)))
        wall = time.perf_counter() - began
    finally:
        for session in sessions:
            await session.close()
    return _figures(wall, latencies)


def _libvirt_round(op: str, names: list[str], clients: int, requests: int
                   ) -> dict[str, float]:
    out = subprocess.run([SYSTEM_PYTHON, str(WORKER), "--uri", bl.LIBVIRT_URI, "--op", op,
                          "--clients", str(clients), "--requests", str(requests), *names],
                         capture_output=True, text=True, timeout=600, check=True)
    data = json.loads(out.stdout)
    return _figures(data["wall_s"], data["latencies"])


def _libvirt_python_ok() -> bool:
    if not shutil.which(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True,
                          check=False).returncode == 0


def bench_run(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    context = bl.host_context()
    names = [f"api{i:02d}" for i in range(args.domains)]
    use_libvirt = not args.no_libvirt and bl.libvirt_installed() and _libvirt_python_ok()
    rounds: dict[str, list[dict[str, float]]] = {}
    lv = bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed) \
        if use_libvirt else None
    try:
        with bl.VirtkitDaemon() as vk:
            for name in names:
                vk.define(name, guest, 128)
            lv_names = [f"vkbench-{name}" for name in names]
            if lv is not None:
                lv.__enter__()
                lv.define_many(lv_names, memory=128)
            for _ in range(args.rounds):
                for op in ("list", "dominfo"):
                    rounds.setdefault(f"virtkit_{op}", []).append(asyncio.run(_virtkit_round(
                        vk.paths.socket, op, names, args.clients, args.requests)))
                    if lv is not None:
                        rounds.setdefault(f"libvirt_{op}", []).append(_libvirt_round(
                            op, lv_names, args.clients, args.requests))
            rss = bl.proc_rss_kib(vk.pid)
    finally:
        if lv is not None:
            lv.close()
    stats = {key: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
             for key, runs in rounds.items()}
    derived: dict[str, float | None] = {}
    for op in ("list", "dominfo"):
        vk_s, lv_s = stats[f"virtkit_{op}"], stats.get(f"libvirt_{op}")
        derived[f"{op}_throughput_virtkit_over_libvirt"] = bl.ratio(
            vk_s["throughput_per_s"], lv_s["throughput_per_s"] if lv_s else None)
        derived[f"{op}_p99_virtkit_over_libvirt"] = bl.ratio(
            vk_s["p99_ms"], lv_s["p99_ms"] if lv_s else None)
    result = {"benchmark": "api", "domains": args.domains, "clients": args.clients,
              "requests_per_client": args.requests, "rounds": args.rounds, "context": context,
              "libvirt": "libvirt-python via " + SYSTEM_PYTHON if lv else "not used",
              "command": " ".join([sys.executable, *sys.argv]), "stats": stats,
              "all_rounds": rounds, "derived": derived, "virtkitd_rss_kib": rss}
    rows = [[key, f"{s['throughput_per_s']:.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"]
            for key, s in stats.items()]
    bl.print_table(f"{args.clients} concurrent clients, {args.domains} defined VMs, median of "
                   f"{args.rounds} rounds", ["path", "calls/s", "p50 ms", "p99 ms"], rows)
    print("derived:", json.dumps(derived))
    print("results:", bl.write_results("api", result))
    return result


def report(_args: argparse.Namespace) -> None:
    path = bl.RESULTS_DIR / "api-latest.json"
    if not path.exists():
        print("no results/api-latest.json yet")
        return
    data = json.loads(path.read_text())
    s = data["stats"]
    print(f"### API under {data['clients']} concurrent clients, {data['domains']} defined VMs "
          f"(median of {data['rounds']} rounds of {data['clients']} x "
          f"{data['requests_per_client']} calls)\n")
    print("| call | virtkit calls/s | libvirt calls/s | virtkit / libvirt | virtkit p50 / p99 ms "
          "| libvirt p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for op in ("list", "dominfo"):
        vk, lv = s[f"virtkit_{op}"], s.get(f"libvirt_{op}")
        ratio = data["derived"][f"{op}_throughput_virtkit_over_libvirt"]
        print(f"| {op} | {vk['throughput_per_s']:.0f} | "
              f"{lv['throughput_per_s'] if lv else 0:.0f} | {bl.fmt_x(ratio)} | "
              f"{vk['p50_ms']:.1f} / {vk['p99_ms']:.1f} | "
              + (f"{lv['p50_ms']:.1f} / {lv['p99_ms']:.1f} |" if lv else "- |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip the libvirt columns")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS for a quiet host (no other QEMU, "
                        "1-min load < 1.5)")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="leave /dev/kvm permissions alone (see benchlib.KvmPermissions)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="calls per client per round")
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("what", nargs="?", default="run", choices=("run", "all", "report"))
    args = parser.parse_args()
    if args.what == "report":
        report(args)
    else:
        if args.wait_quiet:
            print("host:", bl.wait_quiet(args.wait_quiet))
        bench_run(args)


if __name__ == "__main__":
    main()
