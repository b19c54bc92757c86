"""virsh's device commands: attach-disk, detach-disk, change-media, attach-interface,
detach-interface, setvcpus, setmem, setmaxmem, domblklist, plus attach-memory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec


def _scope(args: argparse.Namespace) -> dict[str, bool]:
    """virsh's --live/--config/--persistent/--current -> the API's live/config."""
    live, config = args.live, args.config
    if getattr(args, "persistent", False):
        return {"live": True, "config": True, "persistent": True}
    return {"live": live, "config": config}


def _post(client: Client, args: argparse.Namespace, suffix: str, body: dict[str, Any],
          method: str = "POST") -> Any:
    scope = _scope(args)
    if scope.pop("persistent", False):  # live too when it runs
        state = client.get(client.domain_path(args.domain))["state"]
        scope["live"] = state not in ("shutoff", "crashed")
    return client.request(method, client.domain_path(args.domain, suffix), {**body, **scope})


def _where(result: dict[str, Any]) -> str:
    places = [word for word, on in (("live", result["live"]), ("config", result["config"]))
              if on]
    return " and ".join(places)


def _pending(result: dict[str, Any]) -> str:
    return ("; the guest has not released it yet: it goes when the guest lets go"
            if result.get("pending") else "")


def _virsh_size(text: str) -> str:
    """A size as virsh reads it: a bare number is KiB; 512M, 2G ... as written (the
    daemon parses it)."""
    return text.strip() + "K" if text.strip().isdecimal() else text.strip()


def cmd_attach_device(client: Client, args: argparse.Namespace) -> int:
    """attach-device / detach-device FILE: one libvirt device element."""
    try:
        xml = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read {args.file}: {exc.strerror}",
                          fix="give the path of a device XML file ('-' reads stdin)") from None
    action = "attach" if args.command == "attach-device" else "detach"
    result = _post(client, args, f"/devices/{action}", {"xml": xml})
    print(f"Device {action}ed successfully ({_where(result)}){_pending(result)}")
    return 0


def disk_type(disk: dict[str, Any]) -> str:
    """virsh's disk Type: ``block`` for a device node, else ``file``."""
    return "block" if str(disk.get("path") or "").startswith("/dev/") else "file"


def cmd_domblklist(client: Client, args: argparse.Namespace) -> int:
    suffix = "/disks" + ("?inactive=1" if args.inactive else "")
    disks = client.get(client.domain_path(args.domain, suffix))
    if args.json:
        render.as_json(disks)
        return 0
    if args.details:  # virsh's column order, then virtkit's Bus
        render.table(["Type", "Device", "Target", "Source", "Bus"],
                     [[disk_type(d), d["device"], d["target"], d["path"] or "-", d["bus"]]
                      for d in disks])
    else:
        render.table(["Target", "Source"], [[d["target"], d["path"] or "-"] for d in disks])
    return 0


def cmd_attach_disk(client: Client, args: argparse.Namespace) -> int:
    disk: dict[str, Any] = {"device": "cdrom" if args.type == "cdrom" else "disk"}
    if args.pool:
        disk.update(pool=args.pool, volume=args.source)
    else:
        disk["path"] = args.source
    for key, value in (("target", args.target), ("bus", args.targetbus),
                       ("format", args.subdriver), ("cache", args.cache),
                       ("serial", args.serial), ("aio", args.io)):
        if value:
            disk[key] = value
    if args.mode == "readonly" or args.type == "cdrom":
        disk["readonly"] = True
    result = _post(client, args, "/disks", {"disk": disk})
    print(f"Disk {result['target']} attached successfully ({_where(result)})")
    return 0


def cmd_detach_disk(client: Client, args: argparse.Namespace) -> int:
    result = _post(client, args, "/disks/detach", {"target": args.target})
    print(f"Disk {args.target} detached successfully ({_where(result)}){_pending(result)}")
    return 0


def cmd_change_media(client: Client, args: argparse.Namespace) -> int:
    if args.eject and args.source:
        raise InvalidSpec("--eject takes no source", fix="drop the source, or use --update")
    if not args.eject and not args.source:
        raise InvalidSpec("give the new medium's path, or --eject")
    result = _post(client, args, "/media", {"target": args.path, "path": args.source,
                                            "force": args.force})
    done = "ejected" if result["path"] is None else f"changed to {result['path']}"
    print(f"Successfully {done} media of {args.path} ({_where(result)})")
    return 0


def cmd_attach_interface(client: Client, args: argparse.Namespace) -> int:
    interface: dict[str, Any] = {"type": args.type, "model": args.model}
    if args.type == "network":
        interface["network"] = args.source
    elif args.type == "bridge":
        interface["bridge"] = args.source
    if args.mac:
        interface["mac"] = args.mac
    result = _post(client, args, "/interfaces", {"interface": interface})
    print(f"Interface {result['mac']} attached successfully ({_where(result)})")
    return 0


def cmd_detach_interface(client: Client, args: argparse.Namespace) -> int:
    if not args.mac:
        raise InvalidSpec("name the interface with --mac", fix="see 'virtkit domiflist'")
    result = _post(client, args, "/interfaces/detach", {"mac": args.mac})
    print(f"Interface {args.mac} detached successfully ({_where(result)}){_pending(result)}")
    return 0


def cmd_setvcpus(client: Client, args: argparse.Namespace) -> int:
    if args.guest:
        result = client.request("PUT", client.domain_path(args.domain, "/guest/vcpus"),
                                {"count": args.count})
        print(f"{result['online']} vCPU(s) online in the guest")
        return 0
    result = _post(client, args, "/vcpus", {"count": args.count, "maximum": args.maximum},
                   method="PUT")
    what = "maximum vCPUs" if args.maximum else "vCPUs"
    print(f"{what} of '{result['name']}' set to {args.count} ({_where(result)})"
          f"{_pending(result)}")
    return 0


