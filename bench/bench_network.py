#!/usr/bin/env python3
"""Benchmarks of virtkit's virtual networks, all inside network namespaces of their own.

    python bench/bench_network.py throughput  # guest-to-guest TCP on one isolated network:
                                              # virtio vs e1000 vs rtl8139 NICs
    python bench/bench_network.py dhcp        # net-start -> a working DHCP lease:
                                              # virtkit vs libvirt's virsh net-start
    python bench/bench_network.py all         # both, in that order
    python bench/bench_network.py report      # markdown tables from results/network-*-latest.json

Nothing here touches the host's network.  Every daemon runs inside a fresh network
namespace (``ip netns exec NS python -m virtkit.api.daemon``, as
tests/real/test_networks.py does), so its bridges, taps, nftables rules and dnsmasq
live there; the namespaces have no link to the outside, so no guest packet can leave
the machine.  libvirtd is confined the same way and, in addition, to a private mount
namespace in which /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt
and /var/log/libvirt are folders of the benchmark (so it sees none of the host's
libvirt networks, domains or pools, and a host libvirtd is not disturbed).

Each benchmark prints a table and writes results/network-NAME-<time>.json (and
-latest.json).  Run as root.  Everything started is stopped by PID, and the
namespaces and folders are removed, in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from virtkit.cli.wsclient import OP_BINARY, OP_CLOSE, WebSocket
from virtkit.images.tinyguest import BOOT_MARKER, TinyGuest

MODELS = ("virtio", "e1000", "rtl8139")
GUEST_DRIVERS = {"virtio": "virtio_net", "e1000": "e1000", "rtl8139": "8139cp"}
PORT = 5001
BLOCK = 64 * 1024
BOOT_TIMEOUT = 180.0
NO_LIBVIRT = "libvirt not installed"

# Copied from tests/real/test_networks.py: configure eth0 from a DHCP lease, print it.
DHCP_SCRIPT = ("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ifconfig $interface $ip netmask "
               "$subnet && route add default gw $router\\nexit 0\\n' > /tmp/dhcp.sh; "
               "chmod +x /tmp/dhcp.sh; ifconfig eth0 up; "
               "udhcpc -i eth0 -n -q -t 10 -s /tmp/dhcp.sh >/dev/null 2>&1; "
               "echo GOT=$(ifconfig eth0 | sed -n 's/.*inet addr:\\([0-9.]*\\).*/\\1/p')=; "
               "echo dhcp-$((40+2))-done")


# -- namespaces ---------------------------------------------------------------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def pid_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_netns(inode: int, program: str) -> list[int]:
    """PIDs of ``program`` processes living in the network namespace with ``inode``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if os.path.basename(argv0.decode(errors="replace")) == program \
                and pid_netns_inode(pid) == inode:
            found.append(pid)
    return found


class Namespaces:
    """Network namespaces ``vkbn-<tag>-<role>``, each with only ``lo`` up; deleted on close.

    Before a namespace is deleted, any dnsmasq still running in it (by its netns inode,
    so only ours) is stopped: it would otherwise keep the namespace alive.
    """

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.names: list[str] = []

    def add(self, role: str) -> str:
        name = f"vkbn-{self.tag}-{role}"
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for name in reversed(self.names):
            with contextlib.suppress(OSError):
                inode = netns_inode(name)
                for pid in pids_in_netns(inode, "dnsmasq"):
                    bl._stop_pid(pid, timeout=3)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.names.clear()


# -- virtkit inside a namespace --------------------------------------------------------


