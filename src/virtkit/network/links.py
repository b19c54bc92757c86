"""Bridges, taps, addresses and routes through netlink (pyroute2), in any namespace.

Ownership: every link virtkit creates carries an interface alias (``ip link
show`` prints it as ``alias``) of the form ``virtkit:<uuid>`` -- the network's
uuid on bridges, the domain's on taps.  A link without our alias is someone
else's: it is never modified or deleted, and creating a link whose name it holds
is refused with :class:`~virtkit.errors.Conflict`.

Taps are created non-persistent with ``TUNSETIFF`` on ``/dev/net/tun`` (opened
inside the target namespace), so the tap lives exactly as long as its file
descriptor: the daemon hands that fd to QEMU (``-netdev tap,fd=N``) and the tap
disappears when QEMU exits.

pyroute2's synchronous ``IPRoute`` runs its own asyncio loop, so this module must
be called from a worker thread (``asyncio.to_thread``), never from the daemon's
event loop thread; :class:`Links` says so clearly instead of hanging.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from virtkit.errors import Conflict, HostError, NotFound, VirtkitError
from virtkit.network import netns as ns

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
else:  # imported on first use: pyroute2 costs the daemon ~10 MiB of memory
    IPRoute = NetlinkError = None


def _load_pyroute2() -> None:
    global IPRoute, NetlinkError
    if IPRoute is None:
        from pyroute2 import IPRoute as iproute
        from pyroute2.netlink.exceptions import NetlinkError as netlink_error

        IPRoute, NetlinkError = iproute, netlink_error


TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_UP = 0x1
NETLINK_ROUTE = 0
MAIN_TABLE = 254
TAP_PATTERN = "vktap%d"
DEFAULT_SUBNET = "192.168.122.0/24"


def owner_tag(uuid: str) -> str:
    """The alias that marks a link as virtkit's, for the object with this uuid."""
    return f"virtkit:{uuid}"


def stable_mac(seed: str) -> str:
    """A locally administered unicast MAC (52:54:00:xx:xx:xx) derived from ``seed``.

    A bridge whose MAC is set explicitly keeps it when ports come and go (otherwise
    it takes the lowest port MAC, and guests' ARP caches go stale).
    """
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


@dataclass(frozen=True)
class LinkInfo:
    """What virtkit needs to know about one network interface."""

    index: int
    name: str
    kind: str | None
    alias: str | None
    up: bool
    master: int | None
    mtu: int
    mac: str | None


