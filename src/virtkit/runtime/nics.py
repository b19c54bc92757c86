"""Tap devices for a domain's network and bridge NICs, opened before QEMU starts.

The daemon creates each tap (marked with the domain's uuid), attaches it to the
network's bridge or the named host bridge, and hands QEMU only the open file
descriptor.  The taps are not persistent: when QEMU exits they disappear, so a
stopped VM leaves no tap behind.
"""

from __future__ import annotations

from collections.abc import Callable

from virtkit.errors import StateError
from virtkit.model.domain import Domain
from virtkit.model.network import Network
from virtkit.network.backend import NetworkBackend
from virtkit.network.links import Links, Tap, owner_tag

#: network name -> (its spec, whether it is active)
NetworkLookup = Callable[[str], tuple[Network, bool]]


class TapMaker:
    """Callable: ``maker(domain) -> {nic index: Tap}`` for its non-user NICs."""

    def __init__(self, lookup: NetworkLookup, backend: NetworkBackend | None = None) -> None:
        self._lookup = lookup
        self._backend = backend or NetworkBackend()

    def __call__(self, domain: Domain) -> dict[int, Tap]:
        taps: dict[int, Tap] = {}
        try:
            for index, nic in enumerate(domain.nics):
                if nic.type == "network" and nic.network:
                    net, active = self._lookup(nic.network)
                    if not active:
                        raise StateError(
                            f"nics[{index}]: network '{net.name}' is not active",
                            current="inactive", requested="attach",
                            fix=f"start it: virtkit net-start {net.name}")
                    taps[index] = self._backend.create_tap(net, domain.uuid, guest_mac=nic.mac)
                elif nic.type == "bridge" and nic.bridge:
                    with Links() as links:
                        taps[index] = links.create_tap(owner_tag(domain.uuid), nic.bridge,
                                                       guest_mac=nic.mac)
        except BaseException:
            for tap in taps.values():
                tap.close()
            raise
        return taps
