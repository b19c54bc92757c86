#!/usr/bin/env python3
"""Benchmarks of ``virtkit install`` against virt-install, side by side (issue 5).

    python bench/bench_install.py import      # --import of a small qcow2 with direct kernel
                                              # boot, until the command returns with the VM
                                              # running: virtkit CLI, virtkit API, virt-install
    python bench/bench_install.py unattended  # a whole unattended install from the test
                                              # installer ISO (--cdrom, --wait -1), then the
                                              # installed system booting from its own disk
    python bench/bench_install.py all         # both, in that order
    python bench/bench_install.py report      # markdown tables from results/install-*-latest.json

Each prints a table and writes results/install-NAME-<time>.json (and -latest.json).
A private virtkitd (own VIRTKIT_ROOT under /tmp) runs virtkit's side; libvirt's side is
virt-install on qemu:///system, with libvirtd and virtlogd started here when none runs
(benchlib.Libvirt).  Every disk, ISO and kernel either side uses lives in a folder the
libvirt-qemu user can read.  Both sides run their guests under TCG (libvirt:
``--virt-type qemu``).  Everything created -- domains, volumes, the libvirt storage
pools virt-install makes for our folders, logs, files -- is removed in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import mmap
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from virtkit.formats.virtinstall import parse_command_line
from virtkit.images.installer import (
    DEFAULT_HOSTNAME,
    DONE_MARKER,
    FAILED_MARKER,
    INSTALLED_ARG,
    build_installer,
)
from virtkit.images.tinyguest import BOOT_MARKER

NO_LIBVIRT = "libvirt not installed"
MEMORY_MIB = "256"
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")


# -- helpers ---------------------------------------------------------------------------


def run_checked(argv: list[str], env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, env=env, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    return out


def run_timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``argv`` to completion; (wall seconds, stdout). Raises on failure."""
    elapsed, out = bl.timed(lambda: run_checked(argv, env))
    return elapsed, out.stdout


def shared_dir(parent: Path, name: str) -> Path:
    """A folder the libvirt-qemu user can enter and read (root's /tmp folders are 0700)."""
    folder = parent / name
    folder.mkdir()
    folder.chmod(0o755)
    return folder


def shared_copy(source: Path, folder: Path) -> Path:
    target = folder / source.name
    shutil.copyfile(source, target)
    target.chmod(0o644)
    return target


def _libvirt(args: argparse.Namespace, guest: bl.TinyGuest) -> bl.Libvirt | None:
    if args.no_libvirt or not bl.libvirt_installed() or not shutil.which("virt-install"):
        print(f"({NO_LIBVIRT if not bl.libvirt_installed() else 'virt-install skipped'}: "
              "virtkit columns only)")
        return None
    return bl.Libvirt(guest, fix_kvm_permissions=not args.libvirt_as_installed)


def _libvirt_meta(lv: bl.Libvirt | None, args: argparse.Namespace) -> dict[str, Any]:
    if lv is None:
        return {"libvirt": NO_LIBVIRT if not bl.libvirt_installed() else "skipped"}
    return {"libvirt": "used", "libvirtd_reused": lv.reused,
            "kvm_permissions": lv.kvm.note
            or ("left as installed" if args.libvirt_as_installed else ""),
            "virt_install": bl._version_of(["virt-install", "--version"])}


def libvirt_pools(lv: bl.Libvirt) -> set[str]:
    return set(lv.virsh("pool-list", "--all", "--name").stdout.split())


def remove_new_pools(lv: bl.Libvirt, before: set[str]) -> list[str]:
    """Stop and forget the storage pools virt-install made (for our folders, or 'default')."""
    removed = []
    with contextlib.suppress(Exception):
        for pool in sorted(libvirt_pools(lv) - before):
            lv.virsh("pool-destroy", pool, check=False)
            lv.virsh("pool-undefine", pool, check=False)
            removed.append(pool)
    return removed


