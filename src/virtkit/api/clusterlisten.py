"""The cluster API listener (docs/cluster.md, "Forwarding over the network"): the
same API on ``https://ADDRESS:16516`` for the other hosts' daemons only.

TLS is mutual (service/clusterapi.py makes the context): a client must show a
certificate the cluster CA signed, and its CN must be a current member.  Such a
request is a *cluster peer's*: :func:`peer_host` names the host, and the auth
middleware (api/auth.py) gives it the standing the forwarding host declared for its
original caller (``X-Virtkit-Caller``: local, read-only, or remote with the path
policy), so a forwarded request can do here exactly what it could have done there.
The listener follows the cluster: it starts at ``cluster init``/``join`` (and at a
daemon start in a cluster), and stops at ``cluster leave``.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from virtkit.service.clusterapi import ClusterApi, Listen

log = logging.getLogger(__name__)


class ClusterListener:
    def __init__(self, api: ClusterApi) -> None:
        self.api = api
        self.runner: web.AppRunner | None = None
        self.context: ssl.SSLContext | None = None
        self.problem: str | None = None
        self._site: web.TCPSite | None = None
        self._where: tuple[str, int] | None = None
        api.on_change = self.refresh

    async def refresh(self) -> None:
        """Listen where the cluster configuration says, or not at all outside one."""
        wanted: Listen | None = self.api.listen()
        where = (wanted.host, wanted.port) if wanted else None
        if where == self._where and self._site is not None:
            return  # already there (the certificate does not change while a member)
        await self.stop()
        if wanted is None or self.runner is None:
            return
        site = web.TCPSite(self.runner, wanted.host, wanted.port,
                           ssl_context=wanted.context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            self.problem = (f"cannot listen on {wanted.host}:{wanted.port}: {exc.strerror}; "
                            "other hosts cannot forward requests here")
            log.error("cluster: %s", self.problem)
            return
        self._site, self._where, self.context, self.problem = site, where, wanted.context, None
        log.info("cluster API on https://%s:%s (cluster hosts only, mutual TLS)",
                 wanted.host, wanted.port)

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
        self._site = self._where = self.context = None


LISTENER = web.AppKey("cluster_listener", ClusterListener)


def peer_host(request: web.Request) -> str | None:
    """The cluster host that sent ``request`` (its verified certificate's CN), when it
    came in on the cluster API listener; else None."""
    listener = request.app.get(LISTENER)
    transport = request.transport
    if listener is None or listener.context is None or transport is None:
        return None
    if transport.get_extra_info("sslcontext") is not listener.context:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
