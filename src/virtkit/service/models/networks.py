"""What the network service (service/networks.py) answers."""

from __future__ import annotations

from typing import Any

from virtkit.service.models.base import Result


class NetworkHealth(Result):
    """What is in place for an active network (network/backend.py's NetworkStatus);
    ``None`` = not applicable to its mode."""

    mode: str
    bridge: str | None
    bridge_present: bool
    bridge_up: bool
    address_present: bool | None
    dnsmasq_alive: bool | None
    dnsmasq_pid: int | None
    rules_present: bool | None
    problems: list[str]
    healthy: bool
    active: bool


class NetworkInfo(Result):
    """net-info, net-list --json, and the answer of every change."""

    name: str
    uuid: str
    state: str
    mode: str
    bridge: str | None
    subnet: str | None
    gateway: str | None
    autostart: bool
    version: int
    #: the stored definition (model/network.py's Network, as JSON)
    spec: dict[str, Any]
    #: first and last DHCP address (nat and isolated modes)
    dhcp_range: list[str] | None = None
    #: only while the network is active
    status: NetworkHealth | None = None
    #: net-define from libvirt XML: what force dropped, and notes
    warnings: list[str] | None = None


class Lease(Result):
    """One DHCP lease of dnsmasq's lease file."""

    expiry: int
    mac: str
    ip: str
    hostname: str | None
    client_id: str | None


class NetworkRemoved(Result):
    """net-undefine's answer."""

    name: str
    uuid: str
