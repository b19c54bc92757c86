"""virsh's net-* commands, plus domiflist, domifaddr and domif-setlink."""

from __future__ import annotations

import argparse
import functools
from typing import Any
from urllib.parse import quote

from virtkit.cli import objects, render
from virtkit.cli.client import Client
from virtkit.cli.commands import add_command
from virtkit.cli.domains import _read_spec_file
from virtkit.errors import InvalidSpec


def _net(name: str, suffix: str = "") -> str:
    return f"/v1/networks/{quote(name, safe='')}{suffix}"


def cmd_net_define(client: Client, args: argparse.Namespace) -> int:
    result = objects.define(client, "/v1/networks", _read_spec_file(args.file),
                            force=args.force)
    print(f"Network {result['name']} defined from {args.file}")
    return 0


def cmd_net_dumpxml(client: Client, args: argparse.Namespace) -> int:
    return objects.dumpxml(client, _net(args.network, "/xml"))


def cmd_net_define_as(client: Client, args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"name": args.name, "mode": args.mode}
    for key in ("subnet", "bridge", "gateway", "domain"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    boot = {key: getattr(args, key) for key in ("tftp_root", "boot_file", "boot_server")
            if getattr(args, key)}
    if args.no_dhcp:
        if boot:
            raise InvalidSpec("--tftp-root, --boot-file and --boot-server need DHCP",
                              fix="drop --no-dhcp")
        spec["dhcp"] = None
    elif args.dhcp_start or args.dhcp_end or boot:
        spec["dhcp"] = {"start": args.dhcp_start, "end": args.dhcp_end, **boot}
    spec["autostart"] = args.autostart
    result = client.post("/v1/networks", {"spec": spec})
    print(f"Network {result['name']} defined ({result['mode']}, bridge {result['bridge']}, "
          f"subnet {result['subnet'] or '-'})")
    return 0


def cmd_net_simple(client: Client, args: argparse.Namespace) -> int:
    action = args.command.removeprefix("net-")
    result = client.post(_net(args.network, f"/{action}"))
    print(f"Network {result['name']} {'started' if action == 'start' else 'destroyed'}")
    return 0


def cmd_net_undefine(client: Client, args: argparse.Namespace) -> int:
    return objects.undefine(client, _net(args.network), "Network")


def cmd_net_autostart(client: Client, args: argparse.Namespace) -> int:
    return objects.set_autostart(client, _net(args.network), "Network", disable=args.disable)


def cmd_net_list(client: Client, args: argparse.Namespace) -> int:
    nets = client.get("/v1/networks?all=" + ("1" if args.all else "0"))
    if args.json:
        render.as_json(nets)
        return 0
    # virsh's four columns first (every virtkit network is persistent), then virtkit's
    render.table(["Name", "State", "Autostart", "Persistent", "Mode", "Bridge", "Subnet"],
                 [[n["name"], n["state"], "yes" if n["autostart"] else "no", "yes", n["mode"],
                   n["bridge"], n["subnet"]] for n in nets])
    return 0


def cmd_net_info(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_net(args.network))
    if args.json:
        render.as_json(info)
        return 0
    status = info.get("status") or {}
    problems = status.get("problems") or []
    # virsh's fields in its order and width, then virtkit's own
    render.keyvalues([
        ("Name", info["name"]), ("UUID", info["uuid"]),
        ("Active", "yes" if info["state"] == "active" else "no"), ("Persistent", "yes"),
        ("Autostart", "yes" if info["autostart"] else "no"), ("Bridge", info["bridge"]),
        ("Mode", info["mode"]), ("Subnet", info["subnet"]), ("Gateway", info["gateway"]),
        ("DHCP range", " - ".join(info["dhcp_range"]) if info.get("dhcp_range") else None),
        ("Health", ("ok" if not problems else "; ".join(problems)) if status else None),
    ], width=15)
    return 0


def cmd_net_dhcp_leases(client: Client, args: argparse.Namespace) -> int:
    leases = client.get(_net(args.network, "/leases"))
    if args.json:
        render.as_json(leases)
        return 0
    import time

    # virsh's columns; the address with the network's prefix length, as virsh shows it
    subnet = client.get(_net(args.network)).get("subnet") or ""
    prefix = subnet[subnet.index("/"):] if "/" in subnet else ""
    render.table(["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname",
                  "Client ID or DUID"],
                 [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(lease["expiry"]))),
                   lease["mac"], "ipv6" if ":" in lease["ip"] else "ipv4",
                   lease["ip"] + prefix, lease["hostname"] or "-",
                   lease.get("client_id") or "-"] for lease in leases])
    return 0


#: virsh net-update's section names -> virtkit's
SECTIONS = {"ip-dhcp-host": "dhcp-host", "dhcp-host": "dhcp-host", "dns-host": "dns-host"}


