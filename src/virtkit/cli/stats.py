"""Statistics and tuning commands: domstats, vcpuinfo, vcpupin, emulatorpin, nodedev-list,
host ksm, host capacity, host numa."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client

#: virsh's numbers for state.state (virDomainState)
STATE_NUMBERS = {"running": 1, "paused": 3, "in shutdown": 4, "shutoff": 5, "crashed": 6}
GROUP_FLAGS = ("state", "cpu-total", "balloon", "vcpu", "interface", "block")


#: libvirt's reason numbers per state (virDomainRunningReason, virDomainPausedReason,
#: virDomainShutoffReason, virDomainCrashedReason, virDomainShutdownReason), matched by
#: the first keyword found in virtkit's reason text; 0 (unknown) when none is
REASON_NUMBERS: dict[str, tuple[tuple[str, int], ...]] = {
    "running": (("migration failed", 6), ("migrat", 2), ("restored", 3), ("revert", 4),
                ("snapshot", 4), ("user", 5), ("resumed", 5), ("unpaused", 5),
                ("save", 7), ("wakeup", 8), ("crash", 9), ("postcopy failed", 11),
                ("postcopy", 10), ("boot", 1), ("install", 1), ("restart", 1),
                ("reboot", 1), ("start", 1)),
    "paused": (("user", 1), ("postcopy failed", 13), ("postcopy", 12), ("migrat", 2),
               ("save", 3), ("dump", 4), ("i/o error", 5), ("ioerror", 5),
               ("watchdog", 6), ("revert", 7), ("snapshot", 9), ("shutting down", 8),
               ("crash", 10), ("starting", 11), ("api error", 14)),
    "shutoff": (("restart failed", 6), ("incoming migration failed", 6), ("failed", 6),
                ("destroy", 2), ("crash", 3), ("exited unexpectedly", 3), ("migrat", 4),
                ("saved", 5), ("revert", 7), ("snapshot", 7), ("daemon", 8),
                ("shutdown", 1), ("install finished", 1), ("reboot", 1),
                ("transient domain stopped", 1)),
    "crashed": (("panic", 1),),
    "in shutdown": (("user", 1),),
}
#: virtkit's balloon keys -> virsh domstats' (libvirt's balloon.* names), in its order
BALLOON_KEYS = (("current", "current"), ("maximum", "maximum"), ("swap_in", "swap_in"),
                ("swap_out", "swap_out"), ("major_fault", "major_fault"),
                ("minor_fault", "minor_fault"), ("unused", "unused"),
                ("usable_total", "available"), ("available", "usable"),
                ("last_update", "last-update"), ("disk_caches", "disk_caches"),
                ("rss", "rss"))
BLOCK_KEYS = (("name", "name"), ("path", "path"), ("rd_reqs", "rd.reqs"),
              ("rd_bytes", "rd.bytes"), ("rd_times", "rd.times"), ("wr_reqs", "wr.reqs"),
              ("wr_bytes", "wr.bytes"), ("wr_times", "wr.times"), ("fl_reqs", "fl.reqs"),
              ("fl_times", "fl.times"), ("allocation", "allocation"),
              ("capacity", "capacity"), ("physical", "physical"))
NET_KEYS = (("name", "name"), ("rx_bytes", "rx.bytes"), ("rx_packets", "rx.pkts"),
            ("rx_errors", "rx.errs"), ("rx_dropped", "rx.drop"), ("tx_bytes", "tx.bytes"),
            ("tx_packets", "tx.pkts"), ("tx_errors", "tx.errs"), ("tx_dropped", "tx.drop"))


def reason_number(state: str, reason: str) -> int:
    """virsh's number for virtkit's reason text in ``state`` (0: unknown)."""
    text = reason.lower()
    for keyword, number in REASON_NUMBERS.get(state, ()):
        if keyword in text:
            return number
    return 0


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def flatten(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    """One domain's stats as virsh domstats' ``key=value`` pairs, libvirt's names and
    numbers (times in ns, memory in KiB, sizes in bytes); unknown values are left out,
    never printed empty."""
    pairs: list[tuple[str, Any]] = []
    state = stats.get("state")
    if state:
        pairs += [("state.state", STATE_NUMBERS.get(state["state"], 0)),
                  ("state.reason", reason_number(state["state"], state.get("reason") or ""))]
    cpu = stats.get("cpu")
    if cpu:
        pairs += [("cpu.time", _ns(cpu["time"])), ("cpu.user", _ns(cpu["user"])),
                  ("cpu.system", _ns(cpu["system"]))]
    balloon = stats.get("balloon") or {}
    pairs += [(f"balloon.{theirs}", balloon.get(ours)) for ours, theirs in BALLOON_KEYS]
    vcpu = stats.get("vcpu")
    if vcpu:
        pairs += [("vcpu.current", vcpu["current"]), ("vcpu.maximum", vcpu["maximum"])]
        for item in vcpu["vcpus"]:
            pairs += [(f"vcpu.{item['id']}.state", 1 if item["state"] else 0),
                      (f"vcpu.{item['id']}.time", _ns(item["time"]))]
    if "net" in stats:
        pairs.append(("net.count", len(stats["net"])))
        for index, nic in enumerate(stats["net"]):
            pairs += [(f"net.{index}.{theirs}", nic.get(ours)) for ours, theirs in NET_KEYS]
    if "block" in stats:
        pairs.append(("block.count", len(stats["block"])))
        for index, disk in enumerate(stats["block"]):
            pairs += [(f"block.{index}.{theirs}", disk.get(ours))
                      for ours, theirs in BLOCK_KEYS]
    return [(key, value) for key, value in pairs if value is not None and value != ""]


def inactive_stats(client: Client, item: dict[str, Any], groups: list[str]
                   ) -> dict[str, Any]:
    """What virsh's domstats shows of a shut-off domain: the defined memory (balloon),
    vCPU counts and each disk's name, path and sizes (from the definition and the image
    files, as domblkinfo reads them); the live counters need a running QEMU."""
    wanted = set(groups) or set(GROUP_FLAGS)
    found: dict[str, Any] = {}
    path = client.domain_path(item["uuid"] if item.get("uuid") else item["name"])
    if wanted & {"balloon", "vcpu"}:
        info = client.get(path)
        if "balloon" in wanted:
            found["balloon"] = {"current": info["memory_mib"] * 1024,
                                "maximum": info["max_memory_mib"] * 1024}
        if "vcpu" in wanted:
            found["vcpu"] = {"current": info["vcpus"], "maximum": info["max_vcpus"],
                             "vcpus": []}
    if "block" in wanted:
        found["block"] = [{"name": disk["target"], "path": disk.get("path"),
                           **{key: disk.get(key) for key in
                              ("allocation", "capacity", "physical")}}
                          for disk in client.get(path + "/blkinfo")["disks"]]
    return found


def cmd_domstats(client: Client, args: argparse.Namespace) -> int:
    groups = [group for group in GROUP_FLAGS if getattr(args, group.replace("-", "_"))]
    query = [f"domain={quote(name, safe='')}" for name in args.domains]
    if groups:
        query.append("groups=" + ",".join(groups))
    if args.active:
        query.append("active=1")
    stats = client.get("/v1/domstats" + ("?" + "&".join(query) if query else ""))
    if args.json:
        render.as_json(stats)
        return 0
    out = []
    for item in stats:
        if (item.get("state") or {}).get("state") == "shutoff":
            item = {**item, **inactive_stats(client, item, groups)}
        out.append(f"Domain: '{item['name']}'")
        out += [f"  {key}={value}" for key, value in flatten(item)]
        out.append("")
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0


def affinity_map(cpulist: str, host_cpus: int) -> str:
    """virsh vcpuinfo's affinity: one character per host CPU, ``y`` where the vCPU may
    run, ``-`` where not (``0-1`` on a 4-CPU host: ``yy--``)."""
    allowed: set[int] = set()
    for part in cpulist.split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit():
            allowed.update(range(int(first), int(last or first) + 1))
    return "".join("y" if cpu in allowed else "-" for cpu in range(host_cpus))


def cmd_vcpuinfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get(client.domain_path(args.domain, "/vcpus"))
    if args.json:
        render.as_json(info)
        return 0
    host_cpus = int(info["host_cpus"])
    blocks = []
    for item in info["vcpus"]:
        blocks.append("\n".join([
            f"{'VCPU:':<16}{item['id']}", f"{'CPU:':<16}{item['host_cpu']}",
            f"{'State:':<16}{'running' if item['state'] in ('R', 'S', 'D') else item['state']}",
            f"{'CPU time:':<16}{item['time']:.1f}s",
            f"{'CPU Affinity:':<16}{affinity_map(item['affinity'], host_cpus)}",
            # virtkit's own, after virsh's five fields
            f"{'Thread:':<16}{item['thread_id']}"]))
    sys.stdout.write("\n\n".join(blocks) + "\n")
    return 0


def _pin_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"cpulist": args.cpulist, "live": args.live, "config": args.config}


def cmd_vcpupin(client: Client, args: argparse.Namespace) -> int:
    if args.cpulist is None and not args.live and not args.config:
        table = client.get(client.domain_path(args.domain, "/vcpupin"))
        if args.vcpu is not None:
            table["vcpus"] = [row for row in table["vcpus"] if row["vcpu"] == args.vcpu]
    else:
        body = {**_pin_body(args), "vcpu": args.vcpu}
        table = client.request("PUT", client.domain_path(args.domain, "/vcpupin"), body)
    if args.json:
        render.as_json(table)
    else:
        render.table(["VCPU", "CPU Affinity"],
                     [[row["vcpu"], row["affinity"]] for row in table["vcpus"]])
    return 0


def cmd_emulatorpin(client: Client, args: argparse.Namespace) -> int:
    path = client.domain_path(args.domain, "/emulatorpin")
    if args.cpulist is None:
        result = client.get(path)
    else:
        result = client.request("PUT", path, _pin_body(args))
    if args.json:
        render.as_json(result)
    else:
        render.table(["emulator", "CPU Affinity"], [["*", result["emulator"]]])
    return 0


def cmd_nodedev_list(client: Client, args: argparse.Namespace) -> int:
    devices = client.get("/v1/nodedevs" + (f"?cap={quote(args.cap)}" if args.cap else ""))
    if args.json:
        render.as_json(devices)
        return 0
    rows = []
    for dev in devices:
        name = " ".join(part for part in (dev["vendor"], dev["product"]) if part) or \
            f"{dev['vendor_id']}:{dev['device_id']}"
        sriov = ""
        if dev["sriov_totalvfs"]:
            sriov = f"{dev['sriov_numvfs']}/{dev['sriov_totalvfs']} VFs"
        elif dev["physfn"]:
            sriov = f"VF of {dev['physfn']}"
        rows.append([dev["address"], f"{dev['vendor_id']}:{dev['device_id']}", dev["driver"],
                     dev["iommu_group"], sriov or None, name])
    render.table(["Address", "ID", "Driver", "IOMMU group", "SR-IOV", "Name"], rows)
    return 0


def cmd_ksm(client: Client, args: argparse.Namespace) -> int:
    if args.action == "status":
        status = client.get("/v1/host/ksm")
    else:
        status = client.request("PUT", "/v1/host/ksm", {"action": args.action})
    if args.json:
        render.as_json(status)
        return 0
    render.keyvalues([("KSM", "on" if status["run"] == 1 else "off"),
                      ("Pages shared", status["pages_shared"]),
                      ("Pages sharing", status["pages_sharing"]),
                      ("Pages unshared", status["pages_unshared"]),
                      ("Full scans", status["full_scans"]),
                      ("Saved", f"{status['saved_mib']} MiB")])
    return 0


def cmd_capacity(client: Client, args: argparse.Namespace) -> int:
    info = client.get("/v1/host/capacity")
    if args.json:
        render.as_json(info)
        return 0
    host, limits, ratios = info["host"], info["limits"], info["ratios"]
    rows = [["vCPUs", host["cpus"], f"{ratios['cpu']:g}", limits["vcpus"],
             info["running"]["vcpus"], info["defined"]["vcpus"]],
            ["Memory (MiB)", host["memory_mib"], f"{ratios['memory']:g}", limits["memory_mib"],
             info["running"]["memory_mib"], info["defined"]["memory_mib"]]]
    render.table(["Resource", "Host", "Ratio", "Limit", "Running", "Defined"], rows)
    print(f"\n{info['running']['domains']} running of {info['defined']['domains']} defined "
          "domains")
    return 0


def cmd_numa(client: Client, args: argparse.Namespace) -> int:
    info = client.get("/v1/host/numa")
    if args.json:
        render.as_json(info)
        return 0
    render.table(["Node", "CPUs", "Memory (MiB)", "Free (MiB)"],
                 [[n["id"], n["cpus"], n["memory_mib"], n["free_mib"]] for n in info["nodes"]])
    render.table(["Huge page", "Total", "Free"],
                 [[f"{h['size_kib']} KiB", h["total"], h["free"]] for h in info["hugepages"]])
    return 0


def _cmd_top(client: Client, args: argparse.Namespace) -> int:
    from virtkit.cli.top import cmd_top

    return cmd_top(client, args)


def _sort_column(value: str) -> str:
    if value not in ("cpu", "mem", "name", "block", "net"):
        raise argparse.ArgumentTypeError("sort by cpu, mem, name, block or net")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the statistics and tuning commands to the CLI's subparsers."""
    p = sub.add_parser("domstats", help="live statistics of domains (virsh domstats)")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains (default: all)")
    for group in GROUP_FLAGS:
        p.add_argument(f"--{group}", action="store_true", help=f"the {group} group")
    p.add_argument("--active", action="store_true", help="only running domains")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_domstats)
    p = sub.add_parser("vcpuinfo", help="vCPU threads, host CPUs, CPU time and affinity")
    p.add_argument("domain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_vcpuinfo)
    for name, func, text in (("vcpupin", cmd_vcpupin, "show or set the host CPUs of a vCPU"),
                             ("emulatorpin", cmd_emulatorpin,
                              "show or set the host CPUs of QEMU's non-vCPU threads")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("domain")
        if name == "vcpupin":
            p.add_argument("vcpu", nargs="?", type=int, help="vCPU number")
        p.add_argument("cpulist", nargs="?", help="host CPUs, e.g. 0-1 or 0,2")
        p.add_argument("--live", action="store_true", help="change the running domain")
        p.add_argument("--config", action="store_true", help="change the stored spec")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("nodedev-list", help="host devices (PCI, with IOMMU groups and SR-IOV)")
    p.add_argument("--cap", help="capability: pci")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nodedev_list)
    p = sub.add_parser("top", help="live table of running domains (virt-top)")
    p.add_argument("-d", "--delay", type=float, default=3.0, help="seconds between frames")
    p.add_argument("-n", "--iterations", type=int, help="stop after this many frames")
    p.add_argument("-b", "--batch", action="store_true", help="plain tables, no redraw")
    p.add_argument("--sort", type=_sort_column, default="cpu",
                   help="first sort column: cpu, mem, name, block, net")
    p.set_defaults(func=_cmd_top)


def register_host(host_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``host ksm``, ``host capacity``, ``host numa``."""
    p = host_sub.add_parser("ksm", help="kernel samepage merging: on, off or status")
    p.add_argument("action", choices=["on", "off", "status"], nargs="?", default="status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ksm)
    p = host_sub.add_parser("capacity", help="allocated vCPUs and memory vs the overcommit "
                            "limits")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_capacity)
    p = host_sub.add_parser("numa", help="host NUMA nodes and huge pages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_numa)
