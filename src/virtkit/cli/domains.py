"""The virsh-named domain commands: list, define, start, shutdown, dominfo ..."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from virtkit.cli import objects, render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.errors import InvalidSpec

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _ref(client: Client, args: argparse.Namespace, suffix: str = "") -> str:
    return client.domain_path(args.domain, suffix)


#: virsh's words for the states (virshDomainStateToString)
STATE_WORDS = {"shutoff": "shut off"}


def state_word(state: str) -> str:
    return STATE_WORDS.get(state, state)


def list_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """virsh list's selection: running ones, --all, --inactive, --state-* filters."""
    wanted = {state for flag, state in (("state_running", "running"),
                                        ("state_paused", "paused"),
                                        ("state_shutoff", "shutoff"),
                                        ("state_other", "in shutdown"),
                                        ("state_other", "crashed"))
              if getattr(args, flag, False)}
    if args.inactive:
        wanted |= {"shutoff", "crashed"}
    if wanted:
        return [row for row in rows if row["state"] in wanted]
    if args.all:
        return rows
    return [row for row in rows if row["state"] not in ("shutoff", "crashed")]


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    everything = args.all or args.inactive or args.state_shutoff or args.state_other
    # --all: in a cluster, every host's VMs with a Host column (docs/cluster.md)
    rows = list_rows(client.get("/v1/domains?all=" + ("1" if everything else "0")
                                + ("&cluster=1" if args.all else "")), args)
    with_image = getattr(args, "with_managed_save", False)
    if with_image or getattr(args, "without_managed_save", False):
        rows = [row for row in rows if row.get("managed_save") == with_image]
    # virsh: an inactive domain with a managed save image shows as 'saved'
    if getattr(args, "managed_save", False):
        rows = [dict(row, state="saved") if row.get("managed_save")
                and row["state"] in ("shutoff", "crashed") else row for row in rows]
    if args.json:
        render.as_json(rows)
    elif args.name or args.uuid or args.id:  # one line per domain, as virsh
        lines = []
        for row in rows:
            if args.id and row.get("id") is None:
                continue  # virsh --id lists running domains only
            parts = [str(row["id"])] if args.id else []
            if args.uuid:
                parts.append(str(row["uuid"]))
            if args.name:
                parts.append(render.safe(row["name"]))
            lines.append(" ".join(parts))
        sys.stdout.write("".join(f"{line}\n" for line in lines) + "\n")
    else:
        hosts = any("host" in row for row in rows)
        headers = ["Id", "Name", "State"] + (["Title"] if args.title else []) \
            + (["Host"] if hosts else [])
        render.table(headers, [[row.get("id") or "-", row["name"], state_word(row["state"])]
                               + ([row.get("title") or ""] if args.title else [])
                               + ([row.get("host") or "-"] if hosts else [])
                               for row in rows], colour_column=2)
        print()
    return 0


def _read_spec_file(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read {path}: {exc.strerror}",
                          fix="give the path of a YAML or JSON spec file") from None


def _from_file(client: Client, args: argparse.Namespace, path: str, done: str) -> Any:
    """POST the spec or XML file of ``args.file`` to ``path``; report it as ``done``."""
    result = objects.define(client, path, _read_spec_file(args.file), force=args.force)
    if args.json:
        render.as_json(result)
    else:
        where = f" on host {result['host']}" if result.get("host") else ""
        print(f"Domain '{result['name']}' {done} from {args.file}{where}")
    return result


def cmd_define(client: Client, args: argparse.Namespace) -> int:
    _from_file(client, args, "/v1/domains" + _on_host(args), "defined")
    return 0


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    """virsh create: a transient domain from a file, started at once, gone when it stops."""
    result = _from_file(client, args, "/v1/domains/create", "created")
    if args.console:
        from virtkit.cli.console import attach

        return attach(client, result["name"])
    return 0


def cmd_undefine(client: Client, args: argparse.Namespace) -> int:
    flags = [k + "=1" for k in ("nvram", "snapshots_metadata", "remove_all_storage",
                                "managed_save") if getattr(args, k)]
    suffix = "?" + "&".join(flags) if flags else ""
    result = client.request("DELETE", _ref(client, args) + suffix)
    print(f"Domain '{result['name']}' has been undefined")
    for volume in result.get("removed_volumes", []):
        print(f"Volume '{volume}' removed.")
    reasons = result.get("kept_reasons") or {}
    for volume in result.get("kept_volumes", []):
        why = reasons.get(volume) or "it could not be removed (in use or pool inactive)"
        print(f"Volume '{volume}' kept: {why}")
    return 0


