"""``virtkit``: the command line, with virsh's command names.

The CLI is thin: it parses arguments, calls the daemon's API, and renders the
answer.  Errors are one clear line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import sys
from pathlib import Path

from virtkit import __version__
from virtkit.cli import render
from virtkit.cli.client import Client, connect
from virtkit.cli.onecommand import COMMANDS, OneCommand, command_word
from virtkit.cli.transport import URI_ENV, parse_uri
from virtkit.cli.usage import VirshParser
from virtkit.errors import InvalidSpec, VirtkitError

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the daemon's answer for an unknown domain (virsh: "failed to get domain 'x'")
_MISSING_DOMAIN = re.compile(r"domain '(.*)' not found", re.DOTALL)

#: commands that never need the daemon.
LOCAL_COMMANDS = {"completion"}


def cmd_host_check(client: Client | None, args: argparse.Namespace) -> int:
    """Host check through the daemon; run locally (saying so) when it cannot be reached."""
    from virtkit.host.checks import verdict_of

    if client is not None:
        checks = client.get("/v1/host/check")
    else:
        from virtkit.host.checks import run_host_checks
        from virtkit.paths import state_paths

        checks = [check.to_dict() for check in
                  run_host_checks(daemon_reachable=False, cache_dir=state_paths().cache)]
    if args.json:
        render.as_json(verdict_of(checks))
    else:
        render.status_lines(checks)
    return 1 if any(check["status"] == "FAIL" for check in checks) else 0


def nodeinfo_lines(info: dict[str, Any]) -> list[str]:
    """virsh nodeinfo's eight lines (``%-20s %s``, tools/virsh-host.c); the CPU
    frequency line only when it is known, as virsh."""
    topo = info["topology"]
    lines = [f"{'CPU model:':<20} {info['arch']}", f"{'CPU(s):':<20} {topo['cpus']}"]
    if topo.get("mhz"):
        lines.append(f"{'CPU frequency:':<20} {topo['mhz']} MHz")
    lines += [f"{'CPU socket(s):':<20} {topo['sockets']}",
              f"{'Core(s) per socket:':<20} {topo['cores']}",
              f"{'Thread(s) per core:':<20} {topo['threads']}",
              f"{'NUMA cell(s):':<20} {topo['nodes']}",
              f"{'Memory size:':<20} {info['memory_kib']} KiB"]
    return lines


def cmd_nodeinfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get("/v1/host")
    if args.json:
        render.as_json(info)
        return 0
    sys.stdout.write("".join(f"{line}\n" for line in nodeinfo_lines(info)) + "\n")
    if args.all:  # virtkit's own facts, after virsh's block
        render.keyvalues([
            ("Host name", info["hostname"]), ("Kernel", info["kernel"]),
            ("Accelerator", info["accelerator"]), ("Why", info["accelerator_reason"]),
            ("QEMU", f"{info['qemu']['version']} ({info['qemu']['path']})"),
        ])
    return 0


#: virsh event's --event names -> the event types they stand for (any type virtkit
#: publishes is accepted by its own name too)
EVENT_GROUPS = {
    "lifecycle": {"defined", "undefined", "started", "stopped", "shutdown", "paused",
                  "resumed", "crashed", "restored", "saved", "migrated", "migrating-in",
                  "rebooted", "restarted", "installed", "reverted", "shutdown-timeout"},
    "reboot": {"rebooted", "reset"},
    "agent-lifecycle": {"agent"},
    "watchdog": {"watchdog"},
    "device-removed": {"device-removed"},
}


def cmd_event(client: Client, args: argparse.Namespace) -> int:
    """Print events as they happen (virsh event [--loop] [--timeout N] [--event KIND]);
    --since replays the journal."""
    import time

    from virtkit.cli.wsclient import OP_CLOSE, WebSocket

    wanted = EVENT_GROUPS.get(args.event, {args.event}) if args.event else None
    path = "/v1/events" + (f"?since={args.since}" if args.since is not None else "")
    ws: WebSocket = client.websocket(path)
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    seen = 0
    try:
        while True:
            if deadline is not None:
                ws.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                opcode, payload = ws.receive()
            except TimeoutError:
                print("event loop timed out", file=sys.stderr)
                return 0
            if opcode == OP_CLOSE:
                return 0
            event = json.loads(payload)
            domain = args.domain or args.domain_option
            if domain and event.get("domain") != domain:
                continue
            if wanted is not None and event.get("type") not in wanted:
                continue
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                print(render.describe_event(event), flush=True)
            seen += 1
            if not args.loop and seen >= (args.count or 1):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        ws.close()


def parse_since(text: str, now: float) -> float:
    """``30m``, ``2h``, ``1d``, ``45s`` ago, or an ISO 8601 time -> seconds since 1970."""
    from datetime import datetime

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdecimal():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSpec(f"--since {text!r}: give a duration (30m, 2h, 1d) or an ISO time "
                          "(2026-11-30T09:00:00Z)", field="since") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without a zone is local time
    return moment.timestamp()


def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    """The daemon's audit log of mutating calls (who, what, status)."""
    import time

    query = f"?limit={args.limit}"
    if args.since:
        query += f"&since={parse_since(args.since, time.time())}"
    records = client.get("/v1/audit" + query)
    if args.json:
        render.as_json(records)
        return 0
    render.table(["Time", "UID", "PID", "Method", "Path", "Status", "ms"],
                 [[r.get("time"), r.get("uid"), r.get("pid"), r.get("method"), r.get("path"),
                   r.get("status"), r.get("ms")] for r in records])
    return 0


