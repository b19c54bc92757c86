#!/usr/bin/env python3
"""Benchmarks of virtkit's storage against the tools people use today, side by side.

    python bench/bench_storage.py clone     # linked and full clone of a 10 GiB qcow2 holding
                                            # 256 MiB: virtkit CLI/API, virt-clone, qemu-img, cp
    python bench/bench_storage.py transfer  # vol-upload / vol-download of 1 GiB vs cp,
                                            # warm and cold page cache
    python bench/bench_storage.py import    # vol-import of 2 GiB (raw, vmdk -> qcow2) vs the
                                            # same qemu-img convert run directly
    python bench/bench_storage.py all       # all three, in that order
    python bench/bench_storage.py report    # markdown tables from results/storage-*-latest.json

Each prints a table and writes results/storage-NAME-<time>.json (and -latest.json).
A private virtkitd (own VIRTKIT_ROOT under /tmp) serves its ``default`` dir pool; every
reference tool reads and writes the same file system.  libvirt (for virt-clone, from
the ``virtinst`` package) is optional.  Run as root: the cold-cache runs write
/proc/sys/vm/drop_caches and virt-clone needs qemu:///system.  Everything started or
written is cleaned up on exit, in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from virtkit.cli.client import ApiError

MiB = 1024 * 1024
GiB = 1024 * MiB
NO_LIBVIRT = "libvirt not installed"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POOL = "default"


# -- helpers ---------------------------------------------------------------------------


def vol_path(volume: str, suffix: str = "") -> str:
    return f"/v1/pools/{POOL}/volumes/{volume}{suffix}"


def run_timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``argv`` to completion; (wall seconds, CPU seconds of the child). Raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed, out = bl.timed(lambda: subprocess.run(argv, env=env, capture_output=True,
                                                   text=True, stdin=subprocess.DEVNULL))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` itself (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sync_all() -> None:
    subprocess.run(["sync"], check=True)


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (root only)."""
    sync_all()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


PRIME: dict[str, Any] = {"enabled": True}


def prime_memory(size: int, directory: Path) -> None:
    """Write ``size`` bytes to a scratch file in ``directory`` and delete it, so that the
    page cache the next timed run fills reuses page-cache pages the guest has just used.

    This VM's virtio balloon reports free memory to the host (free page reporting,
    2 MiB blocks, about 2 s after they are freed).  A write whose page cache lands on
    reported memory pays for faulting it back in: up to about 1.5 s of system time
    per GiB, all in the kernel's copy into page-cache folios (perf:
    ``copy_folio_from_iter_atomic``).  Without this the figures depend on how long
    ago the previous run freed its output, and on luck.  Touching anonymous memory
    instead did not help (it is freed as single pages, not as the large folios the
    page cache of ext4 allocates).  ``--no-prime`` switches it off.  Never timed.
    """
    if not PRIME["enabled"] or size <= 0:
        return
    block = b"\x01" * (8 * MiB)
    scratch = directory / ".vkbench-prime"
    try:
        with open(scratch, "wb") as out:
            for _ in range(-(-size // len(block))):
                out.write(block)
    finally:
        scratch.unlink(missing_ok=True)


def write_random(path: Path, size: int, *, offset: int = 0, chunk: int = 16 * MiB) -> None:
    """Write ``size`` bytes of os.urandom at ``offset`` of ``path`` (created if missing)."""
    with open(path, "r+b" if path.exists() else "wb") as out:
        out.seek(offset)
        left = size
        while left:
            n = min(chunk, left)
            out.write(os.urandom(n))
            left -= n


def host_round_info(vk: bl.VirtkitDaemon) -> dict[str, Any]:
    return {"loadavg1": bl.loadavg()[0],
            "foreign_qemu": bl.foreign_qemu_count([str(vk.root), "vkbench-"])}


def mib_s(size: int, seconds: float | None) -> float | None:
    return None if not seconds else size / MiB / seconds


def _libvirt(args: argparse.Namespace, guest: bl.TinyGuest) -> bl.Libvirt | None:
    if args.no_libvirt or not bl.libvirt_installed():
        print(f"({NO_LIBVIRT if not bl.libvirt_installed() else 'libvirt skipped'})")
        return None
    return bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed)


def interleaved(runners: dict[str, Callable[[], float]], runs: int, vk: bl.VirtkitDaemon,
                label: str = "") -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """One untimed warm-up of every runner, then ``runs`` rounds, columns interleaved and
    their order rotated by one each round (no column always follows the same one)."""
    for runner in runners.values():
        runner()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    hosts = []
    for round_no in range(runs):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runners[name]())
        hosts.append(host_round_info(vk))
        print(f"  {label}round {round_no + 1}/{runs}: " + "  ".join(
            f"{n}={samples[n][-1]:.3f}s" for n in runners), flush=True)
    return samples, hosts


# -- qemu-img call tracing (diagnostics) -----------------------------------------------------

_TRACE_WRAPPER = """#!/bin/sh
start=$(date +%s.%N)
{real} "$@"
rc=$?
end=$(date +%s.%N)
echo "$start $end $rc $*" >> {log}
exit $rc
"""