def _on_host(args: argparse.Namespace) -> str:
    """``--host NAME`` (a cluster): the query that pins the host."""
    return "?" + urlencode({"host": args.host}) if getattr(args, "host", None) else ""


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    query = _on_host(args)
    if getattr(args, "place", False):  # a cluster: elsewhere when its host cannot
        query = "?" + urlencode({"place": "1"})
    result = client.post(_ref(client, args, "/start") + query,
                         {"paused": args.paused, "force_boot": args.force_boot})
    where = f" on host {result['host']}" if result.get("placed") else ""
    print(f"Domain '{result['name']}' started{where}" + (" (paused)" if args.paused else ""))
    if args.console:
        from virtkit.cli.console import attach

        return attach(client, args.domain, force=args.force)
    return 0


def _shutdown(client: Client, args: argparse.Namespace, verb: str) -> int:
    body: dict[str, Any] = {"wait": args.wait, "mode": args.mode}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    result = client.post(_ref(client, args, f"/{verb}"), body)
    if verb == "reboot":
        print(f"Domain '{result['name']}' is being rebooted")
        if result.get("note"):
            print(f"Note: {render.safe(result['note'])}")
    elif args.wait:
        print(f"Domain '{result['name']}' is shut off")
    else:
        print(f"Domain '{result['name']}' is being shutdown")
    return 0


def cmd_shutdown(client: Client, args: argparse.Namespace) -> int:
    return _shutdown(client, args, "shutdown")


def cmd_reboot(client: Client, args: argparse.Namespace) -> int:
    return _shutdown(client, args, "reboot")


_SIMPLE_MESSAGES = {"destroy": "destroyed", "suspend": "suspended", "resume": "resumed",
                    "reset": "was reset"}


def cmd_simple(client: Client, args: argparse.Namespace) -> int:
    result = client.post(_ref(client, args, f"/{args.command}"))
    print(f"Domain '{result['name']}' {_SIMPLE_MESSAGES[args.command]}")
    return 0


def cmd_save(client: Client, args: argparse.Namespace) -> int:
    path = str(Path(args.file).absolute())
    result = client.post(_ref(client, args, "/save"), {"path": path})
    print(f"Domain '{result['name']}' saved to {path}")
    return 0


def cmd_restore(client: Client, args: argparse.Namespace) -> int:
    path = str(Path(args.file).absolute())
    result = client.post("/v1/domains/restore", {"path": path, "paused": args.paused})
    print(f"Domain '{result['name']}' restored from {path}")
    return 0


def _secure(args: argparse.Namespace) -> str:
    """``?security_info=1`` when the user asked for secrets (virsh's --security-info)."""
    return "?security_info=1" if getattr(args, "security_info", False) else ""


def cmd_dominfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_ref(client, args, _secure(args)))
    if args.json:
        render.as_json(info)
        return 0
    sys.stdout.write("".join(f"{key + ':':<15} {'-' if value is None else render.safe(value)}\n"
                             for key, value in dominfo_pairs(info)) + "\n")
    return 0


