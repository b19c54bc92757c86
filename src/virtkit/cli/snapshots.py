"""The virsh snapshot commands: snapshot-create-as, -list, -info, -current, -revert, -delete.

Long operations (memory written to a file, chains merged) draw a progress bar
on a terminal from the daemon's NDJSON progress lines.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec


def _path(client: Client, domain: str, name: str | None = None, suffix: str = "") -> str:
    tail = f"/snapshots/{quote(name, safe='')}" if name is not None else "/snapshots"
    return client.domain_path(domain, tail + suffix)


def _call(client: Client, method: str, path: str, body: dict[str, Any] | None,
          label: str) -> Any:
    """One request; on a terminal, with a progress bar fed by NDJSON progress lines."""
    if not sys.stderr.isatty():
        return client.request(method, path, body)
    from virtkit.cli.storage import post_with_progress

    return post_with_progress(client, path, body, label, method=method)


def _name_or_current(client: Client, args: argparse.Namespace) -> str:
    if args.current:
        return str(client.get(_path(client, args.domain, "current"))["name"])
    if not args.name:
        raise InvalidSpec("name a snapshot, or give --current")
    return str(args.name)


def _memspec(value: str | None) -> str | None:
    """virsh's ``--memspec file=PATH[,snapshot=external]`` or a bare path."""
    if value is None:
        return None
    for part in value.split(","):
        key, _, rest = part.partition("=")
        if not rest and key.startswith("/"):
            return key
        if key == "file":
            return rest
        if key == "snapshot" and rest == "no":
            return None
    raise InvalidSpec(f"--memspec {value!r}: give file=/absolute/path")


def cmd_create_as(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name_option or args.name,
                            "description": args.description or args.description_text or "",
                            "disk_only": args.disk_only or args.no_memory,
                            "quiesce": args.quiesce}
    if args.external or args.internal:
        body["kind"] = "external" if args.external else "internal"
    memspec = _memspec(args.memspec)
    if memspec:
        body["memspec"] = memspec
        body.setdefault("kind", "external")
    result = _call(client, "POST", _path(client, args.domain), body,
                   f"snapshot of {args.domain}")
    if args.json:
        render.as_json(result)
    else:
        what = result["kind"] + (" with memory" if result["memory"] else " disk-only")
        print(f"Domain snapshot {result['name']} created ({what})")
    return 0


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(created))


def _tree(snaps: list[dict[str, Any]]) -> list[str]:
    """virsh snapshot-list --tree: children indented under their parent with |/+-."""
    by_parent: dict[str | None, list[str]] = {}
    for snap in snaps:
        by_parent.setdefault(snap["parent"], []).append(snap["name"])
    lines: list[str] = []

    def walk(name: str, prefix: str, last: bool, root: bool) -> None:
        lines.append(name if root else f"{prefix}+- {name}")
        kids = by_parent.get(name, [])
        below = prefix if root else prefix + ("   " if last else "|  ")
        for index, kid in enumerate(kids):
            if index == 0:
                lines.append(f"{below}|")
            walk(kid, below, index == len(kids) - 1, False)

    names = {snap["name"] for snap in snaps}
    roots = [s["name"] for s in snaps if s["parent"] not in names]
    for index, root in enumerate(roots):
        walk(root, "", True, True)
        if index < len(roots) - 1:
            lines.append("")
    return lines


def snapshot_state(snap: dict[str, Any]) -> str:
    """virsh's State column: the domain's state then, ``disk-snapshot`` for a disk-only
    snapshot of a running domain (libvirt's virDomainSnapshotState names)."""
    if snap["kind"] == "external" and not snap["memory"] and snap["state"] != "shutoff":
        return "disk-snapshot"
    return str(snap["state"])


def snapshot_table(snaps: list[dict[str, Any]], parent: bool) -> tuple[list[str],
                                                                       list[list[Any]]]:
    """virsh's columns (Name, Creation Time, State [, Parent]) first, so scripts reading
    them by position work; virtkit's Kind, Memory and the current mark (``*``) after."""
    headers = ["Name", "Creation Time", "State"] + (["Parent"] if parent else []) + \
        ["Kind", "Memory", "Current"]
    rows = [[s["name"], _when(s["created"]), snapshot_state(s)]
            + ([s["parent"] or ""] if parent else [])
            + [s["kind"], "yes" if s["memory"] else "no", "*" if s["current"] else ""]
            for s in snaps]
    return headers, rows


def select_snapshots(snaps: list[dict[str, Any]], args: argparse.Namespace
                     ) -> list[dict[str, Any]]:
    """virsh snapshot-list's filters: --current, --roots, --leaves, --no-leaves."""
    parents = {s["parent"] for s in snaps}
    if getattr(args, "current", False):
        snaps = [s for s in snaps if s["current"]]
    if getattr(args, "roots", False):
        snaps = [s for s in snaps if not s["parent"]]
    if getattr(args, "leaves", False):
        snaps = [s for s in snaps if s["name"] not in parents]
    if getattr(args, "no_leaves", False):
        snaps = [s for s in snaps if s["name"] in parents]
    return snaps


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    snaps = select_snapshots(client.get(_path(client, args.domain)), args)
    if args.json:
        render.as_json(snaps)
    elif args.tree:
        print("\n".join(_tree(snaps)))
    elif args.name:
        sys.stdout.write("".join(f"{s['name']}\n" for s in snaps))
    else:
        render.table(*snapshot_table(snaps, args.parent))
        print()
    return 0