def libvirt_remove(lv: bl.Libvirt, name: str, storage: bool) -> None:
    """Destroy and undefine one domain virt-install made (and its new volumes)."""
    if name in lv.virsh("list", "--name").stdout.split():
        lv.virsh("destroy", name)
    extra = ["--remove-all-storage"] if storage else []
    lv.virsh("undefine", name, *extra)
    lv.defined.remove(name)
    Path(f"/var/log/libvirt/qemu/{name}.log").unlink(missing_ok=True)


def virtkit_remove(vk: bl.VirtkitDaemon, name: str, volume: str | None = None) -> None:
    """Destroy (if running) and undefine a virtkit domain; delete its new volume."""
    if vk.state(name) not in ("shutoff", "crashed"):
        vk.client.post(f"/v1/domains/{name}/destroy")
    vk.client.request("DELETE", f"/v1/domains/{name}")
    if volume is not None:
        vk.client.request("DELETE", f"/v1/pools/default/volumes/{volume}")


def interleaved(runners: dict[str, Callable[[], float]], runs: int, warmup: bool = True,
                label: str = "") -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """One untimed warm-up of every runner, then ``runs`` rounds, columns interleaved and
    their order rotated by one each round (no column always follows the same one)."""
    if warmup:
        for name, runner in runners.items():
            elapsed = runner()
            print(f"  {label}warm-up {name}={elapsed:.3f}s", flush=True)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    hosts = []
    for round_no in range(runs):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runners[name]())
        hosts.append({"loadavg1": bl.loadavg()[0],
                      "foreign_qemu": bl.foreign_qemu_count(["vkbench-"])})
        print(f"  {label}round {round_no + 1}/{runs}: " + "  ".join(
            f"{n}={samples[n][-1]:.3f}s" for n in runners), flush=True)
    return samples, hosts


# -- 1. --import ----------------------------------------------------------------------


