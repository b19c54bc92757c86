"""libvirt network XML in and out: ``virsh net-dumpxml`` / ``virsh net-define`` interop.

Pure, like :mod:`.libvirt_xml` (same refusal rule: listed without force, dropped
with a warning each with it).

Mapping
-------
- ``<forward mode='nat'>`` <-> ``mode: nat``; no ``<forward>`` <-> ``isolated``;
  ``<forward mode='bridge'>`` with ``<bridge name='br0'/>`` <-> ``mode: bridge``
  (an existing host bridge).  Other forward modes (route, open, macvtap modes,
  hostdev) are refused.  NAT masquerades to every other interface, so
  ``forward@dev``, ``forward/interface`` and NAT address or port ranges other than
  libvirt's default (ports 1024-65535) are refused.
- ``<bridge name=>`` <-> ``bridge`` (``stp`` and ``delay`` accepted silently),
  ``<mtu size=>`` <-> ``mtu``, ``<domain name= localOnly='yes'>`` <-> ``domain``
  (virtkit never forwards the guests' domain, so ``localOnly='no'`` is refused).
- One IPv4 ``<ip address= netmask=|prefix=>``: the subnet, and the gateway when it is
  not the subnet's first host.  ``<dhcp>``: one ``<range start= end=>`` (with
  ``<lease expiry= unit=>``) and ``<host mac= ip= name=>`` reservations; a range equal
  to the one virtkit derives is not stored.  No ``<dhcp>``: no DHCP.  IPv6 is refused.
- ``<dns><host ip=><hostname>`` <-> ``dns_hosts``; forwarders, TXT/SRV records and
  ``enable='no'`` are refused.
- Port forwards, autostart and ``dhcp.ping_check`` (libvirt's network XML has no place
  for them) go into ``<metadata><virtkit:network xmlns:virtkit="urn:virtkit:domain:1">``.
- Accepted silently: ``<mac>`` of the bridge (virtkit picks its own), ``connections``,
  ``localPtr``.  A nat or isolated network without ``<ip>`` gets a free subnet from
  virtkit (a warning says so).
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import VIRTKIT_NS, XmlReader, libvirt_text, parse_document
from virtkit.model.network import Network, NetworkMode, load_network

REASONS = {
    "portgroup": "port groups are not supported",
    "virtualport": "Open vSwitch and 802.1Qbh ports are not supported",
    "bandwidth": "bandwidth limits are not supported",
    "route": "static routes are not supported",
    "vlan": "VLAN tags are not supported",
    "forwarder": "DNS forwarders are not supported: dnsmasq uses the host's resolvers",
    "txt": "DNS TXT records are not supported",
    "srv": "DNS SRV records are not supported",
    "interface": "NAT goes out through every other interface",
}
_LEASE_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600}
KEY_ORDER = ("name", "uuid", "mode", "bridge", "mtu", "subnet", "gateway", "dhcp", "domain",
             "dns_hosts", "forwards", "autostart")


# -- out ------------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def network_to_xml(network: Network) -> str:
    """The libvirt network XML of ``network``, pretty-printed like ``virsh net-dumpxml``."""
    root = ET.Element("network")
    _sub(root, "name", network.name)
    _sub(root, "uuid", network.uuid)
    _metadata_out(root, network)
    if network.mode is NetworkMode.NAT:
        forward = _sub(root, "forward", mode="nat")
        _sub(_sub(forward, "nat"), "port", start="1024", end="65535")
    elif network.mode is NetworkMode.BRIDGE:
        _sub(root, "forward", mode="bridge")
    if network.bridge:
        bridge = _sub(root, "bridge", name=network.bridge)
        if network.mode is not NetworkMode.BRIDGE:
            bridge.attrib.update(stp="on", delay="0")
    if network.mtu is not None:
        _sub(root, "mtu", size=str(network.mtu))
    if network.domain:
        _sub(root, "domain", name=network.domain, localOnly="yes")
    if network.dns_hosts:
        dns = _sub(root, "dns")
        for host in network.dns_hosts:
            element = _sub(dns, "host", ip=host.ip)
            for hostname in host.hostnames:
                _sub(element, "hostname", hostname)
    subnet, gateway = network.ipv4, network.gateway_ip
    if subnet is not None and gateway is not None:
        ip = _sub(root, "ip", address=str(gateway), netmask=str(subnet.netmask))
        if network.dhcp is not None and network.dhcp.tftp_root:
            _sub(ip, "tftp", root=network.dhcp.tftp_root)
        dhcp_range = network.dhcp_range
        if network.dhcp is not None and dhcp_range is not None:
            dhcp = _sub(ip, "dhcp")
            span = _sub(dhcp, "range", start=str(dhcp_range[0]), end=str(dhcp_range[1]))
            if network.dhcp.lease_time != 3600:
                _sub(span, "lease", expiry=str(network.dhcp.lease_time), unit="seconds")
            for reservation in network.dhcp.hosts:
                name = {"name": reservation.name} if reservation.name else {}
                _sub(dhcp, "host", mac=reservation.mac, **name, ip=reservation.ip)
            if network.dhcp.boot_file:
                server = {"server": network.dhcp.boot_server} if network.dhcp.boot_server \
                    else {}
                _sub(dhcp, "bootp", file=network.dhcp.boot_file, **server)
    ET.indent(root, space="  ")
    return libvirt_text(root)


def _metadata_out(root: ET.Element, network: Network) -> None:
    extra: list[tuple[str, dict[str, str], str | None]] = []
    if network.autostart:
        extra.append(("autostart", {}, "yes"))
    if network.dhcp is not None and network.dhcp.ping_check:
        extra.append(("ping-check", {}, "yes"))
    for forward in network.forwards:
        attrs = {"proto": forward.proto, "host-address": forward.host_address,
                 "host-port": str(forward.host_port), "guest-ip": forward.guest_ip}
        if forward.guest_port is not None:
            attrs["guest-port"] = str(forward.guest_port)
        extra.append(("forward", attrs, None))
    if not extra:
        return
    ours = _sub(_sub(root, "metadata"), "virtkit:network", **{"xmlns:virtkit": VIRTKIT_NS})
    for tag, attrs, text in extra:
        _sub(ours, f"virtkit:{tag}", text, **attrs)


# -- in -------------------------------------------------------------------------------------

def network_from_xml(text: str, *, force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Read libvirt network XML into a network spec dict and warnings (see the docstring)."""
    root = parse_document(text, "network", command="virtkit net-define")
    return _NetworkReader(root, force=force).read()


