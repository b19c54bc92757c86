#!/usr/bin/env python3
"""Benchmarks of snapshots: virtkit against libvirt on the same guest and the same disk.

    python bench/bench_snapshots.py internal   # internal snapshot with memory of a running
                                               # tiny guest with a qcow2 data disk: create and
                                               # revert through virtkit's API and CLI, and
                                               # virsh snapshot-create-as / snapshot-revert
    python bench/bench_snapshots.py external   # virtkit only (libvirt cannot revert external
                                               # snapshots): external with memory, revert, and
                                               # deleting the middle one of three while running
    python bench/bench_snapshots.py all        # both
    python bench/bench_snapshots.py report     # markdown from results/snapshots-*-latest.json

Both sides run the tiny guest (its kernel and initrd, 256 MiB, 1 vCPU) under TCG
(libvirt: ``<domain type='qemu'>``) with a 64 MiB qcow2 data disk as vda, booted and
left idle for the same time before the first snapshot.  Runs are interleaved (virtkit
API, virtkit CLI, virsh), each one a snapshot taken, then reverted to, then deleted
(untimed).  libvirtd is started here if none runs and stopped by PID afterwards; the
libvirt domain is undefined with its snapshot metadata, and every file is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from virtkit.images.tinyguest import TinyGuest

NO_LIBVIRT = "libvirt not installed"
SETTLE_S = 8.0  # boot (about 5 s under TCG) and settle before the first snapshot
DISK_XML = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            "<source file='{path}'/><target dev='vda' bus='virtio'/></disk>")


def _image(path: Path, size: str = "64M") -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    path.chmod(0o666)
    return str(path)


def _snap_path(name: str, suffix: str = "") -> str:
    return f"/v1/domains/{name}/snapshots{suffix}"


def _cli(vk: bl.VirtkitDaemon, *args: str) -> None:
    result = subprocess.run([*bl.virtkit_cli(), *args], env=vk.env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"virtkit {' '.join(args)}: {result.stderr.strip()}")


class VirtkitSide:
    """A running tiny guest with a qcow2 disk under a private virtkitd."""

    def __init__(self, vk: bl.VirtkitDaemon, guest: TinyGuest, disk: str) -> None:
        self.vk, self.name = vk, "snapbench"
        spec = {**bl.tiny_spec(self.name, guest), "disks": [{"path": disk}]}
        vk.client.post("/v1/domains", {"spec": spec})
        vk.client.post(f"/v1/domains/{self.name}/start")
        self.counter = 0

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def api_round(self, body: dict[str, Any]) -> tuple[float, float]:
        snap = self._next("a")
        client = self.vk.client
        create, _ = bl.timed(lambda: client.post(_snap_path(self.name), {"name": snap, **body}))
        revert, _ = bl.timed(lambda: client.post(_snap_path(self.name, f"/{snap}/revert")))
        client.request("DELETE", _snap_path(self.name, f"/{snap}"))
        return create, revert

    def cli_round(self, flags: list[str]) -> tuple[float, float]:
        snap = self._next("c")
        create, _ = bl.timed(lambda: _cli(self.vk, "snapshot-create-as", self.name, snap,
                                          *flags))
        revert, _ = bl.timed(lambda: _cli(self.vk, "snapshot-revert", self.name, snap))
        self.vk.client.request("DELETE", _snap_path(self.name, f"/{snap}"))
        return create, revert


class LibvirtSide:
    """The same guest and disk layout as a libvirt domain on qemu:///system."""

    def __init__(self, lv: bl.Libvirt, disk: str) -> None:
        self.lv, self.name = lv, "vkbench-snap"
        assert lv.files is not None
        xml = lv.xml(self.name).replace("</devices>", DISK_XML.format(path=disk)
                                        + "\n  </devices>")
        path = lv.files / f"{self.name}.xml"
        path.write_text(xml)
        lv.defined.append(self.name)
        lv.virsh("define", str(path))
        lv.virsh("start", self.name)
        self.counter = 0
        #: per revert: did libvirt start a new QEMU (rather than load into the running one)?
        self.qemu_restarted: list[bool] = []

    def round(self) -> tuple[float, float]:
        self.counter += 1
        snap = f"l{self.counter}"
        create, _ = bl.timed(lambda: self.lv.virsh("snapshot-create-as", self.name, snap))
        before = self.lv.qemu_pid(self.name)
        revert, _ = bl.timed(lambda: self.lv.virsh("snapshot-revert", self.name, snap))
        self.qemu_restarted.append(self.lv.qemu_pid(self.name) != before)
        self.lv.virsh("snapshot-delete", self.name, snap)
        return create, revert

    def close(self) -> None:
        """Undefine with the snapshot metadata (plain undefine refuses it)."""
        with contextlib.suppress(Exception):
            self.lv.virsh("destroy", self.name, check=False)
            self.lv.virsh("undefine", self.name, "--snapshots-metadata", check=False)
            Path(f"/var/log/libvirt/qemu/{self.name}.log").unlink(missing_ok=True)
            self.lv.defined.remove(self.name)


