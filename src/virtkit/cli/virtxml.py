"""``virtkit xml``: virt-xml's job, with virt-xml's syntax.

    virtkit xml DOMAIN --edit [N|all|KEY=VALUE] --disk cache=none
    virtkit xml DOMAIN --add-device --disk /srv/img/data.qcow2,bus=virtio [--update]
    virtkit xml DOMAIN --remove-device --disk target=vdb
    virtkit xml --build-xml --network bridge=br0

One action and one device option per call, as virt-xml.  The device option's text
is parsed by virt-install's translator (``formats.virtxml``), the one ``virtkit
install`` uses.  By default the stored definition changes (virt-xml's --define);
``--update`` also changes the running domain (hotplug; disks and NICs);
``--no-define`` only that.  ``--print-diff`` / ``--print-xml`` show the change to the
spec (virtkit's spec, as JSON: the definition virtkit keeps) without defining
unless ``--define`` is given too.  No --confirm: nothing asks.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from typing import Any

from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec

#: the device options, as formats/virtxml.py's DEVICE_OPTIONS (a unit test keeps them
#: equal): building every ``virtkit`` call's parser must not import the model
DEVICE_OPTION_NAMES = ("--disk", "--network", "--graphics")

_UNSET = "\0unset"
OPTIONS = (*DEVICE_OPTION_NAMES, "--metadata")


def _pair(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(action, option, option text) -- exactly one of each, as virt-xml."""
    actions = [name for name, on in (("edit", args.edit != _UNSET),
                                     ("add-device", args.add_device),
                                     ("remove-device", args.remove_device),
                                     ("build-xml", args.build_xml)) if on]
    given = [(o, getattr(args, o[2:])) for o in OPTIONS if getattr(args, o[2:]) is not None]
    if len(actions) != 1:
        raise InvalidSpec("virtkit xml needs exactly one action: --edit, --add-device, "
                          "--remove-device or --build-xml", fix="e.g. virtkit xml vm "
                          "--edit --disk cache=none")
    if len(given) != 1:
        raise InvalidSpec("virtkit xml takes one XML option per call (--disk, --network, "
                          "--graphics or --metadata)", fix="run it once per change")
    action, (option, text) = actions[0], given[0]
    if option == "--metadata" and action != "edit":
        raise InvalidSpec("--metadata is changed with --edit", fix="virtkit xml vm --edit "
                          "--metadata title=...")
    return action, option, text


def _items(spec: dict[str, Any], option: str, targets: list[str]) -> list[dict[str, Any]]:
    """The domain's devices of ``option``'s kind, disks with their target names."""
    if option == "--disk":
        return [{**disk, "target": disk.get("target") or target}
                for disk, target in zip(spec.get("disks") or [], targets, strict=False)]
    if option == "--network":
        return list(spec.get("nics") or [])
    graphics = spec.get("graphics") or {"type": "none"}
    return [] if graphics.get("type") == "none" else [graphics]


def changed_spec(spec: dict[str, Any], action: str, option: str, text: str,
                 selector: str | None, targets: list[str]) -> dict[str, Any]:
    """The spec after the change (pure: what --print-diff shows and --define stores)."""
    from virtkit.formats import virtxml
    from virtkit.formats.suboptions import SubOptions

    new = copy.deepcopy(spec)
    if option == "--metadata":
        opts = SubOptions.parse("--metadata", text, {"title", "description"})
        for key in ("title", "description"):
            if opts.has(key):
                new[key] = opts.get(key) or None
        opts.refuse_words()
        return {k: v for k, v in new.items() if v is not None or k not in ("title",
                                                                            "description")}
    key = virtxml.DEVICE_OPTIONS[option]
    if action == "add-device":
        fields = virtxml.device_fields(option, text)
        if option == "--graphics":
            new["graphics"] = fields
        else:
            new[key] = [*(new.get(key) or []), fields]
        return new
    if action == "remove-device":
        chosen = virtxml.select(_items(spec, option, targets), text or None, option)
        if option == "--graphics":
            new["graphics"] = {"type": "none"}
        else:
            new[key] = [d for i, d in enumerate(new.get(key) or []) if i not in chosen]
        return new
    fields = virtxml.device_fields(option, text, edit=True)
    chosen = virtxml.select(_items(spec, option, targets), selector, option)
    if option == "--graphics":
        new["graphics"] = {**(new.get("graphics") or {}), **fields}
        return new
    for index in chosen:
        device = {**new[key][index], **fields}
        if "path" in fields:
            device.pop("pool", None)
            device.pop("volume", None)
        new[key][index] = device
    return new