def entry_from_xml(section: str, text: str) -> dict[str, Any]:
    """virsh net-update's XML argument (the XML, or a file holding it) as an entry:
    ``<host mac='..' name='..' ip='..'/>`` (ip-dhcp-host) or ``<host ip='..'>
    <hostname>a</hostname></host>`` (dns-host)."""
    import os
    from xml.etree import ElementTree

    if not text.lstrip().startswith("<") and os.path.isfile(text):
        with open(text) as handle:
            text = handle.read()
    try:
        host = ElementTree.fromstring(text)  # noqa: S314 - the user's own XML; expat fetches no external entity
    except ElementTree.ParseError as exc:
        raise InvalidSpec(f"net-update: the XML is not well-formed: {exc}", field="xml",
                          fix="give one element, e.g. \"<host mac='52:54:00:00:00:01' "
                              "ip='192.168.122.50'/>\"") from None
    if host.tag != "host":
        raise InvalidSpec(f"net-update {section}: expected a <host> element, got "
                          f"<{host.tag}>", field="xml")
    entry: dict[str, Any]
    if SECTIONS[section] == "dhcp-host":
        entry = {key: host.get(key) for key in ("mac", "ip", "name") if host.get(key)}
    else:
        entry = {"ip": host.get("ip"),
                 "hostnames": [h.text.strip() for h in host.findall("hostname") if h.text]}
    if not entry.get("ip") and not entry.get("mac"):
        raise InvalidSpec(f"net-update {section}: the <host> has neither ip nor mac",
                          field="xml")
    return entry


def cmd_net_update(client: Client, args: argparse.Namespace) -> int:
    """virtkit's options (--mac/--ip/--hostname) or virsh's form: COMMAND SECTION XML."""
    section = SECTIONS[args.section]
    entry: dict[str, Any]
    if args.xml is not None:
        entry = entry_from_xml(args.section, args.xml)
    elif args.ip is None:
        raise InvalidSpec("net-update: give the entry as XML (virsh's form) or with --ip",
                          field="ip", fix="e.g. virtkit net-update default add ip-dhcp-host "
                                          "\"<host mac='52:54:00:00:00:01' ip='192.168.122.50'/>\"")
    elif section == "dhcp-host":
        entry = {"mac": args.mac, "ip": args.ip}
        if args.hostname:
            entry["name"] = args.hostname
    else:
        entry = {"ip": args.ip, "hostnames": args.hostname.split(",") if args.hostname else []}
    steps = ["delete", "add"] if args.action == "modify" else \
        ["add" if args.action.startswith("add") else "delete"]
    for action in steps:
        client.post(_net(args.network, "/update"),
                    {"action": action, "section": section, "entry": entry})
    print(f"Updated network {args.network} live and in its definition")
    return 0


