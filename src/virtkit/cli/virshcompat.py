"""virsh's everyday commands beyond the lifecycle: screenshot, send-key, domid, domname,
domuuid, vcpucount, domblkinfo, desc, domblkstat, domifstat, dommemstat, nodememstats,
nodecpustats, hostname, uri, version, sysinfo, capabilities, domcapabilities.

Output follows virsh 9's layout (recorded from ``virsh -c test:///default``), so
scripts written against virsh read virtkit's the same way.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from virtkit import __version__
from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec, NotFound

MIME_SUFFIX = {"image/png": ".png", "image/x-portable-pixmap": ".ppm"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """User-set text (a description) with terminal control characters made visible."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _path(client: Client, args: argparse.Namespace, suffix: str) -> str:
    return client.domain_path(args.domain, suffix)


# -- display -------------------------------------------------------------------------------

def image_type(data: bytes) -> str:
    """The MIME type of screendump's bytes (PNG or PPM)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"P6"):
        return "image/x-portable-pixmap"
    raise InvalidSpec("the daemon answered a screenshot that is neither PNG nor PPM")


def default_screenshot_name(domain: str, mime: str, now: float) -> str:
    """virsh's ``DOMAIN-YYYY-MM-DD-HH:MM:SS.png`` (local time)."""
    stamp = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(now))
    return f"{domain}-{stamp}{MIME_SUFFIX[mime]}"


def cmd_screenshot(client: Client, args: argparse.Namespace) -> int:
    body = {"screen": args.screen} if args.screen is not None else {}
    data = client.post(_path(client, args, "/screenshot"), body)
    if not isinstance(data, bytes):
        raise InvalidSpec("the daemon did not answer an image")
    mime = image_type(data)
    given = args.file or args.file_option
    target = given or default_screenshot_name(args.domain, mime, time.time())
    try:  # the client writes the file, as the invoking user; never the daemon
        with open(target, "xb" if given is None else "wb") as out:
            out.write(data)
    except OSError as exc:
        raise InvalidSpec(f"cannot write {target}: {exc.strerror}",
                          fix="give a FILE in a folder you can write") from None
    print(f"Screenshot saved to {target}, with type of {mime}")
    return 0


def cmd_send_key(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"keys": args.keycode, "codeset": args.codeset}
    if args.holdtime is not None:
        body["holdtime"] = args.holdtime
    client.post(_path(client, args, "/send-key"), body)
    return 0


# -- names, ids, uuids ---------------------------------------------------------------------

def _find(client: Client, ref: str) -> dict[str, Any]:
    """A domain by name, UUID or the Id `virtkit list` shows (or its QEMU's pid)."""
    rows = client.get("/v1/domains?all=1")
    for key in ("name", "uuid"):
        for row in rows:
            if str(row[key]) == ref:
                return dict(row)
    if ref.isdecimal():
        for key in ("id", "pid"):
            for row in rows:
                if row.get(key) is not None and str(row[key]) == ref:
                    return dict(row)
    raise NotFound(f"failed to get domain '{ref}'", fix="see 'virtkit list --all'")


def cmd_domid(client: Client, args: argparse.Namespace) -> int:
    row = _find(client, args.domain)
    print(row["id"] if row.get("id") is not None else "-")
    return 0


def cmd_domname(client: Client, args: argparse.Namespace) -> int:
    print(_find(client, args.domain)["name"])
    return 0


def cmd_domuuid(client: Client, args: argparse.Namespace) -> int:
    print(_find(client, args.domain)["uuid"])
    return 0


# -- vCPUs, disks, descriptions ------------------------------------------------------------

