"""Bringing a virtual network up and down: bridge, address, nft rules, dnsmasq.

:class:`NetworkBackend` is what the runtime/service layer calls.  Every method
takes the network spec, the network's state folder (dnsmasq's files live there;
the caller owns it and removes it on undefine) and an optional network namespace
(None = the host; tests use a namespace of their own).

Start is a multi-step operation with undo (DESIGN §3): after each step its undo
is pushed on an :class:`contextlib.ExitStack`; on success the stack is emptied
with ``pop_all()``, on failure it unwinds, so a start that fails half-way leaves
no bridge, rules or dnsmasq behind.

Repair re-creates only what is missing and never flaps what works: an existing
bridge is kept (taps of running guests stay attached), rules are replaced only if
they differ, and dnsmasq is restarted only if it died or its bridge was re-made.

All methods block (netlink, subprocesses): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, StateError
from virtkit.model.network import Network, NetworkMode, pick_bridge_name
from virtkit.network import dnsmasq, nftables
from virtkit.network.links import DEFAULT_SUBNET, Links, Tap, owner_tag

log = logging.getLogger(__name__)


@dataclass
class NetworkStatus:
    """What is in place for one network; ``None`` = not applicable to its mode."""

    mode: str
    bridge: str | None
    bridge_present: bool = False
    bridge_up: bool = False
    address_present: bool | None = None
    dnsmasq_alive: bool | None = None
    dnsmasq_pid: int | None = None
    rules_present: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Everything the mode needs is there."""
        return not self.problems

    @property
    def active(self) -> bool:
        """Whether the network is (at least partly) up: our bridge exists."""
        return self.bridge_present

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy, "active": self.active}


def _undoing(action: Callable[[], object], what: str) -> Callable[[], None]:
    """An undo step that logs its own failure instead of hiding the original error."""
    def run() -> None:
        try:
            action()
        except Exception:
            log.exception("undo failed: %s", what)
    return run