class NetnsDaemon(bl.VirtkitDaemon):
    """A private virtkitd started inside network namespace ``netns``."""

    def __init__(self, netns: str) -> None:
        super().__init__()
        self.netns = netns

    def start(self) -> NetnsDaemon:
        read_fd, write_fd = os.pipe()
        stderr = open(self.root / "virtkitd.stderr", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "virtkit.api.daemon",
                 "--root", str(self.root), "--ready-fd", str(write_fd),
                 "--log-level", self._log_level],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=[write_fd],
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
            stderr.close()
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"virtkitd did not start: "
                               f"{(self.root / 'virtkitd.stderr').read_text(errors='replace')}")
        return self

    def __enter__(self) -> NetnsDaemon:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*bl.virtkit_cli(), *args], env=self.env, capture_output=True,
                             text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"virtkit {' '.join(args)}: {out.stderr.strip()}")
        return out

    def stop_networks(self) -> None:
        """net-destroy every active network, then stop any dnsmasq of ours still running."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                for row in self.client.get("/v1/networks"):
                    if row.get("state") == "active":
                        with contextlib.suppress(Exception):
                            self.client.post(f"/v1/networks/{row['name']}/destroy")
        for pidfile in (self.root / "networks").glob("*/dnsmasq.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                if str(self.root) in Path(f"/proc/{pid}/cmdline").read_text():
                    bl._stop_pid(pid, timeout=3)

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self._destroy_domains()
            self.stop_networks()
        finally:
            super().close()

    def _destroy_domains(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for row in self.client.get("/v1/domains"):
            if row["state"] not in ("shutoff", "crashed") or row.get("pid"):
                with contextlib.suppress(Exception):
                    self.client.post(f"/v1/domains/{row['name']}/destroy")

    # -- the serial console ---------------------------------------------------------

    def console_log(self, name: str) -> str:
        data = self.client.get(f"/v1/domains/{name}/console/log")
        return data.decode(errors="replace") if isinstance(data, bytes) else ""

    def console_run(self, name: str, command: str, expect: str, timeout: float = 60.0) -> str:
        """Type ``command`` on the serial console; the output once ``expect`` shows."""
        ws = WebSocket.open(self.paths.socket, f"/v1/domains/{name}/console?force=1")
        try:
            ws.send(f"{command}\n".encode())
            seen = b""
            deadline = time.monotonic() + timeout
            ws.sock.settimeout(1.0)
            while expect.encode() not in seen:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"console of {name} never showed {expect!r}: "
                                       f"{seen[-600:]!r}")
                try:
                    opcode, payload = ws.receive()
                except TimeoutError:
                    continue
                if opcode == OP_CLOSE:
                    raise RuntimeError(f"console of {name} closed: {payload!r}")
                if opcode == OP_BINARY:
                    seen += payload
            return seen.decode(errors="replace")
        finally:
            ws.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def check_guest_drivers(guest: TinyGuest) -> list[str]:
    """The tiny guest's module list; refuses a build without the emulated NICs' drivers."""
    manifest = json.loads((guest.kernel.parent / "manifest.json").read_text())
    modules = list(manifest.get("modules", []))
    missing = [d for d in GUEST_DRIVERS.values() if d not in modules]
    if missing:
        raise RuntimeError(f"the tiny guest lacks NIC drivers {missing}: benchmark a virtkit "
                           "whose tinyguest.GUEST_MODULES has e1000 and 8139cp")
    return modules


# -- 1. guest-to-guest throughput ----------------------------------------------------


def _nic_device_args(pid: int) -> list[str]:
    argv = bl.proc_argv(pid)
    return [argv[i + 1] for i, arg in enumerate(argv[:-1])
            if arg in ("-device", "-netdev") and ("netdev" in argv[i + 1]
                                                  or argv[i + 1].startswith("tap,"))]


METHODS = ("http", "nc")
METHOD_LABELS = {
    "http": "busybox httpd (sendfile) -> wget -O /dev/null",
    "nc": "dd if=/dev/zero bs=64k | nc  ->  nc -l | wc -c",
}
HTTP_FILE_BLOCKS = 256  # the served file: 256 x 64 KiB = 16 MiB of zeros in the guest's RAM


class Pair:
    """Two guests with the same NIC model: ``tx`` sends (dd | nc, or serves HTTP), ``rx``
    receives (nc -l, or wget).  Times come from the guest that finishes the transfer,
    from /proc/uptime (10 ms steps; busybox date has no %N)."""

    def __init__(self, vk: NetnsDaemon, model: str, rx: str, tx: str,
                 addresses: dict[str, str], timeout: float) -> None:
        self.vk, self.model, self.rx, self.tx = vk, model, rx, tx
        self.rx_ip, self.tx_ip = addresses[rx], addresses[tx]
        self.timeout = timeout

    def _sample(self, out: str, nbytes: int, host_s: float) -> dict[str, Any]:
        start, end, rc = re.findall(r"XF=([\d.]+),([\d.]+),(\d+)=", out)[-1]
        if rc != "0":
            raise RuntimeError(f"{self.model}: the transfer failed (status {rc}): {out[-400:]!r}")
        seconds = float(end) - float(start)
        return {"bytes": nbytes, "guest_s": seconds, "host_s": host_s,
                "mib_s": nbytes / seconds / 2**20, "loadavg1": bl.loadavg()[0],
                "foreign_qemu": bl.foreign_qemu_count([str(self.vk.root)])}

    def nc(self, count: int, *, loopback: bool = False) -> dict[str, Any]:
        """``count`` x 64 KiB through busybox nc (rx -> /dev/null via wc -c, which checks)."""
        receiver = self.tx if loopback else self.rx
        target = "127.0.0.1" if loopback else self.rx_ip
        self.vk.console_run(receiver, f"rm -f /tmp/rx; (nc -l -p {PORT} | wc -c > /tmp/rx) & "
                                      "echo listen-$((6*7))", "listen-42")
        time.sleep(0.3)  # the guest's nc binds its port
        command = (f"S=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs={BLOCK} "
                   f"count={count} 2>/dev/null | nc {target} {PORT}; R=$?; "
                   "E=$(cut -d' ' -f1 /proc/uptime); echo XF=$S,$E,$R=-end$((2+3))")
        host_start = time.perf_counter()
        out = self.vk.console_run(self.tx, command, "-end5", timeout=self.timeout)
        sample = self._sample(out, count * BLOCK, time.perf_counter() - host_start)
        got = self.vk.console_run(receiver, "for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/rx ] "
                                            "&& break; sleep 0.2; done; echo RX=$(cat /tmp/rx)="
                                            "-rx$((3+4))", "-rx7")
        received = int((re.findall(r"RX=(\d+)=", got) or ["0"])[-1])
        if received != count * BLOCK:
            raise RuntimeError(f"{self.model}: {received} of {count * BLOCK} bytes arrived")
        return sample

    def serve(self) -> None:
        """Put the 16 MiB file in tx's RAM and start busybox httpd (it uses sendfile)."""
        self.vk.console_run(self.tx, f"mkdir -p /tmp/www; dd if=/dev/zero of=/tmp/www/f bs={BLOCK} "
                                     f"count={HTTP_FILE_BLOCKS} 2>/dev/null; httpd -p 8080 -h "
                                     "/tmp/www && echo httpd-$((6*7))", "httpd-42")

    def http(self, repeats: int, *, loopback: bool = False) -> dict[str, Any]:
        """``repeats`` fetches of the file by rx's wget (tx's own, over lo, if loopback)."""
        client = self.tx if loopback else self.rx
        url = f"http://{'127.0.0.1' if loopback else self.tx_ip}:8080/f"
        command = (f"S=$(cut -d' ' -f1 /proc/uptime); R=0; for i in $(seq {repeats}); do "
                   f"wget -q -O /dev/null {url} || R=1; done; "
                   "E=$(cut -d' ' -f1 /proc/uptime); echo XF=$S,$E,$R=-end$((2+3))")
        host_start = time.perf_counter()
        out = self.vk.console_run(client, command, "-end5", timeout=self.timeout)
        return self._sample(out, repeats * HTTP_FILE_BLOCKS * BLOCK,
                            time.perf_counter() - host_start)

    def run(self, method: str, amount: int, *, loopback: bool = False) -> dict[str, Any]:
        return self.http(amount, loopback=loopback) if method == "http" else \
            self.nc(amount, loopback=loopback)


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    guest = bl.tiny_guest()
    modules = check_guest_drivers(guest)
    models = [m for m in MODELS if m in args.models.split(",")]
    methods = [m for m in METHODS if m in args.methods.split(",")]
    if "virtio" not in models:
        raise SystemExit("--models must include virtio (the ratios are to virtio)")
    context = bl.host_context()
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        method: {m: [] for m in models} for method in methods}
    loopback: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    setup: dict[str, Any] = {}
    amounts: dict[str, dict[str, int]] = {method: {} for method in methods}
    calibration: dict[str, dict[str, Any]] = {method: {} for method in methods}
    with Namespaces() as nss:
        ns = nss.add("tp")
        with NetnsDaemon(ns) as vk:
            t0 = time.perf_counter()
            vk.cli("net-define-as", "tput", "--mode", "isolated", "--subnet", args.subnet)
            vk.cli("net-start", "tput")
            names = {m: (f"{m}-rx", f"{m}-tx") for m in models}
            for m, duo in names.items():
                for name in duo:
                    spec = bl.tiny_spec(name, guest, args.memory)
                    spec["nics"] = [{"network": "tput", "model": m}]
                    vk.client.post("/v1/domains", {"spec": spec})
            for duo in names.values():
                for name in duo:
                    vk.client.post(f"/v1/domains/{name}/start")
            for duo in names.values():
                for name in duo:
                    wait_until(lambda name=name: BOOT_MARKER in vk.console_log(name),  # type: ignore[misc]
                               BOOT_TIMEOUT, f"{name} to boot")
            setup["boot_all_s"] = time.perf_counter() - t0
            time.sleep(1.0)
            addresses: dict[str, str] = {}
            vms: dict[str, Any] = {}
            for duo in names.values():
                for name in duo:
                    output = vk.console_run(name, DHCP_SCRIPT, "dhcp-42-done", timeout=90)
                    found = re.findall(r"GOT=(\d+\.\d+\.\d+\.\d+)=", output)
                    if not found:
                        raise RuntimeError(f"{name} got no DHCP lease: {output[-400:]!r}")
                    addresses[name] = found[-1]
                    out = vk.console_run(name, "echo DRV=$(basename $(readlink "
                                         "/sys/class/net/eth0/device/driver))=-d$((2*4))", "-d8")
                    pid = vk.client.get(f"/v1/domains/{name}")["pid"]
                    vms[name] = {"ip": addresses[name],
                                 "guest_driver": re.findall(r"DRV=([\w-]+)=", out)[-1],
                                 "qemu_nic_args": _nic_device_args(pid)}
                    if vms[name]["guest_driver"] != GUEST_DRIVERS[name.split("-")[0]]:
                        raise RuntimeError(f"{name}: eth0 is driven by "
                                           f"{vms[name]['guest_driver']}")
            pairs = {m: Pair(vk, m, rx, tx, addresses, args.transfer_timeout)
                     for m, (rx, tx) in names.items()}
            if "http" in methods:
                for pair in pairs.values():
                    pair.serve()
            setup["boot_dhcp_serve_s"] = time.perf_counter() - t0

            # Calibration (also the untimed warm-up): per model and method, pick an
            # amount that takes about --target-s seconds.
            for method in methods:
                unit = HTTP_FILE_BLOCKS * BLOCK if method == "http" else BLOCK
                probe_amount = 1 if method == "http" else args.probe_blocks
                for m, pair in pairs.items():
                    cold = pair.run(method, probe_amount)  # the first transfer is slower
                    probe = pair.run(method, probe_amount)
                    calibration[method][m] = {"cold": cold, "warm": probe}
                    rate = probe["bytes"] / max(probe["guest_s"], 0.01)
                    amounts[method][m] = max(probe_amount, round(args.target_s * rate / unit))
                    print(f"  calibration {method} {m}: {probe['mib_s']:.1f} MiB/s -> "
                          f"{amounts[method][m] * unit / 2**20:.0f} MiB per run", flush=True)
            for round_no in range(args.runs):  # interleaved: noise hits every model alike
                for method in methods:
                    for m, pair in pairs.items():
                        samples[method][m].append(pair.run(method, amounts[method][m]))
                print(f"  round {round_no + 1}/{args.runs}: " + "  ".join(
                    f"{method}/{m}={samples[method][m][-1]['mib_s']:.1f}"
                    for method in methods for m in models) + " MiB/s", flush=True)
            # Reference without any NIC: both ends inside the virtio sender, over lo.
            for method in methods:
                for _ in range(args.loopback_runs):
                    loopback[method].append(pairs["virtio"].run(
                        method, amounts[method]["virtio"], loopback=True))
            qemu_cpu = _qemu_cpu_s(vk)

    def stat(values: list[dict[str, Any]]) -> dict[str, Any]:
        return {"mib_s": bl.summary([s["mib_s"] for s in values]),
                "guest_s": bl.summary([s["guest_s"] for s in values]),
                "host_s": bl.summary([s["host_s"] for s in values]),
                "bytes_per_run": values[0]["bytes"] if values else None}

    stats = {method: {m: stat(samples[method][m]) for m in models} for method in methods}
    loop_stats = {method: stat(loopback[method]) for method in methods}
    derived = {method: {m: {
        "throughput_vs_virtio": bl.ratio(stats[method][m]["mib_s"]["median"],
                                         stats[method]["virtio"]["mib_s"]["median"]),
        "virtio_faster_by": bl.ratio(stats[method]["virtio"]["mib_s"]["median"],
                                     stats[method][m]["mib_s"]["median"])}
        for m in models} for method in methods}
    result = {"benchmark": "network-throughput", "runs": args.runs, "context": context,
              "command": " ".join([sys.executable, *sys.argv]), "netns": "fresh, no uplink",
              "network": {"mode": "isolated", "subnet": args.subnet},
              "methods": {m: METHOD_LABELS[m] for m in methods},
              "vm_memory_mib": args.memory, "guest_modules": modules, "vms": vms,
              "setup": setup, "calibration": calibration, "stats": stats,
              "loopback_virtio_guest": loop_stats, "derived": derived,
              "samples": samples, "loopback_samples": loopback, "qemu_cpu_s_at_end": qemu_cpu,
              "context_after": {"loadavg": bl.loadavg(),
                                "foreign_qemu_processes": bl.foreign_qemu_count()}}
    for method in methods:
        rows = []
        for m in models:
            s = stats[method][m]
            rows.append([m, f"{s['mib_s']['median']:.1f}", f"{s['mib_s']['min']:.1f}",
                         f"{s['mib_s']['max']:.1f}", f"{s['guest_s']['median']:.2f}",
                         f"{s['bytes_per_run'] / 2**20:.0f}",
                         bl.fmt_x(derived[method][m]["throughput_vs_virtio"])])
        lo = loop_stats[method]
        if lo["bytes_per_run"]:
            rows.append(["(lo inside one guest)", f"{lo['mib_s']['median']:.1f}",
                         f"{lo['mib_s']['min']:.1f}", f"{lo['mib_s']['max']:.1f}",
                         f"{lo['guest_s']['median']:.2f}", f"{lo['bytes_per_run'] / 2**20:.0f}",
                         "-"])
        bl.print_table(f"guest-to-guest TCP, {METHOD_LABELS[method]}, median of {args.runs} "
                       "(MiB/s)", ["NIC model", "median", "min", "max", "s/run", "MiB/run",
                                   "x virtio"], rows)
    print("results:", bl.write_results("network-throughput", result))
    return result