@contextlib.contextmanager
def traced_daemon(workdir: Path) -> Iterator[tuple[bl.VirtkitDaemon, Path]]:
    """A second, private virtkitd whose qemu-img (VIRTKIT_QEMU_IMG) is a wrapper logging
    each call with its start and end time; yields the daemon and the log."""
    log = workdir / "qemu-img-calls.log"
    wrapper = workdir / "qemu-img-trace"
    wrapper.write_text(_TRACE_WRAPPER.format(real=shutil.which("qemu-img"), log=log))
    wrapper.chmod(0o755)
    saved = os.environ.get("VIRTKIT_QEMU_IMG")
    os.environ["VIRTKIT_QEMU_IMG"] = str(wrapper)
    try:
        vk = bl.VirtkitDaemon().__enter__()  # the child inherits the variable at spawn
    finally:
        if saved is None:
            os.environ.pop("VIRTKIT_QEMU_IMG", None)
        else:
            os.environ["VIRTKIT_QEMU_IMG"] = saved
    try:
        yield vk, log
    finally:
        vk.close()


def read_calls(log: Path) -> list[dict[str, Any]]:
    """The qemu-img calls the trace wrapper logged (and empty the log)."""
    calls: list[dict[str, Any]] = []
    for line in log.read_text().splitlines():
        start, end, rc, *argv = line.split()
        calls.append({"subcommand": argv[0] if argv else "?", "ms": (float(end) - float(start))
                      * 1e3, "rc": int(rc), "argv": " ".join(argv)})
    log.write_text("")
    return calls


def trace_calls(log: Path, operation: Callable[[], Any]) -> dict[str, Any]:
    """Run ``operation`` (an in-process API call) and list the qemu-img calls it made."""
    log.write_text("")
    elapsed, _ = bl.timed(operation)
    calls = read_calls(log)
    in_qemu_img = sum(c["ms"] for c in calls)
    return {"wall_ms": elapsed * 1e3, "qemu_img_calls": len(calls),
            "qemu_img_ms": in_qemu_img, "other_ms": elapsed * 1e3 - in_qemu_img,
            "calls": calls}


def print_trace(title: str, trace: dict[str, Any]) -> None:
    print(f"  {title}: {trace['wall_ms']:.1f} ms, {trace['qemu_img_calls']} qemu-img calls "
          f"({trace['qemu_img_ms']:.1f} ms: " + ", ".join(
              f"{c['subcommand']} {c['ms']:.1f}" for c in trace["calls"]) +
          f"), rest {trace['other_ms']:.1f} ms")


# -- 1. clone -----------------------------------------------------------------------------