def _show(info: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        render.as_json(info)
        return 0
    disks = ", ".join(f"{d['target']}={d['mode']}" for d in info["disks"])
    render.keyvalues([
        ("Name", info["name"]), ("Domain", info["domain"]),
        ("Current", "yes" if info["current"] else "no"), ("State", info["state"]),
        ("Kind", info["kind"]), ("Memory", info.get("memory_file") or
                                 ("internal" if info["memory"] else "no")),
        ("Created", _when(info["created"])), ("Parent", info["parent"] or "-"),
        ("Children", info["children"]), ("Description", info["description"] or "-"),
        ("Disks", disks),
    ])
    return 0


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    return _show(client.get(_path(client, args.domain, _name_or_current(client, args))), args)


def cmd_current(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_path(client, args.domain, "current"))
    if args.name:
        print(info["name"])
        return 0
    return _show(info, args)


def cmd_revert(client: Client, args: argparse.Namespace) -> int:
    name = _name_or_current(client, args)
    body: dict[str, Any] = {}
    if args.running or args.paused:
        body["start"] = "running" if args.running else "paused"
    result = _call(client, "POST", _path(client, args.domain, name, "/revert"), body,
                   f"reverting to {name}")
    print(f"Domain '{args.domain}' reverted to snapshot {name} "
          f"(now {result['domain_state']})")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    name = _name_or_current(client, args)
    query = "&".join(k + "=1" for k in ("children", "metadata") if getattr(args, k))
    path = _path(client, args.domain, name) + (f"?{query}" if query else "")
    result = _call(client, "DELETE", path, None, f"deleting {name}")
    for deleted in result["deleted"]:
        print(f"Domain snapshot {deleted} deleted" + (" (metadata only)" if args.metadata
                                                       else ""))
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the snapshot commands to the CLI's subparsers."""
    add = functools.partial(add_command, sub, domain=True)

    p = add("snapshot-create-as", cmd_create_as, "take a snapshot (internal when every disk "
            "is qcow2, else external disk-only)")
    p.add_argument("name", nargs="?", help="snapshot name (default: the current time)")
    p.add_argument("description_text", nargs="?", metavar="description",
                   help="free text kept with the snapshot (as virsh's second positional)")
    p.add_argument("--name", dest="name_option", metavar="NAME", help="the same as NAME")
    p.add_argument("--description", help="free text kept with the snapshot")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--external", action="store_true",
                      help="freeze the images; new qcow2 overlays take the writes")
    kind.add_argument("--internal", action="store_true", help="inside each qcow2 image")
    p.add_argument("--disk-only", action="store_true", help="no memory, disks only")
    p.add_argument("--no-memory", action="store_true", help="the same as --disk-only")
    p.add_argument("--memspec", help="external: where the memory goes (file=PATH)")
    p.add_argument("--quiesce", action="store_true",
                   help="freeze the guest's file systems first (needs the guest agent)")
    p.add_argument("--atomic", action="store_true",
                   help="all disks or none (always so; accepted for virsh)")
    p.add_argument("--json", action="store_true")
    p = add("snapshot-list", cmd_list, "list a domain's snapshots (* marks the current one)")
    p.add_argument("--tree", action="store_true", help="as a tree of parents and children")
    p.add_argument("--parent", action="store_true", help="add a parent column")
    p.add_argument("--current", action="store_true", help="only the current snapshot")
    p.add_argument("--roots", action="store_true", help="only snapshots without a parent")
    p.add_argument("--leaves", action="store_true", help="only snapshots without children")
    p.add_argument("--no-leaves", action="store_true", help="only snapshots with children")
    p.add_argument("--name", action="store_true", help="names only")
    p.add_argument("--json", action="store_true")
    for name, func, text in (("snapshot-info", cmd_info, "show a snapshot"),
                             ("snapshot-revert", cmd_revert, "revert a domain to a snapshot"),
                             ("snapshot-delete", cmd_delete, "delete a snapshot, merging "
                              "its images into the chain")):
        p = add(name, func, text)
        p.add_argument("name", nargs="?", help="snapshot name")
        p.add_argument("--current", action="store_true", help="the current snapshot")
        if func is cmd_info:
            p.add_argument("--json", action="store_true")
        elif func is cmd_revert:
            state = p.add_mutually_exclusive_group()
            state.add_argument("--running", action="store_true", help="run it afterwards")
            state.add_argument("--paused", action="store_true", help="leave it paused")
        else:
            p.add_argument("--children", action="store_true", help="also its descendants")
            p.add_argument("--metadata", action="store_true",
                           help="forget the snapshot, leave the images as they are")
    p = add("snapshot-current", cmd_current, "show the current snapshot")
    p.add_argument("--name", action="store_true", help="its name only")
    p.add_argument("--json", action="store_true")