def _qemu_cpu_s(vk: bl.VirtkitDaemon) -> dict[str, float]:
    clk = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in vk.qemu_pids():
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[str(pid)] = (int(fields[11]) + int(fields[12])) / clk
    return out


# -- 2. net-start -> DHCP lease ----------------------------------------------------------


LV_NETWORK_XML = """<network{ns}>
  <name>{name}</name>
  <bridge name='{bridge}'{stp}/>
  <ip address='{gateway}' netmask='255.255.255.0'>
    <dhcp><range start='{start}' end='{end}'/></dhcp>
  </ip>{extra}
</network>
"""
DNSMASQ_NS = " xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'"


class NetnsLibvirt:
    """libvirtd confined to network namespace ``netns`` and a private mount namespace.

    /etc/libvirt is a copy of the host's *.conf files and nwfilter rules only (no
    networks, domains, pools or secrets), with the sockets moved to our folder so
    ``virsh -c qemu:///system?socket=...`` reaches it from outside.  /run/libvirt,
    /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are empty folders of ours.
    """

    MOUNTS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
              "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="vkbench-lv-net-"))
        self.pid: int | None = None
        self.networks: list[str] = []

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.dir / 'sock' / 'libvirt-sock'}"

    def __enter__(self) -> NetnsLibvirt:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for sub in (*self.MOUNTS, "sock"):
            (self.dir / sub).mkdir(mode=0o755)
            (self.dir / sub).chmod(0o755)
        etc = self.dir / "etc"
        for conf in Path("/etc/libvirt").glob("*.conf"):
            shutil.copyfile(conf, etc / conf.name)
        if Path("/etc/libvirt/nwfilter").is_dir():
            shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter")
        for sub in ("qemu/networks/autostart", "storage", "secrets"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        with open(etc / "libvirtd.conf", "a") as handle:
            handle.write(f'\n# vkbench: sockets and log in the benchmark\'s folder\n'
                       f'unix_sock_dir = "{self.dir / "sock"}"\n'
                       f'log_outputs = "3:file:{self.dir / "libvirtd.log"}"\n')
        mounts = " && ".join(f"mkdir -p {target} && mount --bind {self.dir / sub} {target}"
                             for sub, target in self.MOUNTS.items())
        pidfile = self.dir / "libvirtd.pid"
        subprocess.run(["ip", "netns", "exec", self.netns, "unshare", "--mount",
                        "--propagation", "private", "sh", "-c",
                        f"{mounts} && exec libvirtd -d --pid-file {pidfile}"],
                       check=True, capture_output=True, timeout=60)
        self.pid = wait_until(lambda: bl._pidfile(pidfile), 30, "libvirtd's pid file", 0.05)
        if pid_netns_inode(self.pid) != netns_inode(self.netns):
            raise RuntimeError("libvirtd is not in the benchmark's network namespace")
        wait_until(lambda: self.virsh("uri", check=False).returncode == 0, 60,
                   "libvirtd to answer", 0.1)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                             timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {out.stderr.strip()}")
        return out

    def define_network(self, name: str, xml: str) -> None:
        path = self.dir / f"{name}.xml"
        path.write_text(xml)
        self.networks.append(name)
        self.virsh("net-define", str(path))

    def close(self) -> None:
        try:
            if self.pid is not None:
                for name in self.networks:
                    with contextlib.suppress(Exception):
                        self.virsh("net-destroy", name, check=False)
                        self.virsh("net-undefine", name, check=False)
        finally:
            inode = None
            with contextlib.suppress(OSError):
                inode = netns_inode(self.netns)
            if self.pid is not None and str(self.dir) in " ".join(bl.proc_argv(self.pid)
                                                                   if bl._pid_alive(self.pid)
                                                                   else []):
                bl._stop_pid(self.pid)
            self.pid = None
            if inode is not None:  # a dnsmasq libvirt left in our namespace
                for pid in pids_in_netns(inode, "dnsmasq"):
                    bl._stop_pid(pid, timeout=3)
            shutil.rmtree(self.dir, ignore_errors=True)


def _dhcp_client(nss: Namespaces, client_ns: str) -> tuple[Path, Callable[..., dict[str, Any]]]:
    """A per-run DHCP client: a fresh veth pair (new MAC) from ``client_ns`` into the
    server's namespace.  Returns the lease script folder and ``measure(server_ns, bridge,
    start_cmd)``."""
    folder = Path(tempfile.mkdtemp(prefix="vkbench-dhcp-"))
    script = folder / "lease.sh"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {folder}/lease\n"
                      "exit 0\n")
    script.chmod(0o755)
    counter = iter(range(10**6))

    def measure(server_ns: str, bridge: str, start_cmd: list[str],
                env: dict[str, str] | None = None) -> dict[str, Any]:
        n = next(counter)
        client, peer = f"vkn{nss.tag}c{n}", f"vkn{nss.tag}p{n}"
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        (folder / "lease").unlink(missing_ok=True)
        ip("link", "add", client, "netns", client_ns, "address", mac, "type", "veth",
           "peer", "name", peer, "netns", server_ns)
        try:
            ip("-n", client_ns, "link", "set", client, "up")
            t0 = time.perf_counter()
            started = subprocess.run(start_cmd, env=env, capture_output=True, text=True,
                                     timeout=120)
            t1 = time.perf_counter()
            if started.returncode != 0:
                raise RuntimeError(f"{' '.join(start_cmd[:3])}: {started.stderr.strip()}")
            ip("-n", server_ns, "link", "set", peer, "master", bridge, "up")
            t2 = time.perf_counter()
            dhcp = subprocess.run(["ip", "netns", "exec", client_ns, "busybox", "udhcpc",
                                   "-i", client, "-n", "-q", "-t", "30", "-T", "1",
                                   "-s", str(script)], capture_output=True, text=True,
                                  timeout=60)
            t3 = time.perf_counter()
            lease = (folder / "lease").read_text().strip() if (folder / "lease").exists() \
                else None
            if dhcp.returncode != 0 or not lease:
                raise RuntimeError(f"no lease on {bridge}: {dhcp.stderr.strip()[-400:]}")
            return {"total_s": t3 - t0, "net_start_s": t1 - t0, "attach_s": t2 - t1,
                    "dhcp_s": t3 - t2, "discovers": dhcp.stderr.count("broadcasting discover"),
                    "lease": lease, "mac": mac}
        finally:
            subprocess.run(["ip", "-n", client_ns, "link", "del", client], capture_output=True,
                           check=False)

    return folder, measure


