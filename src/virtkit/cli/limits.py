"""virsh schedinfo, memtune, blkiotune, blkdeviotune: resource limits, shown and set
as virsh does (``name : value`` lines; --live / --config / --current)."""

from __future__ import annotations

import argparse
import functools
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec

UNLIMITED_KIB = 9007199254740991
IOTUNE = ("total_bytes_sec", "read_bytes_sec", "write_bytes_sec",
          "total_iops_sec", "read_iops_sec", "write_iops_sec")
_SUFFIX = {"": 1, "k": 1, "kib": 1, "m": 1024, "mib": 1024, "g": 1024**2, "gib": 1024**2,
           "t": 1024**3, "tib": 1024**3, "b": 0}


def kib(text: str) -> int:
    """virsh memtune's sizes: KiB by default, a suffix scales (1G, 512M); -1 = unlimited."""
    raw = text.strip().lower()
    if raw == "-1":
        return UNLIMITED_KIB
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    if not number.isdecimal() or unit not in _SUFFIX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 1G, -1)")
    return int(number) // 1024 if unit == "b" else int(number) * _SUFFIX[unit]


def _scope(args: argparse.Namespace) -> dict[str, bool]:
    return {"live": bool(args.live), "config": bool(args.config)}


def _print(result: dict[str, Any], keys: list[str], args: argparse.Namespace,
           first: list[tuple[str, Any]] | None = None) -> None:
    if args.json:
        render.as_json(result)
        return
    lines = list(first or []) + [(key, result.get(key)) for key in keys]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        shown = "unlimited" if value == UNLIMITED_KIB else ("" if value is None else value)
        print(f"{key:<{width}}: {shown}")
    print()


def _limits(client: Client, args: argparse.Namespace, kind: str,
            values: dict[str, int]) -> dict[str, Any]:
    path = client.domain_path(args.domain, f"/limits/{kind}")
    if values:
        result: dict[str, Any] = client.post(path, {"values": values, **_scope(args)})
        return result
    shown: dict[str, Any] = client.get(path + ("?config=true" if args.config else ""))
    return shown


def cmd_schedinfo(client: Client, args: argparse.Namespace) -> int:
    values: dict[str, int] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdecimal():
            raise InvalidSpec(f"--set {item!r}: write NAME=NUMBER, e.g. cpu_shares=2048")
        values[key.strip()] = int(value)
    if args.weight is not None:  # virsh's legacy --weight (Xen credit scheduler)
        values["cpu_shares"] = args.weight
    result = _limits(client, args, "schedinfo", values)
    _print(result, ["cpu_shares", "vcpu_period", "vcpu_quota"], args,
           [("Scheduler", "posix")])
    return 0


def cmd_memtune(client: Client, args: argparse.Namespace) -> int:
    values = {key: value for key in ("hard_limit", "soft_limit", "swap_hard_limit")
              if (value := getattr(args, key)) is not None}
    _print(_limits(client, args, "memtune", values),
           ["hard_limit", "soft_limit", "swap_hard_limit"], args)
    return 0


#: virsh blkiotune's per-device options: (argparse dest, the spec's key, shown name)
DEVICE_OPTIONS = (("device_weights", "weight", "device_weight"),
                  ("device_read_iops_sec", "read_iops_sec", "device_read_iops_sec"),
                  ("device_write_iops_sec", "write_iops_sec", "device_write_iops_sec"),
                  ("device_read_bytes_sec", "read_bytes_sec", "device_read_bytes_sec"),
                  ("device_write_bytes_sec", "write_bytes_sec", "device_write_bytes_sec"))


def device_values(text: str, option: str) -> list[tuple[str, int]]:
    """virsh's ``/dev/sda,500[,/dev/sdb,300...]``: (path, value) pairs."""
    parts = text.split(",")
    if len(parts) % 2 or not all(p.startswith("/") and v.strip().isdecimal()
                                 for p, v in zip(parts[::2], parts[1::2], strict=True)):
        raise InvalidSpec(f"--{option.replace('_', '-')} {text!r}: write PATH,VALUE"
                          "[,PATH,VALUE...], e.g. /dev/sda,500")
    return [(path, int(value)) for path, value in zip(parts[::2], parts[1::2], strict=True)]


def cmd_blkiotune(client: Client, args: argparse.Namespace) -> int:
    values = {"weight": args.weight} if args.weight is not None else {}
    devices: dict[str, dict[str, Any]] = {}
    for dest, key, _shown in DEVICE_OPTIONS:
        for path, value in device_values(getattr(args, dest) or "", dest) \
                if getattr(args, dest) else []:
            devices.setdefault(path, {"path": path})[key] = value
    path = client.domain_path(args.domain, "/limits/blkiotune")
    if devices:
        result = client.post(path, {"values": values, "devices": list(devices.values()),
                                    **_scope(args)})
    else:
        result = _limits(client, args, "blkiotune", values)
    _print(result, ["weight", *(shown for _d, _k, shown in DEVICE_OPTIONS)], args)
    return 0


def cmd_blkdeviotune(client: Client, args: argparse.Namespace) -> int:
    values = {key: value for key in IOTUNE if (value := getattr(args, key)) is not None}
    path = client.domain_path(args.domain, f"/disks/{quote(args.device, safe='')}/iotune")
    if values:
        result = client.post(path, {"values": values, **_scope(args)})
    else:
        result = client.get(path + ("?config=true" if args.config else ""))
    _print(result, list(IOTUNE), args)
    return 0


def _scope_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", action="store_true", help="change the running QEMU")
    p.add_argument("--config", action="store_true", help="change the stored definition "
                   "(applied at every start); with neither: live if running, else config")
    p.add_argument("--current", action="store_true", help="the default (virsh's flag)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = functools.partial(add_command, sub, domain=True, json_flag=True)
    p = add("schedinfo", cmd_schedinfo, "show or set CPU scheduler limits (cgroup cpu "
            "weight, CFS period and quota)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="cpu_shares (2-262144), vcpu_period (1000-1000000 us), vcpu_quota "
                   "(us per period, -1 unlimited); repeatable")
    p.add_argument("--weight", type=int, help=argparse.SUPPRESS)
    _scope_flags(p)
    p = add("memtune", cmd_memtune, "show or set memory limits of the QEMU's cgroup")
    for flag, text in (("--hard-limit", "the most it may use"),
                       ("--soft-limit", "what it is pushed back to under pressure"),
                       ("--swap-hard-limit", "memory plus swap")):
        p.add_argument(flag, type=kib, metavar="SIZE", help=f"{text}; KiB, or with a "
                       "suffix (512M, 2G); -1 unlimited")
    _scope_flags(p)
    p = add("blkiotune", cmd_blkiotune, "show or set the block I/O weight of the QEMU's "
            "cgroup, and per host device weights and throttles (cgroup v1 blkio or v2 io)")
    p.add_argument("--weight", type=int, help="10-1000")
    for dest, _key, _shown in DEVICE_OPTIONS:
        what = "weight (10-1000)" if dest == "device_weights" else dest.removeprefix(
            "device_").replace("_", " ").replace(" sec", "/s")
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, metavar="PATH,N[,PATH,N]",
                       help=f"{what} per host block device, e.g. /dev/sda,500; 0 removes it")
    _scope_flags(p)
    p = add("blkdeviotune", cmd_blkdeviotune, "show or set one disk's I/O throttle "
            "(bytes/s and IOPS; 0 unlimited)")
    p.add_argument("device", help="the disk: target (vda) or path")
    for key in IOTUNE:
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, metavar="N")
    _scope_flags(p)
