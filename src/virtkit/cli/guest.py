"""Guest agent commands: virsh's names (guestinfo, domfsfreeze, domtime ...) and
``virtkit guest ping|exec|cat|write``, which libvirt lacks."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec


def _path(client: Client, args: argparse.Namespace, suffix: str) -> str:
    return client.domain_path(args.domain, "/guest" + suffix)


def _show(args: argparse.Namespace, result: Any, text: str) -> int:
    if getattr(args, "json", False):
        render.as_json(result)
    else:
        print(text)
    return 0


def cmd_ping(client: Client, args: argparse.Namespace) -> int:
    result = client.get(_path(client, args, "/ping"))
    return _show(args, result, f"guest agent of '{result['name']}' answered in "
                               f"{result['ms']} ms")


def cmd_guestinfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_path(client, args, "/info"))
    if args.json:
        render.as_json(info)
        return 0
    os_info = info.get("os") or {}
    zone = info.get("timezone") or {}
    pairs: list[tuple[str, Any]] = [
        ("agent version", info.get("agent_version")),
        ("os.id", os_info.get("id")), ("os.name", os_info.get("pretty-name")),
        ("os.kernel-release", os_info.get("kernel-release")),
        ("os.machine", os_info.get("machine")),
        ("hostname", info.get("hostname")),
        ("timezone", f"{zone.get('zone', '')} (UTC{zone.get('offset', 0) / 3600:+g})"
         if zone else None),
        ("users", ", ".join(user["user"] for user in info.get("users") or []) or "-"),
    ]
    for index, fs in enumerate(info.get("filesystems") or []):
        pairs.append((f"fs.{index}", f"{fs.get('mountpoint')} {fs.get('type')} "
                                     f"({fs.get('name')})"))
    render.keyvalues([(key, value) for key, value in pairs if value is not None])
    return 0


def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    """Run a program in the guest; its output is ours, its exit code is ours."""
    argv = args.argv
    if not argv:
        raise InvalidSpec("name the program to run in the guest",
                          fix=f"virtkit guest exec {args.domain} -- /bin/uname -a")
    body: dict[str, Any] = {"path": argv[0], "args": argv[1:], "timeout": args.timeout,
                            "env": args.env or []}
    if args.stdin:
        body["input"] = sys.stdin.read()
    result = client.post(_path(client, args, "/exec"), body)
    if args.json:
        render.as_json(result)
        return 0
    sys.stdout.write(result["stdout"])
    sys.stderr.write(result["stderr"])
    if result.get("signal") is not None:
        print(f"virtkit: killed by signal {result['signal']}", file=sys.stderr)
        return 128 + int(result["signal"])
    return int(result.get("exitcode") or 0)


def cmd_cat(client: Client, args: argparse.Namespace) -> int:
    data = client.get(_path(client, args, f"/file?path={quote(args.path)}"))
    sys.stdout.buffer.write(data if isinstance(data, bytes) else json.dumps(data).encode())
    return 0


def cmd_write(client: Client, args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    suffix = f"/file?path={quote(args.path)}" + ("&append=1" if args.append else "")
    result = client.request("PUT", _path(client, args, suffix), data=data)
    print(f"wrote {result['bytes']} bytes to {result['path']}", file=sys.stderr)
    return 0


def cmd_fsfreeze(client: Client, args: argparse.Namespace) -> int:
    result = client.post(_path(client, args, "/fsfreeze"), {"mountpoints": args.mountpoint or []})
    return _show(args, result, f"Froze {result['frozen']} filesystem(s)")


def cmd_fsthaw(client: Client, args: argparse.Namespace) -> int:
    result = client.post(_path(client, args, "/fsthaw"))
    return _show(args, result, f"Thawed {result['thawed']} filesystem(s)")


def cmd_fsfreeze_status(client: Client, args: argparse.Namespace) -> int:
    result = client.get(_path(client, args, "/fsfreeze"))
    return _show(args, result, result["status"])


def cmd_fstrim(client: Client, args: argparse.Namespace) -> int:
    body = {"minimum": args.minimum} if args.minimum else {}
    result = client.post(_path(client, args, "/fstrim"), body)
    if args.json:
        render.as_json(result)
        return 0
    render.table(["Path", "Trimmed", "Error"],
                 [[p.get("path"), p.get("trimmed", "-"), p.get("error", "")]
                  for p in result["paths"]])
    return 0


def cmd_set_user_password(client: Client, args: argparse.Namespace) -> int:
    client.post(_path(client, args, "/user-password"),
                {"user": args.user, "password": args.password, "crypted": args.encrypted})
    print(f"Password set successfully for {args.user} in {args.domain}")
    return 0


def cmd_guestvcpus(client: Client, args: argparse.Namespace) -> int:
    if args.count is not None:
        result = client.request("PUT", _path(client, args, "/vcpus"), {"count": args.count})
        print(f"{result['online']} vCPU(s) online in the guest ({result['changed']} changed)")
        return 0
    rows = client.get(_path(client, args, "/vcpus"))
    if args.json:
        render.as_json(rows)
        return 0
    online = ",".join(str(row["id"]) for row in rows if row["online"])
    offlinable = ",".join(str(row["id"]) for row in rows if row["can_offline"])
    render.keyvalues([("vcpus", f"0-{len(rows) - 1}"), ("online", online or "-"),
                      ("offlinable", offlinable or "-")])
    return 0


def cmd_domtime(client: Client, args: argparse.Namespace) -> int:
    if args.sync or args.now or args.time is not None:
        body: dict[str, Any] = {"now": args.now}
        if args.time is not None:
            body["time"] = args.time
        result = client.request("PUT", _path(client, args, "/time"), body)
    else:
        result = client.get(_path(client, args, "/time"))
    if args.json:
        render.as_json(result)
    elif args.pretty:
        import datetime  # here, not at the top: every CLI call imports this module

        stamp = datetime.datetime.fromtimestamp(result["time"], datetime.UTC)
        print(f"Time: {stamp:%Y-%m-%d %H:%M:%S} UTC (offset from host {result['offset']:+g}s)")
    else:
        print(f"Time: {int(result['time'])}")
    return 0


def cmd_domhostname(client: Client, args: argparse.Namespace) -> int:
    print(client.get(_path(client, args, "/info")).get("hostname") or "")
    return 0


def cmd_agent_command(client: Client, args: argparse.Namespace) -> int:
    """qemu-agent-command: a raw JSON command ('{"execute": "guest-info"}')."""
    try:
        request = json.loads(args.command)
    except ValueError:
        raise InvalidSpec("the command must be JSON, e.g. '{\"execute\":\"guest-info\"}'"
                          ) from None
    if not isinstance(request, dict) or "execute" not in request:
        raise InvalidSpec("the command must be a JSON object with \"execute\"")
    request["timeout"] = args.timeout
    result = client.post(_path(client, args, "/command"), request)
    print(json.dumps(result, indent=2 if args.pretty else None))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the guest agent commands to the CLI's subparsers."""
    add = functools.partial(add_command, sub, domain=True)

    guest = sub.add_parser("guest", help="talk to the guest agent (ping, exec, cat, write)",
                           description="commands run by qemu-guest-agent inside the guest")
    verbs = guest.add_subparsers(dest="guest_command", required=True, metavar="VERB")
    add("ping", cmd_ping, "check that the guest agent answers", json_flag=True, parent=verbs)
    add("info", cmd_guestinfo, "the guest's OS, host name, users, time zone, file systems",
        json_flag=True, parent=verbs)
    p = add("exec", cmd_exec, "run a program in the guest: its output and exit code are "
            "the command's", json_flag=True, parent=verbs)
    p.add_argument("argv", nargs="*", metavar="-- PROGRAM [ARGS]",
                   help="the program and its arguments, after '--'")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    p.add_argument("--env", action="append", help="NAME=VALUE for the program (repeatable)")
    p.add_argument("--stdin", action="store_true", help="pass our standard input to it")
    p = add("cat", cmd_cat, "print a guest file", parent=verbs)
    p.add_argument("path", help="absolute path in the guest")
    p = add("write", cmd_write, "write standard input to a guest file", parent=verbs)
    p.add_argument("path", help="absolute path in the guest")
    p.add_argument("--append", action="store_true", help="append instead of replacing")

    add("guestinfo", cmd_guestinfo, "the guest's OS, host name, users, time zone, file "
        "systems (guest agent)", json_flag=True)
    add("domhostname", cmd_domhostname, "the guest's host name (guest agent)")
    p = add("domfsfreeze", cmd_fsfreeze, "freeze the guest's file systems (guest agent)",
            json_flag=True)
    p.add_argument("--mountpoint", action="append", help="only this one (repeatable)")
    add("domfsthaw", cmd_fsthaw, "thaw the guest's file systems", json_flag=True)
    add("domfsfreeze-status", cmd_fsfreeze_status, "frozen or thawed", json_flag=True)
    p = add("domfstrim", cmd_fstrim, "discard unused blocks in the guest (guest agent)",
            json_flag=True)
    p.add_argument("--minimum", type=int, help="skip free ranges smaller than BYTES")
    p = add("set-user-password", cmd_set_user_password, "set a guest user's password "
            "(guest agent)")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--encrypted", action="store_true", help="the password is already crypted")
    p = add("guestvcpus", cmd_guestvcpus, "show the guest's online vCPUs, or set how many "
            "are online (guest agent)", json_flag=True)
    p.add_argument("--count", type=int, help="bring this many online, the rest offline")
    p = add("domtime", cmd_domtime, "show or set the guest's clock (guest agent)",
            json_flag=True)
    p.add_argument("--pretty", action="store_true", help="a readable date")
    p.add_argument("--sync", action="store_true", help="set it from its own RTC")
    p.add_argument("--now", action="store_true", help="set it to the host's time")
    p.add_argument("--time", type=float, help="set it to SECONDS since the epoch")
    p = add("qemu-agent-command", cmd_agent_command, "send a raw guest agent command (JSON)")
    p.add_argument("command", help="e.g. '{\"execute\":\"guest-info\"}'")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    p.add_argument("--pretty", action="store_true", help="indent the answer")
