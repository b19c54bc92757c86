#!/usr/bin/env python3
"""Benchmarks of live statistics: virtkit domstats against virsh domstats.

    python bench/bench_stats.py domstats   # 20 running tiny VMs: API, CLI, virsh
    python bench/bench_stats.py disk       # dd O_DIRECT in the guest: virtio-blk,
                                           # virtio-scsi, SATA (ratios to virtio-blk)
    python bench/bench_stats.py all        # both
    python bench/bench_stats.py report     # markdown tables from results/*-latest.json

Each prints a table and writes results/NAME-<time>.json (and NAME-latest.json).
The two sides run one after the other (never at once), each with N equivalent TCG
guests (the tiny guest, 1 vCPU, same memory, booted and idle).  libvirt is optional.
Run as root.  Everything started is cleaned up on exit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

NO_LIBVIRT = "libvirt not installed"


def _wait_state(state: Any, names: list[str], wanted: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(state(name) != wanted for name in names):
        if time.monotonic() > deadline:
            raise RuntimeError("domains did not reach running")
        time.sleep(0.2)


def _virtkit_side(args: argparse.Namespace, guest: bl.TinyGuest) -> dict[str, Any]:
    cli = bl.virtkit_cli()
    samples: dict[str, list[float]] = {"api": [], "api_one": [], "cli": []}
    names = [f"s{i}" for i in range(args.vms)]
    with bl.VirtkitDaemon() as vk:
        for name in names:
            vk.define(name, guest, args.memory)
        for name in names:
            vk.client.post(f"/v1/domains/{name}/start", {"paused": args.paused})
        _wait_state(vk.state, names, "paused" if args.paused else "running")
        time.sleep(args.settle)
        first, stats = bl.timed(lambda: vk.client.get("/v1/domstats?active=1"))
        assert len(stats) == args.vms and all("cpu" in item for item in stats)
        for _ in range(args.runs):
            samples["api"].append(bl.timed(lambda: vk.client.get("/v1/domstats?active=1"))[0])
            samples["api_one"].append(bl.timed(
                lambda: vk.client.get("/v1/domstats?domain=s0"))[0])
            elapsed, out = bl.timed(lambda: subprocess.run(
                [*cli, "domstats", "--active"], env=vk.env, capture_output=True, text=True))
            assert out.returncode == 0 and out.stdout.count("Domain: ") == args.vms, out.stderr
            samples["cli"].append(elapsed)
        keys = sum(len(line) > 2 for line in out.stdout.splitlines())
        return {"samples": samples, "first_api_call_s": first, "cli_output_lines": keys,
                "daemon_rss_kib": bl.proc_rss_kib(vk.pid)}


def _libvirt_side(args: argparse.Namespace, guest: bl.TinyGuest) -> dict[str, Any]:
    if args.no_libvirt or not bl.libvirt_installed():
        return {"libvirt": NO_LIBVIRT if not bl.libvirt_installed() else "skipped"}
    samples: list[float] = []
    names = [f"vkbench-s{i}" for i in range(args.vms)]
    with bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed) as lv:
        lv.define_many(names, args.memory)
        for name in names:
            lv.virsh("start", name, *(["--paused"] if args.paused else []))
        _wait_state(lv.state, names, "paused" if args.paused else "running")
        time.sleep(args.settle)
        for _ in range(args.runs):
            elapsed, out = bl.timed(lambda: lv.virsh("domstats", "--list-active"))
            samples.append(elapsed)
        lines = sum(len(line) > 2 for line in out.stdout.splitlines())
        assert out.stdout.count("Domain: ") == args.vms
        return {"libvirt": "used", "virsh": samples, "virsh_output_lines": lines,
                "libvirtd_reused": lv.reused}


def bench_domstats(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    context = bl.host_context()
    vk = _virtkit_side(args, guest)
    lv = _libvirt_side(args, guest)
    stats = {key: bl.summary(values) for key, values in vk["samples"].items()}
    stats["virsh"] = bl.summary(lv.get("virsh", []))
    virsh = stats["virsh"]["median"]
    derived = {f"virsh_over_{key}": bl.ratio(virsh, stats[key]["median"])
               for key in ("api", "cli")}
    result = {"benchmark": "domstats", "vms": args.vms, "memory_mib": args.memory,
              "paused": args.paused, "loadavg_after": bl.loadavg(),
              "runs": args.runs, "settle_s": args.settle, "context": context,
              "command": " ".join([sys.executable, *sys.argv]), "stats": stats,
              "derived": derived, **{k: v for k, v in vk.items() if k != "samples"},
              **{k: v for k, v in lv.items() if k != "virsh"}}
    rows = []
    for key, label in (("api", f"virtkit API, {args.vms} domains"),
                       ("api_one", "virtkit API, one domain"),
                       ("cli", f"virtkit domstats (CLI), {args.vms} domains"),
                       ("virsh", f"virsh domstats, {args.vms} domains")):
        s = stats[key]
        comparable = virsh and key != "api_one"  # virsh's column is for all the domains
        rows.append([label, bl.fmt_ms(s["median"]), bl.fmt_ms(s["min"]), bl.fmt_ms(s["max"]),
                     bl.fmt_x(bl.ratio(virsh, s["median"])) if comparable else "-"])
    what = "paused" if args.paused else "running, idle"
    bl.print_table(f"domstats of {args.vms} {what} {args.memory} MiB VMs (ms, median of "
                   f"{args.runs})", ["path", "median", "min", "max", "virsh / this"], rows)
    path = bl.write_results("domstats-paused" if args.paused else "domstats", result)
    print(f"results: {path}")
    return result


# -- disk throughput in the guest --------------------------------------------------------

#: IDE is left out: the tiny guest's initramfs has no ata_piix driver, so an IDE disk
#: never appears in it (q35 has no IDE controller at all)
BUSES = ("virtio", "scsi", "sata")
DD_MIB = 256


def _guest_dd(vk: bl.VirtkitDaemon, name: str, command: str, marker: str,
              timeout: float = 300) -> str:
    """Run ``command`` on the guest's serial console; the output once ``marker`` shows."""
    from virtkit.cli.wsclient import OP_BINARY, WebSocket

    ws = WebSocket.open(vk.paths.socket, f"/v1/domains/{name}/console")
    try:
        ws.send(f"{command}\n".encode())
        seen = b""
        deadline = time.monotonic() + timeout
        ws.sock.settimeout(1.0)
        while marker.encode() not in seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {marker!r} in {seen[-300:]!r}")
            try:
                opcode, payload = ws.receive()
            except TimeoutError:
                continue
            if opcode == OP_BINARY:
                seen += payload
        return seen.decode(errors="replace")
    finally:
        ws.close()


