"""virsh's live block jobs: blockcommit, blockpull, blockcopy, blockjob, blockresize.

Messages are virsh 9's (tools/virsh-domain.c): "Block Commit started",
"\\nSuccessfully pivoted", "No current block job for vda"; progress, with
--verbose, is virsh's ``\\rBlock Commit: [ 42.00 %]`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any
from urllib.parse import quote

from virtkit.cli.client import ApiError, Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec

#: virsh's labels of the job types (virshDomainBlockJobToString)
LABELS = {"commit": "Block Commit", "active-commit": "Active Block Commit",
          "stream": "Block Pull", "mirror": "Block Copy"}
_UNITS = {"": 1024, "b": 1, "byte": 1, "bytes": 1,
          "k": 1024, "kib": 1024, "kb": 1000,
          "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
          "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
          "p": 1024**5, "pib": 1024**5, "pb": 1000**5}


def scaled_size(text: str, default_unit: int = 1024) -> int:
    """virsh's scaled integer: ``10G``, ``512MiB``, ``1000KB``; a bare number is KiB
    (blockresize's default unit)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidSpec(f"invalid size {text!r}", field="size",
                          fix="a number with an optional unit: 10G, 512MiB, 1048576b")
    return int(match.group(1)) * (_UNITS[unit] if unit else default_unit)


def progress_text(label: str, percent: float) -> str:
    """virshPrintJobProgress: ``\\rLabel: [ 42.00 %]``, never 100 before the end."""
    value = min(percent, 99.99) if percent < 100 else 100.0
    return f"\r{label}: [{int(value * 100) / 100.0:5.2f} %]"


def _target(client: Client, domain: str, path: str) -> str:
    """The disk target virsh's PATH names: a target (vda) as is, a file by domblklist."""
    if "/" not in path:
        return path
    for disk in client.get(client.domain_path(domain, "/disks")):
        if disk.get("path") == path:
            return str(disk["target"])
    raise InvalidSpec(f"domain '{domain}' has no disk {path}", field="path",
                      fix=f"see 'virtkit domblklist {domain}'")


def _path(client: Client, args: argparse.Namespace, suffix: str = "") -> str:
    target = _target(client, args.domain, args.path)
    return client.domain_path(args.domain, f"/blockjobs/{quote(target, safe='')}{suffix}")


def _run(client: Client, path: str, body: dict[str, Any], label: str, verbose: bool) -> Any:
    """POST ``body``; with ``verbose``, draw virsh's progress line from NDJSON lines."""
    if not verbose:
        return client.post(path, body)
    from virtkit.cli.streaming import open_stream

    with open_stream(client, "POST", path, body, accept="application/x-ndjson") as response:
        for raw in response:
            line = json.loads(raw)
            if "progress" in line:
                sys.stderr.write(progress_text(label, float(line["progress"])))
                sys.stderr.flush()
            elif "error" in line:
                sys.stderr.write("\n")
                raise ApiError(int(line["error"].get("status", 500)), line["error"])
            else:
                sys.stderr.write(progress_text(label, 100.0))
                sys.stderr.flush()
                return line["result"]
    raise ApiError(500, {"message": "the daemon ended the job without a result"})


def _speed(args: argparse.Namespace) -> int:
    """--bandwidth in MiB/s (bytes/s with --bytes), as bytes/s."""
    value = args.bandwidth or 0
    return int(value if args.bytes else value * 1024**2)


def cmd_blockcommit(client: Client, args: argparse.Namespace) -> int:
    wait = args.wait or args.pivot or args.keep_overlay
    body = {"active": args.active, "pivot": args.pivot, "keep_overlay": args.keep_overlay,
            "shallow": args.shallow, "base": args.base, "top": args.top, "wait": wait,
            "delete": args.delete, "speed": _speed(args)}
    label = LABELS["active-commit" if args.active else "commit"]
    result = _run(client, _path(client, args, "/commit"), body, label,
                  bool(wait and args.verbose))
    status = result["status"]
    if status == "started":
        print(f"{label} started")
    else:
        print("\n" + {"pivoted": "Successfully pivoted", "ready": "Now in synchronized phase",
                      "completed": "Commit complete, overlay image kept" if args.keep_overlay
                      else "Commit complete"}[status])
    for file in result.get("unused", []):
        print(f"note: {file} is left in place, no longer in use (its data is in the base "
              "now); remove it, or pass --delete next time", file=sys.stderr)
    return 0


def cmd_blockpull(client: Client, args: argparse.Namespace) -> int:
    body = {"base": args.base, "wait": args.wait, "speed": _speed(args)}
    result = _run(client, _path(client, args, "/pull"), body, LABELS["stream"],
                  bool(args.wait and args.verbose))
    print("\nPull complete" if result["status"] == "completed" else "Block Pull started")
    return 0


