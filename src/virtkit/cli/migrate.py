"""``virtkit migrate``: virsh's live migration command (docs/migration.md).

The CLI makes one request to the *source* daemon (the one ``-c`` names); that
daemon drives the migration and talks to the destination daemon itself.  The CLI's
part is naming the destination in a form a daemon can use: a unix socket path (for a
``virtkit+ssh://`` destination, the local end of an ssh forward this command holds
open until the migration ends), or the HTTPS address of a TLS listener with the
token and CA read here the way ``-c virtkit+tls://`` reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.cli.transport import SshTransport, Uri, local_root, parse_uri
from virtkit.errors import InvalidSpec, Unsupported, VirtkitError

LOCAL_ADDRESS = "127.0.0.1"
PROGRESS_INTERVAL = 0.5


def destination(text: str, args: argparse.Namespace, client: Client | None = None
                ) -> tuple[dict[str, Any], str, SshTransport | None]:
    """The destination daemon as the source daemon reaches it, the IP address the
    destination QEMU should listen on by default, and the ssh forward to close when the
    command ends (virtkit+ssh:// destinations)."""
    if text.startswith("/"):  # a daemon on this host, by its socket
        return {"socket": text}, LOCAL_ADDRESS, None
    uri = parse_uri(text)
    if uri.scheme == "virtkit":
        root = local_root(uri)
        if root is None:
            raise InvalidSpec(f"'{text}' is the local default daemon, the source itself",
                              fix="name another daemon: virtkit:///system, a socket path, "
                                  "or virtkit+tls://host")
        return {"socket": str(root / "virtkitd.sock")}, LOCAL_ADDRESS, None
    if uri.scheme == "virtkit+ssh":
        return _through_ssh(uri, client)
    token = args.dest_token
    token_file = Path(args.dest_token_file) if args.dest_token_file else \
        Path.home() / ".config" / "virtkit" / "tokens" / uri.host
    if not token and token_file.is_file():
        token = token_file.read_text().strip()
    if not token:  # never the source's own $VIRTKIT_TOKEN: it is another daemon's secret
        raise InvalidSpec(f"no API token for the destination {uri.host}",
                          fix="give --dest-token-file FILE ('virtkit token create' there)")
    if not args.dest_ca or not Path(args.dest_ca).is_file():
        raise InvalidSpec("the source daemon needs the destination's CA certificate",
                          fix="give --dest-ca FILE (the destination's <root>/tls/ca.pem)")
    where = {"url": f"https://{uri.host}:{uri.port}", "token": token,
             "ca": Path(args.dest_ca).read_text()}
    return where, _resolve(uri.host), None


def _resolve(host: str) -> str:
    """The IP address the destination QEMU listens on by default: the host's."""
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise InvalidSpec(f"cannot resolve {host}: {exc}",
                          fix="give --listen-address") from None


def _through_ssh(uri: Uri, client: Client | None) -> tuple[dict[str, Any], str,
                                                             SshTransport]:
    """virsh's ``qemu+ssh://host2/system``: this command forwards the destination daemon's
    socket over ssh (``ssh -N -L``, the user's keys) to a private local socket that the
    source daemon on this host connects to; the forward ends with the command.  The
    migration stream itself goes straight between the two QEMUs, as libvirt's does."""
    if client is not None and client.remote:
        raise Unsupported("a virtkit+ssh:// destination is reached through this command's "
                          "ssh forward, which a source daemon on another host cannot use",
                          fix="run the command on the source host, or use the "
                              "destination's TLS listener (virtkit+tls://)")
    address = _resolve(uri.host)
    tunnel = SshTransport(uri)
    try:
        tunnel.open(timeout=10).close()  # starts ssh; fails here with ssh's own reason
    except BaseException:
        tunnel.close()
        raise
    return {"socket": str(tunnel.socket_path)}, address, tunnel


def disk_paths(items: list[str]) -> dict[str, str]:
    """``--disk-path SRC=DST`` (repeated): where a copied disk goes on the destination."""
    mapping: dict[str, str] = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source.startswith("/") or not target.startswith("/"):
            raise InvalidSpec(f"--disk-path {item!r}: give SOURCE=DESTINATION, both "
                              "absolute paths", fix="e.g. --disk-path "
                              "/var/lib/virtkit/a.qcow2=/srv/vm/a.qcow2")
        if source in mapping:
            raise InvalidSpec(f"--disk-path names {source} twice",
                              fix="give each disk once")
        mapping[source] = target
    return mapping


def _with_progress(client: Client, domain: str, call: Callable[[], Any]) -> Any:
    """Run ``call`` (the migrate request) in a thread while domjobinfo is polled and a
    progress line is drawn on stderr (virsh migrate --verbose)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    import threading  # here: every CLI call imports this module

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(PROGRESS_INTERVAL)
        with contextlib.suppress(VirtkitError):
            job = client.get(client.domain_path(domain, "/job"))
            total, remaining = job.get("data_total"), job.get("data_remaining")
            if total and remaining is not None:
                percent = int(100 * (total - remaining) / total)
                sys.stderr.write(f"\rMigration: [{percent:3d} %]")
                sys.stderr.flush()
    sys.stderr.write("\rMigration: [100 %]\n" if "result" in outcome else "\n")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def cmd_migrate(client: Client, args: argparse.Namespace) -> int:
    if args.offline and args.live:
        raise InvalidSpec("--offline and --live exclude each other", fix="give one of them")
    if (args.postcopy or args.postcopy_after_precopy) and args.offline:
        raise InvalidSpec("--postcopy is for live migration", fix="leave out --offline")
    if args.disk_path and not (args.copy_storage_all or args.copy_storage_inc):
        raise InvalidSpec("--disk-path only applies to disks copied by --copy-storage-all",
                          fix="add --copy-storage-all")
    where, address, tunnel = destination(args.desturi, args, client)
    with contextlib.ExitStack() as stack:
        if tunnel is not None:
            stack.callback(tunnel.close)
        return _migrate(client, args, where, address)


def _migrate(client: Client, args: argparse.Namespace, where: dict[str, Any],
             address: str) -> int:
    body: dict[str, Any] = {
        "destination": where, "address": args.listen_address or address,
        "live": not args.offline, "offline": args.offline,
        "persistent": args.persistent, "undefine_source": args.undefinesource,
        "auto_converge": args.auto_converge, "copy_storage_all": args.copy_storage_all,
        "copy_storage_inc": args.copy_storage_inc, "postcopy": args.postcopy,
        "postcopy_after_precopy": args.postcopy_after_precopy, "suspend": args.suspend}
    if args.disk_path:
        body["disk_paths"] = disk_paths(args.disk_path)
    for key, value in (("bandwidth", args.bandwidth), ("downtime_limit", args.downtime_limit),
                       ("postcopy_bandwidth", args.postcopy_bandwidth),
                       ("timeout", args.timeout)):
        if value is not None:
            body[key] = value
    path = client.domain_path(args.domain, "/migrate")
    result = _with_progress(client, args.domain, lambda: client.post(path, body)) \
        if args.verbose else client.post(path, body)
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        render.as_json(result)
        return 0
    if result.get("offline"):
        print(f"{result['domain']} is defined on the destination"
              + (f" ({len(result['copied_disks'])} disk(s) copied)"
                 if result.get("copied_disks") else ""))
        return 0
    downtime = result.get("downtime_ms")
    where = result.get("destination") or {}
    verb = "is paused" if where.get("state") == "paused" else "runs"
    print(f"{result['domain']} {verb} on the destination "
          f"({result['total_ms'] / 1000:.1f} s"
          + (f", downtime {downtime} ms" if downtime is not None else "") + ")")
    return 0


def cmd_domjobinfo(client: Client, args: argparse.Namespace) -> int:
    info = client.get(client.domain_path(args.domain, "/job"))
    if args.json:
        render.as_json(info)
        return 0
    labels = (("type", "Job type"), ("operation", "Operation"), ("status", "Status"),
              ("phase", "Phase"),
              ("elapsed_ms", "Time elapsed (ms)"), ("data_processed", "Data processed"),
              ("data_remaining", "Data remaining"), ("data_total", "Data total"),
              ("memory_processed", "Memory processed"),
              ("memory_remaining", "Memory remaining"), ("memory_total", "Memory total"),
              ("disk_processed", "File processed"), ("disk_remaining", "File remaining"),
              ("disk_total", "File total"),
              ("dirty_rate", "Dirty rate (pages/s)"),
              ("expected_downtime_ms", "Expected downtime (ms)"))
    for key, label in labels:
        if info.get(key) is not None:
            value = info[key]
            print(f"{label + ':':<24}{value.capitalize() if key == 'type' else value}")
    return 0


def cmd_migrate_postcopy(client: Client, args: argparse.Namespace) -> int:
    client.post(client.domain_path(args.domain, "/job/postcopy"))
    print(f"Switching the migration of domain '{args.domain}' to post-copy")
    return 0


def cmd_domjobabort(client: Client, args: argparse.Namespace) -> int:
    client.request("DELETE", client.domain_path(args.domain, "/job"))
    print(f"Job of domain '{args.domain}' aborted")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "migrate a domain to another virtkitd (virsh migrate)"
    p = sub.add_parser("migrate", help=text, description=text)
    p.add_argument("domain")
    p.add_argument("desturi", help="the destination daemon: virtkit+ssh://[user@]host"
                   "[:port][/socket] (forwarded over ssh by this command), "
                   "virtkit+tls://host[:port], virtkit:///system, or the path of a local "
                   "daemon's socket")
    p.add_argument("--live", action="store_true", help="migrate while it runs (the default "
                   "unless --offline)")
    p.add_argument("--offline", action="store_true",
                   help="move only the definition (with --copy-storage-all also the disks "
                        "of a shut-off domain); implies --persistent; nothing is started "
                        "there or stopped here")
    p.add_argument("--persistent", action="store_true",
                   help="keep the definition on the destination (else it is transient there)")
    p.add_argument("--undefinesource", action="store_true",
                   help="remove the definition here once the domain runs there")
    p.add_argument("--copy-storage-all", action="store_true",
                   help="copy the domain's local writable disks while it runs (NBD + "
                        "block mirror); the destination creates them, at the same path "
                        "unless --disk-path maps them")
    p.add_argument("--copy-storage-inc", action="store_true",
                   help="like --copy-storage-all, but copy only each disk's top image: its "
                        "backing chain must already be on the destination, same path")
    p.add_argument("--disk-path", action="append", metavar="SRC=DST",
                   help="with --copy-storage-all: put the copy of disk SRC at DST on the "
                        "destination (repeatable)")
    p.add_argument("--auto-converge", action="store_true",
                   help="throttle the guest's vCPUs if its memory changes faster than sent")
    p.add_argument("--postcopy", action="store_true",
                   help="allow switching to post-copy ('virtkit migrate-postcopy' during the "
                        "migration): the guest then runs there before all its memory "
                        "arrived; a failure after that LOSES the guest")
    p.add_argument("--suspend", action="store_true",
                   help="leave the domain paused on the destination (a paused domain "
                        "always arrives paused)")
    p.add_argument("--postcopy-after-precopy", action="store_true",
                   help="with --postcopy: switch after the first pass over the memory")
    p.add_argument("--bandwidth", type=int, metavar="MiB/s", help="limit the stream")
    p.add_argument("--postcopy-bandwidth", type=int, metavar="MiB/s",
                   help="with --postcopy: limit the stream after the switch (default: none)")
    p.add_argument("--downtime-limit", type=int, metavar="MS",
                   help="the longest pause the switch-over may cause")
    p.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="give up (the domain keeps running here) after this long")
    p.add_argument("--listen-address", metavar="IP",
                   help="the address the destination QEMU listens on (default: the "
                        "destination host's)")
    p.add_argument("--dest-token", help="API token of the destination's TLS listener")
    p.add_argument("--dest-token-file", help="file holding that token")
    p.add_argument("--dest-ca", help="the destination's CA certificate")
    p.add_argument("--verbose", action="store_true",
                   help="draw the migration's progress on stderr")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_migrate)
    info = sub.add_parser("domjobinfo", help="show the migration job of a domain")
    info.add_argument("domain")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_domjobinfo)
    postcopy = sub.add_parser("migrate-postcopy", help="switch a running migration "
                              "(started with --postcopy) to post-copy")
    postcopy.add_argument("domain")
    postcopy.set_defaults(func=cmd_migrate_postcopy)
    abort = sub.add_parser("domjobabort", help="cancel the migration job of a domain "
                           "(it keeps running here)")
    abort.add_argument("domain")
    abort.set_defaults(func=cmd_domjobabort)
