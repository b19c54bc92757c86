"""The network command API: virsh's net-* commands, reservations and port forwards.

Network definitions and their state live in the store; the bridge, dnsmasq and
nftables rules are made by :class:`~virtkit.network.backend.NetworkBackend`.
Every backend call does blocking netlink I/O (pyroute2 runs its own loop), so
the API calls these methods from a worker thread.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec
from virtkit.formats.libvirt_network_xml import network_from_xml, network_to_xml
from virtkit.model.network import Network, NetworkMode, dump_network, load_network
from virtkit.network import dnsmasq, nftables
from virtkit.network.backend import NetworkBackend, NetworkStatus
from virtkit.runtime.events import EventBus
from virtkit.service.models.networks import Lease, NetworkHealth, NetworkInfo, NetworkRemoved
from virtkit.store.db import ObjectRow, Store

DEFAULT_NETWORK = "default"
ACTIVE, INACTIVE = "active", "inactive"


class NetworkService:
    """Define, start and change virtual networks."""

    def __init__(self, store: Store, bus: EventBus, state_dir: Path,
                 backend: NetworkBackend | None = None) -> None:
        self._store = store
        self._bus = bus
        self._state_dir = state_dir
        self._backend = backend or NetworkBackend()

    # -- reading ------------------------------------------------------------------

    def _net(self, row: ObjectRow) -> Network:
        return load_network(row.spec)

    def _dir(self, row: ObjectRow) -> Path:
        return self._state_dir / row.uuid

    def spec_of(self, ref: str) -> Network:
        return self._net(self._store.get_object("network", ref))

    def is_active(self, ref: str) -> bool:
        return self._store.get_object("network", ref).state == ACTIVE

    def info(self, ref: str) -> NetworkInfo:
        row = self._store.get_object("network", ref)
        net = self._net(row)
        info = NetworkInfo(
            name=row.name, uuid=row.uuid, state=row.state, mode=net.mode.value,
            bridge=net.bridge, subnet=net.subnet,
            gateway=str(net.gateway_ip) if net.gateway_ip else None,
            autostart=net.autostart, version=row.version, spec=row.spec)
        dhcp_range = net.dhcp_range
        if dhcp_range is not None and net.mode is not NetworkMode.BRIDGE:
            info.dhcp_range = [str(dhcp_range[0]), str(dhcp_range[1])]
        if row.state == ACTIVE:
            info.status = NetworkHealth(**self._backend.status(net, self._dir(row)).to_dict())
        return info

    def list_networks(self, *, include_inactive: bool = True) -> list[NetworkInfo]:
        rows = self._store.list_objects("network")
        return [self.info(r.uuid) for r in rows if include_inactive or r.state == ACTIVE]

    def leases(self, ref: str) -> list[Lease]:
        row = self._store.get_object("network", ref)
        if row.state != ACTIVE:
            return []
        return [Lease(**lease._asdict()) for lease in self._backend.leases(self._net(row),
                                                                           self._dir(row))]

    # -- life cycle ------------------------------------------------------------------

    def define(self, data: dict[str, Any] | str) -> NetworkInfo:
        net = load_network(data)
        others = [self._net(r) for r in self._store.list_objects("network")]
        for other in others:
            if net.bridge and other.bridge == net.bridge and net.mode is not NetworkMode.BRIDGE:
                raise Conflict(f"bridge {net.bridge} already belongs to network '{other.name}'",
                               fix="leave bridge out to get a free vkbrN name")
        net = self._backend.complete(net, other_networks=others)
        row = self._store.insert_object("network", net.uuid, net.name, dump_network(net))
        self._publish("net-defined", row)
        return self.info(row.uuid)

    def define_xml(self, text: str, *, force: bool = False) -> NetworkInfo:
        """Define from libvirt network XML; ``warnings``: what force dropped, and notes."""
        spec, warnings = network_from_xml(text, force=force)
        info = self.define(spec)
        info.warnings = warnings
        return info

    def dumpxml(self, ref: str) -> str:
        """The network as libvirt network XML (``virsh net-dumpxml``)."""
        return network_to_xml(self.spec_of(ref))

    def start(self, ref: str) -> NetworkInfo:
        row = self._store.get_object("network", ref)
        if row.state == ACTIVE:
            raise Conflict(f"network '{row.name}' is already active")
        runtime = self._backend.start(self._net(row), self._dir(row))
        self._store.update_object("network", row.uuid, state=ACTIVE, runtime=runtime)
        self._publish("net-started", row)
        return self.info(row.uuid)

    def destroy(self, ref: str) -> NetworkInfo:
        row = self._store.get_object("network", ref)
        if row.state != ACTIVE:
            raise Conflict(f"network '{row.name}' is not active")
        self._backend.stop(self._net(row), self._dir(row))
        self._store.update_object("network", row.uuid, state=INACTIVE, runtime={})
        self._publish("net-stopped", row)
        return self.info(row.uuid)

    def undefine(self, ref: str) -> NetworkRemoved:
        row = self._store.get_object("network", ref)
        if row.state == ACTIVE:
            raise Conflict(f"network '{row.name}' is active",
                           fix=f"stop it first: virtkit net-destroy {row.name}")
        self._store.delete_object("network", row.uuid)
        self._publish("net-undefined", row)
        return NetworkRemoved(name=row.name, uuid=row.uuid)

    def set_autostart(self, ref: str, enabled: bool) -> NetworkInfo:
        row = self._store.get_object("network", ref)
        self._store.update_object("network", row.uuid, spec=dict(row.spec, autostart=enabled))
        return self.info(row.uuid)

    def _publish(self, kind: str, row: ObjectRow) -> None:
        self._bus.publish(kind, row.uuid, network=row.name, uuid=row.uuid)

    # -- live changes ------------------------------------------------------------------

    def _change(self, ref: str, mutate: Any) -> tuple[ObjectRow, Network]:
        """Apply ``mutate(spec_dict)``, validate, store; return the row and new network."""
        row = self._store.get_object("network", ref)
        spec = dict(row.spec)
        mutate(spec)
        net = load_network(spec)
        row = self._store.update_object("network", row.uuid, spec=dump_network(net))
        return row, net

    def update(self, ref: str, action: str, section: str, entry: dict[str, Any]
               ) -> NetworkInfo:
        """net-update: add or delete a DHCP reservation or a DNS host, live."""
        if action not in ("add", "delete") or section not in ("dhcp-host", "dns-host"):
            raise InvalidSpec("net-update takes add|delete and dhcp-host|dns-host",
                              field="action")

        def mutate(spec: dict[str, Any]) -> None:
            if section == "dhcp-host":
                dhcp = dict(spec.get("dhcp") or {})
                hosts = list(dhcp.get("hosts", []))
                spec["dhcp"] = {**dhcp, "hosts": _add_or_remove(hosts, entry, action, "mac")}
            else:
                spec["dns_hosts"] = _add_or_remove(list(spec.get("dns_hosts", [])), entry,
                                                   action, "ip")

        row, net = self._change(ref, mutate)
        if row.state == ACTIVE:
            if section == "dhcp-host" and action == "add":
                self._refuse_leased_elsewhere(row, entry)
            self._backend.update_hosts(net, self._dir(row))
        return self.info(row.uuid)

    def _refuse_leased_elsewhere(self, row: ObjectRow, entry: dict[str, Any]) -> None:
        for lease in self._backend.leases(self._net(row), self._dir(row)):
            if lease.ip == entry.get("ip") and lease.mac.lower() != str(entry.get("mac")).lower():
                raise Conflict(f"{lease.ip} is leased to {lease.mac}",
                               fix="pick another address, or wait for that lease to end")

    def port_forward(self, ref: str, action: str, entry: dict[str, Any]) -> NetworkInfo:
        """net-port-forward add|remove: host address:port -> guest ip:port, live."""
        if action not in ("add", "remove"):
            raise InvalidSpec("net-port-forward takes add or remove", field="action")
        if action == "add":
            _refuse_port_in_use(entry)

        def mutate(spec: dict[str, Any]) -> None:
            forwards = list(spec.get("forwards", []))
            if action == "add":
                forwards.append(entry)
            else:
                keep = [f for f in forwards if not _same_forward(f, entry)]
                if len(keep) == len(forwards):
                    raise InvalidSpec("no such port forward", field="forward")
                forwards = keep
            spec["forwards"] = forwards

        row, net = self._change(ref, mutate)
        if row.state == ACTIVE:
            nftables.apply(net)
        return self.info(row.uuid)

    # -- daemon start -------------------------------------------------------------------

    def ensure_default(self) -> None:
        """Define the ``default`` NAT network once (192.168.122.0/24 or the next free)."""
        if self._store.find_object("network", DEFAULT_NETWORK) is None:
            self.define({"name": DEFAULT_NETWORK, "mode": "nat", "autostart": True})

    def repair_active(self) -> list[str]:
        """What had to be repaired in active networks (dnsmasq restarted, rules restored)."""
        dnsmasq.reap()  # collect dnsmasq children that died, so none is left a zombie
        notes: list[str] = []
        for row in self._store.list_objects("network"):
            if row.state == ACTIVE:
                repaired = self._backend.repair(self._net(row), self._dir(row))
                notes += [f"{row.name}: {note}" for note in repaired]
                for note in repaired:
                    self._bus.publish("net-repaired", row.uuid, network=row.name, reason=note)
        return notes

    def _leftovers(self, net: Network, row: ObjectRow) -> str:
        """What of an *inactive* network exists anyway (a start the daemon was killed
        in, before it recorded the network active): '' when nothing."""
        if net.mode is NetworkMode.BRIDGE or net.bridge is None:
            return ""
        claimed = self._backend.claim_unmarked_bridge(net)
        found = _describe_leftovers(self._backend.status(net, self._dir(row)))
        return f"{found}, unmarked" if claimed else found

    def reconcile(self) -> list[str]:
        """Repair active networks (bridge, dnsmasq, rules); take down what an
        interrupted start left of inactive ones (the start is rolled back); start
        autostart ones."""
        notes: list[str] = []
        for row in self._store.list_objects("network"):
            net = self._net(row)
            try:
                if row.state == ACTIVE:
                    notes += [f"{row.name}: {n}" for n in
                              self._backend.repair(net, self._dir(row))]
                    continue
                leftover = self._leftovers(net, row)
                if leftover:
                    self._backend.stop(net, self._dir(row))
                    notes.append(f"{row.name}: removed what an interrupted start left "
                                 f"({leftover})")
                if net.autostart:
                    self.start(row.uuid)
                    notes.append(f"{row.name}: autostarted")
            except Exception as exc:
                notes.append(f"{row.name}: {exc}")
                self._bus.publish("error", row.uuid, network=row.name, reason=str(exc))
        return notes


def _describe_leftovers(status: NetworkStatus) -> str:
    parts = []
    if status.bridge_present:
        parts.append(f"bridge {status.bridge}")
    if status.dnsmasq_alive:
        parts.append(f"dnsmasq pid {status.dnsmasq_pid}")
    if status.rules_present:
        parts.append("nft chains")
    return ", ".join(parts)


def _add_or_remove(items: list[dict[str, Any]], entry: dict[str, Any], action: str,
                   key: str) -> list[dict[str, Any]]:
    if action == "add":
        return [*items, entry]
    keep = [i for i in items if str(i.get(key)).lower() != str(entry.get(key)).lower()]
    if len(keep) == len(items):
        raise InvalidSpec(f"no entry with {key} {entry.get(key)} to delete", field=key)
    return keep


def _same_forward(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("proto", "tcp") == b.get("proto", "tcp")
            and int(a.get("host_port", 0)) == int(b.get("host_port", 0))
            and a.get("host_address", "0.0.0.0") == b.get("host_address", "0.0.0.0"))  # noqa: S104 - a test


def _refuse_port_in_use(entry: dict[str, Any]) -> None:
    """A forward on a port a host program already listens on would hide that program."""
    proto = entry.get("proto", "tcp")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    probe = socket.socket(socket.AF_INET, kind)
    try:
        probe.bind((str(entry.get("host_address", "0.0.0.0")), int(entry.get("host_port", 0))))  # noqa: S104 - a probe of the address the forward will listen on, closed at once
    except OSError:
        raise Conflict(f"{proto} port {entry.get('host_port')} is already in use on this host",
                       fix="choose another host port") from None
    except (TypeError, ValueError):
        raise InvalidSpec("host_port must be a port number", field="host_port") from None
    finally:
        probe.close()
