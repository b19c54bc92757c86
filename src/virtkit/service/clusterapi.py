"""This host's cluster API (docs/cluster.md, "Forwarding over the network"): the
listener the other hosts' daemons call to carry a request for a VM owned here.

It listens on the host's cluster address, port ``api_port`` of its cluster
configuration (16516 unless ``cluster init/join --api-port`` said otherwise), with
mutual TLS from the cluster CA (service/clusterpki.py): it shows this host's
certificate and accepts only clients whose certificate the cluster CA signed, and of
those only current members (the certificate's CN is the host's name; a host that left
keeps a valid certificate but is no member).  The listener itself is the API layer's
(api/clusterlisten.py); this module says where and with what, and tells it when that
changed (init, join, leave, daemon start).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtkit.cluster.etcd import EtcdUnavailable
from virtkit.cluster.hosts import MEMBERS
from virtkit.service import clusterpki
from virtkit.service.forward import CLUSTER_API_PORT

if TYPE_CHECKING:
    from virtkit.service.cluster import ClusterService

log = logging.getLogger(__name__)

#: how long a peer's membership, once confirmed in etcd, is taken as known
MEMBER_CACHE = 30.0


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    context: ssl.SSLContext


def url_of(address: str, port: int) -> str:
    try:
        literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        literal = address
    return f"https://{literal}:{port}"


class ClusterApi:
    def __init__(self, cluster: ClusterService) -> None:
        self.cluster = cluster
        #: the API layer's listener: called when where or with what to listen changed
        self.on_change: Callable[[], Awaitable[None]] | None = None
        self._client: tuple[float, ssl.SSLContext] | None = None
        self._members: dict[str, float] = {}
        #: the configuration of a join or init under way (saved once it succeeded)
        self.pending: dict[str, Any] | None = None

    def _settings(self) -> tuple[str, int] | None:
        """(address, port) when this host has a cluster certificate to serve with."""
        config = self.cluster.config() or self.pending
        pki = self.cluster.pki
        if config is None or not config.get("address") or not (
                pki.cert.is_file() and pki.key.is_file() and pki.ca.is_file()):
            return None
        return str(config["address"]), int(config.get("api_port") or CLUSTER_API_PORT)

    def url(self) -> str | None:
        """This host's cluster API, as its live record publishes it."""
        settings = self._settings()
        return url_of(*settings) if settings else None

    def listen(self) -> Listen | None:
        settings = self._settings()
        if settings is None:
            return None
        return Listen(settings[0], settings[1], clusterpki.server_context(self.cluster.pki))

    def client_tls(self) -> ssl.SSLContext | None:
        """The TLS this daemon calls the other hosts' cluster API with (None without a
        cluster certificate); made again when the certificate was replaced."""
        pki = self.cluster.pki
        try:
            stamp = pki.cert.stat().st_mtime
        except OSError:
            self._client = None
            return None
        if self._client is None or self._client[0] != stamp:
            try:
                self._client = (stamp, clusterpki.client_context(pki))
            except (OSError, ssl.SSLError) as exc:
                log.warning("cluster: cannot use the host certificate: %s", exc)
                return None
        return self._client[1]

    async def is_member(self, name: str) -> bool:
        """Whether host ``name`` (a verified client certificate's CN) is a member now."""
        if time.monotonic() - self._members.get(name, -MEMBER_CACHE) < MEMBER_CACHE:
            return True
        etcd = self.cluster.etcd
        if etcd is None:
            return False
        try:
            found = await etcd.get(MEMBERS + name) is not None
        except EtcdUnavailable:
            return False
        if found:
            self._members[name] = time.monotonic()
        return found

    async def changed(self) -> None:
        """Tell the listener (init, join, leave, daemon start)."""
        self._members.clear()
        self._client = None
        self.pending = None
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:
                log.exception("cluster: the cluster API listener could not follow")