def copy_destination(args: argparse.Namespace) -> dict[str, Any]:
    """blockcopy's destination and format from DEST, --dest or --xml (a libvirt
    ``<disk>``: ``<source file=|dev=|pool= volume=>``, ``<driver type=>``)."""
    given = [d for d in (args.dest, args.dest_option) if d]
    if args.xml:
        given.append("--xml")
    if len(given) != 1:
        raise InvalidSpec("blockcopy needs one destination: DEST, --dest or --xml",
                          field="dest", fix="e.g. virtkit blockcopy vm vda /images/copy.qcow2")
    found: dict[str, Any] = {"dest": args.dest or args.dest_option, "pool": args.pool,
                             "format": "raw" if args.raw else args.format,
                             "blockdev": args.blockdev}
    if args.xml:
        found.update(_disk_xml(args.xml))
        if found.get("format") is None:
            found["format"] = "raw" if args.raw else args.format
    return found


def _disk_xml(path: str) -> dict[str, Any]:
    from xml.etree import ElementTree

    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read(1 << 20)
        disk = ElementTree.fromstring(text)  # noqa: S314 - the user's own file, read here
    except (OSError, ElementTree.ParseError) as exc:
        raise InvalidSpec(f"cannot read the disk XML {path}: {exc}", field="xml") from None
    source = disk.find("source")
    driver = disk.find("driver")
    if disk.tag != "disk" or source is None:
        raise InvalidSpec(f"{path}: expected <disk> with a <source>", field="xml",
                          fix="<disk type='file'><source file='/path/copy.qcow2'/>"
                              "<driver type='qcow2'/></disk>")
    fmt = driver.get("type") if driver is not None else None
    if source.get("pool") and source.get("volume"):
        return {"dest": source.get("volume"), "pool": source.get("pool"), "format": fmt}
    if source.get("dev"):
        return {"dest": source.get("dev"), "blockdev": True, "format": fmt}
    if source.get("file"):
        return {"dest": source.get("file"), "format": fmt}
    raise InvalidSpec(f"{path}: <source> names no file, dev or pool/volume", field="xml")


def cmd_blockcopy(client: Client, args: argparse.Namespace) -> int:
    wait = bool(args.wait or args.pivot or args.finish or args.timeout)
    body: dict[str, Any] = {**copy_destination(args), "shallow": args.shallow,
                            "reuse_external": args.reuse_external, "wait": wait,
                            "pivot": args.pivot, "finish": args.finish, "speed": _speed(args)}
    if args.timeout:
        body["timeout"] = args.timeout
    result = _run(client, _path(client, args, "/copy"), body, LABELS["mirror"],
                  bool(wait and args.verbose))
    print({"started": "Block Copy started", "ready": "\nNow in mirroring phase",
           "pivoted": "\nSuccessfully pivoted",
           "copied": "\nSuccessfully copied"}[result["status"]])
    return 0


def blockjob_lines(job: dict[str, Any], raw: bool) -> str:
    """virsh blockjob --info's text (to stderr: the progress part, as virsh)."""
    if job["job"] is None:
        return "" if raw else f"No current block job for {job['disk']}\n"
    kind = "active_commit" if job["job"] == "active-commit" else \
        {"stream": "pull", "mirror": "copy"}.get(job["job"], job["job"])
    if raw:
        return (f" type={kind}\n bandwidth={job.get('bandwidth', 0)}\n"
                f" cur={job['cur']}\n end={job['end']}\n")
    return ""


def cmd_blockjob(client: Client, args: argparse.Namespace) -> int:
    path = _path(client, args)
    if args.abort or args.pivot or args.bandwidth is not None:
        body: dict[str, Any] = {"abort": args.abort, "pivot": args.pivot}
        if args.bandwidth is not None:
            body["speed"] = _speed(args)
        client.post(path, body)
        if args.pivot:
            print("Successfully pivoted")
        return 0
    job = client.get(path)
    text = blockjob_lines(job, args.raw)
    if text:
        sys.stdout.write(text)
        return 0
    done = job["end"] - job["cur"]
    percent = 100.0 if job["end"] and done == 0 else \
        (100.0 * job["cur"] / job["end"] if job["end"] else 0.0)
    sys.stdout.flush()
    sys.stderr.write(progress_text(LABELS.get(job["job"], job["job"]), percent))
    sys.stderr.flush()
    print()
    return 0