def cmd_net_port_forward(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        forwards = client.get(_net(args.network))["spec"].get("forwards", [])
        render.table(["Proto", "Host address", "Host port", "Guest IP", "Guest port"],
                     [[f["proto"], f["host_address"], f["host_port"], f["guest_ip"],
                       f.get("guest_port") or f["host_port"]] for f in forwards])
        return 0
    forward: dict[str, Any] = {"proto": args.proto, "host_address": args.host_address,
                               "host_port": args.host_port}
    if args.action == "add":
        forward.update(guest_ip=args.guest_ip, guest_port=args.guest_port or args.host_port)
    client.post(_net(args.network, "/forwards"), {"action": args.action, "forward": forward})
    word = "added" if args.action == "add" else "removed"
    print(f"Port forward {args.proto} {args.host_address}:{args.host_port} {word}")
    return 0


def cmd_domiflist(client: Client, args: argparse.Namespace) -> int:
    nics = client.get(client.domain_path(args.domain, "/interfaces"))
    if args.json:
        render.as_json(nics)
        return 0
    render.table(["Interface", "Type", "Source", "Model", "MAC", "Link"],
                 [[n["tap"] or "-", n["type"], n["source"], n["model"], n["mac"], n["link"]]
                  for n in nics])
    return 0


def cmd_domifaddr(client: Client, args: argparse.Namespace) -> int:
    if args.source == "agent":  # the guest's own view, loopback included, IPv6 too
        rows = client.get(client.domain_path(args.domain, "/guest/interfaces"))
        if args.json:
            render.as_json(rows)
            return 0
        render.table(["Name", "MAC address", "Protocol", "Address"],
                     [[row["name"], row["mac"] or "-", address["type"],
                       f"{address['ip']}/{address['prefix']}"]
                      for row in rows for address in row["addresses"]])
        return 0
    nics = client.get(client.domain_path(args.domain, "/interfaces"))
    if args.json:
        render.as_json(nics)
        return 0
    render.table(["Name", "MAC address", "Protocol", "Address"],
                 [[n["tap"] or "-", n["mac"], "ipv4",
                   f"{address}/{n['prefix']}" if n.get("prefix") else address]
                  for n in nics for address in n["addresses"]])
    return 0


def cmd_domif_setlink(client: Client, args: argparse.Namespace) -> int:
    client.post(client.domain_path(args.domain, f"/interfaces/{quote(args.interface)}/link"),
                {"state": args.state})
    print(f"Device updated successfully: link {args.state}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = functools.partial(add_command, sub)

    p = add("net-define", cmd_net_define, "define a network from a YAML or JSON file, or from "
            "libvirt network XML", "file")
    p.add_argument("--force", action="store_true",
                   help="libvirt XML: drop what virtkit cannot honour, with a warning each")
    add("net-dumpxml", cmd_net_dumpxml, "print a network as libvirt network XML", "network")
    p = add("net-define-as", cmd_net_define_as, "define a network from options", "name")
    p.add_argument("--mode", default="nat", choices=["nat", "isolated", "bridge"])
    p.add_argument("--subnet", help="IPv4 CIDR; a free one from 192.168.122.0/24 on if left out")
    p.add_argument("--bridge", help="our bridge name (vkbrN if left out), or the host bridge")
    p.add_argument("--gateway", help="the host's address in the subnet (default: first)")
    p.add_argument("--dhcp-start")
    p.add_argument("--dhcp-end")
    p.add_argument("--no-dhcp", action="store_true", help="no DHCP server")
    p.add_argument("--domain", help="DNS domain answered locally for the guests")
    p.add_argument("--tftp-root", help="serve this folder over TFTP (network boot)")
    p.add_argument("--boot-file", help="the file DHCP tells PXE clients to boot "
                   "(pxelinux.0, or an iPXE script)")
    p.add_argument("--boot-server", help="TFTP server of --boot-file (default: this network)")
    p.add_argument("--autostart", action="store_true")
    for name, text in (("net-start", "start a network (bridge, dnsmasq, firewall rules)"),
                       ("net-destroy", "stop a network")):
        add(name, cmd_net_simple, text, "network")
    add("net-undefine", cmd_net_undefine, "remove an inactive network", "network")
    p = add("net-autostart", cmd_net_autostart, "start a network with the daemon", "network")
    p.add_argument("--disable", action="store_true")
    p = add("net-list", cmd_net_list, "list networks", json_flag=True)
    p.add_argument("--all", action="store_true", help="include inactive networks")
    add("net-info", cmd_net_info, "show a network and its health", "network", json_flag=True)
    add("net-dhcp-leases", cmd_net_dhcp_leases, "show DHCP leases", "network", json_flag=True)
    p = add("net-update", cmd_net_update, "add or delete a DHCP reservation or DNS host, live",
            "network")
    p.add_argument("action", choices=["add", "add-first", "add-last", "delete", "modify"],
                   help="virsh's commands; add-first/add-last add, modify replaces the "
                   "entry with the same mac (dhcp-host) or ip (dns-host)")
    p.add_argument("section", choices=sorted(SECTIONS))
    p.add_argument("xml", nargs="?", help="the entry as virsh takes it: XML text or a file "
                   "holding it, e.g. \"<host mac='52:54:00:00:00:01' ip='192.168.122.50'/>\"")
    p.add_argument("--mac")
    p.add_argument("--ip")
    p.add_argument("--hostname", help="name (dhcp-host) or comma-separated names (dns-host)")
    for flag in ("--live", "--config", "--current"):
        p.add_argument(flag, action="store_true",
                       help="accepted for virsh; the change is always made live (when the "
                       "network runs) and in its definition")
    p.add_argument("--parent-index", type=int, help="accepted for virsh (one IP range)")
    p = add("net-port-forward", cmd_net_port_forward,
            "add, remove or list port forwards (host port -> guest ip:port)", "network")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    p.add_argument("--host-address", default="0.0.0.0")  # noqa: S104 - libvirt's default
    p.add_argument("--host-port", type=int)
    p.add_argument("--guest-ip")
    p.add_argument("--guest-port", type=int)
    p = add("domiflist", cmd_domiflist, "list a domain's network interfaces", json_flag=True)
    p.add_argument("domain")
    p = add("domifaddr", cmd_domifaddr, "show a domain's addresses (DHCP leases, or the "
            "guest agent's view with --source agent)", json_flag=True)
    p.add_argument("domain")
    p.add_argument("--source", choices=("lease", "agent"), default="lease",
                   help="lease: the network's DHCP leases (default); agent: ask the guest")
    p = add("domif-setlink", cmd_domif_setlink, "set a NIC's link up or down (by MAC or tap)")
    p.add_argument("domain")
    p.add_argument("interface")
    p.add_argument("state", choices=["up", "down"])
