"""``virtkit cluster``: init, join, leave, list, status, evacuate, restore;
``virtkit ha enable/disable``
(docs/cluster.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.errors import InvalidSpec


def _ago(when: float | None) -> str | None:
    if not when:
        return None
    seconds = max(0.0, time.time() - when)
    return f"{seconds:.1f}s ago" if seconds < 120 else time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(when))


def cmd_init(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "address": args.address,
                            "cluster": args.cluster, "client_port": args.client_port,
                            "peer_port": args.peer_port, "api_port": args.api_port}
    if args.etcd_endpoints:
        body["etcd_endpoints"] = [e.strip() for e in args.etcd_endpoints.split(",") if e]
        body.update(etcd_ca=args.etcd_ca, etcd_cert=args.etcd_cert, etcd_key=args.etcd_key)
    result = client.post("/v1/cluster/init", body)
    if args.json:
        render.as_json(result)
        return 0
    print(f"Cluster '{result['cluster']}' created; this host is '{result['host']}' "
          f"({result['role']})")
    print(f"etcd: {', '.join(result['endpoints'])}")
    print("Other hosts join with: virtkit cluster join <this daemon's socket or "
          "https://HOST:16515> --address THEIR-IP")
    return 0


def _via(uri: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where the member daemon is: a socket path, or https:// (virtkit+tls://) with a
    token and, optionally, the CA to trust."""
    if uri.startswith("/"):
        return {"socket": uri}
    if uri.startswith("virtkit+tls://"):
        uri = "https://" + uri.removeprefix("virtkit+tls://")
    if not uri.startswith("https://"):
        raise InvalidSpec(f"{uri!r}: give a member daemon's socket path or "
                          "virtkit+tls://HOST:PORT")
    token = args.token or os.environ.get("VIRTKIT_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    if not token:
        raise InvalidSpec("joining over TLS needs an API token of the member",
                          fix="create one there with 'virtkit token create', then "
                              "--token-file FILE")
    via: dict[str, Any] = {"url": "/".join(uri.split("/")[:3]), "token": token}
    if args.ca:
        via["ca"] = Path(args.ca).read_text()
    return via


def cmd_join(client: Client, args: argparse.Namespace) -> int:
    body = {"via": _via(args.uri, args), "address": args.address, "name": args.name,
            "api_port": args.api_port}
    result = client.post("/v1/cluster/join", body)
    if args.json:
        render.as_json(result)
        return 0
    print(f"Joined cluster '{result['cluster']}' as '{result['host']}' ({result['role']})")
    return 0


def cmd_leave(client: Client, args: argparse.Namespace) -> int:
    result = client.post("/v1/cluster/leave", {})
    if args.json:
        render.as_json(result)
        return 0
    what = "dissolved (it was the last member)" if result["dissolved"] else "left"
    print(f"Host '{result['host']}' {what} cluster '{result['left']}'")
    return 0


_DONE = {"migrate": "moved to host {to}", "copy": "moved to host {to} with its disks "
         "copied"}


def _step_text(step: dict[str, Any]) -> str:
    if step.get("refused"):
        return f"cannot be evacuated: {render.safe(step['refused'])}"
    if step["action"] == "stop":
        return "will be stopped (disks on this host only)"
    verb = "live-migrated" if step["action"] == "migrate" else "live-migrated with its disks"
    return f"will be {verb} to host {step['to']}"


def cmd_evacuate(client: Client, args: argparse.Namespace) -> int:
    """The plan first (a refusal changes nothing), then one VM at a time, so each
    one's progress shows; --json: the plan and every result together."""
    path = f"/v1/cluster/hosts/{quote(args.host, safe='')}/evacuate"
    body: dict[str, Any] = {"policy": args.policy, "stop_timeout": args.stop_timeout}
    planned = client.post(path, {**body, "dry_run": True})["plan"]
    if args.dry_run or any(step.get("refused") for step in planned):
        if args.json:
            render.as_json({"host": args.host, "policy": args.policy, "plan": planned})
        else:
            for step in planned:
                print(f"Domain '{step['name']}' {_step_text(step)}")
        if any(step.get("refused") for step in planned):
            print(f"error: host '{args.host}' is not evacuated (nothing was done)",
                  file=sys.stderr)
            return 1
        return 0
    total: dict[str, Any] = {"host": args.host, "maintenance": True, "policy": args.policy,
                             "moved": [], "stopped": [], "failed": [], "stayed": []}
    for step in planned or [None]:
        if step is not None and not args.json:
            print(f"Domain '{step['name']}' {_step_text(step)} ...", flush=True)
        result = client.post(path, {**body, "only": [step["name"]] if step else []})
        for key in ("moved", "stopped", "failed"):
            total[key] += result[key]
        total["stayed"] = result["stayed"]
        if not args.json:
            for vm in result["moved"]:
                print(f"Domain '{vm['name']}' " + _DONE[vm["how"]].format(to=vm["to"]))
            for vm in result["stopped"]:
                print(f"Domain '{vm['name']}' {vm['how']}")
            for vm in result["failed"]:
                print(f"Domain '{vm['name']}' not moved: {render.safe(vm['error'])}")
    if args.json:
        render.as_json(total)
    else:
        for name in total["stayed"]:
            print(f"Domain '{name}' stays (shut off)")
        print(f"Host '{args.host}' is in maintenance")
    return 1 if total["failed"] else 0


def cmd_restore(client: Client, args: argparse.Namespace) -> int:
    result = client.post(f"/v1/cluster/hosts/{quote(args.host, safe='')}/restore", {})
    if args.json:
        render.as_json(result)
        return 1 if result["failed"] else 0
    for vm in result["returned"]:
        copied = " with its disks copied" if vm.get("how") == "copy" else ""
        print(f"Domain '{vm['name']}' moved back from host {vm['from']}{copied}")
    for vm in result.get("started", []):
        print(f"Domain '{vm['name']}' started again")
    for vm in result["failed"]:
        print(f"Domain '{vm['name']}' not brought back: {render.safe(vm['error'])}")
    print(f"Host '{result['host']}' " + ("stays in maintenance (run 'virtkit cluster "
                                         "restore' again)" if result["maintenance"]
                                         else "is out of maintenance"))
    return 1 if result["failed"] else 0


def _capacity(row: dict[str, Any]) -> str | None:
    capacity = row.get("capacity")
    if not capacity:
        return None
    return f"{capacity['cpus']} CPU, {capacity['memory_mib'] // 1024} GiB"


def _vms(row: dict[str, Any]) -> str | None:
    vms = row.get("vms")
    return f"{vms['running']}/{vms['defined']}" if vms else None


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    rows = client.get("/v1/cluster/hosts")
    if args.json:
        render.as_json(rows)
        return 0
    render.table(["Host", "Address", "State", "Role", "Capacity", "VMs (run/def)",
                  "Last heartbeat"],
                 [[r["name"], r["address"], r["state"], r["role"], _capacity(r), _vms(r),
                   _ago(r.get("heartbeat")) or (f"down {_ago(r['down_since'])}"
                                                if r.get("down_since") else None)]
                  for r in rows], colour_column=2)
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.get("/v1/cluster")
    if args.json:
        render.as_json(status)
        return 0
    if not status["configured"]:
        print("This host is in no cluster (virtkit cluster init / join)")
        return 0
    quorum = "yes" if status["has_quorum"] else "NO"
    render.keyvalues([("Cluster", status["cluster"]), ("This host", status["host"]),
                      ("Role", status["role"]), ("Leader", status["leader"]),
                      ("Voters", f"{status['healthy']}/{status['voters']} healthy, "
                                 f"quorum {status['quorum']}"),
                      ("Quorum", quorum)])
    print()
    render.table(["Member", "ID", "Healthy", "Leader", "Endpoint", "Raft index"],
                 [[m["name"], m["id"], "yes" if m["healthy"] else "no",
                   "yes" if m.get("leader") else "", ", ".join(m["endpoints"]),
                   m.get("raft_index")] for m in status["members"]])
    for problem in status.get("vm_problems") or []:
        print(f"warning: {render.safe(problem)}")
    return 0 if status["has_quorum"] else 1


def cmd_ha(client: Client, args: argparse.Namespace) -> int:
    enabled = args.ha_command == "enable"
    result = client.request("PUT", client.domain_path(args.domain, "/ha"), {"enabled": enabled})
    if args.json:
        render.as_json(result)
    else:
        print(f"Domain '{result['name']}' " + ("is highly available: fenced with this host's "
              "lease" if enabled else "is no longer highly available"))
    return 0


def register(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="many hosts as one, on etcd: init, join, leave, "
                             "list, status, evacuate, restore")
    commands = cluster.add_subparsers(dest="cluster_command", metavar="CLUSTERCOMMAND")
    commands.required = True
    init = commands.add_parser("init", help="make a new cluster with this host as its first "
                               "member (it runs an etcd member)")
    init.add_argument("--address", help="this host's IP address that the other hosts reach")
    init.add_argument("--name", help="this host's name in the cluster (default: host name)")
    init.add_argument("--cluster", help="the cluster's name (default: virtkit)")
    init.add_argument("--client-port", type=int, default=2379)
    init.add_argument("--peer-port", type=int, default=2380)
    init.add_argument("--api-port", type=int, default=16516,
                      help="the cluster API the other hosts forward requests to (mutual TLS)")
    init.add_argument("--etcd-endpoints", metavar="URL,URL",
                      help="use an etcd the administrator runs instead of starting one")
    init.add_argument("--etcd-ca", help="CA of --etcd-endpoints (PEM file)")
    init.add_argument("--etcd-cert", help="client certificate for --etcd-endpoints")
    init.add_argument("--etcd-key", help="its key")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_init)
    join = commands.add_parser("join", help="join the cluster of a member host (as an etcd "
                               "voter while it has fewer than 3, else as a client)")
    join.add_argument("uri", help="the member's daemon: its socket path, or "
                      "virtkit+tls://HOST:PORT")
    join.add_argument("--address", required=True,
                      help="this host's IP address that the other hosts reach")
    join.add_argument("--name", help="this host's name in the cluster (default: host name)")
    join.add_argument("--token", help="API token of the member (virtkit+tls://)")
    join.add_argument("--token-file", help="file holding that token")
    join.add_argument("--ca", help="CA certificate of the member's TLS listener")
    join.add_argument("--api-port", type=int, default=16516,
                      help="the cluster API the other hosts forward requests to (mutual TLS)")
    join.add_argument("--json", action="store_true")
    join.set_defaults(func=cmd_join)
    leave = commands.add_parser("leave", help="leave the cluster (this host's etcd member "
                                "is removed; the last host dissolves it)")
    leave.add_argument("--json", action="store_true")
    leave.set_defaults(func=cmd_leave)
    listing = commands.add_parser("list", help="the cluster's hosts: state, role, capacity, "
                                  "VMs, last heartbeat")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
    status = commands.add_parser("status", help="etcd's members, health, quorum and leader")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    for name, func, text in (
            ("evacuate", cmd_evacuate, "put HOST in maintenance (placement skips it) and "
             "live-migrate its running VMs to other hosts"),
            ("restore", cmd_restore, "bring back what an evacuation did (moved VMs "
             "migrate back, stopped ones start) and end HOST's maintenance")):
        command = commands.add_parser(name, help=text)
        command.add_argument("host", metavar="HOST")
        command.add_argument("--json", action="store_true")
        command.set_defaults(func=func)
        if name == "evacuate":
            command.add_argument(
                "--policy", choices=("migrate", "stop", "copy-storage"), default="migrate",
                help="VMs with disks only HOST sees: migrate = refuse the evacuation "
                "(default), stop = shut them down, copy-storage = live-migrate them with "
                "their disks copied")
            command.add_argument("--stop-timeout", type=float, default=60.0,
                                 metavar="SECONDS", help="--policy stop: seconds a guest "
                                 "gets to shut down before it is destroyed (0: at once)")
            command.add_argument("--dry-run", action="store_true",
                                 help="show what would be done, do nothing")
    ha = sub.add_parser("ha", help="high availability of a VM in a cluster: enable, disable")
    ha_commands = ha.add_subparsers(dest="ha_command", metavar="HACOMMAND")
    ha_commands.required = True
    for name, text in (("enable", "fence the VM when this host loses its cluster lease (and "
                        "restart it elsewhere)"), ("disable", "stop treating the VM as HA")):
        command = ha_commands.add_parser(name, help=text)
        command.add_argument("domain")
        command.add_argument("--json", action="store_true")
        command.set_defaults(func=cmd_ha)
