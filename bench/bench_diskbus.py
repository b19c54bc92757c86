#!/usr/bin/env python3
"""Disk throughput inside a guest on virtio-blk, virtio-scsi, SATA and IDE: the classic
virtio comparison, as ratios to virtio-blk.

    python bench/bench_diskbus.py throughput [--runs 3] [--size-mib 256]
    python bench/bench_diskbus.py report     # markdown from results/diskbus-latest.json

One Debian guest (the image virtkit builds for its tests, qemu-guest-agent inside)
on the ``pc`` machine gets one raw data disk on each bus (``pc`` because q35 has no
PIIX IDE).  Inside the guest, through the agent, ``dd`` writes and reads SIZE MiB
with O_DIRECT (the guest's page cache is bypassed; the host's is not, so the figures
compare the cost of each emulated controller, which is what differs between buses).
Every figure is the median of RUNS; everything started is cleaned up on exit.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

from virtkit.images.debiancloud import build_debian_cloud

BUSES = ("virtio", "scsi", "sata", "ide")
LABELS = {"virtio": "virtio-blk", "scsi": "virtio-scsi", "sata": "SATA (AHCI)",
          "ide": "IDE (PIIX)"}
_DD_RE = re.compile(r"(\d+) bytes .* copied, ([\d.]+) s")


def _guest(vk: bl.VirtkitDaemon, script: str, timeout: float = 600) -> str:
    result = vk.client.post("/v1/domains/bus/guest/exec",
                            {"path": "/bin/sh", "args": ["-c", script], "timeout": timeout})
    if result["exitcode"] != 0:
        raise RuntimeError(f"guest: {script!r} failed: {result['stderr']}")
    return str(result["stdout"]) + str(result["stderr"])


def _mib_per_s(dd_output: str) -> float:
    match = _DD_RE.search(dd_output)
    if not match:
        raise RuntimeError(f"cannot read dd's output: {dd_output!r}")
    return int(match.group(1)) / 2**20 / float(match.group(2))


def _boot(vk: bl.VirtkitDaemon, workdir: Path, size_mib: int) -> None:
    image = build_debian_cloud()
    root = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.image), str(root)], check=True)
    disks: list[dict[str, Any]] = [{"path": str(root), "format": "qcow2"}]
    for bus in BUSES:
        data = workdir / f"{bus}.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(data),
                        f"{size_mib + 16}M"], check=True)
        disks.append({"path": str(data), "format": "raw", "bus": bus, "serial": f"vk-{bus}"})
    spec = {"name": "bus", "machine": "pc", "memory": 1024, "vcpus": 2,
            "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                     "cmdline": image.cmdline}, "disks": disks}
    vk.client.post("/v1/domains", {"spec": spec})
    vk.client.post("/v1/domains/bus/start")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            vk.client.get("/v1/domains/bus/guest/ping")
            return
        except Exception:
            time.sleep(2)
    raise RuntimeError("the guest agent never answered")


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {bus: {"write": [], "read": []}
                                                  for bus in BUSES}
    with bl.VirtkitDaemon() as vk, tempfile.TemporaryDirectory(prefix="vkbench-bus-") as tmp:
        _boot(vk, Path(tmp), args.size_mib)
        devices = {bus: _guest(vk, f"readlink -f /dev/disk/by-id/*vk-{bus}").split()[0]
                   for bus in BUSES}
        print(f"guest devices: {devices}", flush=True)
        for _run in range(args.runs):
            for bus in BUSES:
                dev = devices[bus]
                out = _guest(vk, f"dd if=/dev/zero of={dev} bs=1M count={args.size_mib} "
                                 "oflag=direct 2>&1")
                results[bus]["write"].append(_mib_per_s(out))
                out = _guest(vk, f"dd if={dev} of=/dev/null bs=1M count={args.size_mib} "
                                 "iflag=direct 2>&1")
                results[bus]["read"].append(_mib_per_s(out))
    medians = {bus: {way: statistics.median(values) for way, values in ways.items()}
               for bus, ways in results.items()}
    rows = [[LABELS[bus], f"{medians[bus]['write']:.1f}",
             bl.fmt_x(bl.ratio(medians[bus]["write"], medians["virtio"]["write"])),
             f"{medians[bus]['read']:.1f}",
             bl.fmt_x(bl.ratio(medians[bus]["read"], medians["virtio"]["read"]))]
            for bus in BUSES]
    bl.print_table(f"dd of {args.size_mib} MiB with O_DIRECT in the guest (median of "
                   f"{args.runs}, MiB/s)",
                   ["bus", "write", "/ virtio-blk", "read", "/ virtio-blk"], rows)
    data = {"host": bl.host_context(), "runs": args.runs, "size_mib": args.size_mib,
            "samples": results, "median": medians}
    print(f"results: {bl.write_results('diskbus', data)}")
    return data


def report(_args: argparse.Namespace) -> None:
    import json

    path = bl.RESULTS_DIR / "diskbus-latest.json"
    if not path.exists():
        print("no results yet: run 'throughput' first")
        return
    data = json.loads(path.read_text())
    m = data["median"]
    print(f"### Disk throughput in the guest by bus (dd {data['size_mib']} MiB O_DIRECT, "
          f"median of {data['runs']}, MiB/s)\n")
    print("| bus | write | write / virtio-blk | read | read / virtio-blk |")
    print("|---|---:|---:|---:|---:|")
    for bus in BUSES:
        print(f"| {LABELS[bus]} | {m[bus]['write']:.1f} | "
              f"{m[bus]['write'] / m['virtio']['write']:.2f}x | {m[bus]['read']:.1f} | "
              f"{m[bus]['read'] / m['virtio']['read']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-quiet", type=float, default=0,
                        help="wait up to this many seconds for a quiet host first")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("throughput", help="dd write/read on each bus")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=256)
    sub.add_parser("all", help="throughput with its defaults")
    sub.add_parser("report", help="markdown table from results/diskbus-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    bl.run_benchmarks("diskbus", {"throughput": bench_throughput}, args,
                      {"throughput": {"runs": 3, "size_mib": 256}})


if __name__ == "__main__":
    main()