def dominfo_pairs(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """virsh dominfo's fields in its order and wording (``%-15s %s``, yes/no, enable/
    disable, ``shut off``), then virtkit's own (QEMU pid, machine, accelerator ...)."""
    started = info.get("started")
    cpu_time = info.get("cpu_time")
    return [
        ("Id", info.get("id") or "-"),
        ("Name", info["name"]),
        ("UUID", info["uuid"]),
        ("OS Type", "hvm"),
        ("State", state_word(info["state"])),
        ("CPU(s)", info["vcpus"]),
        *([("CPU time", f"{cpu_time:.1f}s")] if cpu_time is not None else []),
        ("Max memory", f"{info['max_memory_mib'] * 1024} KiB"),
        ("Used memory", f"{info['memory_mib'] * 1024} KiB"),
        ("Persistent", "yes" if info.get("persistent", True) else "no"),
        ("Autostart", "enable" if info["autostart"] else "disable"),
        ("Managed save", "yes" if info.get("managed_save") else "no"),
        *_security_lines(info.get("security")),
        *([("Title", info["title"])] if info.get("title") else []),
        *([("Host", info["host"])] if info.get("host") else []),  # in a cluster
        ("QEMU pid", info["pid"]),
        ("Max CPU(s)", info["max_vcpus"]),
        ("Machine", info["machine"]),
        ("Accelerator", info["accelerator"]),
        ("Up since", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
         if started else None),
        ("Spec version", info["version"]),
        ("Console log", info["console_log"]),
    ]


def _security_lines(security: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """virsh's Security model / DOI / label lines, for a running domain only."""
    if not security:
        return []
    lines: list[tuple[str, Any]] = [("Security model", security["model"]),
                                    ("Security DOI", security["doi"])]
    if security.get("label"):
        lines.append(("Security label", security["label"]))
    if security.get("cgroup"):
        lines.append(("Cgroup", security["cgroup"][0].rsplit("/", 2)[-2] + "/"
                      + security["cgroup"][0].rsplit("/", 1)[-1]))
    elif security.get("model") not in (None, "none"):
        lines.append(("Cgroup", "NONE (no memory, pids or device limits)"))
    if "sandbox" in security:
        lines.append(("Seccomp sandbox", "on" if security["sandbox"] else "off"))
    lines += [("Security note", note) for note in security.get("notes") or []]
    return lines


def cmd_domstate(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_ref(client, args))
    if args.reason:  # virsh: "running (booted)"
        print(f"{state_word(info['state'])} ({info.get('reason') or 'unknown'})")
    else:
        print(state_word(info["state"]))
    print()
    return 0


def cmd_vncdisplay(client: Client, args: argparse.Namespace) -> int:
    vnc = client.get(_ref(client, args, "/vnc"))
    print(vnc["display"])
    return 0


def cmd_autostart(client: Client, args: argparse.Namespace) -> int:
    result = client.request("PUT", _ref(client, args, "/autostart"),
                            {"enabled": not args.disable})
    state = "marked as autostarted" if result["autostart"] else "unmarked as autostarted"
    print(f"Domain '{result['name']}' {state}")
    return 0


def cmd_dumpspec(client: Client, args: argparse.Namespace) -> int:
    sys.stdout.write(client.get(_ref(client, args, "/spec" + _secure(args)))["yaml"])
    return 0


def cmd_dumpxml(client: Client, args: argparse.Namespace) -> int:
    return objects.dumpxml(client, _ref(client, args, "/xml" + _secure(args)))


def cmd_console(client: Client, args: argparse.Namespace) -> int:
    if args.log:
        data = client.get(_ref(client, args, f"/console/log?port={args.port}"))
        sys.stdout.buffer.write(data)
        return 0
    from virtkit.cli.console import attach

    return attach(client, args.domain, force=args.force, port=args.port)


def cmd_edit(client: Client, args: argparse.Namespace) -> int:
    from virtkit.cli.edit import edit

    return edit(client, args.domain, xml=args.xml)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the domain commands to the CLI's subparsers."""
    add = functools.partial(add_command, sub, domain=True)

    p = add("list", cmd_list, "list domains (running ones unless --all)", domain=False,
            json_flag=True)
    p.add_argument("--all", action="store_true", help="include inactive domains")
    p.add_argument("--inactive", action="store_true", help="only inactive domains")
    p.add_argument("--name", action="store_true", help="print names only")
    p.add_argument("--uuid", action="store_true", help="print UUIDs only")
    p.add_argument("--id", action="store_true", help="print Ids only (running domains)")
    p.add_argument("--title", action="store_true", help="a Title column too")
    p.add_argument("--table", action="store_true", help="the table (the default)")
    for state in ("running", "paused", "shutoff", "other"):
        p.add_argument(f"--state-{state}", action="store_true",
                       help=f"only {state} domains" if state != "other" else
                       "only domains shutting down or crashed")
    p.add_argument("--managed-save", action="store_true",
                   help="show inactive domains with a managed save image as 'saved'")
    saved = p.add_mutually_exclusive_group()
    saved.add_argument("--with-managed-save", action="store_true",
                       help="only domains with a managed save image")
    saved.add_argument("--without-managed-save", action="store_true",
                       help="only domains without one")
    p = add("define", cmd_define, "define a domain from a YAML or JSON spec file, or from "
            "libvirt domain XML ('-' = stdin)", domain=False, json_flag=True)
    p.add_argument("file")
    p.add_argument("--force", action="store_true",
                   help="libvirt XML: drop what virtkit cannot honour, with a warning each")
    p.add_argument("--host", help="a cluster: define it on this host (default: placement "
                   "picks the least loaded host that fits)")
    p = add("create", cmd_create, "start a transient domain from a spec or libvirt XML file: "
            "it is undefined when it stops", domain=False, json_flag=True)
    p.add_argument("file")
    p.add_argument("--force", action="store_true",
                   help="libvirt XML: drop what virtkit cannot honour, with a warning each")
    p.add_argument("--console", action="store_true", help="attach to the serial console")
    p = add("undefine", cmd_undefine, "remove a stopped domain's definition")
    p.add_argument("--nvram", action="store_true", help="also remove its UEFI NVRAM file")
    p.add_argument("--snapshots-metadata", action="store_true",
                   help="forget its snapshots (their image files stay)")
    p.add_argument("--remove-all-storage", action="store_true",
                   help="also delete its writable disks that are pool volumes no other "
                   "domain uses")
    p.add_argument("--managed-save", action="store_true",
                   help="also remove its managed save image")
    p = add("start", cmd_start, "start a defined domain")
    p.add_argument("--console", action="store_true", help="attach to the serial console")
    p.add_argument("--paused", action="store_true", help="leave the vCPUs paused")
    p.add_argument("--force", action="store_true", help="take the console over")
    p.add_argument("--force-boot", action="store_true",
                   help="discard a managed save image and boot afresh")
    start_where = p.add_mutually_exclusive_group()
    start_where.add_argument("--host", help="a cluster: the host it must run on (refused "
                             "when it is defined on another one)")
    start_where.add_argument("--place", action="store_true",
                             help="a cluster: when its host is down or cannot take it, "
                             "start it on the host placement picks (its disks must be "
                             "on shared storage)")
    for name, func, text in (("shutdown", cmd_shutdown, "ask the guest to power off (ACPI)"),
                             ("reboot", cmd_reboot, "ask the guest to reboot (ACPI)")):
        p = add(name, func, text)
        p.add_argument("--wait", action="store_true", help="wait until it is done")
        p.add_argument("--timeout", type=float, help="seconds the guest gets (default 120)")
        p.add_argument("--mode", default="acpi",
                       help="acpi (default), agent (the guest agent), or both in order: "
                            "agent,acpi")
    for name, text in (("destroy", "stop a domain at once (pull the plug)"),
                       ("suspend", "pause a domain's vCPUs"),
                       ("resume", "resume a paused domain"),
                       ("reset", "hard-reset a domain (the reset button)")):
        add(name, cmd_simple, text)
    p = add("save", cmd_save, "save a domain's memory and device state to FILE and stop it")
    p.add_argument("file")
    p = add("restore", cmd_restore, "restore a domain from a file written by save", domain=False)
    p.add_argument("file")
    p.add_argument("--paused", action="store_true", help="leave it paused after restore")
    secrets_help = "include secrets (the VNC password) in the answer; never over --readonly"
    p = add("dominfo", cmd_dominfo, "show a domain's details", json_flag=True)
    p.add_argument("--security-info", action="store_true", help=secrets_help)
    p = add("domstate", cmd_domstate, "show a domain's state")
    p.add_argument("--reason", action="store_true", help="also show why")
    add("vncdisplay", cmd_vncdisplay, "show the VNC display of a running domain")
    p = add("autostart", cmd_autostart, "start a domain when the daemon starts")
    p.add_argument("--disable", action="store_true", help="stop autostarting it")
    p = add("dumpspec", cmd_dumpspec, "print a domain's spec as YAML")
    p.add_argument("--security-info", action="store_true", help=secrets_help)
    p = add("dumpxml", cmd_dumpxml, "print a domain as libvirt domain XML")
    p.add_argument("--security-info", action="store_true", help=secrets_help)
    p = add("console", cmd_console, "attach to a domain's serial console (Ctrl-] leaves)")
    p.add_argument("--force", action="store_true", help="take over from another client")
    p.add_argument("--log", action="store_true", help="print the console log and exit")
    p.add_argument("--port", type=int, default=0, help="serial port number (default 0)")
    p = add("edit", cmd_edit, "edit a domain's spec (or, with --xml, its libvirt XML) in "
            "$EDITOR")
    p.add_argument("--xml", action="store_true", default=None,
                   help="edit the libvirt domain XML, as virsh edit does (also when "
                   "$VIRTKIT_EDIT_FORMAT=xml)")
