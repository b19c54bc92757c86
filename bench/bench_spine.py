#!/usr/bin/env python3
"""Benchmarks of virtkit's spine against raw QEMU and libvirt, side by side.

    python bench/bench_spine.py start   # start -> running: CLI, API, raw QEMU, virsh
    python bench/bench_spine.py list    # list --all with 1,000 defined VMs
    python bench/bench_spine.py cli     # CLI start-up: virtkit list, python -c pass
    python bench/bench_spine.py rss     # daemon RSS with 10 running VMs
    python bench/bench_spine.py all     # all four, in that order
    python bench/bench_spine.py report  # markdown tables from results/*-latest.json

Each prints a table and writes results/NAME-<time>.json (and NAME-latest.json).
libvirt is optional: without it the virtkit and raw columns still run.  Run as
root (libvirt's qemu:///system).  Everything started is cleaned up on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

NO_LIBVIRT = "libvirt not installed"


def _libvirt(args: argparse.Namespace, guest: bl.TinyGuest) -> bl.Libvirt | None:
    if args.no_libvirt or not bl.libvirt_installed():
        print(f"({NO_LIBVIRT if not bl.libvirt_installed() else 'libvirt skipped'}: "
              "virtkit and raw columns only)")
        return None
    return bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed)


def _libvirt_meta(lv: bl.Libvirt | None, args: argparse.Namespace) -> dict[str, Any]:
    if lv is None:
        return {"libvirt": NO_LIBVIRT if not bl.libvirt_installed() else "skipped"}
    return {"libvirt": "used", "libvirtd_reused": lv.reused, "kvm_permissions": lv.kvm.note
            or ("left as installed" if args.libvirt_as_installed else ""),
            "libvirt_domain_xml": lv.xml("NAME")}


# -- 1. start -> running ------------------------------------------------------------


def bench_start(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    cli = bl.virtkit_cli()
    samples: dict[str, list[float]] = {"cli": [], "api": [], "raw": [], "raw_prebound": [],
                                       "virsh": []}
    context = bl.host_context()
    lv = _libvirt(args, guest)
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-raw-"))
    try:
        with bl.VirtkitDaemon() as vk:
            if lv is not None:
                lv.__enter__()
                lv.define("vkbench-start")
            vk.define("b1", guest)

            # The exact argv virtkitd runs, read back from /proc while it runs.
            vk.client.post("/v1/domains/b1/start")
            qemu_pid = vk.client.get("/v1/domains/b1")["pid"]
            virtkit_argv = bl.proc_argv(qemu_pid)
            vk.client.post("/v1/domains/b1/destroy")
            argv, qmp_path = bl.raw_argv(virtkit_argv, workdir)
            log = workdir / "qemu.log"

            def run_cli() -> float:
                elapsed, out = bl.timed(lambda: subprocess.run(
                    [*cli, "start", "b1"], env=vk.env, capture_output=True, text=True))
                if out.returncode != 0:
                    raise RuntimeError(f"virtkit start failed: {out.stderr.strip()}")
                assert vk.state("b1") == "running", vk.state("b1")
                vk.client.post("/v1/domains/b1/destroy")
                return elapsed

            def run_api() -> float:
                elapsed, result = bl.timed(lambda: vk.client.post("/v1/domains/b1/start"))
                assert result["state"] == "running", result["state"]
                vk.client.post("/v1/domains/b1/destroy")
                return elapsed

            def run_raw() -> float:
                elapsed, process, qmp = bl.raw_qemu_start(argv, qmp_path, log)
                bl.raw_qemu_stop(process, qmp)
                return elapsed

            def run_raw_prebound() -> float:
                elapsed, process, qmp = bl.raw_qemu_start_prebound(virtkit_argv, workdir, log)
                bl.raw_qemu_stop(process, qmp)
                return elapsed

            def run_virsh() -> float:
                assert lv is not None
                elapsed, out = bl.timed(lambda: subprocess.run(
                    ["virsh", "-c", bl.LIBVIRT_URI, "start", "vkbench-start"],
                    capture_output=True, text=True))
                if out.returncode != 0:
                    raise RuntimeError(f"virsh start failed: {out.stderr.strip()}")
                assert lv.state("vkbench-start") == "running"
                lv.virsh("destroy", "vkbench-start")
                return elapsed

            runners = {"cli": run_cli, "api": run_api, "raw": run_raw,
                       "raw_prebound": run_raw_prebound}
            if lv is not None:
                runners["virsh"] = run_virsh
            for runner in runners.values():  # warm-up round, not counted
                runner()
            foreign_per_round = []
            for round_no in range(args.runs):  # interleaved so noise hits every column alike
                for name, runner in runners.items():
                    samples[name].append(runner())
                foreign_per_round.append(bl.foreign_qemu_count([str(vk.root), "vkbench-"]))
                print(f"  round {round_no + 1}/{args.runs}: " + "  ".join(
                    f"{n}={samples[n][-1]:.3f}s" for n in runners), flush=True)
        meta = _libvirt_meta(lv, args)
    finally:
        if lv is not None:
            lv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    stats = {name: bl.summary(values) for name, values in samples.items()}
    raw = stats["raw"]["median"]
    cli_m, api_m, virsh_m = (stats[k]["median"] for k in ("cli", "api", "virsh"))
    derived = {
        "api_overhead_s": api_m - raw, "cli_overhead_s": cli_m - raw,
        "api_over_raw": bl.ratio(api_m, raw), "cli_over_raw": bl.ratio(cli_m, raw),
        "virsh_over_api": bl.ratio(virsh_m, api_m), "virsh_over_cli": bl.ratio(virsh_m, cli_m),
        "virsh_over_raw": bl.ratio(virsh_m, raw),
    }
    targets = {
        "api_overhead_le_0.05s": derived["api_overhead_s"] <= 0.05,
        "cli_overhead_le_0.15s": derived["cli_overhead_s"] <= 0.15,
        "virsh_ge_3x_cli": None if virsh_m is None else derived["virsh_over_cli"] >= 3,
        "virsh_ge_3x_api": None if virsh_m is None else derived["virsh_over_api"] >= 3,
    }
    result = {"benchmark": "start", "runs": args.runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "qemu_argv_virtkit": virtkit_argv, "qemu_argv_raw": argv, "stats": stats,
              "derived": derived, "targets": targets,
              "foreign_qemu_per_round": foreign_per_round,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    labels = {"cli": "(a) virtkit start (CLI)", "api": "(b) virtkit API start",
              "raw": "(c) raw QEMU (path sockets)",
              "raw_prebound": "(c') raw QEMU (pre-bound fds)", "virsh": "(d) virsh start"}
    rows = []
    for key, label in labels.items():
        s = stats[key]
        rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                     bl.fmt_x(bl.ratio(s["median"], raw)),
                     bl.fmt_x(bl.ratio(virsh_m, s["median"])) if virsh_m else "-"])
    bl.print_table(f"start -> running, median of {args.runs} (seconds)",
                   ["path", "median", "min", "max", "x raw", "virsh/this"], rows)
    print(f"overhead over raw: API {derived['api_overhead_s'] * 1000:.1f} ms (target <= 50), "
          f"CLI {derived['cli_overhead_s'] * 1000:.1f} ms (target <= 150)")
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("start", result))
    return result


# -- 2. list --all with 1,000 VMs ---------------------------------------------------


def bench_list(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    cli = bl.virtkit_cli()
    n = args.domains
    context = bl.host_context()
    lv = _libvirt(args, guest)
    samples: dict[str, list[float]] = {"virtkit": [], "virsh": [], "virtkit_api": []}
    cold: dict[str, float] = {}
    define_times: dict[str, Any] = {}
    try:
        with bl.VirtkitDaemon() as vk:
            names = [f"vm{i:04d}" for i in range(n)]
            per_define = []
            t0 = time.perf_counter()
            for name in names:
                per_define.append(bl.timed(lambda name=name: vk.define(name, guest, 128))[0])
            define_times["virtkit_total_s"] = time.perf_counter() - t0
            define_times["virtkit_first_10_median_ms"] = bl.summary(per_define[:10])["median"] * 1e3
            define_times["virtkit_last_10_median_ms"] = bl.summary(per_define[-10:])["median"] * 1e3
            if lv is not None:
                lv.__enter__()
                t0 = time.perf_counter()
                lv.define_many([f"vkbench-{name}" for name in names], memory=128)
                define_times["libvirt_total_s"] = time.perf_counter() - t0

            def run_virtkit() -> float:
                elapsed, out = bl.timed(lambda: subprocess.run(
                    [*cli, "list", "--all"], env=vk.env, capture_output=True, text=True))
                rows = out.stdout.count("shut off") + out.stdout.count("shutoff")
                if out.returncode != 0 or rows != n:
                    raise RuntimeError(f"virtkit list --all: {rows} rows, {out.stderr.strip()}")
                return elapsed

            def run_api() -> float:
                elapsed, rows = bl.timed(lambda: vk.client.get("/v1/domains?all=1"))
                assert len(rows) == n
                return elapsed

            def run_virsh() -> float:
                elapsed, out = bl.timed(lambda: subprocess.run(
                    ["virsh", "-c", bl.LIBVIRT_URI, "list", "--all"], capture_output=True,
                    text=True))
                rows = out.stdout.count("shut off")
                if out.returncode != 0 or rows < n:
                    raise RuntimeError(f"virsh list --all: {rows} rows, {out.stderr.strip()}")
                return elapsed

            runners = {"virtkit": run_virtkit, "virtkit_api": run_api}
            if lv is not None:
                runners["virsh"] = run_virsh
            for name, runner in runners.items():  # the first call after defining: cold
                cold[name] = runner()
            for _ in range(args.runs):
                for name, runner in runners.items():
                    samples[name].append(runner())
            rss_after = bl.proc_rss_kib(vk.pid)
        meta = _libvirt_meta(lv, args)
        if lv is not None:
            meta["libvirtd_rss_kib_with_1000"] = bl.proc_rss_kib(lv.libvirtd_pid) \
                if lv.libvirtd_pid else None
    finally:
        if lv is not None:
            lv.close()

    stats = {name: bl.summary(values) for name, values in samples.items()}
    vk_m, virsh_m = stats["virtkit"]["median"], stats["virsh"]["median"]
    derived = {"virsh_over_virtkit": bl.ratio(virsh_m, vk_m),
               "virtkit_over_virsh": bl.ratio(vk_m, virsh_m)}
    targets = {"virtkit_no_slower_than_virsh": None if virsh_m is None else vk_m <= virsh_m}
    result = {"benchmark": "list", "domains": n, "runs": args.runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "stats": stats, "cold_first_call_s": cold, "define": define_times,
              "virtkitd_rss_kib_with_1000": rss_after, "derived": derived, "targets": targets}
    rows = []
    for key, label in (("virtkit", "virtkit list --all"), ("virsh", "virsh list --all"),
                       ("virtkit_api", "GET /v1/domains (in-process)")):
        s = stats[key]
        rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                     bl.fmt_s(cold.get(key))])
    bl.print_table(f"list --all with {n} defined VMs, median of {args.runs} (seconds)",
                   ["command", "median", "min", "max", "first call"], rows)
    print(f"virsh/virtkit = {bl.fmt_x(derived['virsh_over_virtkit'])}; defines: "
          f"{json.dumps(define_times)}")
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("list", result))
    return result


# -- 3. CLI start-up ------------------------------------------------------------------


def _importtime(cli_env: dict[str, str]) -> dict[str, Any]:
    """``python -X importtime`` of ``virtkit list``: total and the top imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "virtkit.cli.main", "list"],
                         env=cli_env, capture_output=True, text=True)
    entries = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:") or "self" in parts[0]:
            continue
        self_us = int(parts[0].split(":")[1])
        cumulative_us = int(parts[1])
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        entries.append({"module": name.strip(), "self_ms": self_us / 1000,
                        "cumulative_ms": cumulative_us / 1000, "depth": depth})
    top_level = [e for e in entries if e["depth"] == 0]
    return {"total_top_level_ms": sum(e["cumulative_ms"] for e in top_level),
            "top_level": sorted(top_level, key=lambda e: -e["cumulative_ms"])[:12],
            "heaviest_self": sorted(entries, key=lambda e: -e["self_ms"])[:12]}