def _show(text: dict[str, Any]) -> list[str]:
    return (json.dumps(text, indent=2, sort_keys=True) + "\n").splitlines(keepends=True)


def _hotplug(client: Client, args: argparse.Namespace, action: str, option: str,
             text: str, spec: dict[str, Any], targets: list[str], *, live: bool,
             config: bool) -> None:
    """Disks and NICs through the device API (live and/or config, as attach-disk)."""
    from virtkit.formats import virtxml

    path = client.domain_path(args.domain)
    scope = {"live": live, "config": config}
    if action == "add-device":
        fields = virtxml.device_fields(option, text)
        if option == "--disk":
            client.post(path + "/disks", {"disk": fields, **scope})
        else:
            kind = "bridge" if "bridge" in fields else fields.get("type", "network")
            client.post(path + "/interfaces", {"interface": {"type": kind, **fields},
                                                **scope})
        return
    chosen = virtxml.select(_items(spec, option, targets), text or None, option)
    items = _items(spec, option, targets)
    for index in chosen:
        if option == "--disk":
            client.post(path + "/disks/detach", {"target": items[index]["target"], **scope})
        else:
            client.post(path + "/interfaces/detach", {"mac": items[index]["mac"], **scope})


def cmd_xml(client: Client, args: argparse.Namespace) -> int:
    from virtkit.formats import virtxml

    action, option, text = _pair(args)
    text = text or ""
    if action == "build-xml":
        sys.stdout.writelines(_show(virtxml.device_fields(option, text)))
        return 0
    if not args.domain:
        raise InvalidSpec("name the domain", fix="virtkit xml DOMAIN --edit ...")
    info = client.get(client.domain_path(args.domain, "?security_info=1"))
    spec, name = info["spec"], info["name"]
    targets = [d["target"] for d in client.get(client.domain_path(args.domain,
                                                                  "/disks?inactive=1"))]
    selector = None if action != "edit" or args.edit is None else args.edit
    new = changed_spec(spec, action, option, text, selector, targets)
    printing = args.print_diff or args.print_xml
    if args.print_diff:
        sys.stdout.writelines(difflib.unified_diff(_show(spec), _show(new),
                                                   f"{name} (defined)", f"{name} (new)"))
    if args.print_xml:
        sys.stdout.writelines(_show(new))
    config = not args.no_define and (args.define or not printing)
    live = args.update
    if not config and not live:
        return 0
    hotplug = option in ("--disk", "--network") and action != "edit"
    if live and not hotplug:
        raise InvalidSpec(f"virtkit xml --{action} {option} --update: only disks and NICs "
                          "are added or removed live", fix="drop --update: the change is "
                          "defined and applies at the next start")
    if hotplug:
        _hotplug(client, args, action, option, text, spec, targets, live=live, config=config)
    else:
        client.request("PUT", client.domain_path(args.domain),
                       {"spec": new, "version": info["version"]})
    if live:
        print("Device hotplug successful.")
    if config:
        print(f"Domain '{name}' defined successfully.")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``xml`` (virt-xml)."""
    p = add_command(sub, "xml", cmd_xml, "change a domain's devices with virt-xml's "
                    "options (--edit/--add-device/--remove-device/--build-xml)")
    p.add_argument("domain", nargs="?", help="domain name or UUID (not with --build-xml)")
    p.add_argument("--edit", nargs="?", default=_UNSET, const=None, metavar="N|all|KEY=VAL",
                   help="change the first (or the Nth, all, or the matching) device")
    p.add_argument("--add-device", action="store_true", help="add a device")
    p.add_argument("--remove-device", action="store_true", help="remove the device(s) the "
                   "option's value selects (N, all, target=vdb, mac=...)")
    p.add_argument("--build-xml", action="store_true", help="print the device the option "
                   "makes (as virtkit's spec)")
    p.add_argument("--disk", help="virt-install's --disk text")
    p.add_argument("--network", help="virt-install's --network text")
    p.add_argument("--graphics", help="virt-install's --graphics text")
    p.add_argument("--metadata", help="title=...,description=...")
    p.add_argument("--update", action="store_true", help="also change the running domain "
                   "(hotplug)")
    p.add_argument("--define", action="store_true", help="define even with --print-*")
    p.add_argument("--no-define", action="store_true", help="only the running domain")
    p.add_argument("--print-diff", action="store_true", help="show the change to the spec")
    p.add_argument("--print-xml", action="store_true", help="show the new spec")
    p.add_argument("--confirm", action="store_true", help=argparse.SUPPRESS)