def vcpucount_lines(counts: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """virsh's table (maximum/current x config/live), or one number when asked for one."""
    live = counts["live"]
    kinds = [k for k in ("maximum", "current") if getattr(args, k)] or \
        (["current"] if args.active else [])
    places = [p for p in ("config", "live") if getattr(args, p)]
    if args.current:
        places = ["live" if live is not None else "config"]
    if args.active:
        kinds = ["current"]
    if not kinds and not places:
        return [f"{kind:<12} {place:<12} {counts[place][kind]:3d}"
                for kind in ("maximum", "current") for place in ("config", "live")
                if counts[place] is not None]
    kind = kinds[0] if kinds else "current"
    place = places[0] if places else ("live" if live is not None else "config")
    if counts[place] is None:
        raise InvalidSpec(f"domain '{counts['name']}' is not running: it has no live vCPU "
                          "count", fix="use --config")
    return [str(counts[place][kind])]


def cmd_vcpucount(client: Client, args: argparse.Namespace) -> int:
    counts = client.get(_path(client, args, "/vcpucount"))
    if args.json:
        render.as_json(counts)
        return 0
    sys.stdout.write("".join(f"{line}\n" for line in vcpucount_lines(counts, args)) + "\n")
    return 0


def pretty_capacity(value: int) -> str:
    """virsh's vshPrettyCapacity with ``%.3lf %s``: 1.000 TiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    size, index = float(value), 0
    while size >= 1024 and index < len(units) - 1:
        size, index = size / 1024, index + 1
    return f"{size:.3f} {units[index]}"


def _blk_cell(value: int | None, human: bool) -> str | None:
    if value is None:
        return None
    return pretty_capacity(value) if human else str(value)


def cmd_domblkinfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_path(client, args, "/blkinfo"))
    disks = info["disks"]
    if args.device:
        disks = [d for d in disks if args.device in (d["target"], d["path"])]
        if not disks:
            raise NotFound(f"domain '{info['name']}' has no disk '{args.device}'",
                           fix=f"see 'virtkit domblklist {info['name']}'")
    if args.json:
        render.as_json(disks)
        return 0
    if args.all or not args.device:
        render.table(["Target", "Capacity", "Allocation", "Physical"],
                     [[d["target"], *(_blk_cell(d[k], args.human) for k in
                                      ("capacity", "allocation", "physical"))]
                      for d in disks])
        print()
        return 0
    disk = disks[0]
    if disk["capacity"] is None:
        raise InvalidSpec(f"disk '{disk['target']}' has no medium", field="device")
    for label, key in (("Capacity:", "capacity"), ("Allocation:", "allocation"),
                       ("Physical:", "physical")):
        print(f"{label:<15} {_blk_cell(disk[key], args.human)}")
    print()
    return 0


def desc_words(args: argparse.Namespace) -> None:
    """virsh's desc takes its text as trailing words, before or after the flags; argparse
    hands over everything after DOMAIN (REMAINDER), so the flags are picked out here."""
    words = list(args.words)
    text: list[str] = []
    while words:
        word = words.pop(0)
        if word == "--title":
            args.title = True
        elif word == "--edit":
            args.edit = True
        elif word == "--new-desc" and words:
            args.new_desc = words.pop(0)
        elif word.startswith("--new-desc="):
            args.new_desc = word.split("=", 1)[1]
        elif word not in ("--live", "--config", "--current"):
            text.append(word)
    args.words = text


def cmd_desc(client: Client, args: argparse.Namespace) -> int:
    desc_words(args)
    if args.edit:
        raise InvalidSpec("desc --edit is not supported", fix="give the text with "
                          "--new-desc TEXT (or edit the spec: virtkit edit DOMAIN)")
    kind = "title" if args.title else "description"
    text = args.new_desc if args.new_desc is not None else \
        (" ".join(args.words) if args.words else None)
    if text is None:
        result = client.get(_path(client, args, "/description" + ("?title=1" if args.title
                                                                  else "")))
        value = result.get(kind)
        print(safe(value) if value else f"No {kind} for domain: {result['name']}")
        return 0
    client.request("PUT", _path(client, args, "/description"),
                   {"text": text, "title": args.title})
    print(f"Domain {kind} updated successfully")
    return 0


def cmd_metadata(client: Client, args: argparse.Namespace) -> int:
    if args.edit:
        raise InvalidSpec("metadata --edit is not supported", fix="give the element with "
                          "--key KEY --set XML")
    path = _path(client, args, "/metadata")
    if args.set is None and not args.remove:
        result = client.get(f"{path}?uri={quote(args.uri, safe='')}")
        sys.stdout.write(safe(result["xml"]) + "\n")
        return 0
    if args.set is not None and args.remove:
        raise InvalidSpec("--set and --remove exclude each other")
    client.request("PUT", path, {"uri": args.uri, "key": args.key,
                                 "xml": None if args.remove else args.set})
    print("Metadata removed" if args.remove else "Metadata modified")
    print()
    return 0


# -- virsh's per-device statistics (from domstats) -------------------------------------------

def _stats(client: Client, domain: str, group: str) -> dict[str, Any]:
    result = client.get(f"/v1/domstats?domain={quote(domain, safe='')}&groups=state,{group}")
    stats: dict[str, Any] = result[0]
    if stats.get("state", {}).get("state") in ("shutoff", "crashed", None):
        raise InvalidSpec(f"domain '{stats['name']}' is not running",
                          fix=f"virtkit start {stats['name']}")
    return stats


BLOCK_FIELDS = (("rd_req", "rd_reqs", "number of read operations:"),
                ("rd_bytes", "rd_bytes", "number of bytes read:"),
                ("wr_req", "wr_reqs", "number of write operations:"),
                ("wr_bytes", "wr_bytes", "number of bytes written:"),
                ("flush_operations", "fl_reqs", "number of flush operations:"),
                ("rd_total_times", "rd_times", "total duration of reads (ns):"),
                ("wr_total_times", "wr_times", "total duration of writes (ns):"),
                ("flush_total_times", "fl_times", "total duration of flushes (ns):"))


def domblkstat_lines(disks: list[dict[str, Any]], device: str | None, human: bool
                     ) -> list[str]:
    """virsh domblkstat: ``vda rd_req N`` lines (the sum of all disks without a
    device), or with --human ``Device: vda`` and described counters."""
    if device:
        disks = [d for d in disks if device in (d["name"], d.get("path"))]
        if not disks:
            raise NotFound(f"no disk '{device}' in the running domain")
    values = {ours: sum(int(d.get(ours) or 0) for d in disks) for _v, ours, _l in BLOCK_FIELDS}
    name = disks[0]["name"] if device else ""
    if human:
        return [f"Device: {name}"] + [f" {label:<31} {values[ours]}"
                                      for _v, ours, label in BLOCK_FIELDS]
    return [f"{name} {virsh} {values[ours]}" for virsh, ours, _l in BLOCK_FIELDS]


def cmd_domblkstat(client: Client, args: argparse.Namespace) -> int:
    stats = _stats(client, args.domain, "block")
    lines = domblkstat_lines(stats.get("block", []), args.device, args.human)
    sys.stdout.write("".join(f"{line}\n" for line in lines) + "\n")
    return 0


NET_FIELDS = (("rx_bytes", "rx_bytes"), ("rx_packets", "rx_packets"),
              ("rx_errs", "rx_errors"), ("rx_drop", "rx_dropped"),
              ("tx_bytes", "tx_bytes"), ("tx_packets", "tx_packets"),
              ("tx_errs", "tx_errors"), ("tx_drop", "tx_dropped"))


def domifstat_lines(nics: list[dict[str, Any]], interface: str) -> list[str]:
    """virsh domifstat: ``vnet0 rx_bytes N`` ... for the NIC named by tap or MAC."""
    nic = next((n for n in nics if interface in (n["name"], n.get("mac"))), None)
    if nic is None:
        raise NotFound(f"'{interface}' is not a known interface",
                       fix="see 'virtkit domiflist DOMAIN' (tap name or MAC)")
    if "rx_bytes" not in nic:
        raise InvalidSpec(f"interface '{interface}' is a user-mode NIC: it has no tap "
                          "whose counters could be read")
    return [f"{nic['name']} {virsh} {nic[ours]}" for virsh, ours in NET_FIELDS]


def cmd_domifstat(client: Client, args: argparse.Namespace) -> int:
    stats = _stats(client, args.domain, "interface")
    lines = domifstat_lines(stats.get("net", []), args.interface)
    sys.stdout.write("".join(f"{line}\n" for line in lines) + "\n")
    return 0


#: virsh dommemstat's names, in its order -> virtkit's balloon keys
MEMSTAT_FIELDS = (("actual", "current"), ("swap_in", "swap_in"), ("swap_out", "swap_out"),
                  ("major_fault", "major_fault"), ("minor_fault", "minor_fault"),
                  ("unused", "unused"), ("available", "usable_total"), ("usable", "available"),
                  ("last_update", "last_update"), ("disk_caches", "disk_caches"),
                  ("rss", "rss"))


def dommemstat_lines(balloon: dict[str, Any]) -> list[str]:
    return [f"{virsh} {balloon[ours]}" for virsh, ours in MEMSTAT_FIELDS
            if balloon.get(ours) is not None]


def cmd_dommemstat(client: Client, args: argparse.Namespace) -> int:
    stats = _stats(client, args.domain, "balloon")
    sys.stdout.write("".join(f"{line}\n" for line in dommemstat_lines(stats["balloon"]))
                     + "\n")
    return 0


# -- the host ------------------------------------------------------------------------------

def cmd_nodememstats(client: Client, args: argparse.Namespace) -> int:
    stats = client.get("/v1/host/memstats")
    if args.json:
        render.as_json(stats)
        return 0
    for key in ("total", "free", "buffers", "cached"):
        print(f"{key:<7}: {stats[key]:12d} KiB")
    print()
    return 0


def cpu_percent(first: dict[str, int], second: dict[str, int]) -> dict[str, float]:
    """virsh nodecpustats --percent from two samples: shares of the elapsed CPU time."""
    delta = {key: second[key] - first[key] for key in ("user", "system", "idle", "iowait")}
    total = sum(delta.values()) or 1
    percent = {key: 100.0 * value / total for key, value in delta.items()}
    return {"usage": percent["user"] + percent["system"], **percent}


def cmd_nodecpustats(client: Client, args: argparse.Namespace) -> int:
    path = "/v1/host/cpustats" + (f"?cpu={args.cpu}" if args.cpu is not None else "")
    first = client.get(path)
    if args.percent:
        time.sleep(1)  # virsh samples one second too
        values = cpu_percent(first, client.get(path))
        for key in ("usage", "user", "system", "idle", "iowait"):
            print(f"{key + ':':<15} {values[key]:5.1f}%")
    else:
        for key in ("user", "system", "idle", "iowait"):
            print(f"{key + ':':<15} {first[key]:20d}")
    print()
    return 0


def cmd_hostname(client: Client, args: argparse.Namespace) -> int:
    print(client.get("/v1/host")["hostname"])
    return 0


def connection_uri(connect: str | None, root: Path | None) -> str:
    """What ``virtkit uri`` prints: -c's URI (or $VIRTKIT_DEFAULT_URI), else the local
    daemon's: virtkit:///system for /var/lib/virtkit, virtkit:///session for the
    per-user one, virtkit:/// for another --root or $VIRTKIT_ROOT."""
    from virtkit.cli.transport import SYSTEM_ROOT, URI_ENV, local_root, parse_uri

    text = connect or os.environ.get(URI_ENV)
    if text:
        return text
    if root is not None:
        if root.resolve() == SYSTEM_ROOT:
            return "virtkit:///system"
        session = local_root(parse_uri("virtkit:///session"))
        if session is not None and root.resolve() == session.resolve():
            return "virtkit:///session"
    return "virtkit:///"


def cmd_uri(client: Client, args: argparse.Namespace) -> int:
    print(connection_uri(args.connect, client.paths.root if not client.remote else None))
    return 0


def cmd_version(client: Client, args: argparse.Namespace) -> int:
    daemon = client.get("/v1/version")["version"]
    qemu = client.get("/v1/host")["qemu"]["version"]
    print(f"Compiled against library: virtkit {__version__}")
    print(f"Using library: virtkit {__version__}")
    print(f"Using API: QEMU {daemon}")
    print(f"Running hypervisor: QEMU {qemu}")
    if args.daemon:
        print(f"Running against daemon: {daemon}")
    print()
    return 0


def _xml(client: Client, path: str) -> int:
    data = client.get(path)
    sys.stdout.write(data.decode() if isinstance(data, bytes) else str(data))
    return 0


def cmd_sysinfo(client: Client, args: argparse.Namespace) -> int:
    return _xml(client, "/v1/host/sysinfo")


def cmd_capabilities(client: Client, args: argparse.Namespace) -> int:
    return _xml(client, "/v1/host/capabilities")


def cmd_domcapabilities(client: Client, args: argparse.Namespace) -> int:
    query = [f"{key}={quote(value, safe='')}" for key, value in
             (("virttype", args.virttype), ("emulatorbin", args.emulatorbin),
              ("arch", args.arch), ("machine", args.machine)) if value]
    return _xml(client, "/v1/host/domcapabilities" + ("?" + "&".join(query) if query else ""))


# -- argparse ------------------------------------------------------------------------------

#: add_command with a domain argument unless ``domain=False``
_add = functools.partial(add_command, domain=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add virsh's display, identity, statistics and host commands."""
    p = _add(sub, "screenshot", cmd_screenshot, "save the domain's display as PNG (or PPM)")
    p.add_argument("file", nargs="?", help="where to write it (default: "
                   "DOMAIN-YYYY-MM-DD-HH:MM:SS.png here)")
    p.add_argument("--file", dest="file_option", help=argparse.SUPPRESS)
    p.add_argument("--screen", type=int, help="which head (default: the first)")
    p = _add(sub, "send-key", cmd_send_key, "press keys in the guest, together, then "
             "release them")
    p.add_argument("--codeset", default="linux", help="linux (default: KEY_* names or "
                   "numbers), xt, atset1, qnum, rfb, usb")
    p.add_argument("--holdtime", type=int, help="milliseconds to hold the keys")
    p.add_argument("keycode", nargs="+", help="keys, e.g. KEY_LEFTCTRL KEY_LEFTALT KEY_F2")
    _add(sub, "domid", cmd_domid, "print a domain's Id ('-' when shut off)")
    _add(sub, "domname", cmd_domname, "print the name of a domain given by Id or UUID")
    _add(sub, "domuuid", cmd_domuuid, "print a domain's UUID")
    p = _add(sub, "vcpucount", cmd_vcpucount, "maximum and current vCPUs, config and live",
             json_flag=True)
    for flag, text in (("maximum", "the maximum count"), ("active", "the current count"),
                       ("live", "of the running domain"), ("config", "of the stored spec"),
                       ("current", "live if running, else config")):
        p.add_argument(f"--{flag}", action="store_true", help=text)
    p = _add(sub, "domblkinfo", cmd_domblkinfo, "capacity, allocation and physical size of "
             "a domain's disks", json_flag=True)
    p.add_argument("device", nargs="?", help="disk target (vda) or path")
    p.add_argument("--all", action="store_true", help="every disk, as a table")
    p.add_argument("--human", action="store_true", help="sizes in KiB, MiB, GiB ...")
    p = _add(sub, "desc", cmd_desc, "show or set a domain's description or title")
    p.add_argument("words", nargs=argparse.REMAINDER, help="the new text (as --new-desc)")
    p.add_argument("--new-desc", help="the new text ('' removes it)")
    p.add_argument("--title", action="store_true", help="the title, not the description")
    for flag in ("live", "config", "current"):
        p.add_argument(f"--{flag}", action="store_true",
                       help="accepted: the text is kept in the spec and shown live at once")
    p.add_argument("--edit", action="store_true", help=argparse.SUPPRESS)
    p = _add(sub, "metadata", cmd_metadata, "show, set or remove another program's XML "
             "metadata of a domain")
    p.add_argument("uri", help="the metadata's namespace URI")
    p.add_argument("--key", help="the namespace prefix (needed with --set)")
    p.add_argument("--set", help="the new element, e.g. '<foo>bar</foo>'")
    p.add_argument("--remove", action="store_true", help="remove the element")
    for flag in ("live", "config", "current"):
        p.add_argument(f"--{flag}", action="store_true",
                       help="accepted: metadata is kept in the spec and shown live at once")
    p.add_argument("--edit", action="store_true", help=argparse.SUPPRESS)
    p = _add(sub, "domblkstat", cmd_domblkstat, "block I/O counters of a running domain")
    p.add_argument("device", nargs="?", help="disk target (default: all disks summed)")
    p.add_argument("--human", action="store_true", help="described counters")
    p = _add(sub, "domifstat", cmd_domifstat, "network counters of a NIC of a running domain")
    p.add_argument("interface", help="the NIC's tap name or MAC (see domiflist)")
    _add(sub, "dommemstat", cmd_dommemstat, "memory statistics of a running domain")
    p = _add(sub, "nodememstats", cmd_nodememstats, "host memory: total, free, buffers, "
             "cached (KiB)", domain=False, json_flag=True)
    p = _add(sub, "nodecpustats", cmd_nodecpustats, "host CPU time: user, system, idle, "
             "iowait (ns)", domain=False)
    p.add_argument("--cpu", type=int, help="one host CPU (default: all)")
    p.add_argument("--percent", action="store_true", help="shares over one second")
    _add(sub, "hostname", cmd_hostname, "print the daemon host's name", domain=False)
    _add(sub, "uri", cmd_uri, "print the connection URI in use", domain=False)
    p = _add(sub, "version", cmd_version, "print the virtkit and QEMU versions", domain=False)
    p.add_argument("--daemon", action="store_true", help="the daemon's version too")
    _add(sub, "sysinfo", cmd_sysinfo, "print the host's SMBIOS data as XML", domain=False)
    _add(sub, "capabilities", cmd_capabilities, "print the host's capabilities (libvirt "
         "XML)", domain=False)
    p = _add(sub, "domcapabilities", cmd_domcapabilities, "print what a domain can use on "
             "this host (libvirt domainCapabilities XML)", domain=False)
    p.add_argument("--virttype", help="kvm or qemu (default: what the host can run)")
    p.add_argument("--emulatorbin", help="QEMU binary (only the one virtkit runs)")
    p.add_argument("--arch", help="guest architecture (x86_64)")
    p.add_argument("--machine", help="machine type (default: q35)")