def _one_bus(vk: bl.VirtkitDaemon, guest: bl.TinyGuest, bus: str, workdir: Path,
             args: argparse.Namespace) -> dict[str, float]:
    image = workdir / f"{bus}.raw"
    with open(image, "wb") as handle:
        handle.truncate((DD_MIB + 16) * 2**20)
    spec = {**bl.tiny_spec(f"d-{bus}", guest, 256),
            "disks": [{"path": str(image), "format": "raw", "bus": bus, "cache": "none"}]}
    vk.client.post("/v1/domains", {"spec": spec})
    vk.client.post(f"/v1/domains/d-{bus}/start")
    deadline = time.monotonic() + 120
    while b"VIRTKIT-GUEST-READY" not in vk.client.get(f"/v1/domains/d-{bus}/console/log"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"d-{bus} did not boot")
        time.sleep(0.2)
    device = "/dev/vda" if bus == "virtio" else "/dev/sda"
    result: dict[str, list[float]] = {"write": [], "read": []}
    for run in range(args.runs):
        for kind, dd in (("write", f"if=/dev/zero of={device} oflag=direct"),
                         ("read", f"if={device} of=/dev/null iflag=direct")):
            tag = 1000 + 2 * run + (kind == "read")  # printed by arithmetic: not in the echo
            marker = f"{tag}x"
            # the guest's uptime (10 ms steps) around dd; busybox dd prints no timing
            out = _guest_dd(vk, f"d-{bus}", f"a=$(cut -d' ' -f1 /proc/uptime); dd {dd} bs=1M "
                            f"count={DD_MIB} 2>/dev/null && r=ok || r=failed; b=$(cut -d' ' -f1 "
                            f"/proc/uptime); echo $((1000+{tag - 1000}))x=$a=$b=$r=", marker + "=")
            match = re.search(marker + r"=([0-9.]+)=([0-9.]+)=ok=", out)
            if match is None:
                raise RuntimeError(f"d-{bus}: no timing in {out[-300:]!r}")
            seconds = max(float(match.group(2)) - float(match.group(1)), 0.01)
            result[kind].append(DD_MIB / seconds)
    vk.client.post(f"/v1/domains/d-{bus}/destroy")
    return {kind: bl.summary(values)["median"] for kind, values in result.items()}