def _interleave(runners: dict[str, Callable[[], tuple[float, float]]],
                runs: int) -> dict[str, dict[str, list[float]]]:
    """A warm-up round, then ``runs`` rounds with the runners' order rotated each round."""
    for runner in runners.values():
        runner()
    samples: dict[str, dict[str, list[float]]] = {n: {"create": [], "revert": []}
                                                  for n in runners}
    names = list(runners)
    for round_no in range(runs):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            create, revert = runners[name]()
            samples[name]["create"].append(create)
            samples[name]["revert"].append(revert)
        print(f"  round {round_no + 1}/{runs}: " + "  ".join(
            f"{n}={samples[n]['create'][-1]:.3f}/{samples[n]['revert'][-1]:.3f}s"
            for n in names), flush=True)
    return samples


def bench_internal(args: argparse.Namespace) -> dict[str, Any]:
    """Internal snapshot with memory of a running guest: create and revert."""
    guest = bl.tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="vkbench-snap-"))
    work.chmod(0o755)
    use_libvirt = not args.no_libvirt and bl.libvirt_installed()
    lv_side: LibvirtSide | None = None
    try:
        with bl.VirtkitDaemon() as vk, (bl.Libvirt(guest) if use_libvirt
                                        else contextlib.nullcontext()) as lv:
            side = VirtkitSide(vk, guest, _image(work / "vk.qcow2"))
            runners: dict[str, Callable[[], tuple[float, float]]] = {
                "virtkit_api": lambda: side.api_round({"kind": "internal"}),
                "virtkit_cli": lambda: side.cli_round(["--internal"]),
            }
            if lv is not None:
                lv_side = LibvirtSide(lv, _image(work / "lv.qcow2"))
                runners["virsh"] = lv_side.round
            time.sleep(SETTLE_S)
            try:
                samples = _interleave(runners, args.runs)
            finally:
                if lv_side is not None:
                    lv_side.close()
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    restarted = lv_side.qemu_restarted if lv_side is not None else []
    return _finish("internal", samples, args, libvirt="used" if use_libvirt else NO_LIBVIRT,
                   libvirt_revert_restarted_qemu=restarted)


def bench_external(args: argparse.Namespace) -> dict[str, Any]:
    """External snapshots (virtkit only): with memory, revert, delete in the middle."""
    guest = bl.tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="vkbench-snap-"))
    try:
        with bl.VirtkitDaemon() as vk:
            side = VirtkitSide(vk, guest, _image(work / "vk.qcow2"))
            time.sleep(SETTLE_S)
            samples = _interleave({"virtkit_api": lambda: side.api_round({"kind": "external"})},
                                  args.runs)
            middle: list[float] = []
            for round_no in range(args.runs):
                names = [f"m{round_no}-{i}" for i in range(3)]
                for snap in names:
                    vk.client.post(_snap_path(side.name),
                                   {"name": snap, "kind": "external", "disk_only": True})
                elapsed, _ = bl.timed(lambda n=names[1]: vk.client.request(  # type: ignore[misc]
                    "DELETE", _snap_path(side.name, f"/{n}")))
                middle.append(elapsed)
                for snap in (names[2], names[0]):
                    vk.client.request("DELETE", _snap_path(side.name, f"/{snap}"))
            samples["virtkit_api"]["delete_middle"] = middle
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return _finish("external", samples, args, libvirt="cannot revert external snapshots")


def _finish(name: str, samples: dict[str, dict[str, list[float]]], args: argparse.Namespace,
            **meta: Any) -> dict[str, Any]:
    stats = {side: {op: bl.summary(values) for op, values in ops.items()}
             for side, ops in samples.items()}
    ratios = {}
    if "virsh" in stats:
        for side in ("virtkit_api", "virtkit_cli"):
            ratios[side] = {op: bl.ratio(stats["virsh"][op]["median"], stats[side][op]["median"])
                            for op in ("create", "revert")}
    rows = [[side, op, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
             bl.fmt_x(ratios.get(side, {}).get(op))]
            for side, ops in stats.items() for op, s in ops.items()]
    bl.print_table(f"snapshots {name} (s; virsh / this)",
                   ["path", "op", "median", "min", "max", "virsh/this"], rows)
    data = {"bench": name, "runs": args.runs, "stats": stats, "ratios_virsh_over": ratios,
            "host": bl.host_context(), **meta}
    print(f"results: {bl.write_results(f'snapshots-{name}', data)}")
    return data


def report(_args: argparse.Namespace) -> None:
    """Markdown tables of the latest results (for docs/benchmarks.md)."""
    import json

    for name in ("internal", "external"):
        path = bl.RESULTS_DIR / f"snapshots-{name}-latest.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        print(f"### {name} snapshots (median of {data['runs']}, s)\n")
        print("| path | operation | median | min | max | virsh / this |")
        print("|---|---|---:|---:|---:|---:|")
        for side, ops in data["stats"].items():
            for op, s in ops.items():
                x = data["ratios_virsh_over"].get(side, {}).get(op)
                print(f"| {side} | {op} | {bl.fmt_s(s['median'])} | {bl.fmt_s(s['min'])} | "
                      f"{bl.fmt_s(s['max'])} | {bl.fmt_x(x)} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip the virsh column")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host")
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, text in (("internal", "internal with memory: virtkit API/CLI vs virsh"),
                       ("external", "external with memory and middle deletes (virtkit)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--runs", type=int, default=5)
    sub.add_parser("all", help="internal and external with their defaults")
    sub.add_parser("report", help="markdown tables from results/snapshots-*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    bl.run_benchmarks("snapshots", {"internal": bench_internal, "external": bench_external},
                      args, {"internal": {"runs": 5}, "external": {"runs": 5}})


if __name__ == "__main__":
    main()