@dataclass
class Tap:
    """A tap device of ours; ``fd`` is the open /dev/net/tun descriptor (QEMU's end)."""

    name: str
    fd: int

    def close(self) -> None:
        """Close the descriptor: a non-persistent tap vanishes with its last fd."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _netlink_error(action: str, exc: NetlinkError) -> HostError:
    return HostError(f"cannot {action}: {os.strerror(exc.code) if exc.code else exc}",
                     fix="run virtkit as root with the bridge and tun kernel modules available")


def _open_iproute(netns: str | None) -> IPRoute:
    _load_pyroute2()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise VirtkitError("the network layer was called from an asyncio event loop thread",
                           fix="call it through asyncio.to_thread(): it blocks, and pyroute2 "
                               "runs its own loop")
    if netns is None:
        return IPRoute()

    def make_socket() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()

    return IPRoute(fileno=ns.run_in(netns, make_socket))


class Links:
    """Netlink access to the links, addresses and routes of the host or of one namespace.

    Use as a context manager (``with Links(netns) as links: ...``); every method
    raises only :mod:`virtkit.errors` errors.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr = _open_iproute(netns)

    def __enter__(self) -> Links:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    # -- looking ----------------------------------------------------------------------------

    def _call(self, action: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise _netlink_error(action, exc) from None

    @staticmethod
    def _info(msg: Any) -> LinkInfo:
        return LinkInfo(index=msg["index"], name=msg.get("ifname"),
                        kind=msg.get(("linkinfo", "kind")), alias=msg.get("ifalias"),
                        up=bool(msg["flags"] & IFF_UP), master=msg.get("master"),
                        mtu=msg.get("mtu"), mac=msg.get("address"))

    def links(self) -> list[LinkInfo]:
        """Every link of the namespace."""
        return [self._info(msg) for msg in self._call("list links", "get_links")]

    def get(self, name: str) -> LinkInfo | None:
        """The link called ``name``, or None."""
        found = self._call(f"look up {name}", "link_lookup", ifname=name)
        if not found:
            return None
        try:
            return self._info(self._ipr.get_links(found[0])[0])
        except NetlinkError:  # vanished between the two calls
            return None

    def require(self, name: str) -> LinkInfo:
        """The link called ``name``; NotFound naming it if there is none."""
        info = self.get(name)
        if info is None:
            raise NotFound(f"interface {name!r} does not exist",
                           fix="check the name with 'ip link show'")
        return info

    def names(self) -> set[str]:
        return {link.name for link in self.links()}

    def ports(self, bridge: str) -> list[str]:
        """Names of the links enslaved to ``bridge``."""
        index = self.require(bridge).index
        return sorted(link.name for link in self.links() if link.master == index)

    def addresses(self, name: str) -> list[str]:
        """IPv4 addresses of ``name`` as ``address/prefix``."""
        index = self.require(name).index
        return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in self._call(f"list addresses of {name}", "get_addr",
                                    family=socket.AF_INET, index=index)]

    # -- bridges ----------------------------------------------------------------------------

    @staticmethod
    def check_ours(info: LinkInfo, owner: str, *, deleting: bool = False) -> None:
        """Conflict unless ``info`` carries the mark ``owner``."""
        if info.alias == owner:
            return
        whose = f"marked {info.alias!r}" if info.alias else "not made by virtkit"
        if deleting:
            raise Conflict(f"interface {info.name!r} is {whose}, not {owner!r}; virtkit does "
                           "not delete it", fix="delete it yourself if it is a leftover")
        raise Conflict(f"interface {info.name!r} already exists and is {whose}",
                       fix="choose another name (or delete that interface if it is a leftover)")

    def claim_unmarked_bridge(self, name: str, owner: str) -> bool:
        """Mark bridge ``name`` as ``owner``'s if it is the one :meth:`create_bridge`
        made before a crash could set its mark: a bridge, no alias, and the MAC derived
        from ``owner``.  True if it was claimed (it can then be deleted as ours)."""
        info = self.get(name)
        if info is None or info.alias or info.kind != "bridge" \
                or (info.mac or "").lower() != stable_mac(owner):
            return False
        self._call(f"mark bridge {name}", "link", "set", index=info.index, ifalias=owner)
        return True

    def create_bridge(self, name: str, owner: str, *, mtu: int | None = None) -> LinkInfo:
        """Create bridge ``name`` marked ``owner`` (STP off, no forward delay, fixed MAC).

        An existing bridge with our mark is returned as it is (so a repeated call is
        harmless); any other existing interface of that name is a Conflict.
        """
        existing = self.get(name)
        if existing is not None:
            self.check_ours(existing, owner)
            return existing
        options: dict[str, Any] = {"ifname": name, "kind": "bridge", "br_stp_state": 0,
                                   "br_forward_delay": 0, "address": stable_mac(owner)}
        if mtu is not None:
            options["mtu"] = mtu
        try:
            self._ipr.link("add", **options)
        except NetlinkError as exc:
            if exc.code == 17:  # EEXIST: someone made it just now
                raced = self.require(name)
                self.check_ours(raced, owner)
                return raced
            raise _netlink_error(f"create bridge {name}", exc) from None
        info = self.require(name)
        self._call(f"mark bridge {name}", "link", "set", index=info.index, ifalias=owner)
        return self.require(name)

    def ensure_address(self, name: str, cidr: str) -> bool:
        """Give ``name`` the address ``cidr`` (``ip/prefix``) unless it has it; True if added."""
        if cidr in self.addresses(name):
            return False
        interface = ipaddress.IPv4Interface(cidr)
        self._call(f"add {cidr} to {name}", "addr", "add", index=self.require(name).index,
                   address=str(interface.ip), prefixlen=interface.network.prefixlen,
                   broadcast=str(interface.network.broadcast_address))
        return True

    def set_up(self, name: str, up: bool = True) -> None:
        """Bring ``name`` up (or down with ``up=False``)."""
        self._call(f"set {name} {'up' if up else 'down'}", "link", "set",
                   index=self.require(name).index, state="up" if up else "down")

    def delete(self, name: str, owner: str) -> bool:
        """Delete link ``name`` if it is ours; False if it is already gone."""
        info = self.get(name)
        if info is None:
            return False
        self.check_ours(info, owner, deleting=True)
        try:
            self._ipr.link("del", index=info.index)
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV: gone meanwhile
                return False
            raise _netlink_error(f"delete {name}", exc) from None
        return True

    def attach(self, name: str, bridge: str) -> None:
        """Make ``name`` a port of ``bridge``."""
        self._call(f"attach {name} to {bridge}", "link", "set",
                   index=self.require(name).index, master=self.require(bridge).index)

    # -- taps -------------------------------------------------------------------------------

    def create_tap(self, owner: str, bridge: str, *, name: str | None = None,
                   guest_mac: str | None = None, vnet_hdr: bool = True) -> Tap:
        """Create a tap marked ``owner`` in ``bridge``, up, and return it with its open fd.

        The tap is named ``name`` or the next free ``vktapN``.  Its MAC is the guest's
        with the first byte set to ``fe`` (as libvirt does), so the bridge never takes
        it as its own; its MTU follows the bridge.  ``vnet_hdr`` suits virtio-net
        (QEMU's ``vnet_hdr=on``).  On any failure the fd is closed, so no tap is left.
        """
        master = self.require(bridge)
        if name is not None and self.get(name) is not None:
            raise Conflict(f"interface {name!r} already exists", fix="pick another tap name")
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        tap = ns.run_in(self.netns, lambda: _open_tap(name or TAP_PATTERN, flags))
        try:
            index = self.require(tap.name).index
            options: dict[str, Any] = {"ifalias": owner, "mtu": master.mtu}
            if guest_mac is not None:
                options["address"] = "fe" + guest_mac[2:]
            self._call(f"configure tap {tap.name}", "link", "set", index=index, **options)
            self.attach(tap.name, bridge)
            self.set_up(tap.name)
        except BaseException:
            tap.close()
            raise
        return tap

    def delete_tap(self, name: str, owner: str) -> bool:
        """Remove tap ``name`` if it is ours (QEMU's fd then reads EIO); False if gone."""
        return self.delete(name, owner)

    # -- subnets ----------------------------------------------------------------------------

    def subnet_in_use(self, cidr: str, *, ignore: Iterable[str] = ()) -> str | None:
        """What on this host already uses addresses of ``cidr``, or None.

        Looks at every IPv4 address (its subnet) and every route of the main table
        except default routes; links named in ``ignore`` (our own bridge, when
        repairing) do not count.
        """
        wanted = ipaddress.IPv4Network(cidr)
        names = {link.index: link.name for link in self.links()}
        skip = set(ignore)
        for addr in self._call("list addresses", "get_addr", family=socket.AF_INET):
            where = names.get(addr["index"], "?")
            network = ipaddress.IPv4Interface(
                f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}").network
            if where not in skip and network.overlaps(wanted):
                return f"address {addr.get('IFA_ADDRESS')}/{addr['prefixlen']} on {where}"
        for route in self._call("list routes", "get_routes", family=socket.AF_INET,
                                table=MAIN_TABLE):
            if not route["dst_len"]:
                continue
            where = names.get(route.get("RTA_OIF") or 0, "?")
            network = ipaddress.IPv4Network(f"{route.get('RTA_DST')}/{route['dst_len']}")
            if where not in skip and network.overlaps(wanted):
                return f"route {network} dev {where}"
        return None

    def next_free_subnet(self, start: str = DEFAULT_SUBNET, *,
                         avoid: Iterable[str] = ()) -> str:
        """The first subnet of ``start``'s size, counting up from ``start``, that neither
        the host nor ``avoid`` (other networks' subnets) uses: 192.168.122.0/24, then
        .123.0/24 and so on, within the /16 (or the prefix 8 shorter) around ``start``."""
        first = ipaddress.IPv4Network(start)
        taken = [ipaddress.IPv4Network(a) for a in avoid]
        room = first.supernet(new_prefix=max(8, first.prefixlen - 8))
        candidates = [s for s in room.subnets(new_prefix=first.prefixlen) if s >= first]
        for candidate in candidates:
            if any(candidate.overlaps(t) for t in taken):
                continue
            if self.subnet_in_use(str(candidate)) is None:
                return str(candidate)
        raise Conflict(f"no free /{first.prefixlen} subnet from {first} up to the end of {room}",
                       fix="give the network a subnet explicitly")


def _open_tap(pattern: str, flags: int) -> Tap:
    """TUNSETIFF on a fresh /dev/net/tun fd (in the calling thread's namespace)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(f"cannot open /dev/net/tun: {exc.strerror}",
                        fix="load the tun module (modprobe tun) and run virtkit as root"
                        ) from None
    try:
        request = struct.pack("16sH22x", pattern.encode(), flags)
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as exc:
        os.close(fd)
        raise HostError(f"cannot create tap {pattern!r}: {exc.strerror}",
                        fix="run virtkit as root (creating a tap needs CAP_NET_ADMIN)") from None
    return Tap(name=answer[:16].rstrip(b"\0").decode(), fd=fd)