def _set_memory(client: Client, args: argparse.Namespace, maximum: bool) -> int:
    result = _post(client, args, "/memory", {"size_mib": _virsh_size(args.size),
                                             "maximum": maximum}, method="PUT")
    what = "maximum memory" if maximum else "memory"
    print(f"{what} of '{result['name']}' set to {result['memory_mib']} MiB ({_where(result)})")
    return 0


def cmd_setmem(client: Client, args: argparse.Namespace) -> int:
    return _set_memory(client, args, maximum=False)


def cmd_setmaxmem(client: Client, args: argparse.Namespace) -> int:
    return _set_memory(client, args, maximum=True)


def cmd_attach_memory(client: Client, args: argparse.Namespace) -> int:
    result = _post(client, args, "/memory", {"size_mib": _virsh_size(args.size)})
    print(f"'{result['name']}' now has {result['memory_mib']} MiB ({_where(result)})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the device commands to the CLI's subparsers."""
    def add(name: str, func: Any, text: str, *, scope: bool = True,
            persistent: bool = False) -> argparse.ArgumentParser:
        parser = add_command(sub, name, func, text, domain=True)
        if scope:
            parser.add_argument("--live", action="store_true", help="change the running VM")
            parser.add_argument("--config", action="store_true",
                                help="change the definition (from the next start)")
            parser.add_argument("--current", action="store_true",
                                help="live if running, else config (the default)")
        if persistent:
            parser.add_argument("--persistent", action="store_true",
                                help="the definition, and the running VM if it runs")
        return parser

    for name in ("attach-device", "detach-device"):
        p = add(name, cmd_attach_device, f"{name.split('-')[0]} a device from a libvirt XML "
                "file: <disk>, <interface>, <memory model='dimm'>, <hostdev type='pci'>",
                persistent=True)
        p.add_argument("file", help="XML file ('-' = stdin)")
    p = add("domblklist", cmd_domblklist, "list a domain's disks (the running ones when it "
            "runs)", scope=False)
    p.add_argument("--inactive", action="store_true", help="the definition's disks")
    p.add_argument("--details", action="store_true", help="also type, device and bus")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("attach-disk", cmd_attach_disk, "attach a disk (hotplug with --live)",
            persistent=True)
    p.add_argument("source", help="host path of the image (or a volume with --pool)")
    p.add_argument("target", nargs="?", help="guest name such as vdb (default: next free)")
    p.add_argument("--pool", help="SOURCE is a volume of this storage pool")
    p.add_argument("--targetbus", choices=("virtio", "scsi", "sata", "ide"))
    p.add_argument("--driver", choices=("qemu",), help="accepted for virsh compatibility")
    p.add_argument("--subdriver", help="image format: qcow2, raw ... (default: detected)")
    p.add_argument("--type", choices=("disk", "cdrom"), default="disk")
    p.add_argument("--mode", choices=("readonly", "shareable"))
    p.add_argument("--cache", choices=("none", "writeback", "writethrough", "directsync",
                                       "unsafe"))
    p.add_argument("--serial", help="the disk's serial number")
    p.add_argument("--io", choices=("threads", "native", "io_uring"), help="QEMU's aio mode")
    p.add_argument("--sourcetype", choices=("file", "block"),
                   help="accepted for virsh compatibility (virtkit sees it from the path)")
    p = add("detach-disk", cmd_detach_disk, "detach a disk (by target or source path)",
            persistent=True)
    p.add_argument("target", help="vdb, or the source path")
    p = add("change-media", cmd_change_media, "insert, change or eject a CD-ROM's medium")
    p.add_argument("path", help="the CD-ROM's target (hdc, sda ...) or current source")
    p.add_argument("source", nargs="?", help="the new medium (ISO path)")
    p.add_argument("--eject", action="store_true", help="take the medium out")
    p.add_argument("--insert", action="store_true", help="put SOURCE in (accepted)")
    p.add_argument("--update", action="store_true", help="replace the medium (accepted)")
    p.add_argument("--force", action="store_true", help="even if the guest locked the tray")
    p = add("attach-interface", cmd_attach_interface, "attach a network interface",
            persistent=True)
    p.add_argument("type", choices=("network", "bridge", "user"))
    p.add_argument("source", nargs="?", help="network name or host bridge")
    p.add_argument("--mac", help="MAC address (default: a fresh 52:54:00 one)")
    p.add_argument("--model", default="virtio", choices=("virtio", "e1000", "rtl8139"))
    p = add("detach-interface", cmd_detach_interface, "detach a network interface",
            persistent=True)
    p.add_argument("type", choices=("network", "bridge", "user"))
    p.add_argument("--mac", help="the interface's MAC address")
    p = add("setvcpus", cmd_setvcpus, "change the number of vCPUs (hotplug with --live)")
    p.add_argument("count", type=int)
    p.add_argument("--maximum", action="store_true", help="the hot-plug ceiling (config)")
    p.add_argument("--guest", action="store_true",
                   help="online/offline vCPUs inside the guest (guest agent)")
    p = add("setmem", cmd_setmem, "set the memory: the balloon target live, boot memory in "
            "the definition (bare numbers are KiB, as in virsh; or 512M, 2G)")
    p.add_argument("size")
    p = add("setmaxmem", cmd_setmaxmem, "set the maximum memory (definition)")
    p.add_argument("size")
    p = add("attach-memory", cmd_attach_memory, "hot-add memory (a DIMM live; more boot "
            "memory in the definition); bare numbers are KiB, or 512M, 1G")
    p.add_argument("size")