CLONE_DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>"""


def _make_base(vk: bl.VirtkitDaemon, workdir: Path, size: int, data: int) -> dict[str, Any]:
    """A ``size`` qcow2 volume ``base.qcow2`` holding ``data`` bytes of random data in four
    extents spread over the disk, made by importing a sparse raw file."""
    seed = workdir / "seed.raw"
    with open(seed, "wb") as out:
        out.truncate(size)
    extent = data // 4
    for i in range(4):
        write_random(seed, extent, offset=i * (size // 4))
    try:
        vk.client.post(f"/v1/pools/{POOL}/import",
                       {"name": "base.qcow2", "source": str(seed), "format": "qcow2"})
    finally:
        seed.unlink()
    info = vk.client.get(vol_path("base.qcow2"))
    assert info["format"] == "qcow2" and info["capacity"] == size, info
    return dict(info)


def bench_clone(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    cli = bl.virtkit_cli()
    runs = args.runs
    size, data = 10 * GiB, 256 * MiB
    context = bl.host_context()
    lv = _libvirt(args, guest)
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-st-"))
    meta: dict[str, Any] = {}
    libvirt_pools_before: set[str] = set()
    diagnostics: dict[str, Any] = {}
    try:
        with bl.VirtkitDaemon() as vk:
            t0 = time.perf_counter()
            base = _make_base(vk, workdir, size, data)
            meta["base_setup_s"] = time.perf_counter() - t0
            meta["base"] = base
            pool_dir = Path(base["path"]).parent
            base_path = base["path"]
            counter = iter(range(1_000_000))

            def delete(name: str) -> None:
                vk.client.request("DELETE", vol_path(name))
                sync_all()

            def ready() -> None:
                prime_memory(512 * MiB, workdir)

            def linked_cli() -> float:
                name = f"lc{next(counter)}.qcow2"
                ready()
                elapsed, _ = run_timed([*cli, "vol-clone", "base.qcow2", name, "--pool", POOL,
                                        "--linked"], env=vk.env)
                info = vk.client.get(vol_path(name))
                assert info["backing"] == base_path, info
                delete(name)
                return elapsed

            def linked_api() -> float:
                name = f"la{next(counter)}.qcow2"
                ready()
                elapsed, info = bl.timed(lambda: vk.client.post(
                    vol_path("base.qcow2", "/clone"), {"name": name, "linked": True}))
                assert info["backing"] == base_path, info
                delete(name)
                return elapsed

            def overlay_floor() -> float:
                target = pool_dir / f".floor{next(counter)}.qcow2"
                ready()
                elapsed, _ = run_timed(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                                        base_path, "-F", "qcow2", str(target), str(size)])
                target.unlink()
                sync_all()
                return elapsed

            def full_cli() -> float:
                name = f"fc{next(counter)}.qcow2"
                ready()
                elapsed, _ = run_timed([*cli, "vol-clone", "base.qcow2", name, "--pool", POOL],
                                       env=vk.env)
                info = vk.client.get(vol_path(name))
                assert info["backing"] is None and info["allocation"] >= data, info
                delete(name)
                return elapsed

            def convert() -> float:
                target = pool_dir / f".conv{next(counter)}.qcow2"
                ready()
                elapsed, _ = run_timed(["qemu-img", "convert", "-O", "qcow2", "-f", "qcow2",
                                        base_path, str(target)])
                target.unlink()
                sync_all()
                return elapsed

            def cp_sparse() -> float:
                target = pool_dir / f".cp{next(counter)}.qcow2"
                ready()
                elapsed, _ = run_timed(["cp", "--sparse=always", base_path, str(target)])
                target.unlink()
                sync_all()
                return elapsed

            runners: dict[str, Callable[[], float]] = {
                "linked_cli": linked_cli, "linked_api": linked_api,
                "overlay_floor": overlay_floor, "full_cli": full_cli}
            if lv is not None:
                lv.__enter__()
                libvirt_pools_before = set(lv.virsh("pool-list", "--all", "--name").stdout.split())
                assert lv.files is not None
                xml_path = lv.files / "vkbench-clonesrc.xml"
                xml_path.write_text(lv.xml("vkbench-clonesrc").replace(
                    "  </devices>", CLONE_DISK_XML.format(path=base_path)))
                lv.defined.append("vkbench-clonesrc")
                lv.virsh("define", str(xml_path))

                def virt_clone() -> float:
                    assert lv is not None
                    n = next(counter)
                    name, target = f"vkbench-clone{n}", pool_dir / f"vc{n}.qcow2"
                    lv.defined.append(name)
                    ready()
                    elapsed, _ = run_timed(["virt-clone", "--connect", bl.LIBVIRT_URI,
                                            "--original", "vkbench-clonesrc", "--name", name,
                                            "--file", str(target)])
                    assert target.stat().st_blocks * 512 >= data
                    lv.virsh("undefine", name, "--remove-all-storage")
                    lv.defined.remove(name)
                    target.unlink(missing_ok=True)
                    sync_all()
                    return elapsed

                runners["virt_clone"] = virt_clone
            runners["qemu_img_convert"] = convert
            runners["cp_sparse"] = cp_sparse
            samples, hosts = interleaved(runners, runs, vk)
            daemon_rss = bl.proc_rss_kib(vk.pid)
            if lv is not None:
                meta.update({"libvirt": "used", "libvirtd_reused": lv.reused,
                             "kvm_permissions": lv.kvm.note,
                             "virt_clone": bl._version_of(["virt-clone", "--version"]),
                             "libvirt_domain_xml": xml_path.read_text()})
            else:
                meta["libvirt"] = NO_LIBVIRT if not bl.libvirt_installed() else "skipped"

        # Where the time of a linked clone goes: qemu-img calls vs the rest (traced daemon).
        with traced_daemon(workdir) as (tvk, log):
            tvk.client.post(f"/v1/pools/{POOL}/volumes",
                            {"name": "base.qcow2", "capacity": "10G", "format": "qcow2"})
            traces = [trace_calls(log, lambda i=i: tvk.client.post(
                vol_path("base.qcow2", "/clone"), {"name": f"t{i}.qcow2", "linked": True}))
                for i in range(5)]
            diagnostics["linked_clone_api_traced"] = traces
            diagnostics["full_clone_api_traced"] = trace_calls(log, lambda: tvk.client.post(
                vol_path("base.qcow2", "/clone"), {"name": "tfull.qcow2"}))
        # What the CLI adds: interpreter + virtkit CLI + rich (imported for the progress bar).
        env = dict(os.environ)
        cli_costs: dict[str, list[float]] = {"python_pass": [], "import_cli_and_rich": []}
        for _ in range(max(runs, 5)):
            cli_costs["python_pass"].append(run_timed([sys.executable, "-c", "pass"], env)[0])
            cli_costs["import_cli_and_rich"].append(run_timed(
                [sys.executable, "-c", "import virtkit.cli.main, virtkit.cli.storage, "
                 "virtkit.cli.streaming, rich.progress, rich.console"], env)[0])
        diagnostics["cli_fixed_costs"] = {k: bl.summary(v) for k, v in cli_costs.items()}
    finally:
        if lv is not None:
            with contextlib.suppress(Exception):  # pools virt-clone made for our folder
                after = set(lv.virsh("pool-list", "--all", "--name").stdout.split())
                for pool in sorted(after - libvirt_pools_before):
                    lv.virsh("pool-destroy", pool, check=False)
                    lv.virsh("pool-undefine", pool, check=False)
                    meta.setdefault("libvirt_pools_removed", []).append(pool)
            lv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    stats = {name: bl.summary(values) for name, values in samples.items()}
    med = {name: s["median"] for name, s in stats.items()}
    derived = {
        "virt_clone_over_linked_cli": bl.ratio(med.get("virt_clone"), med["linked_cli"]),
        "virt_clone_over_linked_api": bl.ratio(med.get("virt_clone"), med["linked_api"]),
        "virt_clone_over_full_cli": bl.ratio(med.get("virt_clone"), med["full_cli"]),
        "full_cli_over_qemu_img_convert": bl.ratio(med["full_cli"], med["qemu_img_convert"]),
        "linked_cli_minus_api_s": med["linked_cli"] - med["linked_api"],
        "linked_api_minus_floor_s": med["linked_api"] - med["overlay_floor"],
    }
    targets = {"linked_cli_lt_0.2s": med["linked_cli"] < 0.2,
               "linked_api_lt_0.2s": med["linked_api"] < 0.2}
    result = {"benchmark": "storage-clone", "runs": runs, "size": size, "data": data,
              "context": context, "memory_priming": PRIME["enabled"], "prime_mib": 512,
              **meta, "command": " ".join([sys.executable, *sys.argv]),
              "virtkit_cli": cli, "stats": stats, "derived": derived, "targets": targets,
              "host_per_round": hosts, "virtkitd_rss_kib": daemon_rss,
              "diagnostics": diagnostics,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    rows = []
    for key, label in CLONE_LABELS.items():
        if key not in stats:
            continue
        s = stats[key]
        rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                     bl.fmt_x(bl.ratio(med.get("virt_clone"), s["median"]))])
    bl.print_table(f"clone of a 10 GiB qcow2 holding 256 MiB, median of {runs} (seconds)",
                   ["path", "median", "min", "max", "virt-clone/this"], rows)
    for i, trace in enumerate(diagnostics["linked_clone_api_traced"][:2]):
        print_trace(f"traced linked clone (API) #{i + 1}", trace)
    print_trace("traced full clone (API, empty base)", diagnostics["full_clone_api_traced"])
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("storage-clone", result))
    return result


CLONE_LABELS = {
    "linked_cli": "`virtkit vol-clone --linked` (CLI)",
    "linked_api": "linked clone, API in-process",
    "overlay_floor": "(ref) `qemu-img create -b` overlay alone",
    "full_cli": "`virtkit vol-clone` full copy (CLI)",
    "virt_clone": "`virt-clone` (libvirt, full copy)",
    "qemu_img_convert": "(ref) `qemu-img convert` qcow2->qcow2",
    "cp_sparse": "(ref) `cp --sparse=always`",
}


# -- 2. upload / download -----------------------------------------------------------------


class _UnixHTTP(http.client.HTTPConnection):
    """http.client over the daemon's unix socket: the benchmark's own API client, so the
    "API in-process" columns do not depend on the CLI's streaming helpers."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=600)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def api_upload(vk: bl.VirtkitDaemon, volume: str, path: Path, size: int) -> dict[str, Any]:
    """PUT .../upload with ``path`` as the raw body, sent with sendfile (no copy through
    Python, so the figure is the daemon's); returns the daemon's JSON answer."""
    connection = _UnixHTTP(vk.paths.socket)
    try:
        connection.putrequest("PUT", vol_path(volume, "/upload"))
        connection.putheader("Content-Length", str(size))
        connection.putheader("Content-Type", "application/octet-stream")
        connection.endheaders()
        assert connection.sock is not None
        with open(path, "rb") as source:
            connection.sock.sendfile(source, 0, size)
        response = connection.getresponse()
        body = response.read()
        if response.status >= 300:
            raise RuntimeError(f"upload: HTTP {response.status}: {body[:500]!r}")
        return dict(json.loads(body))
    finally:
        connection.close()