class _NetworkReader(XmlReader):
    def __init__(self, root: ET.Element, *, force: bool) -> None:
        super().__init__(root, force=force, reasons=REASONS)
        self.spec: dict[str, Any] = {}

    def read(self) -> tuple[dict[str, Any], list[str]]:
        root, spec = self.root, self.spec
        self.check(root, attrs=("connections", "ipv6", "trustGuestRxFilters"),
                   children=("name", "uuid", "metadata", "forward", "bridge", "mtu", "domain",
                             "dns", "ip"), silent=("mac",))
        if root.get("ipv6") == "yes":
            self.refuse(self.where(root, "ipv6"), "IPv6 is not supported")
        for tag in ("name", "uuid"):
            element = root.find(tag)
            if element is not None:
                spec[tag] = (element.text or "").strip()
        self._forward(root.find("forward"))
        self._bridge(root.find("bridge"))
        mtu = root.find("mtu")
        if mtu is not None and mtu.get("size", "").isdecimal():
            spec["mtu"] = int(mtu.get("size", "0"))
        self._domain(root.find("domain"))
        self._dns(root.find("dns"))
        spec["dhcp"] = None
        ips = root.findall("ip")
        for index, ip in enumerate(ips):
            if ip.get("family", "ipv4") != "ipv4" or ":" in ip.get("address", ""):
                self.refuse(self.where(ip), "IPv6 is not supported")
            elif "subnet" in spec:
                self.refuse(self.where(ip), "a network has one IPv4 subnet")
            else:
                self._ip(ip, index)
        if not ips and spec["mode"] != "bridge":
            self.note("the network has no <ip>: virtkit gives its bridge a free subnet "
                      "(without DHCP)")
        self._metadata(root.find(f"metadata/{{{VIRTKIT_NS}}}network"))
        warnings = self.finish("network")
        self._drop_derived_range()
        return {key: spec[key] for key in KEY_ORDER if key in spec}, warnings

    def _forward(self, forward: ET.Element | None) -> None:
        if forward is None:
            self.spec["mode"] = "isolated"
            return
        mode = forward.get("mode", "nat")
        self.check(forward, attrs=("mode", "dev"), children=("nat",))
        if forward.get("dev"):
            self.refuse(self.where(forward, "dev"), REASONS["interface"])
        if mode not in ("nat", "bridge"):
            self.refuse(self.where(forward, "mode"), "virtkit networks are nat, isolated or a "
                        "host bridge")
            mode = "nat"
        self.spec["mode"] = mode
        nat = forward.find("nat")
        if nat is not None:
            self.check(nat, children=("port",))
            for port in nat.findall("port"):
                if (port.get("start"), port.get("end")) != ("1024", "65535"):
                    self.refuse(self.where(port), "NAT uses ports 1024-65535")

    def _bridge(self, bridge: ET.Element | None) -> None:
        if bridge is None:
            return
        self.check(bridge, attrs=("name", "stp", "delay"))
        if bridge.get("name"):
            self.spec["bridge"] = bridge.get("name")

    def _domain(self, domain: ET.Element | None) -> None:
        if domain is None:
            return
        self.check(domain, attrs=("name", "localOnly"))
        if domain.get("localOnly", "yes") != "yes":
            self.refuse(self.where(domain, "localOnly"), "the guests' domain is answered "
                        "locally and never forwarded")
        if domain.get("name"):
            self.spec["domain"] = domain.get("name")

    def _dns(self, dns: ET.Element | None) -> None:
        if dns is None:
            return
        self.check(dns, attrs=("enable",), children=("host",))
        if dns.get("enable", "yes") != "yes":
            self.refuse(self.where(dns, "enable"), "virtkit's networks always serve DNS")
        hosts = []
        for host in dns.findall("host"):
            self.check(host, attrs=("ip",), children=("hostname",))
            names = [(name.text or "").strip() for name in host.findall("hostname")]
            hosts.append({"ip": host.get("ip", ""), "hostnames": names})
        if hosts:
            self.spec["dns_hosts"] = hosts

    def _ip(self, ip: ET.Element, index: int) -> None:
        self.check(ip, attrs=("address", "netmask", "prefix", "family", "localPtr"),
                   children=("dhcp", "tftp"))
        address = ip.get("address", "")
        mask = ip.get("prefix") or ip.get("netmask") or "24"
        try:
            interface = ipaddress.IPv4Interface(f"{address}/{mask}")
        except ValueError:
            self.refuse(self.where(ip), f"{address}/{mask} is not an IPv4 address and mask")
            return
        self.spec["subnet"] = str(interface.network)
        if interface.ip != interface.network.network_address + 1:
            self.spec["gateway"] = str(interface.ip)
        dhcp = ip.find("dhcp")
        if dhcp is not None:
            self._dhcp(dhcp)
        tftp = ip.find("tftp")
        if tftp is not None:
            self.check(tftp, attrs=("root",))
            if dhcp is None:
                self.refuse(self.where(tftp), "virtkit serves TFTP with its DHCP service")
            else:
                self.spec["dhcp"]["tftp_root"] = tftp.get("root")

    def _dhcp(self, dhcp: ET.Element) -> None:
        self.check(dhcp, children=("range", "host", "bootp"))
        spec: dict[str, Any] = {}
        ranges = dhcp.findall("range")
        for span in ranges[1:]:
            self.refuse(self.where(span), "DHCP serves one range")
        if ranges:
            span = ranges[0]
            self.check(span, attrs=("start", "end"), children=("lease",))
            spec.update(start=span.get("start"), end=span.get("end"))
            lease = span.find("lease")
            if lease is not None:
                self._lease(lease, spec)
        hosts = []
        for host in dhcp.findall("host"):
            self.check(host, attrs=("mac", "ip", "name"))
            entry = {key: host.get(key) for key in ("mac", "ip", "name") if host.get(key)}
            if "mac" not in entry:
                self.refuse(self.where(host), "reservations are by MAC address")
            else:
                hosts.append(entry)
        if hosts:
            spec["hosts"] = hosts
        bootp = dhcp.find("bootp")
        if bootp is not None:
            self.check(bootp, attrs=("file", "server"))
            spec["boot_file"] = bootp.get("file")
            if bootp.get("server"):
                spec["boot_server"] = bootp.get("server")
        self.spec["dhcp"] = spec

    def _lease(self, lease: ET.Element, spec: dict[str, Any]) -> None:
        self.check(lease, attrs=("expiry", "unit"))
        expiry, unit = lease.get("expiry", ""), lease.get("unit", "minutes")
        if not expiry.isdecimal() or unit not in _LEASE_UNITS or expiry == "0":
            self.refuse(self.where(lease), "leases expire after a number of seconds, "
                        "minutes or hours")
            return
        spec["lease_time"] = int(expiry) * _LEASE_UNITS[unit]

    def _metadata(self, ours: ET.Element | None) -> None:
        if ours is None:
            return
        forwards = []
        for element in ours:
            tag = element.tag.rpartition("}")[2]
            if tag == "autostart" and (element.text or "").strip() == "yes":
                self.spec["autostart"] = True
            elif tag == "ping-check" and self.spec.get("dhcp") is not None:
                self.spec["dhcp"]["ping_check"] = (element.text or "").strip() == "yes"
            elif tag == "forward":
                forward: dict[str, Any] = {
                    key.replace("-", "_"): value for key, value in element.attrib.items()}
                for key in ("host_port", "guest_port"):
                    if str(forward.get(key, "")).isdecimal():
                        forward[key] = int(forward[key])
                forwards.append(forward)
        if forwards:
            self.spec["forwards"] = forwards

    def _drop_derived_range(self) -> None:
        """Forget a DHCP range equal to the one virtkit derives from the subnet."""
        dhcp = self.spec.get("dhcp")
        if not dhcp or "start" not in dhcp:
            return
        bare = {**self.spec, "dhcp": {k: v for k, v in dhcp.items() if k not in ("start",
                                                                                  "end")}}
        try:
            derived = load_network(bare).dhcp_range
        except InvalidSpec:
            return
        if derived is not None and (str(derived[0]), str(derived[1])) == (dhcp["start"],
                                                                           dhcp["end"]):
            del dhcp["start"], dhcp["end"]