def bench_cli(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    cli = bl.virtkit_cli()
    context = bl.host_context()
    runs = args.runs
    samples: dict[str, list[float]] = {}
    lv = None
    if not args.no_libvirt and bl.libvirt_installed():
        lv = bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed)
    try:
        with bl.VirtkitDaemon() as vk:
            vk.define("b1", guest)
            if lv is not None:
                lv.__enter__()
                lv.define("vkbench-cli")
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                "virtkit_list": ([*cli, "list"], vk.env),
                "python_pass": ([sys.executable, "-c", "pass"], dict(os.environ)),
                "python_isolated_pass": ([sys.executable, "-I", "-S", "-c", "pass"],
                                         dict(os.environ)),
                "virtkit_version": ([*cli, "--version"], vk.env),
                "python_import_cli": ([sys.executable, "-c", "import virtkit.cli.main"],
                                      dict(os.environ)),
            }
            # A pyenv shim in front of the console script (pyenv puts the real bin
            # first on PATH for its own children, so look the shim up by name).
            shim = str(Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
                       / "shims" / "virtkit")
            if Path(shim).exists() and Path(shim).resolve() != Path(cli[0]).resolve():
                commands["virtkit_list_via_path"] = ([shim, "list"], vk.env)
            if lv is not None:
                commands["virsh_list"] = (["virsh", "-c", bl.LIBVIRT_URI, "list"],
                                          dict(os.environ))
            for argv, env in commands.values():  # warm caches
                subprocess.run(argv, env=env, capture_output=True, check=True)
            for _ in range(runs):
                for key, (argv, env) in commands.items():
                    elapsed, out = bl.timed(lambda argv=argv, env=env: subprocess.run(
                        argv, env=env, capture_output=True))
                    if out.returncode != 0:
                        raise RuntimeError(f"{argv}: {out.stderr.decode().strip()}")
                    samples.setdefault(key, []).append(elapsed)
            # Where the time goes inside the process.
            ping = [bl.timed(vk.client.ping)[0] for _ in range(runs)]
            listing = [bl.timed(lambda: vk.client.get("/v1/domains?all=0"))[0]
                       for _ in range(runs)]
            openapi_bytes = len(json.dumps(vk.client.get("/v1/openapi.json")))
            importtime = _importtime(vk.env)
        meta = _libvirt_meta(lv, args) if lv is not None else {
            "libvirt": NO_LIBVIRT if not bl.libvirt_installed() else "skipped"}
    finally:
        if lv is not None:
            lv.close()

    stats = {key: bl.summary(values) for key, values in samples.items()}
    stats["in_process_ping"] = bl.summary(ping)
    stats["in_process_get_domains"] = bl.summary(listing)
    vk_m = stats["virtkit_list"]["median"]
    derived = {"virtkit_list_minus_python_pass_s": vk_m - stats["python_pass"]["median"],
               "virsh_over_virtkit": bl.ratio(stats.get("virsh_list", {}).get("median"), vk_m)}
    targets = {"virtkit_list_le_0.1s": vk_m <= 0.1}
    result = {"benchmark": "cli", "runs": runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "commands": {k: v[0] for k, v in commands.items()}, "stats": stats,
              "derived": derived, "targets": targets, "openapi_ping_bytes": openapi_bytes,
              "importtime": importtime}
    labels = {"virtkit_list": "virtkit list (1 VM defined)",
              "virtkit_list_via_path": "virtkit list via the pyenv shim",
              "virtkit_version": "virtkit --version (no daemon call)",
              "python_import_cli": "python -c 'import virtkit.cli.main'",
              "python_pass": "python -c pass", "python_isolated_pass": "python -I -S -c pass",
              "virsh_list": "virsh list (context)",
              "in_process_ping": "in-process: ping (GET /v1/openapi.json)",
              "in_process_get_domains": "in-process: GET /v1/domains?all=0"}
    rows = [[label, bl.fmt_ms(stats[k]["median"]), bl.fmt_ms(stats[k]["min"]),
             bl.fmt_ms(stats[k]["max"])] for k, label in labels.items() if k in stats]
    bl.print_table(f"CLI start-up, median of {runs} (milliseconds)",
                   ["command", "median", "min", "max"], rows)
    print(f"imports of 'virtkit list' (python -X importtime): top level "
          f"{importtime['total_top_level_ms']:.1f} ms; heaviest: " + ", ".join(
              f"{e['module']} {e['cumulative_ms']:.1f}" for e in importtime["top_level"][:6]))
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("cli", result))
    return result