class NetworkBackend:
    """Start, stop, check and repair virtual networks (nat, isolated, bridge)."""

    def __init__(self, *, dnsmasq_binary: str = "dnsmasq",
                 dnsmasq_timeout: float = dnsmasq.START_TIMEOUT) -> None:
        self.dnsmasq_binary = dnsmasq_binary
        self.dnsmasq_timeout = dnsmasq_timeout

    # -- define time --------------------------------------------------------------------

    def complete(self, net: Network, *, netns: str | None = None,
                 other_networks: Iterable[Network] = (),
                 subnet_start: str = DEFAULT_SUBNET) -> Network:
        """Fill in what the spec left to virtkit: the ``vkbrN`` bridge and a free subnet.

        Call it at define time and store the result, so the names stay stable.
        ``other_networks`` are the other defined networks (running or not): their
        bridges and subnets are not handed out again.
        """
        if net.mode is NetworkMode.BRIDGE or (net.bridge and net.subnet):
            return net
        others = list(other_networks)
        update: dict[str, Any] = {}
        with Links(netns) as links:
            if net.bridge is None:
                taken = links.names() | {o.bridge for o in others if o.bridge}
                update["bridge"] = pick_bridge_name(taken)
            if net.subnet is None:
                update["subnet"] = links.next_free_subnet(
                    subnet_start, avoid=[o.subnet for o in others if o.subnet])
        return Network.model_validate({**net.model_dump(), **update})

    @staticmethod
    def _require_complete(net: Network) -> tuple[str, str]:
        if not net.bridge:
            raise InvalidSpec(f"network {net.name!r} has no bridge name", field="bridge",
                              fix="define it through the service (NetworkBackend.complete "
                                  "picks vkbrN) or set bridge:")
        if net.mode is not NetworkMode.BRIDGE and net.subnet is None:
            raise InvalidSpec(f"network {net.name!r} has no subnet", field="subnet",
                              fix="set subnet: (e.g. 192.168.122.0/24) or let "
                                  "NetworkBackend.complete pick a free one")
        return net.bridge, net.subnet or ""

    # -- start --------------------------------------------------------------------------

    def start(self, net: Network, state_dir: Path | str, *,
              netns: str | None = None) -> dict[str, Any]:
        """Bring ``net`` up and return its runtime facts (bridge, gateway, dnsmasq pid ...).

        nat: bridge + address + forwarding + nft masquerade/forward rules + dnsmasq;
        isolated: the same with drop rules; bridge: only checks the host bridge.
        Refuses a subnet that overlaps a host address or route (Conflict naming both
        and a free subnet to use instead).
        """
        bridge, _ = self._require_complete(net)
        if net.mode is NetworkMode.BRIDGE:
            self._check_host_bridge(net, netns)
            return {"mode": net.mode.value, "bridge": bridge, "netns": netns}
        files = dnsmasq.files_in(state_dir)
        tag = net.owner_tag
        with Links(netns) as links, contextlib.ExitStack() as undo:
            existing = links.get(bridge)
            if existing is not None and existing.alias == tag:
                raise StateError(f"network {net.name!r} is already active (bridge {bridge} "
                                 "exists)", current="active", requested="start",
                                 fix="stop it first, or repair it")
            if existing is not None:
                Links.check_ours(existing, tag)
            self._check_subnet_free(net, links)
            links.create_bridge(bridge, tag, mtu=net.mtu)
            undo.callback(_undoing(lambda: links.delete(bridge, tag), f"delete {bridge}"))
            links.ensure_address(bridge, str(net.gateway_cidr))
            links.set_up(bridge)
            nftables.apply(net, netns=netns)
            undo.callback(_undoing(lambda: nftables.remove(net, netns=netns),
                                   f"remove nft chains of {net.name}"))
            pid = self._start_dnsmasq(net, files, netns)
            undo.callback(_undoing(lambda: dnsmasq.stop(pid, files), "stop dnsmasq"))
            undo.pop_all()
        return self._facts(net, files, pid, netns)

    def _start_dnsmasq(self, net: Network, files: dnsmasq.DnsmasqFiles,
                       netns: str | None) -> int:
        return dnsmasq.start(net, files, netns=netns, binary=self.dnsmasq_binary,
                             timeout=self.dnsmasq_timeout)

    @staticmethod
    def _facts(net: Network, files: dnsmasq.DnsmasqFiles, pid: int | None,
               netns: str | None) -> dict[str, Any]:
        return {
            "mode": net.mode.value, "bridge": net.bridge, "netns": netns,
            "gateway": net.gateway_cidr, "subnet": net.subnet,
            "dnsmasq_pid": pid, "dnsmasq_conf": str(files.conf),
            "leases_file": str(files.leases), "log_file": str(files.log),
            "nft_table": f"{nftables.FAMILY} {nftables.TABLE}",
            "nft_chains": [nftables.chain_name(net, role) for role in nftables.rules(net)],
        }

    @staticmethod
    def _check_subnet_free(net: Network, links: Links) -> None:
        subnet = str(net.subnet)
        user = links.subnet_in_use(subnet)
        if user is None:
            return
        try:
            suggestion = f"e.g. subnet: {links.next_free_subnet(subnet)}"
        except Conflict:
            suggestion = "pick a subnet nothing on the host uses"
        raise Conflict(f"subnet {subnet} of network {net.name!r} overlaps the host's {user}",
                       fix=f"choose another subnet ({suggestion})")

    @staticmethod
    def _check_host_bridge(net: Network, netns: str | None) -> None:
        with Links(netns) as links:
            info = links.get(str(net.bridge))
        if info is None:
            raise NotFound(f"host bridge {net.bridge!r} of network {net.name!r} does not exist",
                           fix=f"create it (e.g. ip link add {net.bridge} type bridge, and "
                               "enslave the uplink NIC) or fix bridge:")
        if info.kind != "bridge":
            raise InvalidSpec(f"interface {net.bridge!r} of network {net.name!r} is a "
                              f"{info.kind or 'plain'} interface, not a bridge", field="bridge",
                              fix="name a Linux bridge (ip -d link show type bridge)")

    # -- stop ---------------------------------------------------------------------------

    def stop(self, net: Network, state_dir: Path | str, *, netns: str | None = None) -> None:
        """Take ``net`` down: dnsmasq, then our nft chains, then our bridge.

        Every step runs even if an earlier one failed; the first failure is raised
        at the end.  A bridge that is not ours is never deleted; the lease file is
        kept (leases survive a restart), the state folder too.
        """
        self._require_complete(net)
        if net.mode is NetworkMode.BRIDGE:
            return
        files = dnsmasq.files_in(state_dir)
        failures: list[Exception] = []
        steps: list[Callable[[], object]] = [
            lambda: dnsmasq.stop(dnsmasq.read_pid(files), files),
            lambda: nftables.remove(net, netns=netns),
            lambda: self._delete_bridge(net, netns),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:
                log.warning("stopping network %s: %s", net.name, exc)
                failures.append(exc)
        if failures:
            raise failures[0]

    @staticmethod
    def _delete_bridge(net: Network, netns: str | None) -> None:
        with Links(netns) as links:
            info = links.get(str(net.bridge))
            if info is not None and info.alias != net.owner_tag:
                log.warning("bridge %s is not network %s's; left alone", net.bridge, net.name)
                return
            links.delete(str(net.bridge), net.owner_tag)

    @staticmethod
    def claim_unmarked_bridge(net: Network, *, netns: str | None = None) -> bool:
        """A bridge ``start`` created but a crash kept from marking (see
        :meth:`Links.claim_unmarked_bridge`) is marked, so status and stop see it."""
        if net.mode is NetworkMode.BRIDGE or net.bridge is None:
            return False
        with Links(netns) as links:
            return links.claim_unmarked_bridge(str(net.bridge), net.owner_tag)

    # -- status and repair --------------------------------------------------------------

    def status(self, net: Network, state_dir: Path | str, *,
               netns: str | None = None) -> NetworkStatus:
        """Look (without changing anything) at the bridge, its address, dnsmasq and rules."""
        bridge, _ = self._require_complete(net)
        status = NetworkStatus(mode=net.mode.value, bridge=bridge)
        with Links(netns) as links:
            info = links.get(bridge)
            status.bridge_present = info is not None and (
                net.mode is NetworkMode.BRIDGE or info.alias == net.owner_tag)
            status.bridge_up = bool(info and info.up)
            if net.mode is not NetworkMode.BRIDGE and status.bridge_present:
                status.address_present = str(net.gateway_cidr) in links.addresses(bridge)
        if info is not None and not status.bridge_present:
            status.problems.append(f"interface {bridge} exists but is not this network's")
        elif not status.bridge_present:
            status.problems.append(f"bridge {bridge} is missing")
        elif not status.bridge_up:
            status.problems.append(f"bridge {bridge} is down")
        if net.mode is NetworkMode.BRIDGE:
            return status
        if status.address_present is False:
            status.problems.append(f"bridge {bridge} lacks its address {net.gateway_cidr}")
        files = dnsmasq.files_in(state_dir)
        status.dnsmasq_pid = dnsmasq.read_pid(files)
        status.dnsmasq_alive = status.dnsmasq_pid is not None
        if not status.dnsmasq_alive:
            status.problems.append("dnsmasq is not running")
        rule_problems = nftables.problems(net, netns=netns)
        status.rules_present = not rule_problems
        status.problems += rule_problems
        return status

    def repair(self, net: Network, state_dir: Path | str, *,
               netns: str | None = None) -> list[str]:
        """Re-create what is missing; return what was done (empty = nothing was needed).

        An existing bridge is never re-created (guests' taps stay attached); dnsmasq
        is restarted only if it is dead or its bridge or address had to be re-made
        (its sockets are bound to them).
        """
        self._require_complete(net)
        if net.mode is NetworkMode.BRIDGE:
            self._check_host_bridge(net, netns)
            return []
        files = dnsmasq.files_in(state_dir)
        done, remade = self._repair_bridge(net, netns)
        if nftables.problems(net, netns=netns):
            nftables.apply(net, netns=netns)
            done.append("re-applied nft rules")
        pid = dnsmasq.read_pid(files)
        if pid is not None and remade:
            dnsmasq.stop(pid, files)
            pid = None
            done.append("stopped dnsmasq bound to the old bridge/address")
        if pid is None:
            pid = self._start_dnsmasq(net, files, netns)
            done.append(f"started dnsmasq (pid {pid})")
        return done

    def _repair_bridge(self, net: Network, netns: str | None) -> tuple[list[str], bool]:
        """Create/address/raise the bridge as needed; (what was done, whether the bridge or
        its address had to be re-made -- dnsmasq's sockets then point at the old ones)."""
        bridge = str(net.bridge)
        done: list[str] = []
        with Links(netns) as links:
            info = links.get(bridge)
            if info is None:
                self._check_subnet_free(net, links)
                links.create_bridge(bridge, net.owner_tag, mtu=net.mtu)
                done.append(f"created bridge {bridge}")
            else:
                Links.check_ours(info, net.owner_tag)
            if links.ensure_address(bridge, str(net.gateway_cidr)):
                done.append(f"added address {net.gateway_cidr} to {bridge}")
            remade = bool(done)
            if info is None or not info.up:
                links.set_up(bridge)
                done.append(f"set {bridge} up")
        return done, remade

    # -- while running ------------------------------------------------------------------

    def update_hosts(self, net: Network, state_dir: Path | str) -> bool:
        """Apply changed reservations / DNS hosts live (rewrite the files, SIGHUP dnsmasq).

        Returns whether anything changed.  Changes of the subnet, range or mode need
        a restart of the network.
        """
        files = dnsmasq.files_in(state_dir)
        changed = dnsmasq.update_hosts(net, files)
        pid = dnsmasq.read_pid(files)
        if changed and pid is not None:
            dnsmasq.reload(pid, files)
        return changed

    def leases(self, net: Network, state_dir: Path | str) -> list[dnsmasq.Lease]:
        """The DHCP leases dnsmasq handed out on ``net`` (empty for bridge mode)."""
        if net.mode is NetworkMode.BRIDGE:
            return []
        return dnsmasq.parse_leases(dnsmasq.files_in(state_dir).leases)

    def create_tap(self, net: Network, domain_uuid: str, *, netns: str | None = None,
                   name: str | None = None, guest_mac: str | None = None) -> Tap:
        """A tap for a guest NIC in ``net``'s bridge, marked with the domain's uuid.

        The caller passes ``tap.fd`` to QEMU (``-netdev tap,fd=N,vnet_hdr=on``) and
        closes its own copy afterwards; the tap then lives as long as QEMU.
        """
        bridge, _ = self._require_complete(net)
        with Links(netns) as links:
            info = links.get(bridge)
            if info is None or not (net.mode is NetworkMode.BRIDGE
                                    or info.alias == net.owner_tag):
                raise StateError(f"network {net.name!r} is not active (no bridge {bridge})",
                                 current="inactive", requested="attach",
                                 fix=f"start the network: virtkit net-start {net.name}")
            return links.create_tap(owner_tag(domain_uuid), bridge, name=name,
                                    guest_mac=guest_mac)