def bench_import(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    cli = bl.virtkit_cli()
    runs = args.runs
    context = bl.host_context()
    lv = _libvirt(args, guest)
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-inst-"))
    workdir.chmod(0o755)
    counter = itertools.count()
    checks: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    pools_before: set[str] | None = None
    try:
        boot = shared_dir(workdir, "boot")
        kernel, initrd = shared_copy(guest.kernel, boot), shared_copy(guest.initrd, boot)
        disks = {side: shared_dir(workdir, side) for side in ("vk", "lv")}
        for folder in disks.values():  # a small qcow2 that holds something
            base = folder / "base.qcow2"
            run_checked(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "256M"])
            run_checked(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(base)])
            base.chmod(0o644)

        def overlay(side: str, name: str) -> Path:
            """A fresh qcow2 overlay on the side's base (not timed)."""
            path = disks[side] / f"{name}.qcow2"
            run_checked(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                         str(disks[side] / "base.qcow2"), str(path)])
            path.chmod(0o644)
            return path

        boot_arg = f"kernel={kernel},initrd={initrd},cmdline={guest.cmdline}"

        def vk_words(name: str, disk: Path) -> list[str]:
            return ["--name", name, "--memory", MEMORY_MIB, "--import", "--disk", str(disk),
                    "--boot", boot_arg, "--graphics", "none", "--nonetworks",
                    "--noautoconsole"]

        def lv_argv(name: str, disk: Path) -> list[str]:
            return ["virt-install", "--connect", bl.LIBVIRT_URI, "--name", name,
                    "--memory", MEMORY_MIB, "--import", "--disk", f"{disk},bus=virtio",
                    "--boot", f"kernel={kernel},initrd={initrd},kernel_args={guest.cmdline}",
                    "--graphics", "none", "--network", "none", "--noautoconsole",
                    "--osinfo", "generic", "--virt-type", "qemu"]

        with bl.VirtkitDaemon() as vk:

            def vk_check(name: str, key: str) -> None:
                info = vk.client.get(f"/v1/domains/{name}")
                if info["state"] != "running" or info["installing"]:
                    raise RuntimeError(f"{name}: {info['state']} after virtkit install")
                if key not in checks:  # once per column: what was started
                    pid = info["pid"]
                    checks[key] = {"state": info["state"], "accelerator": info["accelerator"],
                                   "cmdline": info["spec"]["boot"]["cmdline"],
                                   "disks": info["spec"]["disks"],
                                   "qemu_argv": bl.proc_argv(pid)}
                    if checks[key]["cmdline"] != guest.cmdline:
                        raise RuntimeError(f"virtkit's cmdline: {checks[key]['cmdline']!r}")

            def virtkit_cli() -> float:
                name = f"vkbench-imp{next(counter)}"
                disk = overlay("vk", name)
                elapsed, stdout = run_timed([*cli, "install", *vk_words(name, disk)], vk.env)
                if "Domain creation completed." not in stdout:
                    raise RuntimeError(f"virtkit install said: {stdout!r}")
                vk_check(name, "virtkit_cli")
                virtkit_remove(vk, name)
                disk.unlink()
                return elapsed

            def virtkit_api() -> float:
                name = f"vkbench-imp{next(counter)}"
                disk = overlay("vk", name)
                words = vk_words(name, disk)
                elapsed, result = bl.timed(lambda: vk.client.post(
                    "/v1/install", parse_command_line(words).to_dict()))
                if result["state"] != "running":
                    raise RuntimeError(f"POST /v1/install: {result['state']}")
                vk_check(name, "virtkit_api")
                virtkit_remove(vk, name)
                disk.unlink()
                return elapsed

            runners: dict[str, Callable[[], float]] = {"virtkit_cli": virtkit_cli,
                                                       "virtkit_api": virtkit_api}
            if lv is not None:
                lv.__enter__()
                pools_before = libvirt_pools(lv)

                def virt_install() -> float:
                    assert lv is not None
                    name = f"vkbench-imp{next(counter)}"
                    disk = overlay("lv", name)
                    lv.defined.append(name)  # close() undefines it if anything fails
                    elapsed, _ = run_timed(lv_argv(name, disk))
                    if lv.state(name) != "running":
                        raise RuntimeError(f"{name}: {lv.state(name)} after virt-install")
                    if "virt_install" not in checks:
                        xml = lv.virsh("dumpxml", name).stdout
                        checks["virt_install"] = {"state": "running", "domain_xml": xml}
                        if f"<cmdline>{guest.cmdline}</cmdline>" not in xml:
                            raise RuntimeError("virt-install's domain lacks the cmdline")
                    libvirt_remove(lv, name, storage=False)
                    disk.unlink(missing_ok=True)
                    return elapsed

                runners["virt_install"] = virt_install
            samples, hosts = interleaved(runners, runs)
            daemon_rss = bl.proc_rss_kib(vk.pid)
        meta = _libvirt_meta(lv, args)
    finally:
        if lv is not None:
            if pools_before is not None:
                meta["libvirt_pools_removed"] = remove_new_pools(lv, pools_before)
            lv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    stats = {name: bl.summary(values) for name, values in samples.items()}
    med = {name: s["median"] for name, s in stats.items()}
    vi = med.get("virt_install")
    derived = {"virt_install_over_cli": bl.ratio(vi, med["virtkit_cli"]),
               "virt_install_over_api": bl.ratio(vi, med["virtkit_api"]),
               "cli_minus_api_s": med["virtkit_cli"] - med["virtkit_api"]}
    targets = {"cli_ge_3x_faster": None if vi is None
               else derived["virt_install_over_cli"] >= 3,
               "api_ge_3x_faster": None if vi is None
               else derived["virt_install_over_api"] >= 3}
    result = {"benchmark": "install-import", "runs": runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "virtkit_command": [*cli, "install", *vk_words("NAME", Path("DISK"))],
              "virt_install_command": lv_argv("NAME", Path("DISK")),
              "stats": stats, "derived": derived, "targets": targets, "checks": checks,
              "host_per_round": hosts, "virtkitd_rss_kib": daemon_rss,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    rows = []
    for key, label in IMPORT_LABELS.items():
        if stats[key]["n"]:
            s = stats[key]
            rows.append([label, bl.fmt_s(s["median"]), bl.fmt_s(s["min"]), bl.fmt_s(s["max"]),
                         bl.fmt_x(bl.ratio(vi, s["median"])) if vi else "-"])
    bl.print_table(f"install --import -> running, median of {runs} (seconds)",
                   ["path", "median", "min", "max", "virt-install/this"], rows)
    print("targets:", json.dumps(targets))
    print("results:", bl.write_results("install-import", result))
    return result


IMPORT_LABELS = {
    "virtkit_cli": "`virtkit install --import` (CLI)",
    "virtkit_api": "`POST /v1/install`, API in-process",
    "virt_install": "`virt-install --import`",
}


# -- 2. unattended install from the test installer ISO ---------------------------------


class SerialWatch:
    """Follows a serial log: when the installer finished, when the installed system was up.

    The installed system is up when :data:`BOOT_MARKER` appears after
    :data:`DONE_MARKER` (the installer's own boot prints the marker too).  Copes with a
    log that is appended to across boots and with one truncated when QEMU restarts.
    """

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.start = start
        self.done_at: float | None = None
        self.booted_at: float | None = None
        self._offset = 0  # where the installed system's output begins
        self.failed: str | None = None

    def poll(self) -> None:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return
        now = time.perf_counter() - self.start
        if self.done_at is None:
            if FAILED_MARKER in text:
                self.failed = text[text.index(FAILED_MARKER):].splitlines()[0]
            if DONE_MARKER in text:
                self.done_at = now
                self._offset = text.index(DONE_MARKER)
            return
        if len(text) < self._offset:  # truncated: the new QEMU opened the file afresh
            self._offset = 0
        if self.booted_at is None and BOOT_MARKER in text[self._offset:]:
            self.booted_at = now


def watch_command(argv: list[str], env: dict[str, str] | None, watch: SerialWatch,
                  timeout: float) -> float:
    """Run ``argv`` while following ``watch``; seconds until the command returned."""
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None:
            watch.poll()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not return within {timeout:g}s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - watch.start
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): "
                           f"{(stderr or stdout).strip()[-800:]}")
    return elapsed