def api_download(vk: bl.VirtkitDaemon, volume: str, target: Path) -> int:
    """GET .../download into ``target`` (readinto one 1 MiB buffer, write); bytes written."""
    connection = _UnixHTTP(vk.paths.socket)
    try:
        connection.request("GET", vol_path(volume, "/download"))
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"download: HTTP {response.status}: {response.read()[:500]!r}")
        view = memoryview(bytearray(MiB))
        done = 0
        with open(target, "wb") as out:
            while n := response.readinto(view):
                out.write(view[:n])
                done += n
        return done
    finally:
        connection.close()


def _ping_latencies(vk: bl.VirtkitDaemon, stop: threading.Event,
                    into: list[float]) -> None:
    while not stop.is_set():
        into.append(bl.timed(lambda: vk.client.get("/v1/version"))[0])
        time.sleep(0.01)


def _loop_stall(vk: bl.VirtkitDaemon, operation: Callable[[], Any]) -> dict[str, Any]:
    """Latency of GET /v1/version polled every 10 ms while ``operation`` runs."""
    latencies: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=_ping_latencies, args=(vk, stop, latencies), daemon=True)
    thread.start()
    try:
        elapsed, _ = bl.timed(operation)
    finally:
        stop.set()
        thread.join(10)
    ordered = sorted(latencies)
    return {"operation_s": elapsed, "pings": len(latencies),
            "median_ms": bl.summary(latencies)["median"] * 1e3 if latencies else None,
            "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3 if ordered else None,
            "max_ms": ordered[-1] * 1e3 if ordered else None}


