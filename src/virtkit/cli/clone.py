"""``virtkit clone``: virt-clone's options (--original, --name, --auto-clone, --file)."""

from __future__ import annotations

import argparse
from typing import Any

from virtkit.cli import render
from virtkit.cli.client import Client


def cmd_clone(client: Client, args: argparse.Namespace) -> int:
    from virtkit.cli.storage import post_with_progress

    body: dict[str, Any] = {"name": args.name, "files": args.file or [],
                            "auto": args.auto_clone, "linked": args.linked,
                            "force": args.force, "macs": args.mac or []}
    result = post_with_progress(client, client.domain_path(args.original, "/clone"), body,
                                f"Cloning {args.original}")
    if args.json:
        render.as_json(result)
        return 0
    print(f"Clone '{result['name']}' created successfully.")
    for disk in result.get("disks", []):
        if disk["device"] == "disk":
            print(f"  {disk['target']}: {disk['path']}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "clone a domain with its disks (virt-clone): new UUID, name and MACs"
    p = sub.add_parser("clone", help=text, description=text)
    p.add_argument("-o", "--original", required=True, help="the domain to clone")
    p.add_argument("-n", "--name", required=True, help="the new domain's name")
    p.add_argument("-f", "--file", action="append",
                   help="path of the copy of each writable disk, in order (repeatable)")
    p.add_argument("--auto-clone", action="store_true",
                   help="name the copies after the clone, beside the originals")
    p.add_argument("--linked", action="store_true",
                   help="qcow2 overlays on the original images instead of full copies "
                        "(the original must be shut off; it moves onto an overlay too)")
    p.add_argument("--force", action="store_true",
                   help="clone a running original, freezing its file systems with the "
                        "guest agent during the copy")
    p.add_argument("-m", "--mac", action="append",
                   help="MAC for each interface, in order (default: fresh ones)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_clone, domain=None)