def cmd_repairs(client: Client, args: argparse.Namespace) -> int:
    """What the daemon repaired when it started (after a crash of the one before)."""
    import time

    report = client.get("/v1/host/repairs")
    if args.json:
        render.as_json(report)
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["daemon_started"])) \
        if report.get("daemon_started") else "?"
    if not report["repairs"]:
        print(f"Nothing was repaired when the daemon started ({started}).")
    else:
        render.table(["Area", "Repair"], [[r["area"], r["repair"]] for r in report["repairs"]])
    for bad in report.get("naming", []):
        print(f"naming: {bad['kind']} '{render.safe(bad['name'])}' (uuid {bad['uuid']}) "
              f"{render.safe(bad['problem'])}; reach it by its uuid; {bad['fix']}")
    for what in report.get("unsettled", []):
        print(f"unsettled: an interrupted {what} could not be finished or undone yet; the "
              "next start tries again (see the daemon log)")
    return 0


def cmd_osinfo(client: Client, args: argparse.Namespace) -> int:
    """``osinfo-query os``: the OS variants --os-variant accepts."""
    from urllib.parse import quote

    rows = client.get("/v1/osinfo?filter=" + quote(args.filter or ""))
    if args.json:
        render.as_json(rows)
    else:
        render.table(["Short ID", "Name", "Version", "ID"],
                     [[row["short_id"], row["name"], row["version"], row["id"]]
                      for row in rows])
    return 0


def _register_install(sub: Any, *, options: bool) -> None:
    """``install`` is run before argparse (virt-install's syntax); this entry gives it
    its place in --help, and with ``options`` (only the completion script needs them:
    importing the option tables costs every other command ~9 ms) its options."""
    install = sub.add_parser("install", help="create a VM and install its OS "
                             "(virt-install's options)", add_help=False)
    if options:
        from virtkit.cli.install import completion_words

        for word in completion_words():
            install.add_argument(word, nargs="?", help=argparse.SUPPRESS)
    osinfo = sub.add_parser("osinfo", help="OS variants for --os-variant (osinfo-query os)")
    osinfo_sub = osinfo.add_subparsers(dest="osinfo_command", metavar="OSINFOCOMMAND")
    osinfo_sub.required = True
    listing = osinfo_sub.add_parser("list", help="list the OS variants")
    listing.add_argument("--filter", help="only names containing this text")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_osinfo)


#: the global options that take a value: (spellings, argparse dest).
GLOBAL_OPTIONS = {"--root": "root", "-c": "connect", "--connect": "connect",
                  "--token": "token", "--token-file": "token_file", "--ca": "ca",
                  "--tls-fingerprint": "tls_fingerprint"}