def wait_booted(watch: SerialWatch, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while watch.booted_at is None:
        watch.poll()
        if watch.failed:
            raise RuntimeError(f"the installer failed: {watch.failed}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {BOOT_MARKER} from the installed system in "
                               f"{watch.path} within {timeout:g}s")
        time.sleep(0.05)


def disk_facts(image: Path) -> dict[str, Any]:
    """What the test installer left on a (shut-off) guest disk: an MBR with one bootable
    Linux partition at sector 2048 and syslinux's boot code in front, an ext2 file system
    in it, and an extlinux.conf that boots the installed kernel with ``vk.installed=``."""
    with tempfile.TemporaryDirectory(prefix="vkbench-disk-") as tmp:
        raw = Path(tmp) / "disk.raw"
        run_checked(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])
        with open(raw, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            mbr = bytes(m[:512])
            status, ptype = mbr[446], mbr[450]
            start, sectors = struct.unpack_from("<II", mbr, 454)
            magic = bytes(m[start * 512 + 1024 + 56:start * 512 + 1024 + 58]) if start else b""
            found = m.find(f"{INSTALLED_ARG}={DEFAULT_HOSTNAME}".encode())
            entry = bytes(m[max(0, found - 200):found + 40]).decode(errors="replace") \
                if found >= 0 else None
        sfdisk = subprocess.run(["sfdisk", "-d", str(raw)], capture_output=True, text=True) \
            if shutil.which("sfdisk") else None
    syslinux = SYSLINUX_MBR.read_bytes()[:440] if SYSLINUX_MBR.exists() else b""
    facts: dict[str, Any] = {
        "signature_55aa": mbr[510:512] == b"\x55\xaa", "part1_bootable": status == 0x80,
        "part1_type": f"0x{ptype:02x}", "part1_start": start, "part1_sectors": sectors,
        "syslinux_mbr_code": bool(syslinux) and mbr[:440] == syslinux,
        "ext2_magic": magic == b"\x53\xef",
        "extlinux_entry": entry[entry.find("LABEL"):] if entry and "LABEL" in entry else entry,
        "sfdisk_d": sfdisk.stdout.strip() if sfdisk and sfdisk.returncode == 0 else None}
    facts["ok"] = bool(facts["signature_55aa"] and facts["part1_bootable"] and ptype == 0x83
                       and start == 2048 and facts["syslinux_mbr_code"]
                       and facts["ext2_magic"] and entry and "LINUX /boot/vmlinuz" in entry)
    return facts


def bench_unattended(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    installer = build_installer()
    cli = bl.virtkit_cli()
    runs, timeout = args.runs, args.timeout
    context = bl.host_context()
    lv = _libvirt(args, guest)
    workdir = Path(tempfile.mkdtemp(prefix="vkbench-inst-"))
    workdir.chmod(0o755)
    counter = itertools.count()
    phases: dict[str, dict[str, list[float]]] = {}
    checks: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, Any] = {}
    pools_before: set[str] | None = None

    def note(key: str, **values: float | None) -> None:
        for what, value in values.items():
            if value is not None:
                phases.setdefault(key, {}).setdefault(what, []).append(value)

    try:
        media = shared_dir(workdir, "media")
        iso = shared_copy(installer.iso, media)
        logs = shared_dir(workdir, "logs")

        def vk_words(name: str) -> list[str]:
            return ["--name", name, "--memory", MEMORY_MIB, "--cdrom", str(iso), "--disk",
                    "size=1", "--graphics", "none", "--nonetworks", "--wait", "-1"]

        def lv_argv(name: str, serial: Path) -> list[str]:
            return ["virt-install", "--connect", bl.LIBVIRT_URI, "--name", name,
                    "--memory", MEMORY_MIB, "--cdrom", str(iso), "--disk", "size=1,bus=virtio",
                    "--graphics", "none", "--network", "none", "--noautoconsole",
                    "--wait", "-1", "--osinfo", "generic", "--virt-type", "qemu",
                    "--serial", f"file,path={serial}", *shlex.split(args.virt_install_extra)]

        with bl.VirtkitDaemon() as vk:

            def virtkit_cli() -> float:
                name = f"vkbench-ui{next(counter)}"
                start = time.perf_counter()
                watch = SerialWatch(Path("/nonexistent"), start)  # its path once defined
                argv = [*cli, "install", *vk_words(name)]
                process = subprocess.Popen(argv, env=vk.env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
                deadline = time.monotonic() + timeout
                known = False
                try:
                    while process.poll() is None:
                        if not known:  # the console log's path, as soon as the VM exists
                            with contextlib.suppress(Exception):
                                info = vk.client.get(f"/v1/domains/{name}")
                                watch.path, known = Path(info["console_log"]), True
                        watch.poll()
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"virtkit install did not return in {timeout}s")
                        time.sleep(0.05)
                    returned = time.perf_counter() - start
                    stdout, stderr = process.communicate()
                finally:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                if process.returncode != 0:
                    raise RuntimeError(f"virtkit install failed: {(stderr or stdout)[-800:]}")
                info = vk.client.get(f"/v1/domains/{name}")
                watch.path = Path(info["console_log"])
                while True:  # the daemon starts the installed system itself
                    info = vk.client.get(f"/v1/domains/{name}")
                    if info["state"] == "running" and not info["installing"]:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: installed system not running: {info}")
                    time.sleep(0.02)
                running = time.perf_counter() - start
                wait_booted(watch, timeout)
                volume = info["disks"][0]["volume"]
                disk_path = next(v["path"] for v in vk.client.get("/v1/pools/default/volumes")
                                 if v["name"] == volume)
                boot = info["spec"].get("boot", {})
                cd = [d for d in info["spec"]["disks"] if d.get("device") == "cdrom"]
                vk.client.post(f"/v1/domains/{name}/destroy")
                facts = disk_facts(Path(disk_path))
                checks.setdefault("virtkit_cli", []).append({
                    "returned_s": returned, "disk": facts, "accelerator": info["accelerator"],
                    "vcpus": info["spec"].get("vcpus"), "memory": info["spec"].get("memory"),
                    "final_boot": boot, "final_cdrom": cd, "stdout": stdout.strip()})
                note("virtkit_cli", installer_done_s=watch.done_at, returned_s=returned,
                     installed_running_s=running, installed_booted_s=watch.booted_at)
                virtkit_remove(vk, name, volume)
                if not facts["ok"]:
                    raise RuntimeError(f"{name}: the disk is not as installed: {facts}")
                return returned

            runners: dict[str, Callable[[], float]] = {"virtkit_cli": virtkit_cli}
            if lv is not None:
                lv.__enter__()
                pools_before = libvirt_pools(lv)

                def virt_install() -> float:
                    assert lv is not None
                    name = f"vkbench-ui{next(counter)}"
                    serial = logs / f"{name}.log"
                    lv.defined.append(name)
                    start = time.perf_counter()
                    watch = SerialWatch(serial, start)
                    returned = watch_command(lv_argv(name, serial), None, watch, timeout)
                    state = lv.state(name)
                    running = time.perf_counter() - start if state == "running" else None
                    wait_booted(watch, timeout)
                    xml = lv.virsh("dumpxml", name).stdout
                    source = re.search(r"<source file='([^']+\.qcow2)'", xml)
                    if source is None:
                        raise RuntimeError(f"{name}: no qcow2 disk in its XML")
                    lv.virsh("destroy", name)
                    facts = disk_facts(Path(source.group(1)))
                    checks.setdefault("virt_install", []).append({
                        "returned_s": returned, "state_on_return": state, "disk": facts,
                        "final_os": re.findall(r"<(?:boot|type)[^>]*>", xml),
                        "vcpus_memory": re.findall(r"<(?:vcpu|memory)[^>]*>\d+<", xml),
                        "final_cdrom": re.findall(r"<disk type='file' device='cdrom'>.*?</disk>",
                                                  xml, re.S),
                        "domain_type": xml.split("'", 2)[1]})
                    note("virt_install", installer_done_s=watch.done_at, returned_s=returned,
                         installed_running_s=running, installed_booted_s=watch.booted_at)
                    libvirt_remove(lv, name, storage=True)
                    serial.unlink(missing_ok=True)
                    if not facts["ok"]:
                        raise RuntimeError(f"{name}: the disk is not as installed: {facts}")
                    return returned

                runners["virt_install"] = virt_install
            samples, hosts = interleaved(runners, runs, warmup=not args.no_warmup)
            daemon_rss = bl.proc_rss_kib(vk.pid)
        meta = _libvirt_meta(lv, args)
    finally:
        if lv is not None:
            if pools_before is not None:
                meta["libvirt_pools_removed"] = remove_new_pools(lv, pools_before)
            lv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    # The warm-up's figures are in phases/checks too: keep the timed rounds only.
    skip = 0 if args.no_warmup else 1
    phases = {key: {what: values[skip:] for what, values in per.items()}
              for key, per in phases.items()}
    checks = {key: values[skip:] for key, values in checks.items()}
    stats = {name: bl.summary(values) for name, values in samples.items()}
    phase_stats = {key: {what: bl.summary(values) for what, values in per.items()}
                   for key, per in phases.items()}
    med = {name: s["median"] for name, s in stats.items()}
    vi = med.get("virt_install")

    def booted(key: str) -> float | None:
        return phase_stats.get(key, {}).get("installed_booted_s", {}).get("median")

    derived = {"virt_install_over_cli": bl.ratio(vi, med["virtkit_cli"]),
               "booted_virt_install_over_cli": bl.ratio(booted("virt_install"),
                                                        booted("virtkit_cli"))}
    result = {"benchmark": "install-unattended", "runs": runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]), "virtkit_cli": cli,
              "virtkit_command": [*cli, "install", *vk_words("NAME")],
              "virt_install_command": lv_argv("NAME", Path("SERIAL.log")),
              "virt_install_extra": args.virt_install_extra,
              "installer_iso": str(installer.iso), "stats": stats, "phases": phase_stats,
              "derived": derived, "checks": checks, "host_per_round": hosts,
              "virtkitd_rss_kib": daemon_rss,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    rows = []
    for key, label in UNATTENDED_LABELS.items():
        if key not in phase_stats:
            continue
        p = phase_stats[key]
        rows.append([label, *(bl.fmt_s(p.get(what, {}).get("median")) for what in PHASES),
                     f"{bl.fmt_s(stats[key]['min'])}-{bl.fmt_s(stats[key]['max'])}"])
    bl.print_table(f"unattended install from the test ISO, median of {runs} (seconds from "
                   "the command's start)",
                   ["path", "installer done", "command returned", "installed running",
                    "installed booted", "returned min-max"], rows)
    print(f"virt-install/virtkit: returned {bl.fmt_x(derived['virt_install_over_cli'])}, "
          f"installed system booted {bl.fmt_x(derived['booted_virt_install_over_cli'])}")
    # Runs with extra virt-install options are explorations: kept apart from -latest.
    name = "install-unattended" + ("-explore" if args.virt_install_extra else "")
    print("results:", bl.write_results(name, result))
    return result


