"""The virtual network spec: what the user asks for, validated, with no I/O.

A :class:`Network` is one of three modes:

``nat``
    a bridge of ours with a gateway address, DHCP/DNS by dnsmasq, and
    masquerade of the subnet to every other interface (libvirt's ``default``).
``isolated``
    the same bridge, DHCP and DNS, but nothing is forwarded to or from it.
``bridge``
    an existing host bridge (made by the admin, e.g. with the uplink NIC in it)
    that guests' taps join; virtkit creates nothing and serves no DHCP.

Only what can be decided from the spec alone is checked here (ranges inside
the subnet, unique reservations, name syntax).  Whether the subnet clashes
with the host's routes, or which ``vkbrN``/subnet is free, needs the host:
see :mod:`virtkit.network.links` and :meth:`NetworkBackend.complete`.

Derived values (the gateway when none is given, the default DHCP range) are
properties, not stored fields, so changing the subnet never leaves a stale
gateway behind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from virtkit.model.domain import NamedSpec, Spec, SpecProblem
from virtkit.model.load import invalid_spec_from, parse_text

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network

#: Linux interface names: at most 15 bytes (IFNAMSIZ - 1).
BRIDGE_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,14}")
MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
MIN_LEASE_SECONDS = 120
AUTO_BRIDGE_PREFIX = "vkbr"
_THIS_NETWORK = IPv4Network("0.0.0.0/8")


class NetworkMode(StrEnum):
    NAT = "nat"
    ISOLATED = "isolated"
    BRIDGE = "bridge"


def validate_hostname(value: str) -> str:
    """Check DNS host name syntax (RFC 1123 labels, at most 253 characters)."""
    if len(value) > 253 or not all(_LABEL.fullmatch(p) for p in value.rstrip(".").split(".")):
        raise ValueError(f"host name {value!r} is not valid: use letters, digits and '-' in "
                         "dot-separated parts of at most 63 characters")
    return value


def validate_bridge_name(value: str) -> str:
    """Linux interface name rules for bridges: 1-15 characters of [A-Za-z0-9_.-]."""
    if not BRIDGE_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"bridge name {value!r} is not valid: use 1-15 characters of "
                         "A-Z a-z 0-9 _ . - (not starting with '-')")
    return value


def _ipv4(value: Any, what: str) -> str:
    try:
        return str(IPv4Address(str(value).strip()))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 address "
                         "(e.g. 192.168.122.10)") from None


#: what may not appear in a value written into dnsmasq's configuration
_UNSAFE_VALUE = re.compile(r"[\s,#\x00-\x1f\x7f]")


class DhcpHost(Spec):
    """A DHCP reservation: the guest with this MAC always gets this address (and name)."""

    mac: str
    ip: str
    name: str | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        value = value.strip().lower().replace("-", ":")
        if not MAC.fullmatch(value):
            raise ValueError(f"MAC address {value!r} must look like 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError(f"MAC address {value!r} is a multicast address; "
                             "the first byte must be even (e.g. 52:54:00:...)")
        return value

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _ipv4(value, "reservation address")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else validate_hostname(value)


class Dhcp(Spec):
    """DHCP service on the network's bridge (nat and isolated modes).

    ``start``/``end`` default to the second .. last host of the subnet (skipping
    the gateway).  ``ping_check`` makes dnsmasq ping each address before
    offering it, which delays every new client by ~3 s; it is off because
    virtkit owns the range and keeps the lease file across restarts.

    Network boot (libvirt's ``<tftp root>`` and ``<bootp file server>``):
    ``tftp_root`` makes dnsmasq serve that folder over TFTP on the bridge, and
    ``boot_file`` is the file DHCP names to PXE clients (``pxelinux.0``, or an iPXE
    script: QEMU's NICs boot with iPXE), from ``boot_server`` if given, else from
    this network's own TFTP server.
    """

    start: str | None = None
    end: str | None = None
    hosts: list[DhcpHost] = Field(default_factory=list)
    lease_time: int = Field(default=3600, description="seconds")
    ping_check: bool = False
    tftp_root: str | None = Field(default=None, description="folder served over TFTP")
    boot_file: str | None = Field(default=None, description="file PXE clients boot")
    boot_server: str | None = Field(default=None, description="TFTP server of boot_file")

    @field_validator("tftp_root")
    @classmethod
    def _tftp_root(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or _UNSAFE_VALUE.search(value)):
            raise ValueError(f"tftp_root {value!r} must be an absolute folder path without "
                             "commas, spaces or control characters")
        return value

    @field_validator("boot_file")
    @classmethod
    def _boot_file(cls, value: str | None) -> str | None:
        if value is not None and (not value or _UNSAFE_VALUE.search(value)):
            raise ValueError(f"boot_file {value!r} must be a file name without commas, "
                             "spaces or control characters")
        return value

    @field_validator("boot_server")
    @classmethod
    def _boot_server(cls, value: str | None) -> str | None:
        return None if value is None else _ipv4(value, "boot server address")

    @field_validator("start", "end")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _ipv4(value, "DHCP range address")

    @field_validator("lease_time")
    @classmethod
    def _lease(cls, value: int) -> int:
        if value < MIN_LEASE_SECONDS:
            raise ValueError(f"lease_time {value} s is below dnsmasq's minimum of "
                             f"{MIN_LEASE_SECONDS} s")
        return value


class DnsHost(Spec):
    """Extra DNS names the network's dnsmasq answers (like lines of /etc/hosts)."""

    ip: str
    hostnames: list[str]

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"DNS host address {value!r} is not an IP address") from None

    @field_validator("hostnames")
    @classmethod
    def _hostnames(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a DNS host needs at least one host name")
        return [validate_hostname(name) for name in value]


class PortForward(Spec):
    """Forward ``host_address:host_port`` of the host to ``guest_ip:guest_port`` (nat only).

    ``host_address`` 0.0.0.0 means every local address of the host.
    ``guest_port`` defaults to ``host_port``.
    """

    proto: Literal["tcp", "udp"] = "tcp"
    host_address: str = "0.0.0.0"  # noqa: S104 - a forward's default, as libvirt's
    host_port: int
    guest_ip: str
    guest_port: int | None = None

    @field_validator("host_address")
    @classmethod
    def _host_address(cls, value: str) -> str:
        address = _ipv4(value, "host address")
        parsed = IPv4Address(address)
        if parsed.is_multicast or parsed.is_loopback or str(parsed) == "255.255.255.255":
            raise ValueError(f"host address {address} cannot receive forwarded connections; "
                             "use 0.0.0.0 or one of the host's addresses")
        return address

    @field_validator("guest_ip")
    @classmethod
    def _guest_ip(cls, value: str) -> str:
        return _ipv4(value, "guest address")

    @field_validator("host_port", "guest_port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"port {value} must be between 1 and 65535")
        return value

    @property
    def target_port(self) -> int:
        return self.guest_port if self.guest_port is not None else self.host_port

    def clashes_with(self, other: PortForward) -> bool:
        """Whether both forwards would catch the same incoming packets."""
        same_address = "0.0.0.0" in (self.host_address, other.host_address) or (  # noqa: S104 - a test
            self.host_address == other.host_address)
        return same_address and self.proto == other.proto and self.host_port == other.host_port


def _short_dhcp(value: Any) -> Any:
    """``dhcp: true`` = defaults, ``dhcp: false`` = no DHCP."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


def _subnet(value: str) -> IPv4Network:
    try:
        network = IPv4Network(value.strip())
    except ValueError as exc:
        if "has host bits set" in str(exc):
            base = IPv4Network(value.strip(), strict=False)
            raise ValueError(f"subnet {value!r} has host bits set; write {base} (the gateway "
                             "is its first host unless gateway: says otherwise)") from None
        raise ValueError(f"subnet {value!r} is not an IPv4 CIDR such as 192.168.122.0/24"
                         ) from None
    if "/" not in value:
        raise ValueError(f"subnet {value!r} needs a prefix length, e.g. {value}/24")
    if network.prefixlen > 30:
        raise ValueError(f"subnet {network} is too small: a /30 or larger is needed for a "
                         "gateway and at least one guest")
    if network.is_loopback or network.is_multicast or network.is_link_local or (
            network.is_reserved or network.prefixlen < 8 or network.overlaps(_THIS_NETWORK)):
        raise ValueError(f"subnet {network} cannot be used for guests (loopback, multicast, "
                         "link-local, reserved or wider than /8)")
    return network


def _host_range(subnet: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """First and last usable host of a /30 or larger subnet."""
    return subnet.network_address + 1, subnet.broadcast_address - 1


class Network(NamedSpec):
    """A virtual network definition (see the module docstring for the three modes)."""

    mode: NetworkMode = NetworkMode.NAT
    bridge: str | None = Field(default=None, description="nat/isolated: our bridge (vkbrN "
                               "when omitted); bridge: the existing host bridge")
    mtu: int | None = None
    subnet: str | None = Field(default=None, description="IPv4 CIDR, e.g. 192.168.122.0/24")
    gateway: str | None = Field(default=None, description="the host's address on the bridge; "
                                "default: the first host of the subnet")
    dhcp: Annotated[Dhcp | None, BeforeValidator(_short_dhcp)] = Field(default_factory=Dhcp)
    domain: str | None = Field(default=None, description="DNS domain of the guests, answered "
                               "locally and never forwarded (libvirt's localOnly domain)")
    dns_hosts: list[DnsHost] = Field(default_factory=list)
    forwards: list[PortForward] = Field(default_factory=list)
    autostart: bool = False

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str | None) -> str | None:
        return None if value is None else validate_bridge_name(value)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        return None if value is None else str(_subnet(value))

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        return None if value is None else _ipv4(value, "gateway")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else validate_hostname(value).rstrip(".").lower()

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, value: int | None) -> int | None:
        if value is not None and not 68 <= value <= 65535:
            raise ValueError(f"mtu {value} must be between 68 and 65535")
        return value

    # -- derived values -------------------------------------------------------------------

    @property
    def ipv4(self) -> IPv4Network | None:
        """The subnet as an ``IPv4Network`` (None for bridge mode or before completion)."""
        return None if self.subnet is None else IPv4Network(self.subnet)

    @property
    def gateway_ip(self) -> IPv4Address | None:
        """The host's address on the bridge: ``gateway`` or the subnet's first host."""
        if self.gateway is not None:
            return IPv4Address(self.gateway)
        subnet = self.ipv4
        return None if subnet is None else subnet.network_address + 1

    @property
    def gateway_cidr(self) -> str | None:
        """``gateway/prefix`` as set on the bridge, e.g. 192.168.122.1/24."""
        subnet, gateway = self.ipv4, self.gateway_ip
        return None if subnet is None or gateway is None else f"{gateway}/{subnet.prefixlen}"

    @property
    def dhcp_range(self) -> tuple[IPv4Address, IPv4Address] | None:
        """The dynamic range: ``dhcp.start``/``end`` or the widest run of hosts beside the
        gateway (second .. last host when the gateway is the first, .2-.254 of a /24)."""
        subnet, gateway = self.ipv4, self.gateway_ip
        if self.dhcp is None or subnet is None or gateway is None:
            return None
        first, last = _host_range(subnet)
        below = (first, gateway - 1) if gateway > first else None
        above = (gateway + 1, last) if gateway < last else None
        widest = max((r for r in (below, above) if r), key=lambda r: int(r[1]) - int(r[0]))
        start = IPv4Address(self.dhcp.start) if self.dhcp.start else widest[0]
        end = IPv4Address(self.dhcp.end) if self.dhcp.end else widest[1]
        return start, end

    @property
    def owner_tag(self) -> str:
        """The mark virtkit leaves on what it creates for this network (ifalias, nft comments)."""
        return f"virtkit:{self.uuid}"

    # -- validation -----------------------------------------------------------------------

    @model_validator(mode="after")
    def _check(self) -> Network:
        if self.mode is NetworkMode.BRIDGE:
            self._check_bridge_mode()
            return self
        subnet = self.ipv4
        if subnet is None:
            self._check_without_subnet()
            return self
        gateway = self.gateway_ip
        assert gateway is not None
        first, last = _host_range(subnet)
        if not first <= gateway <= last:
            raise SpecProblem(f"gateway {gateway} is not a host address of subnet {subnet}",
                              "gateway")
        if self.dhcp is not None:
            self._check_dhcp(subnet, gateway)
        if self.forwards and self.mode is NetworkMode.ISOLATED:
            raise SpecProblem("an isolated network forwards nothing; remove forwards or use "
                              "mode: nat", "forwards")
        self._check_forwards(subnet, gateway)
        return self

    def _check_bridge_mode(self) -> None:
        if self.bridge is None:
            raise SpecProblem("mode bridge needs the name of an existing host bridge "
                              "(e.g. bridge: br0)", "bridge")
        for field in ("subnet", "gateway"):
            if getattr(self, field) is not None:
                raise SpecProblem(f"mode bridge uses the host bridge's own network; remove "
                                  f"{field}", field)
        if "dhcp" in self.model_fields_set and self.dhcp is not None:
            raise SpecProblem("mode bridge serves no DHCP (the LAN's DHCP server does); "
                              "remove dhcp", "dhcp")
        if self.dns_hosts or self.domain:
            field = "dns_hosts" if self.dns_hosts else "domain"
            raise SpecProblem(f"mode bridge serves no DNS; remove {field}", field)
        if self.forwards:
            raise SpecProblem("mode bridge does no NAT, so it cannot forward ports; guests are "
                              "reachable on the LAN directly", "forwards")
        self.__dict__["dhcp"] = None

    def _check_without_subnet(self) -> None:
        """Before completion (no subnet yet) nothing may depend on the subnet."""
        dhcp_set = self.dhcp is not None and (self.dhcp.start or self.dhcp.end or self.dhcp.hosts)
        for field, value in (("gateway", self.gateway), ("dhcp", dhcp_set),
                             ("forwards", self.forwards)):
            if value:
                raise SpecProblem(f"{field} needs a subnet; add subnet: (e.g. "
                                  "192.168.122.0/24)", field)
        if self.forwards and self.mode is NetworkMode.ISOLATED:
            raise SpecProblem("an isolated network forwards nothing", "forwards")

    def _check_dhcp(self, subnet: IPv4Network, gateway: IPv4Address) -> None:
        assert self.dhcp is not None
        first, last = _host_range(subnet)
        dhcp_range = self.dhcp_range
        assert dhcp_range is not None
        start, end = dhcp_range
        for field, address in (("dhcp.start", start), ("dhcp.end", end)):
            if not first <= address <= last:
                raise SpecProblem(f"DHCP range address {address} is not a host address of "
                                  f"subnet {subnet} ({first} - {last})", field)
        if start > end:
            raise SpecProblem(f"DHCP range starts at {start}, after its end {end}; swap them",
                              "dhcp.start")
        if start <= gateway <= end:
            raise SpecProblem(f"DHCP range {start} - {end} contains the gateway {gateway}; "
                              "start it after the gateway", "dhcp.start")
        self._check_reservations(subnet, gateway)

    def _check_reservations(self, subnet: IPv4Network, gateway: IPv4Address) -> None:
        assert self.dhcp is not None
        first, last = _host_range(subnet)
        seen: dict[str, set[str]] = {"mac": set(), "ip": set(), "name": set()}
        for index, host in enumerate(self.dhcp.hosts):
            field = f"dhcp.hosts[{index}]"
            address = IPv4Address(host.ip)
            if not first <= address <= last:
                raise SpecProblem(f"reserved address {address} is not a host address of "
                                  f"subnet {subnet}", f"{field}.ip")
            if address == gateway:
                raise SpecProblem(f"reserved address {address} is the gateway", f"{field}.ip")
            for key, value in (("mac", host.mac), ("ip", host.ip),
                               ("name", host.name.lower() if host.name else None)):
                if value is None:
                    continue
                if value in seen[key]:
                    raise SpecProblem(f"{key} {value} is reserved twice; each reservation "
                                      f"needs its own {key}", f"{field}.{key}")
                seen[key].add(value)

    def _check_forwards(self, subnet: IPv4Network, gateway: IPv4Address) -> None:
        first, last = _host_range(subnet)
        for index, forward in enumerate(self.forwards):
            guest = IPv4Address(forward.guest_ip)
            if not first <= guest <= last or guest == gateway:
                raise SpecProblem(f"forward target {guest} is not a guest address of subnet "
                                  f"{subnet}", f"forwards[{index}].guest_ip")
            for other in self.forwards[:index]:
                if forward.clashes_with(other):
                    raise SpecProblem(
                        f"{forward.proto} port {forward.host_port} on {forward.host_address} "
                        "is forwarded twice", f"forwards[{index}].host_port")


def pick_bridge_name(taken: Iterable[str]) -> str:
    """The first ``vkbrN`` not in ``taken`` (names of host links and of other networks)."""
    used = set(taken)
    index = 0
    while f"{AUTO_BRIDGE_PREFIX}{index}" in used:
        index += 1
    return f"{AUTO_BRIDGE_PREFIX}{index}"


def load_network(data: dict[str, Any] | str) -> Network:
    """Validate a network spec given as a mapping or as YAML/JSON text."""
    if isinstance(data, str):
        data = parse_text(data)
    try:
        return Network.model_validate(data)
    except ValidationError as exc:
        raise invalid_spec_from(exc, kind="network") from None


def dump_network(network: Network) -> dict[str, Any]:
    """The canonical JSON-able form of a network (for the store and the API)."""
    data: dict[str, Any] = network.model_dump(mode="json")
    return data


__all__ = ["Dhcp", "DhcpHost", "DnsHost", "Network", "NetworkMode", "PortForward",
           "dump_network", "load_network", "pick_bridge_name"]