def _split_install(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """``[GLOBAL OPTIONS] install WORDS...`` -> (global options, words); None otherwise."""
    options: dict[str, str] = {}
    index = 0
    while index < len(argv):
        word = argv[index]
        name, eq, value = word.partition("=")
        if word in GLOBAL_OPTIONS and index + 1 < len(argv):
            options[GLOBAL_OPTIONS[word]], index = argv[index + 1], index + 2
        elif eq and name in GLOBAL_OPTIONS and name.startswith("--"):
            options[GLOBAL_OPTIONS[name]], index = value, index + 1
        else:
            break
    if index < len(argv) and argv[index] == "install":
        return options, argv[index + 1:]
    return None


def connect_with(options: dict[str, Any], *, autostart: bool = True) -> Client:
    """connect() with the global options (--root, --connect and the TLS ones)."""
    def path(key: str) -> Path | None:
        value = options.get(key)
        return Path(value) if value else None

    return connect(path("root"), autostart=autostart, uri=options.get("connect"),
                   readonly=bool(options.get("readonly")),
                   token=options.get("token"), token_file=path("token_file"),
                   ca=path("ca"), fingerprint=options.get("tls_fingerprint"))


def run_install_command(options: dict[str, str], words: list[str]) -> int:
    from virtkit.cli.install import USAGE, run_install

    if not words or words[0] in ("-h", "--help") or "--help" in words:
        sys.stdout.write(USAGE)
        return 0
    clients: list[Client] = []

    def opened() -> Client:
        clients.append(connect_with(options))
        return clients[-1]

    try:
        return run_install(opened, words)
    finally:
        for client in clients:
            client.close()


def cmd_completion(_client: Client | None, args: argparse.Namespace) -> int:
    from virtkit.cli.completion import bash_completion

    sys.stdout.write(bash_completion(build_parser(install_options=True)))
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with the terminal width read without ``shutil``: argparse
    makes a formatter for every argument added, and its ``import shutil`` (which
    imports bz2 and lzma) was a few milliseconds of every CLI call."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


@functools.cache
def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` says: $COLUMNS, else the terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


# argparse translates each of its own texts with gettext as every parser and option is
# made (~440 calls for the whole tree), and gettext looks for its catalogue files on disk
# at every call (4 stats each): about a third of building the parser.  The answer cannot
# change within one process, so ask once per text.
argparse._ = functools.cache(argparse._)  # type: ignore[attr-defined]


class _Parser(VirshParser):
    """Every parser and sub-parser (add_subparsers makes them of this class) formats
    with :class:`_HelpFormatter` and reports usage errors as virsh does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


#: the modules of virtkit.cli whose register() adds commands, in --help's order
_COMMAND_MODULES = ("domains", "admin", "storage", "networks", "guest", "devices", "clone",
                    "cluster", "migrate", "snapshots", "stats", "virshcompat", "blockjobs",
                    "virtxml", "managedsave", "limits")


def build_parser(*, install_options: bool = False,
                 only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``only`` (a command name), one with that command's
    sub-parser alone, importing only the module that registers it (cli/onecommand.py);
    the whole tree when ``only`` is not in the table."""
    owner = COMMANDS.get(only) if only else None
    parser: argparse.ArgumentParser = _Parser(
        prog="virtkit", description="Manage virtual machines (virsh-compatible commands).")
    parser.add_argument("--version", action="version", version=f"virtkit {__version__}")
    parser.add_argument("--root", type=Path, help="state root of the daemon to talk to "
                        "(default: $VIRTKIT_ROOT or the system/user default)")
    parser.add_argument("-r", "--readonly", action="store_true",
                        help="connect to the daemon's read-only socket (virsh -r): lists and "
                        "information only ($VIRTKIT_READONLY=1)")
    remote = parser.add_argument_group("remote connections (see docs/remote.md)")
    remote.add_argument("-c", "--connect", metavar="URI",
                        help="the daemon to use: virtkit:///system, "
                        "virtkit+ssh://[user@]host[:port][/socket], virtkit+tls://host[:port]; "
                        "libvirt's qemu:///system, qemu+ssh://, qemu+tls:// too "
                        "(default: $VIRTKIT_DEFAULT_URI, else the local daemon)")
    remote.add_argument("--token", help="API token for virtkit+tls:// (better: "
                        "$VIRTKIT_TOKEN or --token-file, which ps does not show)")
    remote.add_argument("--token-file", help="file holding the API token "
                        "(default: $VIRTKIT_TOKEN_FILE, ~/.config/virtkit/tokens/HOST)")
    remote.add_argument("--ca", help="CA certificate to trust for virtkit+tls:// (default: "
                        "$VIRTKIT_TLS_CA, ~/.config/virtkit/tls/HOST/ca.pem)")
    remote.add_argument("--tls-fingerprint", metavar="SHA256",
                        help="trust exactly the server certificate with this fingerprint "
                        "(printed by 'virtkit tls setup'; default: $VIRTKIT_TLS_FINGERPRINT)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    target: Any = sub if owner is None else OneCommand(sub, only or "")
    for module in _COMMAND_MODULES:
        if owner is None or owner == module:
            importlib.import_module(f"virtkit.cli.{module}").register(target)
    if owner in (None, "install"):
        _register_install(target, options=install_options)
    if owner in (None, "main"):
        _register_own(target)
    if owner is not None and only not in sub.choices:  # the table is out of step
        return build_parser(install_options=install_options)
    return parser


def _register_own(sub: Any) -> None:
    """The commands main.py runs itself: host, nodeinfo, event, audit, repairs, completion."""
    from virtkit.cli import managedsave, stats

    host = sub.add_parser("host", help="host commands: check, ksm, capacity, numa")
    host_sub = host.add_subparsers(dest="host_command", metavar="HOSTCOMMAND")
    host_sub.required = True
    check = host_sub.add_parser("check", help="check this host can run VMs (virt-host-validate)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_host_check, daemon_optional=True)
    stats.register_host(host_sub)
    managedsave.register_host(host_sub)
    node = sub.add_parser("nodeinfo", help="show host facts and the accelerator in use")
    node.add_argument("--json", action="store_true")
    node.add_argument("--all", action="store_true", help="virtkit's facts too: host name, "
                      "kernel, accelerator and why, QEMU")
    node.set_defaults(func=cmd_nodeinfo)
    event = sub.add_parser("event", help="print domain events as they happen")
    event.add_argument("domain", nargs="?", help="only this domain")
    event.add_argument("--loop", action="store_true", help="keep printing until interrupted")
    event.add_argument("--count", type=int, help="stop after this many events")
    event.add_argument("--since", type=int, help="replay the journal after this event id")
    event.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="stop after this many seconds (virsh event --timeout)")
    event.add_argument("--event", metavar="KIND",
                       help="only this kind: lifecycle, reboot, agent-lifecycle, watchdog, "
                       "device-removed, or any virtkit event type (started, volume-created...)")
    event.add_argument("--all", action="store_true",
                       help="every kind (the default; virsh's --all)")
    event.add_argument("--domain", dest="domain_option", metavar="DOMAIN",
                       help="only this domain (virsh's --domain)")
    event.add_argument("--json", action="store_true")
    event.set_defaults(func=cmd_event)
    audit = sub.add_parser("audit", help="show the audit log of changes made through the API")
    audit.add_argument("--since", help="only records newer than this: 30m, 2h, 1d or an ISO "
                       "time")
    audit.add_argument("--limit", type=int, default=1000, help="at most the last N records")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)
    repairs = sub.add_parser("repairs", help="what the daemon repaired at start-up after a "
                             "crash (interrupted operations, stale temps, ended QEMUs)")
    repairs.add_argument("--json", action="store_true")
    repairs.set_defaults(func=cmd_repairs)
    completion = sub.add_parser("completion", help="print the bash completion script")
    completion.add_argument("shell", choices=["bash"], nargs="?", default="bash")
    completion.set_defaults(func=cmd_completion)


def _domain_option_to_positional(words: list[str]) -> list[str]:
    """virsh lets every argument be named: ``snapshot-list --domain vm`` is
    ``snapshot-list vm``.  ``--domain X`` (or ``--domain=X``) becomes the positional
    right after the command word (after the verb for ``guest``)."""
    for index, word in enumerate(words):
        if word == "--":
            break
        if (word == "--domain" and index + 1 < len(words)) or word.startswith("--domain="):
            value = words[index + 1] if word == "--domain" else word.split("=", 1)[1]
            rest = words[:index] + words[index + (2 if word == "--domain" else 1):]
            at = 2 if rest[:1] == ["guest"] else 1
            return [*rest[:at], value, *rest[at:]]
    return words


def run(argv: list[str] | None = None) -> int:
    render.protect_terminals()  # no daemon text reaches a terminal with controls in it
    install = _split_install(sys.argv[1:] if argv is None else argv)
    try:
        if install is not None:
            return run_install_command(*install)
        words = _domain_option_to_positional(sys.argv[1:] if argv is None else argv)
        # `guest exec DOMAIN [OPTIONS] -- PROGRAM ARGS`: what follows '--' is the guest's;
        # for every other command (`dominfo -- NAME`) argparse reads '--' as usual: the
        # words after it are arguments, never options
        head = words[:words.index("--")] if "--" in words else words
        guest_exec = any(head[i:i + 2] == ["guest", "exec"] for i in range(len(head)))
        program = words[len(head) + 1:] if guest_exec and head != words else None
        if words == ["--version"]:  # argparse's answer, without the 145 commands
            print(f"virtkit {__version__}")
            return 0
        parser = build_parser(only=command_word(head, GLOBAL_OPTIONS))
        args = parser.parse_args(head if program is not None else words)
        if program is not None:
            args.argv = [*args.argv, *program]
        client: Client | None = None
        options = {key: getattr(args, key) for key in set(GLOBAL_OPTIONS.values())}
        options["readonly"] = args.readonly
        uri: str = args.connect or os.environ.get(URI_ENV) or ""
        remote = bool(uri) and parse_uri(uri).remote  # never check this host for another
        if args.command not in LOCAL_COMMANDS:
            if getattr(args, "daemon_optional", False) and not remote:
                try:
                    client = connect_with(options, autostart=False)
                except VirtkitError:
                    client = None
            else:
                client = connect_with(options)
        try:
            result: int = args.func(client, args)
        finally:
            if client is not None:
                client.close()
        return result
    except VirtkitError as exc:
        missing = _MISSING_DOMAIN.fullmatch(exc.message)
        if missing is not None and getattr(exc, "http_status", 404) == 404:
            # virsh's exact line, which scripts match on
            render.error(f"failed to get domain '{missing.group(1)}'")
            return 1
        details: dict[str, Any] = getattr(exc, "details", {}) or {}
        render.error(exc.message, exc.fix, details.get("stderr"))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