def cmd_blockresize(client: Client, args: argparse.Namespace) -> int:
    size = scaled_size(args.size)
    client.post(_path(client, args, "/resize"), {"size": size})
    print(f"Block device '{args.path}' is resized")
    return 0


def _job_options(p: argparse.ArgumentParser) -> None:
    """What blockcommit and blockpull share: waiting, progress and the speed limit
    (virsh's --async and --timeout are accepted)."""
    p.add_argument("--wait", action="store_true", help="wait for the job to end")
    p.add_argument("--verbose", action="store_true", help="show progress (with --wait)")
    p.add_argument("--bandwidth", type=int, help="MiB/s (bytes/s with --bytes)")
    p.add_argument("--bytes", action="store_true", help="--bandwidth is bytes/s")
    p.add_argument("--async", dest="async_", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=int, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add blockcommit, blockpull, blockcopy, blockjob and blockresize."""
    p = add_command(sub, "blockcommit", cmd_blockcommit, "merge a running disk's images "
                    "down into a lower one (live)", domain=True)
    p.add_argument("path", help="disk target (vda) or its file")
    p.add_argument("--active", action="store_true", help="commit the top (active) image")
    p.add_argument("--pivot", action="store_true", help="with --active: then move the disk "
                   "onto the base (implies --wait)")
    p.add_argument("--keep-overlay", action="store_true", help="with --active: end the "
                   "job, the disk staying on the top image")
    p.add_argument("--shallow", action="store_true", help="into the top's own backing image")
    p.add_argument("--base", help="the image to commit into (file or vda[N]; default: the "
                   "bottom of the chain)")
    p.add_argument("--top", help="the highest image committed (default: the top, with "
                   "--active)")
    p.add_argument("--delete", action="store_true", help="remove the committed images "
                   "afterwards (those no snapshot names)")
    _job_options(p)
    p = add_command(sub, "blockpull", cmd_blockpull, "copy a running disk's backing "
                    "images into its top image (live)", domain=True)
    p.add_argument("path", help="disk target (vda) or its file")
    p.add_argument("--base", help="keep this image as the new backing (file or vda[N])")
    _job_options(p)
    p = add_command(sub, "blockcopy", cmd_blockcopy, "copy a running disk to a new image "
                    "(live), then pivot onto it (--pivot) or keep it (--finish)", domain=True)
    p.add_argument("path", help="disk target (vda) or its file")
    p.add_argument("dest", nargs="?", help="new file (absolute path), volume name with "
                   "--pool, or POOL/VOLUME")
    p.add_argument("--dest", dest="dest_option", help="the destination (as DEST)")
    p.add_argument("--xml", help="a libvirt <disk> XML file naming the destination")
    p.add_argument("--pool", help="DEST is a volume of this (directory) pool")
    p.add_argument("--format", choices=("qcow2", "raw"), help="the copy's format (default: "
                   "the disk's; an existing file's own)")
    p.add_argument("--raw", action="store_true", help="same as --format raw")
    p.add_argument("--shallow", action="store_true", help="copy only the top image; the "
                   "copy is backed by the disk's backing image")
    p.add_argument("--reuse-external", action="store_true", help="copy into an existing "
                   "file (same size; with --shallow, backed as the disk's top)")
    p.add_argument("--blockdev", action="store_true", help="DEST is an existing block "
                   "device")
    p.add_argument("--pivot", action="store_true", help="once in sync, move the disk onto "
                   "the copy (implies --wait)")
    p.add_argument("--finish", action="store_true", help="once in sync, end the job and "
                   "keep the copy (implies --wait)")
    p.add_argument("--transient-job", action="store_true", help=argparse.SUPPRESS)
    _job_options(p)
    p = add_command(sub, "blockjob", cmd_blockjob, "show, abort or pivot a disk's block "
                    "job", domain=True)
    p.add_argument("path", help="disk target (vda)")
    p.add_argument("--info", action="store_true", help="show the job (the default)")
    p.add_argument("--raw", action="store_true", help="type=, bandwidth=, cur=, end= lines")
    p.add_argument("--abort", action="store_true", help="cancel the job")
    p.add_argument("--pivot", action="store_true", help="move a ready active commit onto "
                   "its base")
    p.add_argument("--async", dest="async_", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bandwidth", type=int, help="set the speed limit, MiB/s")
    p.add_argument("--bytes", action="store_true", help="--bandwidth is bytes/s")
    p = add_command(sub, "blockresize", cmd_blockresize, "resize a running disk (the "
                    "guest sees the new size)", domain=True)
    p.add_argument("path", help="disk target (vda) or its file")
    p.add_argument("size", help="new size: 10G, 512MiB ... (a bare number is KiB)")