# -- 4. daemon RSS with 10 running VMs ------------------------------------------------


_IMPORT_STEPS = ["asyncio", "sqlite3", "yaml", "pydantic", "qemu.qmp", "aiohttp", "aiohttp.web",
                 "virtkit.model.domain", "virtkit.host.accel", "virtkit.runtime.lifecycle",
                 "virtkit.api.daemon"]

_IMPORT_SCRIPT = """
import json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
steps = [('interpreter', rss())]
for module in sys.argv[1:]:
    __import__(module)
    steps.append((module, rss()))
print(json.dumps(steps))
"""


def _import_rss_breakdown() -> list[dict[str, Any]]:
    """RSS (KiB) of a fresh interpreter after importing the daemon's dependencies in turn."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, *_IMPORT_STEPS],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return [{"error": out.stderr.strip()[-500:]}]
    steps = json.loads(out.stdout)
    rows, previous = [], 0
    for module, rss in steps:
        rows.append({"after": module, "rss_kib": rss, "added_kib": rss - previous})
        previous = rss
    return rows


def _virtkit_compiled() -> bool:
    """Whether the virtkit the daemon runs has up-to-date .pyc files (compiling at every
    start costs time and leaves the compiler's garbage in the heap)."""
    import importlib.util

    import virtkit.api.daemon as daemon

    cached = importlib.util.cache_from_source(daemon.__file__)
    return os.path.exists(cached) and os.stat(cached).st_mtime >= os.stat(daemon.__file__).st_mtime


def bench_rss(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    n, memory, settle = args.vms, args.memory, args.settle
    context = bl.host_context()
    out: dict[str, Any] = {}
    with bl.VirtkitDaemon() as vk:
        idle = bl.proc_rss_kib(vk.pid)
        for i in range(n):
            vk.define(f"r{i}", guest, memory)
        defined = bl.proc_rss_kib(vk.pid)
        for i in range(n):
            vk.client.post(f"/v1/domains/r{i}/start")
        time.sleep(settle)
        running = [row for row in vk.client.get("/v1/domains") if row["state"] == "running"]
        out["virtkitd"] = {"pid": vk.pid, "idle": idle, "defined": defined,
                           "running": bl.proc_rss_kib(vk.pid), "running_vms": len(running)}
    lv = _libvirt(args, guest)
    try:
        if lv is not None:
            with lv:
                pid = lv.libvirtd_pid
                assert pid is not None
                logd = lv.virtlogd_pid
                idle = bl.proc_rss_kib(pid)
                logd_idle = bl.proc_rss_kib(logd) if logd is not None else None
                names = [f"vkbench-r{i}" for i in range(n)]
                lv.define_many(names, memory)
                defined = bl.proc_rss_kib(pid)
                logd_defined = bl.proc_rss_kib(logd) if logd is not None else None
                for name in names:
                    lv.virsh("start", name)
                time.sleep(settle)
                running_names = lv.virsh("list", "--name").stdout.split()
                out["libvirtd"] = {"pid": pid, "idle": idle, "defined": defined,
                                   "running": bl.proc_rss_kib(pid),
                                   "running_vms": sum(1 for x in names if x in running_names)}
                if logd is not None:
                    out["virtlogd"] = {"pid": logd, "idle": logd_idle, "defined": logd_defined,
                                       "running": bl.proc_rss_kib(logd)}
                out.update(_libvirt_meta(lv, args))
        else:
            out.update(_libvirt_meta(None, args))
    finally:
        if lv is not None:
            lv.close()

    def rss_of(key: str, phase: str) -> int | None:
        sample = out.get(key, {}).get(phase) or {}
        return sample.get("VmRSS")

    vk_rss, lv_rss = rss_of("virtkitd", "running"), rss_of("libvirtd", "running")
    out["virtkitd_import_breakdown"] = _import_rss_breakdown()
    # libvirt's stack is libvirtd + virtlogd (QEMU's logs go through virtlogd; virtkit
    # needs no such daemon): the target is virtkitd <= both, idle and with n VMs running
    stack = {phase: (rss_of("libvirtd", phase) or 0) + (rss_of("virtlogd", phase) or 0)
             if rss_of("libvirtd", phase) else None for phase in ("idle", "defined", "running")}
    derived = {"libvirtd_over_virtkitd": bl.ratio(lv_rss, vk_rss),
               "libvirt_stack_kib": stack["running"], "libvirt_stack_by_phase_kib": stack}
    targets = {"virtkitd_le_libvirtd": None if lv_rss is None else vk_rss <= lv_rss}
    for phase in ("idle", "running"):
        mine, theirs = rss_of("virtkitd", phase), stack[phase]
        targets[f"virtkitd_{phase}_le_libvirtd_plus_virtlogd"] = (
            None if theirs is None or mine is None else mine <= theirs)
    result = {"benchmark": "rss", "vms": n, "memory_mib": memory, "settle_s": settle,
              "context": context, "command": " ".join([sys.executable, *sys.argv]),
              "virtkit_byte_compiled": _virtkit_compiled(),
              **out, "derived": derived, "targets": targets}
    rows = []
    for key in ("virtkitd", "libvirtd", "virtlogd"):
        if key not in out:
            continue
        d = out[key]
        rows.append([key, rss_of(key, "idle"), rss_of(key, "defined"), rss_of(key, "running"),
                     d["running"].get("VmHWM"), d.get("running_vms", "-")])
    if stack["running"] is not None:
        rows.append(["libvirtd + virtlogd", stack["idle"], stack["defined"], stack["running"],
                     "-", "-"])
    bl.print_table(f"daemon RSS (KiB) with {n} running {memory} MiB VMs",
                   ["daemon", "idle", f"{n} defined", f"{n} running", "peak (HWM)", "running"],
                   rows)
    print(f"libvirtd/virtkitd = {bl.fmt_x(derived['libvirtd_over_virtkitd'])}")
    print("virtkitd RSS by import (KiB added): " + ", ".join(
        f"{row['after']} +{row['added_kib']}" for row in out["virtkitd_import_breakdown"]
        if "after" in row))
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("rss", result))
    return result


# -- report ------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = bl.RESULTS_DIR / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(_args: argparse.Namespace) -> None:
    """Markdown tables of the latest results (for docs/benchmarks.md)."""
    start = _load("start")
    if start:
        s, d = start["stats"], start["derived"]
        raw, virsh = s["raw"]["median"], s["virsh"]["median"]
        print(f"### start -> running (median of {start['runs']}, seconds)\n")
        print("| path | median | min | max | / raw | virsh / this |")
        print("|---|---:|---:|---:|---:|---:|")
        for key, label in (("cli", "(a) `virtkit start` (CLI)"), ("api", "(b) API, in-process"),
                           ("raw", "(c) raw QEMU, path sockets"),
                           ("raw_prebound", "(c') raw QEMU, pre-bound fds"),
                           ("virsh", "(d) `virsh start`")):
            x = s[key]
            if not x["n"]:
                print(f"| {label} | {start.get('libvirt')} | | | | |")
                continue
            print(f"| {label} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | "
                  f"{bl.fmt_x(bl.ratio(x['median'], raw))} | "
                  f"{bl.fmt_x(bl.ratio(virsh, x['median'])) if virsh else '-'} |")
        print(f"\noverhead over raw: API {d['api_overhead_s'] * 1e3:.1f} ms, "
              f"CLI {d['cli_overhead_s'] * 1e3:.1f} ms; targets {start['targets']}\n")
    lst = _load("list")
    if lst:
        s = lst["stats"]
        print(f"### list --all with {lst['domains']} VMs (median of {lst['runs']}, seconds)\n")
        print("| command | median | min | max | first call |")
        print("|---|---:|---:|---:|---:|")
        for key, label in (("virtkit", "`virtkit list --all`"), ("virsh", "`virsh list --all`"),
                           ("virtkit_api", "`GET /v1/domains` in-process")):
            x = s[key]
            if not x["n"]:
                print(f"| {label} | {lst.get('libvirt')} | | | |")
                continue
            print(f"| {label} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | "
                  f"{lst['cold_first_call_s'].get(key, 0):.3f} |")
        print(f"\nderived {lst['derived']}; define {lst['define']}; targets {lst['targets']}\n")
    cli = _load("cli")
    if cli:
        s = cli["stats"]
        print(f"### CLI start-up (median of {cli['runs']}, ms)\n")
        print("| command | median | min | max |")
        print("|---|---:|---:|---:|")
        for key, x in s.items():
            print(f"| {key} | {x['median'] * 1e3:.1f} | {x['min'] * 1e3:.1f} | "
                  f"{x['max'] * 1e3:.1f} |")
        print(f"\nimporttime top level: {cli['importtime']['total_top_level_ms']:.1f} ms; "
              + ", ".join(f"{e['module']} {e['cumulative_ms']:.1f}"
                          for e in cli["importtime"]["top_level"][:8]) + "\n")
    rss = _load("rss")
    if rss:
        print(f"### daemon RSS, {rss['vms']} running VMs (KiB)\n")
        print("| daemon | idle | defined | running | peak | VMs running |")
        print("|---|---:|---:|---:|---:|---:|")
        for key in ("virtkitd", "libvirtd", "virtlogd"):
            if key in rss:
                d = rss[key]
                print(f"| {key} | {(d.get('idle') or {}).get('VmRSS', '-')} | "
                      f"{(d.get('defined') or {}).get('VmRSS', '-')} | {d['running']['VmRSS']} | "
                      f"{d['running'].get('VmHWM', '-')} | {d.get('running_vms', '-')} |")
        stack = rss["derived"].get("libvirt_stack_by_phase_kib") or {}
        if stack.get("running"):
            print(f"| libvirtd + virtlogd | {stack.get('idle')} | {stack.get('defined')} | "
                  f"{stack['running']} | - | - |")
        print(f"\nderived {rss['derived']}; targets {rss['targets']}")
        steps = rss.get("virtkitd_import_breakdown", [])
        print("\nvirtkitd RSS by import (KiB added): " + ", ".join(
            f"{row['after']} +{row['added_kib']}" for row in steps if "after" in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip the libvirt columns")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host "
                        "(no other QEMU running, 1-min load < 1.5)")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="leave /dev/kvm permissions alone (see benchlib.KvmPermissions)")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("start", help="start -> running")
    p.add_argument("--runs", type=int, default=11)
    p = sub.add_parser("list", help="list --all with many defined VMs")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--domains", type=int, default=1000)
    p = sub.add_parser("cli", help="CLI start-up")
    p.add_argument("--runs", type=int, default=20)
    p = sub.add_parser("rss", help="daemon RSS with running VMs")
    p.add_argument("--vms", type=int, default=10)
    p.add_argument("--memory", type=int, default=256, help="MiB per VM")
    p.add_argument("--settle", type=float, default=5.0, help="seconds between starts and RSS")
    sub.add_parser("all", help="start, list, cli and rss with their defaults")
    sub.add_parser("report", help="markdown tables from results/*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    if os.geteuid() != 0 and not args.no_libvirt:
        print("not root: libvirt columns need qemu:///system; use --no-libvirt", file=sys.stderr)
    bl.run_benchmarks("spine", {"start": bench_start, "list": bench_list, "cli": bench_cli,
                                "rss": bench_rss}, args,
                      {"start": {"runs": 11}, "list": {"runs": 5, "domains": 1000},
                       "cli": {"runs": 20}, "rss": {"vms": 10, "memory": 256, "settle": 5.0}})



if __name__ == "__main__":
    main()