def bench_dhcp(args: argparse.Namespace) -> dict[str, Any]:
    context = bl.host_context()
    use_libvirt = not args.no_libvirt and bl.libvirt_installed()
    subnet_base = args.subnet.rsplit(".", 2)[0]  # e.g. 10.78 of 10.78.0.0/24
    gateway, start, end = f"{subnet_base}.0.1", f"{subnet_base}.0.2", f"{subnet_base}.0.254"
    samples: dict[str, list[dict[str, Any]]] = {"virtkit": []}
    meta: dict[str, Any] = {"libvirt": "used" if use_libvirt else
                            ("skipped" if args.no_libvirt else NO_LIBVIRT)}
    folder: Path | None = None
    with Namespaces() as nss, contextlib.ExitStack() as stack:
        try:
            client_ns = nss.add("cl")
            vk = stack.enter_context(NetnsDaemon(nss.add("vk")))
            vk.cli("net-define-as", "dhcpnet", "--mode", "isolated", "--subnet", args.subnet)
            vk_bridge = json.loads(vk.cli("net-info", "dhcpnet", "--json").stdout)["bridge"]
            folder, measure = _dhcp_client(nss, client_ns)
            cli = bl.virtkit_cli()

            def run_virtkit() -> dict[str, Any]:
                try:
                    return measure(vk.netns, vk_bridge, [*cli, "net-start", "dhcpnet"], vk.env)
                finally:
                    vk.cli("net-destroy", "dhcpnet", check=False)

            runners: dict[str, Callable[[], dict[str, Any]]] = {"virtkit": run_virtkit}
            if use_libvirt:
                lv = stack.enter_context(NetnsLibvirt(nss.add("lv")))
                variants = {
                    # libvirt's defaults: STP on (the kernel raises delay 0 to its 2 s
                    # minimum) and dnsmasq's 3 s ping check before each new offer
                    "libvirt_default": ("vkb-default", "virbr77", "", "", ""),
                    "libvirt_stp_off": ("vkb-stpoff", "virbr78", " stp='off'", "", ""),
                    # the same settings as virtkit: no STP and dnsmasq's no-ping
                    "libvirt_like_virtkit": (
                        "vkb-likevk", "virbr79", " stp='off'", DNSMASQ_NS,
                        "\n  <dnsmasq:options><dnsmasq:option value='no-ping'/>"
                        "</dnsmasq:options>"),
                }
                xmls = {}
                for key, (name, bridge, stp, ns_attr, extra) in variants.items():
                    if key not in args.libvirt_variants.split(","):
                        continue
                    xmls[key] = LV_NETWORK_XML.format(
                        ns=ns_attr, name=name, bridge=bridge, stp=stp, gateway=gateway,
                        start=start, end=end, extra=extra)
                    lv.define_network(name, xmls[key])

                    def run_lv(name: str = name, bridge: str = bridge) -> dict[str, Any]:
                        try:
                            return measure(lv.netns, bridge,
                                           ["virsh", "-c", lv.uri, "net-start", name])
                        finally:
                            lv.virsh("net-destroy", name, check=False)

                    runners[key] = run_lv
                    samples[key] = []
                meta.update({"libvirt_network_xml": xmls,
                             "libvirt_confinement": "ip netns exec + unshare --mount; private "
                             "/etc/libvirt (conf files only), /run, /var/lib, /var/cache, "
                             "/var/log/libvirt; bridge, iptables rules and dnsmasq in the "
                             "namespace",
                             "libvirtd_version": bl._version_of(["libvirtd", "--version"])})
            for runner in runners.values():  # warm-up round, not counted
                runner()
            for round_no in range(args.runs):  # interleaved: noise hits every column alike
                for key, runner in runners.items():
                    sample = runner()
                    sample["loadavg1"] = bl.loadavg()[0]
                    samples[key].append(sample)
                print(f"  round {round_no + 1}/{args.runs}: " + "  ".join(
                    f"{k}={samples[k][-1]['total_s']:.3f}s" for k in runners), flush=True)
            vk_conf = next((vk.root / "networks").glob("*/dnsmasq.conf")).read_text()
            meta["virtkit_dnsmasq_conf"] = vk_conf
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    stats = {key: {part: bl.summary([s[part] for s in values])
                   for part in ("total_s", "net_start_s", "attach_s", "dhcp_s", "discovers")}
             for key, values in samples.items()}
    vk_total = stats["virtkit"]["total_s"]["median"]
    derived = {key: {"over_virtkit": bl.ratio(stats[key]["total_s"]["median"], vk_total)}
               for key in stats}
    result = {"benchmark": "network-dhcp", "runs": args.runs, "context": context, **meta,
              "command": " ".join([sys.executable, *sys.argv]),
              "network": {"mode": "isolated", "subnet": args.subnet},
              "client": "veth from a third namespace, busybox udhcpc -n -q -t 30 -T 1",
              "stats": stats, "derived": derived, "samples": samples}
    labels = {"virtkit": "virtkit net-start", "libvirt_default": "virsh net-start (defaults)",
              "libvirt_stp_off": "virsh net-start (stp='off')",
              "libvirt_like_virtkit": "virsh net-start (stp off, no-ping)"}
    rows = []
    for key, s in stats.items():
        rows.append([labels[key], bl.fmt_s(s["total_s"]["median"]), bl.fmt_s(s["total_s"]["min"]),
                     bl.fmt_s(s["total_s"]["max"]), bl.fmt_s(s["net_start_s"]["median"]),
                     bl.fmt_s(s["dhcp_s"]["median"]), f"{s['discovers']['median']:g}",
                     bl.fmt_x(derived[key]["over_virtkit"])])
    bl.print_table(f"net-start -> DHCP lease, median of {args.runs} (seconds)",
                   ["path", "median", "min", "max", "net-start", "udhcpc", "discovers",
                    "x virtkit"], rows)
    print("results:", bl.write_results("network-dhcp", result))
    return result