def bench_disk(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    guest = bl.tiny_guest()
    context = bl.host_context()
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-disk-", dir="/var/tmp"))
    figures: dict[str, dict[str, float]] = {}
    try:
        with bl.VirtkitDaemon() as vk:
            for bus in BUSES:
                figures[bus] = _one_bus(vk, guest, bus, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = figures["virtio"]
    rows = [[bus, f"{f['write']:.1f}", bl.fmt_x(bl.ratio(f["write"], base["write"])),
             f"{f['read']:.1f}", bl.fmt_x(bl.ratio(f["read"], base["read"]))]
            for bus, f in figures.items()]
    bl.print_table(f"dd {DD_MIB} MiB O_DIRECT in the guest (MiB/s, median of {args.runs})",
                   ["bus", "write", "/ virtio", "read", "/ virtio"], rows)
    result = {"benchmark": "disk", "mib": DD_MIB, "runs": args.runs, "context": context,
              "command": " ".join([sys.executable, *sys.argv]), "mib_per_s": figures}
    print(f"results: {bl.write_results('disk', result)}")
    return result


def _load(name: str) -> dict[str, Any] | None:
    path = bl.RESULTS_DIR / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(_args: argparse.Namespace) -> None:
    for name in ("domstats", "domstats-paused"):
        _report_domstats(_load(name))
    _report_disk(_load("disk"))


def _report_domstats(data: dict[str, Any] | None) -> None:
    if data:
        s = data["stats"]
        virsh = s["virsh"]["median"]
        what = "paused" if data.get("paused") else "running, idle"
        print(f"### domstats, {data['vms']} {what} {data['memory_mib']} MiB VMs "
              f"(median of {data['runs']}, ms)\n")
        print("| path | median | min | max | virsh / this |")
        print("|---|---:|---:|---:|---:|")
        for key, label in (("api", "virtkit API (`GET /v1/domstats`)"),
                           ("api_one", "virtkit API, one domain"),
                           ("cli", "`virtkit domstats --active`"),
                           ("virsh", "`virsh domstats --list-active`")):
            x = s[key]
            if not x["n"]:
                print(f"| {label} | {data.get('libvirt')} | | | |")
                continue
            ratio = bl.fmt_x(bl.ratio(virsh, x["median"])) if key != "api_one" else "-"
            print(f"| {label} | {x['median'] * 1e3:.1f} | {x['min'] * 1e3:.1f} | "
                  f"{x['max'] * 1e3:.1f} | {ratio} |")
        print()


def _report_disk(disk: dict[str, Any] | None) -> None:
    if disk:
        base = disk["mib_per_s"]["virtio"]
        print(f"### dd {disk['mib']} MiB O_DIRECT in the tiny guest (MiB/s, median of "
              f"{disk['runs']})\n")
        print("| bus | write | / virtio-blk | read | / virtio-blk |")
        print("|---|---:|---:|---:|---:|")
        for bus, f in disk["mib_per_s"].items():
            print(f"| {bus} | {f['write']:.1f} | {bl.fmt_x(bl.ratio(f['write'], base['write']))}"
                  f" | {f['read']:.1f} | {bl.fmt_x(bl.ratio(f['read'], base['read']))} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip the libvirt columns")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="leave /dev/kvm permissions alone (see benchlib.KvmPermissions)")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("domstats", help="domstats of N running VMs: virtkit vs virsh")
    p.add_argument("--vms", type=int, default=20)
    p.add_argument("--memory", type=int, default=96, help="MiB per VM")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--settle", type=float, default=15.0, help="seconds after the starts")
    p.add_argument("--paused", action="store_true", help="start the VMs paused (no guest "
                   "CPU load: the stats machinery alone)")
    p = sub.add_parser("disk", help="guest disk throughput per bus")
    p.add_argument("--runs", type=int, default=3)
    sub.add_parser("all", help="domstats and disk with their defaults")
    sub.add_parser("report", help="markdown tables from results/*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    bl.run_benchmarks("stats", {"domstats": bench_domstats, "disk": bench_disk}, args,
                      {"domstats": {"vms": 20, "memory": 96, "runs": 15, "settle": 15.0},
                       "disk": {"runs": 3}})


if __name__ == "__main__":
    main()