PHASES = ("installer_done_s", "returned_s", "installed_running_s", "installed_booted_s")
UNATTENDED_LABELS = {
    "virtkit_cli": "`virtkit install --cdrom ... --wait -1`",
    "virt_install": "`virt-install --cdrom ... --wait -1`",
}


# -- report ------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = bl.RESULTS_DIR / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(x: dict[str, Any] | None) -> str:
    if not x or not x.get("n"):
        return "-"
    return f"{x['median']:.3f} [{x['min']:.3f}\u2013{x['max']:.3f}]"


def report(_args: argparse.Namespace) -> None:
    """Markdown tables of the latest install results (for docs/benchmarks.md)."""
    imp = _load("install-import")
    if imp:
        s = imp["stats"]
        vi = s.get("virt_install", {}).get("median")
        print(f"### install --import -> running (median of {imp['runs']}, s)\n")
        print("| path | median | min | max | virt-install / this |")
        print("|---|---:|---:|---:|---:|")
        for key, label in IMPORT_LABELS.items():
            x = s.get(key)
            if not x or not x["n"]:
                print(f"| {label} | {imp.get('libvirt')} | | | |")
                continue
            print(f"| {label} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | "
                  f"{bl.fmt_x(bl.ratio(vi, x['median'])) if vi else '-'} |")
        print(f"\nderived {imp['derived']}; targets {imp['targets']}\n")
    un = _load("install-unattended")
    if un:
        p = un["phases"]
        print(f"### unattended install from the test ISO (median [min\u2013max] of {un['runs']}, "
              "s from the command's start)\n")
        print("| path | installer done | command returned | installed system running "
              "| installed system booted |")
        print("|---|---:|---:|---:|---:|")
        for key, label in UNATTENDED_LABELS.items():
            if key in p:
                print(f"| {label} | " + " | ".join(_cell(p[key].get(w)) for w in PHASES)
                      + " |")
        print(f"\nderived {un['derived']}")
        for key, rows in un["checks"].items():
            oks = [row["disk"]["ok"] for row in rows]
            print(f"\n{key}: disk as installed in {sum(oks)}/{len(oks)} runs; "
                  f"first: {rows[0]['disk'] if rows else '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip virt-install")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host "
                        "(no other QEMU running, 1-min load < 1.5)")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="leave /dev/kvm permissions alone (see benchlib.KvmPermissions)")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("import", help="install --import vs virt-install --import")
    p.add_argument("--runs", type=int, default=7)
    p = sub.add_parser("unattended", help="a whole unattended install from the test ISO")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds for one install")
    p.add_argument("--no-warmup", action="store_true", help="no untimed first install")
    p.add_argument("--virt-install-extra", default="", metavar="ARGS",
                   help="more virt-install options, e.g. '--machine q35 --cpu maximum' "
                   "(exploration: the default compares each tool's own defaults)")
    sub.add_parser("all", help="import and unattended with their defaults")
    sub.add_parser("report", help="markdown tables from results/install-*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    if os.geteuid() != 0 and not args.no_libvirt:
        print("not root: virt-install needs qemu:///system; use --no-libvirt", file=sys.stderr)
    bl.run_benchmarks("install", {"import": bench_import, "unattended": bench_unattended}, args,
                      {"import": {"runs": 7},
                       "unattended": {"runs": 3, "timeout": 600.0, "no_warmup": False,
                                      "virt_install_extra": ""}})



if __name__ == "__main__":
    main()