def bench_transfer(args: argparse.Namespace) -> dict[str, Any]:
    cli = bl.virtkit_cli()
    runs, size = args.runs, args.size_mib * MiB
    context = bl.host_context()
    modes = ["warm", "cold"] if args.cache == "both" else [args.cache]
    if "cold" in modes and not can_drop_caches():
        print("(cannot write /proc/sys/vm/drop_caches: cold runs skipped)")
        modes = [m for m in modes if m != "cold"] or ["warm"]
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-st-"))
    per_mode: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    try:
        with bl.VirtkitDaemon() as vk:
            src = workdir / "src.bin"
            t0 = time.perf_counter()
            write_random(src, size)
            setup = {"random_file_s": time.perf_counter() - t0}
            seed = api_upload(vk, "dl.bin", src, size)
            pool_dir = Path(seed["path"]).parent
            dl_volume = pool_dir / "dl.bin"
            cmp = subprocess.run(["cmp", str(src), str(dl_volume)], capture_output=True)
            assert cmp.returncode == 0, "uploaded volume differs from the file"
            mode = "warm"

            def settle() -> None:
                if mode == "cold":  # the run reads its source into new page cache too
                    drop_caches()
                    prime_memory(size * 5 // 2, workdir)
                else:
                    sync_all()
                    prime_memory(size + size // 2, workdir)

            def cleanup(*paths: Path, volume: str | None = None) -> None:
                for path in paths:
                    path.unlink(missing_ok=True)
                if volume:
                    with contextlib.suppress(ApiError):  # an upload that never arrived
                        vk.client.request("DELETE", vol_path(volume))

            def cpu_daemon(fn: Callable[[], Any]) -> tuple[float, Any, float]:
                before = proc_cpu_s(vk.pid)
                elapsed, value = bl.timed(fn)
                return elapsed, value, proc_cpu_s(vk.pid) - before

            cpu: dict[str, list[dict[str, float]]] = {}

            def note_cpu(key: str, **values: float) -> None:
                cpu.setdefault(f"{mode}:{key}", []).append(values)

            def cp_up() -> float:
                target = pool_dir / ".cp-up.bin"
                settle()
                elapsed, child = run_timed(["cp", str(src), str(target)])
                note_cpu("cp_up", cp=child)
                cleanup(target)
                return elapsed

            def cp_up_fsync() -> float:
                target = pool_dir / ".cp-up.bin"
                settle()
                start = time.perf_counter()
                _, c1 = run_timed(["cp", str(src), str(target)])
                _, c2 = run_timed(["sync", str(target)])
                elapsed = time.perf_counter() - start
                note_cpu("cp_up_fsync", cp=c1 + c2)
                cleanup(target)
                return elapsed

            def upload_cli() -> float:
                settle()
                before = proc_cpu_s(vk.pid)
                elapsed, child = run_timed([*cli, "vol-upload", "up.bin", str(src),
                                            "--pool", POOL], env=vk.env)
                note_cpu("upload_cli", cli=child, daemon=proc_cpu_s(vk.pid) - before)
                assert (pool_dir / "up.bin").stat().st_size == size
                cleanup(volume="up.bin")
                return elapsed

            def upload_api() -> float:
                settle()

                elapsed, answer, daemon = cpu_daemon(lambda: api_upload(vk, "up.bin", src, size))
                note_cpu("upload_api", daemon=daemon)
                assert answer["uploaded"] == size, answer
                cleanup(volume="up.bin")
                return elapsed

            def download_cli() -> float:
                target = workdir / "dl-cli.bin"
                settle()
                before = proc_cpu_s(vk.pid)
                elapsed, child = run_timed([*cli, "vol-download", "dl.bin", str(target),
                                            "--pool", POOL], env=vk.env)
                note_cpu("download_cli", cli=child, daemon=proc_cpu_s(vk.pid) - before)
                assert target.stat().st_size == size
                cleanup(target)
                return elapsed

            def download_api() -> float:
                target = workdir / "dl-api.bin"
                settle()

                elapsed, done, daemon = cpu_daemon(lambda: api_download(vk, "dl.bin", target))
                note_cpu("download_api", daemon=daemon)
                assert done == size
                cleanup(target)
                return elapsed

            def cp_down() -> float:
                target = workdir / "cp-down.bin"
                settle()
                elapsed, child = run_timed(["cp", str(dl_volume), str(target)])
                note_cpu("cp_down", cp=child)
                cleanup(target)
                return elapsed

            runners = {"cp_up": cp_up, "cp_up_fsync": cp_up_fsync, "upload_cli": upload_cli,
                       "upload_api": upload_api, "cp_down": cp_down,
                       "download_cli": download_cli, "download_api": download_api}
            # Check once that both directions move the bytes unchanged.
            run_timed([*cli, "vol-upload", "up.bin", str(src), "--pool", POOL], env=vk.env)
            assert subprocess.run(["cmp", str(src), str(pool_dir / "up.bin")]).returncode == 0
            cleanup(volume="up.bin")
            run_timed([*cli, "vol-download", "dl.bin", str(workdir / "check.bin"), "--pool",
                       POOL], env=vk.env)
            assert subprocess.run(["cmp", str(src), str(workdir / "check.bin")]).returncode == 0
            cleanup(workdir / "check.bin")
            for mode in modes:
                cpu.clear()
                samples, hosts = interleaved(runners, runs, vk, label=f"{mode}: ")
                per_mode[mode] = {"samples": samples, "host_per_round": hosts,
                                  "cpu": {k.split(":", 1)[1]: {
                                      field: bl.summary([row[field] for row in rows])["median"]
                                      for field in rows[0]} for k, rows in cpu.items()}}
            # Does a transfer stall the daemon's event loop?  (warm, not timed above)
            mode = "warm"
            settle()
            diagnostics["loop_idle"] = _loop_stall(vk, lambda: time.sleep(1.0))

            diagnostics["loop_during_upload"] = _loop_stall(
                vk, lambda: api_upload(vk, "up.bin", src, size))
            cleanup(volume="up.bin")
            settle()
            diagnostics["loop_during_download"] = _loop_stall(
                vk, lambda: run_timed([*cli, "vol-download", "dl.bin",
                                       str(workdir / "dl-x.bin"), "--pool", POOL], env=vk.env))
            cleanup(workdir / "dl-x.bin")
            daemon_rss = bl.proc_rss_kib(vk.pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    out_modes = {}
    for mode, data in per_mode.items():
        stats = {name: bl.summary(values) for name, values in data["samples"].items()}
        med = {name: s["median"] for name, s in stats.items()}
        throughput = {name: mib_s(size, m) for name, m in med.items()}
        derived = {
            "upload_cli_vs_cp": bl.ratio(med["cp_up"], med["upload_cli"]),
            "upload_cli_vs_cp_fsync": bl.ratio(med["cp_up_fsync"], med["upload_cli"]),
            "upload_api_vs_cp": bl.ratio(med["cp_up"], med["upload_api"]),
            "download_cli_vs_cp": bl.ratio(med["cp_down"], med["download_cli"]),
            "download_api_vs_cp": bl.ratio(med["cp_down"], med["download_api"]),
        }
        targets = {"upload_cli_ge_0.8_cp": (derived["upload_cli_vs_cp"] or 0) >= 0.8,
                   "download_cli_ge_0.8_cp": (derived["download_cli_vs_cp"] or 0) >= 0.8}
        out_modes[mode] = {"stats": stats, "throughput_mib_s": throughput, "derived": derived,
                           "targets": targets, "cpu_median_s": data["cpu"],
                           "host_per_round": data["host_per_round"]}
    result = {"benchmark": "storage-transfer", "runs": runs, "size": size, "context": context,
              "memory_priming": PRIME["enabled"],
              "setup": setup, "cache_modes": {
                  "warm": "sync before each run; the source file stays in the page cache",
                  "cold": "sync + echo 3 > /proc/sys/vm/drop_caches before each run"},
              "prime_mib": {"warm": size * 3 // 2 // MiB, "cold": size * 5 // 2 // MiB},
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "modes": out_modes, "diagnostics": diagnostics, "virtkitd_rss_kib": daemon_rss,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    for mode, data in out_modes.items():
        rows = []
        for key, label in TRANSFER_LABELS.items():
            s = data["stats"][key]
            ref = "cp_down" if key.startswith(("download", "cp_down")) else "cp_up"
            rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                         f"{data['throughput_mib_s'][key]:.0f}",
                         bl.fmt_x(bl.ratio(data["stats"][ref]["median"], s["median"]))])
        bl.print_table(f"{size // MiB} MiB transfer, {mode} cache, median of {runs} (seconds)",
                       ["path", "median", "min", "max", "MiB/s", "throughput / cp"], rows)
        print(f"CPU (median s): {json.dumps(data['cpu_median_s'])}")
        print("targets:", json.dumps(data["targets"]))
    print("event loop (GET /v1/version latency): " + "; ".join(
        f"{k}: median {v['median_ms']:.1f} ms, max {v['max_ms']:.1f} ms"
        for k, v in diagnostics.items()))
    print("results:", bl.write_results("storage-transfer", result))
    return result


TRANSFER_LABELS = {
    "cp_up": "(ref) `cp FILE pool/`",
    "cp_up_fsync": "(ref) `cp` + `sync FILE` (fsync)",
    "upload_cli": "`virtkit vol-upload` (CLI)",
    "upload_api": "upload, API in-process (PUT)",
    "cp_down": "(ref) `cp pool/VOL FILE`",
    "download_cli": "`virtkit vol-download` (CLI)",
    "download_api": "download, API in-process (GET)",
}


# -- 3. import / convert --------------------------------------------------------------------


def bench_import(args: argparse.Namespace) -> dict[str, Any]:
    cli = bl.virtkit_cli()
    runs, size = args.runs, args.size_mib * MiB
    context = bl.host_context()
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-st-"))
    diagnostics: dict[str, Any] = {}
    setup: dict[str, float] = {}
    paired: dict[str, list[dict[str, float]]] = {}
    try:
        # The daemon's qemu-img is the trace wrapper, so every import run also tells how
        # long its own qemu-img convert took: virtkit's overhead measured within the run.
        with traced_daemon(workdir) as (vk, log):
            raw = workdir / "src.raw"
            vmdk = workdir / "src.vmdk"
            setup["random_raw_s"] = bl.timed(lambda: write_random(raw, size))[0]
            setup["vmdk_from_raw_s"] = run_timed(["qemu-img", "convert", "-f", "raw", "-O",
                                                  "vmdk", str(raw), str(vmdk)])[0]
            pool_dir = vk.root / "images"  # the default pool (checked below)
            assert Path(vk.client.get(f"/v1/pools/{POOL}")["target"]) == pool_dir
            sources = {"raw": raw, "vmdk": vmdk}
            sizes = {k: v.stat().st_blocks * 512 for k, v in sources.items()}

            def ready() -> None:
                sync_all()
                prime_memory(size + 256 * MiB, workdir)
                log.write_text("")

            def pair(key: str, elapsed: float) -> None:
                calls = read_calls(log)
                convert = sum(c["ms"] for c in calls if c["subcommand"] == "convert") / 1e3
                others = sum(c["ms"] for c in calls if c["subcommand"] != "convert") / 1e3
                paired.setdefault(key, []).append({
                    "wall_s": elapsed, "convert_s": convert, "other_qemu_img_s": others,
                    "qemu_img_calls": len(calls), "overhead_s": elapsed - convert,
                    "overhead": (elapsed - convert) / convert})

            def vk_cli(fmt: str) -> Callable[[], float]:
                def run() -> float:
                    ready()
                    elapsed, _ = run_timed([*cli, "vol-import", POOL, f"imp-{fmt}.qcow2",
                                            str(sources[fmt]), "--format", "qcow2"], env=vk.env)
                    pair(f"vk_{fmt}_cli", elapsed)
                    info = vk.client.get(vol_path(f"imp-{fmt}.qcow2"))
                    assert info["format"] == "qcow2" and info["capacity"] == size, info
                    vk.client.request("DELETE", vol_path(f"imp-{fmt}.qcow2"))
                    return elapsed
                return run

            def vk_api(fmt: str) -> Callable[[], float]:
                def run() -> float:
                    ready()
                    elapsed, info = bl.timed(lambda: vk.client.post(
                        f"/v1/pools/{POOL}/import", {"name": f"api-{fmt}.qcow2",
                                                     "source": str(sources[fmt]),
                                                     "format": "qcow2"}))
                    pair(f"vk_{fmt}_api", elapsed)
                    assert info["format"] == "qcow2" and info["capacity"] == size, info
                    vk.client.request("DELETE", vol_path(f"api-{fmt}.qcow2"))
                    return elapsed
                return run

            def direct(fmt: str) -> Callable[[], float]:
                def run() -> float:
                    target = pool_dir / f".direct-{fmt}.qcow2"
                    ready()
                    # exactly what qemuimg.convert runs for an import
                    elapsed, _ = run_timed(["qemu-img", "convert", "-p", "-O", "qcow2", "-f",
                                            fmt, str(sources[fmt]), str(target)])
                    target.unlink()
                    return elapsed
                return run

            runners = {"vk_raw_cli": vk_cli("raw"), "vk_raw_api": vk_api("raw"),
                       "qemu_img_raw": direct("raw"), "vk_vmdk_cli": vk_cli("vmdk"),
                       "vk_vmdk_api": vk_api("vmdk"), "qemu_img_vmdk": direct("vmdk")}
            samples, hosts = interleaved(runners, runs, vk)
            for values in paired.values():
                del values[0]  # the warm-up round
            daemon_rss = bl.proc_rss_kib(vk.pid)

            # Which qemu-img calls an import makes besides the convert (small sources).
            small_raw, small_vmdk = workdir / "small.raw", workdir / "small.vmdk"
            write_random(small_raw, 64 * MiB)
            run_timed(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(small_raw),
                       str(small_vmdk)])
            for fmt, path in (("raw", small_raw), ("vmdk", small_vmdk)):
                diagnostics[f"import_{fmt}_64mib_traced"] = trace_calls(
                    log, lambda fmt=fmt, path=path: vk.client.post(
                        f"/v1/pools/{POOL}/import",
                        {"name": f"t-{fmt}.qcow2", "source": str(path), "format": "qcow2"}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    stats = {name: bl.summary(values) for name, values in samples.items()}
    med = {name: s["median"] for name, s in stats.items()}
    derived = {
        "raw_cli_overhead": med["vk_raw_cli"] / med["qemu_img_raw"] - 1,
        "raw_api_overhead": med["vk_raw_api"] / med["qemu_img_raw"] - 1,
        "vmdk_cli_overhead": med["vk_vmdk_cli"] / med["qemu_img_vmdk"] - 1,
        "raw_cli_overhead_s": med["vk_raw_cli"] - med["qemu_img_raw"],
        "raw_api_overhead_s": med["vk_raw_api"] - med["qemu_img_raw"],
        "vmdk_cli_overhead_s": med["vk_vmdk_cli"] - med["qemu_img_vmdk"],
        "vmdk_api_overhead": med["vk_vmdk_api"] / med["qemu_img_vmdk"] - 1,
    }
    paired_stats = {key: {field: bl.summary([row[field] for row in rows])
                          for field in ("wall_s", "convert_s", "overhead_s", "overhead")}
                    for key, rows in paired.items()}
    targets = {"raw_cli_overhead_le_5pct_paired":
               paired_stats["vk_raw_cli"]["overhead"]["median"] <= 0.05,
               "vmdk_cli_overhead_le_5pct_paired":
               paired_stats["vk_vmdk_cli"]["overhead"]["median"] <= 0.05,
               "raw_cli_overhead_le_5pct_unpaired": derived["raw_cli_overhead"] <= 0.05,
               "vmdk_cli_overhead_le_5pct_unpaired": derived["vmdk_cli_overhead"] <= 0.05}
    result = {"benchmark": "storage-import", "runs": runs, "size": size,
              "source_allocated_bytes": sizes, "context": context,
              "memory_priming": PRIME["enabled"], "setup": setup,
              "cache": "warm: sources stay in the page cache; sync before each run",
              "prime_mib": (size + 256 * MiB) // MiB,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "direct_argv": "qemu-img convert -p -O qcow2 -f FMT SRC DST",
              "stats": stats, "derived": derived, "paired": paired_stats,
              "paired_samples": paired, "targets": targets,
              "host_per_round": hosts, "virtkitd_rss_kib": daemon_rss,
              "diagnostics": diagnostics, "daemon_qemu_img": "trace wrapper (sh + 2 date)",
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    rows = []
    for key, label, ref in IMPORT_ROWS:
        s = stats[key]
        rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                     f"{(s['median'] / med[ref] - 1) * 100:+.1f}%"])
    bl.print_table(f"import of a {size // MiB} MiB image to qcow2, median of {runs} (seconds)",
                   ["path", "median", "min", "max", "vs qemu-img"], rows)
    rows = [[PAIRED_LABELS[key], bl.fmt_s(p["wall_s"]["median"]),
             bl.fmt_s(p["convert_s"]["median"]), bl.fmt_ms(p["overhead_s"]["median"]),
             f"{p['overhead']['median'] * 100:+.1f}%",
             f"{p['overhead']['min'] * 100:+.1f}%..{p['overhead']['max'] * 100:+.1f}%"]
            for key, p in paired_stats.items()]
    bl.print_table("paired: virtkit's wall time vs its own qemu-img convert, same run",
                   ["path", "wall s", "convert s", "overhead ms", "overhead", "min..max"],
                   rows)
    for key, trace in diagnostics.items():
        print_trace(key, trace)
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("storage-import", result))
    return result


PAIRED_LABELS = {
    "vk_raw_cli": "`virtkit vol-import` raw (CLI)", "vk_raw_api": "import raw, API",
    "vk_vmdk_cli": "`virtkit vol-import` vmdk (CLI)", "vk_vmdk_api": "import vmdk, API",
}

IMPORT_ROWS = [
    ("vk_raw_cli", "`virtkit vol-import` raw -> qcow2 (CLI)", "qemu_img_raw"),
    ("vk_raw_api", "import raw -> qcow2, API in-process", "qemu_img_raw"),
    ("qemu_img_raw", "(ref) `qemu-img convert -f raw -O qcow2`", "qemu_img_raw"),
    ("vk_vmdk_cli", "`virtkit vol-import` vmdk -> qcow2 (CLI)", "qemu_img_vmdk"),
    ("vk_vmdk_api", "import vmdk -> qcow2, API in-process", "qemu_img_vmdk"),
    ("qemu_img_vmdk", "(ref) `qemu-img convert -f vmdk -O qcow2`", "qemu_img_vmdk"),
]


# -- report ------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = bl.RESULTS_DIR / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(label: str, s: dict[str, Any], *extra: str) -> str:
    return (f"| {label} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | "
            + " | ".join(extra) + " |")


def report(_args: argparse.Namespace) -> None:
    """Markdown tables of the latest storage results (for docs/benchmarks.md)."""
    clone = _load("storage-clone")
    if clone:
        s = clone["stats"]
        vc = s.get("virt_clone", {}).get("median")
        print(f"### clone of a 10 GiB qcow2 holding 256 MiB (median of {clone['runs']}, s)\n")
        print("| path | median | min | max | virt-clone / this |")
        print("|---|---:|---:|---:|---:|")
        for key, label in CLONE_LABELS.items():
            if key in s:
                print(_row(label, s[key], bl.fmt_x(bl.ratio(vc, s[key]["median"]))))
        print(f"\nderived {clone['derived']}; targets {clone['targets']}")
        for trace in clone["diagnostics"]["linked_clone_api_traced"][:1]:
            print(f"\ntraced linked clone: {trace['wall_ms']:.1f} ms, "
                  f"{trace['qemu_img_calls']} qemu-img calls " + ", ".join(
                      f"{c['subcommand']} {c['ms']:.1f}" for c in trace["calls"]))
        print()
    transfer = _load("storage-transfer")
    if transfer:
        for mode, data in transfer["modes"].items():
            s = data["stats"]
            print(f"### {transfer['size'] // MiB} MiB upload / download, {mode} cache "
                  f"(median of {transfer['runs']}, s)\n")
            print("| path | median | min | max | MiB/s | throughput / cp |")
            print("|---|---:|---:|---:|---:|---:|")
            for key, label in TRANSFER_LABELS.items():
                ref = "cp_down" if key.startswith(("download", "cp_down")) else "cp_up"
                print(_row(label, s[key], f"{data['throughput_mib_s'][key]:.0f}",
                           bl.fmt_x(bl.ratio(s[ref]["median"], s[key]["median"]))))
            print(f"\nCPU medians (s) {data['cpu_median_s']}; targets {data['targets']}\n")
        print("event loop: " + "; ".join(
            f"{k} median {v['median_ms']:.1f} ms max {v['max_ms']:.1f} ms"
            for k, v in transfer["diagnostics"].items()) + "\n")
    imp = _load("storage-import")
    if imp:
        s = imp["stats"]
        print(f"### import of a {imp['size'] // MiB} MiB image to qcow2 "
              f"(median of {imp['runs']}, s)\n")
        print("| path | median | min | max | vs qemu-img |")
        print("|---|---:|---:|---:|---:|")
        for key, label, ref in IMPORT_ROWS:
            print(_row(label, s[key],
                       f"{(s[key]['median'] / s[ref]['median'] - 1) * 100:+.1f}%"))
        print("\npaired (virtkit's wall time vs its own qemu-img convert, same run):\n")
        print("| path | wall (s) | its convert (s) | overhead (ms) | overhead | min..max |")
        print("|---|---:|---:|---:|---:|---:|")
        for key, x in imp["paired"].items():
            print(f"| {PAIRED_LABELS[key]} | {x['wall_s']['median']:.3f} | "
                  f"{x['convert_s']['median']:.3f} | {x['overhead_s']['median'] * 1e3:.1f} | "
                  f"{x['overhead']['median'] * 100:+.1f}% | {x['overhead']['min'] * 100:+.1f}%"
                  f"..{x['overhead']['max'] * 100:+.1f}% |")
        print(f"\nderived {imp['derived']}; targets {imp['targets']}")
        for key, trace in imp["diagnostics"].items():
            print(f"\n{key}: {trace['wall_ms']:.1f} ms, {trace['qemu_img_calls']} qemu-img calls "
                  + ", ".join(f"{c['subcommand']} {c['ms']:.1f}" for c in trace["calls"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip virt-clone")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host "
                        "(no other QEMU running, 1-min load < 1.5)")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="leave /dev/kvm permissions alone (see benchlib.KvmPermissions)")
    parser.add_argument("--no-prime", action="store_true",
                        help="do not touch and free memory before each run (see prime_memory)")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("clone", help="linked and full clone vs virt-clone, qemu-img, cp")
    p.add_argument("--runs", type=int, default=11)
    p = sub.add_parser("transfer", help="vol-upload / vol-download vs cp")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--cache", choices=["warm", "cold", "both"], default="both")
    p = sub.add_parser("import", help="vol-import (raw, vmdk -> qcow2) vs qemu-img convert")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--size-mib", type=int, default=2048)
    sub.add_parser("all", help="clone, transfer and import with their defaults")
    sub.add_parser("report", help="markdown tables from results/storage-*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    PRIME["enabled"] = not args.no_prime
    if os.geteuid() != 0:
        print("not root: no cold-cache runs and no virt-clone", file=sys.stderr)
    bl.run_benchmarks("storage", {"clone": bench_clone, "transfer": bench_transfer,
                                  "import": bench_import}, args,
                      {"clone": {"runs": 11},
                       "transfer": {"runs": 5, "size_mib": 1024, "cache": "both"},
                       "import": {"runs": 7, "size_mib": 2048}})



if __name__ == "__main__":
    main()