# -- report ------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = bl.RESULTS_DIR / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(_args: argparse.Namespace) -> None:
    """Markdown tables of the latest results (for docs/benchmarks.md)."""
    tp = _load("network-throughput")
    if tp:
        for method, per_model in tp["stats"].items():
            print(f"### guest-to-guest TCP, {tp['methods'][method]} "
                  f"(median of {tp['runs']}, MiB/s)\n")
            print("| NIC model | guest driver | median | min | max | s per run | MiB per run | "
                  "x virtio |")
            print("|---|---|---:|---:|---:|---:|---:|---:|")
            for m, s in per_model.items():
                driver = tp["vms"].get(f"{m}-tx", {}).get("guest_driver", "?")
                x = s["mib_s"]
                print(f"| {m} | {driver} | {x['median']:.1f} | {x['min']:.1f} | "
                      f"{x['max']:.1f} | {s['guest_s']['median']:.2f} | "
                      f"{s['bytes_per_run'] / 2**20:.0f} | "
                      f"{bl.fmt_x(tp['derived'][method][m]['throughput_vs_virtio'])} |")
            lo = tp["loopback_virtio_guest"][method]["mib_s"]
            print(f"| (lo inside one guest) | - | {lo['median']:.1f} | {lo['min']:.1f} | "
                  f"{lo['max']:.1f} | | | - |\n")
        print(f"setup {tp['setup']}\n")
    dh = _load("network-dhcp")
    if dh:
        print(f"### net-start -> DHCP lease (median of {dh['runs']}, seconds)\n")
        print("| path | median | min | max | net-start | attach | udhcpc | discovers | "
              "x virtkit |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, s in dh["stats"].items():
            t = s["total_s"]
            print(f"| {key} | {t['median']:.3f} | {t['min']:.3f} | {t['max']:.3f} | "
                  f"{s['net_start_s']['median']:.3f} | {s['attach_s']['median']:.3f} | "
                  f"{s['dhcp_s']['median']:.3f} | {s['discovers']['median']:g} | "
                  f"{bl.fmt_x(dh['derived'][key]['over_virtkit'])} |")
        print(f"\nlibvirt: {dh.get('libvirt')}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-libvirt", action="store_true", help="skip the libvirt columns")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark wait up to SECONDS for a quiet host")
    parser.add_argument("--libvirt-as-installed", action="store_true",
                        help="accepted for run_all.sh; the network benchmarks do not use "
                        "/dev/kvm")
    parser.add_argument("--no-prime", action="store_true",
                        help="accepted for run_all.sh (a bench_storage.py option); ignored")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("throughput", help="guest-to-guest TCP: virtio vs e1000 vs rtl8139")
    _throughput_options(p)
    p = sub.add_parser("dhcp", help="net-start -> DHCP lease: virtkit vs virsh")
    _dhcp_options(p)
    p = sub.add_parser("all", help="throughput and dhcp with their defaults")
    _throughput_options(p)
    _dhcp_options(p, subnet=False)
    sub.add_parser("report", help="markdown tables from results/network-*-latest.json")
    args = parser.parse_args()
    if args.bench == "report":
        report(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmarks create network namespaces")
    bl.run_benchmarks("network", {"throughput": bench_throughput, "dhcp": bench_dhcp}, args,
                      {"throughput": {}, "dhcp": {"subnet": "10.78.0.0/24"}})


def _throughput_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated NIC models")
    p.add_argument("--target-s", type=float, default=3.0,
                   help="seconds one transfer should take (sizes are calibrated per model)")
    p.add_argument("--probe-blocks", type=int, default=64, help="64 KiB blocks to calibrate nc")
    p.add_argument("--methods", default=",".join(METHODS), help="http and/or nc")
    p.add_argument("--loopback-runs", type=int, default=3,
                   help="runs over lo inside the virtio sender (no NIC), for reference")
    p.add_argument("--memory", type=int, default=256, help="MiB per VM")
    p.add_argument("--subnet", default="10.79.0.0/24")
    p.add_argument("--transfer-timeout", type=float, default=120.0)


def _dhcp_options(p: argparse.ArgumentParser, subnet: bool = True) -> None:
    if subnet:
        p.add_argument("--subnet", default="10.78.0.0/24")
        p.add_argument("--runs", type=int, default=5)
    p.add_argument("--libvirt-variants",
                   default="libvirt_default,libvirt_stp_off,libvirt_like_virtkit",
                   help="which libvirt networks to time (comma-separated)")



if __name__ == "__main__":
    main()
