"""virsh managedsave, managedsave-remove, managedsave-dumpxml, managedsave-define,
managedsave-edit, and ``host guests`` (libvirt-guests' ON_SHUTDOWN / SHUTDOWN_TIMEOUT /
ON_BOOT settings)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command


def cmd_managedsave(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"bypass_cache": args.bypass_cache}
    if args.running or args.paused:
        body["resume"] = bool(args.running)
    path = client.domain_path(args.domain, "/managedsave")
    if args.verbose:
        from virtkit.cli.storage import post_with_progress

        result = post_with_progress(client, path, body, "Managedsave")
    else:
        result = client.post(path, body)
    if args.json:
        render.as_json(result)
    else:
        print(f"\nDomain '{result['name']}' state saved by libvirt")
    return 0


def cmd_managedsave_remove(client: Client, args: argparse.Namespace) -> int:
    result = client.request("DELETE", client.domain_path(args.domain, "/managedsave"))
    print(f"Removed managedsave image for domain '{result['name']}'")
    return 0


def _image_xml(client: Client, domain: str, secrets: bool) -> str:
    text = client.get(client.domain_path(
        domain, "/managedsave/xml" + ("?security_info=1" if secrets else "")))
    return text.decode() if isinstance(text, bytes) else str(text)


def cmd_managedsave_dumpxml(client: Client, args: argparse.Namespace) -> int:
    sys.stdout.write(_image_xml(client, args.domain, args.security_info))
    return 0


def _running(args: argparse.Namespace) -> bool | None:
    return True if args.running else False if args.paused else None


def _define(client: Client, domain: str, text: str, running: bool | None) -> str:
    result = client.request("PUT", client.domain_path(domain, "/managedsave/xml"),
                            {"xml": text, "running": running})
    return str(result["name"])


def cmd_managedsave_define(client: Client, args: argparse.Namespace) -> int:
    if args.file == "-":
        text = sys.stdin.read()
    else:
        with open(args.file) as handle:
            text = handle.read()
    name = _define(client, args.domain, text, _running(args))
    print(f"Managed save state file of domain '{name}' updated.")
    return 0


def cmd_managedsave_edit(client: Client, args: argparse.Namespace) -> int:
    """The image's XML in $EDITOR until the daemon takes it (or it is saved unchanged),
    a refused edit shown again with the error on top, as ``virtkit edit --xml``."""
    from virtkit.cli.edit import XML_NOTES, edit_rounds

    text = _image_xml(client, args.domain, True)  # with secrets: keep the VNC password
    running = _running(args)

    def submit(body: str) -> str:
        name = _define(client, args.domain, body, running)
        return f"Managed save image of domain '{name}' edited."

    return edit_rounds(text, "managedsave.xml", XML_NOTES, submit,
                       f"Managed save image of domain '{args.domain}' XML configuration not "
                       "changed.", submit_unchanged=running is not None)


def cmd_host_guests(client: Client, args: argparse.Namespace) -> int:
    changes = {"on_shutdown": args.on_shutdown, "shutdown_timeout": args.shutdown_timeout,
               "on_boot": args.on_boot}
    if any(value is not None for value in changes.values()):
        status = client.request("PUT", "/v1/host/guests",
                                {k: v for k, v in changes.items() if v is not None})
    else:
        status = client.get("/v1/host/guests")
    if args.json:
        render.as_json(status)
        return 0
    render.keyvalues([
        ("ON_SHUTDOWN", status["on_shutdown"]),
        ("SHUTDOWN_TIMEOUT", f"{status['shutdown_timeout']}s"),
        ("ON_BOOT", status["on_boot"]),
        ("Settings file", status["file"]),
        ("Waiting to start", ", ".join(status["pending"]) or "-"),
    ])
    return 0


def cmd_host_shutdown_guests(client: Client | None, args: argparse.Namespace) -> int:
    """The ON_SHUTDOWN policy now, through the running daemon, with one line per step;
    returns when every guest is handled (exit 1 when one could not be)."""
    import json

    from virtkit.cli.client import ApiError
    from virtkit.cli.streaming import open_stream

    if client is None:
        print("virtkit: virtkitd is not running: no guest to handle", file=sys.stderr)
        return 0
    result: dict[str, Any] | None = None
    client.timeout = 24 * 3600 + 600  # a guest may take SHUTDOWN_TIMEOUT (<= a day) silent
    with open_stream(client, "POST", "/v1/host/guests/shutdown", {},
                     accept="application/x-ndjson") as response:
        for raw in response:
            line = json.loads(raw)
            if "error" in line:
                raise ApiError(int(line["error"].get("status", 500)), line["error"])
            if "result" in line:
                result = line["result"]
            elif not args.json:
                prefix = f"{line['guest']}: " if line["guest"] else ""
                print(f"{prefix}{line['message']}", flush=True)
    if result is None:
        raise ApiError(500, {"message": "the daemon ended the host shutdown without a result"})
    if args.json:
        render.as_json(result)
    elif result["on_shutdown"] != "ignore":
        print(f"{len(result['handled'])} guest(s) handled ({result['on_shutdown']})"
              + (f", failed: {', '.join(result['failed'])}" if result["failed"] else ""))
    return 1 if result["failed"] else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = functools.partial(add_command, sub, domain=True)
    p = add("managedsave", cmd_managedsave, "save a running domain's state to a file the "
            "daemon keeps, and stop it; the next start resumes it", json_flag=True)
    p.add_argument("--bypass-cache", action="store_true",
                   help="drop the image from the host's page cache once written")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true",
                       help="resume it running at the next start")
    state.add_argument("--paused", action="store_true",
                       help="leave it paused at the next start")
    p.add_argument("--verbose", action="store_true", help="show progress")
    add("managedsave-remove", cmd_managedsave_remove, "remove a domain's managed save "
        "image (the next start boots afresh)")
    p = add("managedsave-dumpxml", cmd_managedsave_dumpxml, "print the definition stored "
            "in a domain's managed save image (libvirt XML)")
    p.add_argument("--security-info", action="store_true",
                   help="include secrets (the VNC password)")
    for name, func, what in (
            ("managedsave-define", cmd_managedsave_define, "replace the definition stored "
             "in a domain's managed save image with FILE (libvirt XML); only host-side "
             "changes: file paths, network sources, limits, descriptions"),
            ("managedsave-edit", cmd_managedsave_edit, "edit the definition stored in a "
             "domain's managed save image in $EDITOR (host-side changes only)")):
        p = add(name, func, what)
        if name == "managedsave-define":
            p.add_argument("file", metavar="FILE", help="libvirt domain XML ('-': stdin)")
        state = p.add_mutually_exclusive_group()
        state.add_argument("--running", action="store_true",
                           help="resume it running at the next start")
        state.add_argument("--paused", action="store_true",
                           help="leave it paused at the next start")


def register_host(host_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``host guests``: what happens to guests when the daemon stops and starts."""
    p = host_sub.add_parser("guests", help="show or set what happens to running guests "
                            "when the daemon stops (host shutdown) and starts again "
                            "(libvirt-guests)")
    p.add_argument("--on-shutdown", choices=["ignore", "shutdown", "managedsave", "suspend"],
                   help="ignore: keep running (default); shutdown: power them off; "
                   "managedsave (suspend): save their memory state")
    p.add_argument("--shutdown-timeout", type=int, metavar="SECONDS",
                   help="seconds guests get to power off with --on-shutdown shutdown")
    p.add_argument("--on-boot", choices=["start", "ignore"],
                   help="start: start again the guests the last stop handled (default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host_guests)
    p = host_sub.add_parser("shutdown-guests", help="apply the ON_SHUTDOWN policy now "
                            "through the running daemon and wait until every guest is "
                            "handled (the host is going down: virtkit-guests.service's "
                            "ExecStop, also 'virtkitd --on-host-shutdown')")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host_shutdown_guests, daemon_optional=True)
