"""The v1 API's assembly: the aiohttp application from the services, the
middleware chain and the route tables.

Nothing here handles a request.  Where things live:

- api/services.py: the services container (``Services``) and ``services_of``;
- api/middleware.py: the middleware chain, in one list (audit, auth, errors);
- a route: the ``*_routes.py`` module of its area (:data:`ROUTE_TABLES` names each
  table once, with the services it needs): domain_routes.py (define, list, lifecycle),
  console_routes.py (serial console and VNC proxies), events_routes.py (the event
  stream), system_routes.py (version, OpenAPI, audit, host facts), and the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from virtkit.api import (
    auth,
    clone_routes,
    cluster_routes,
    console_routes,
    device_routes,
    domain_routes,
    events_routes,
    forward,
    guest_routes,
    install_routes,
    limits_routes,
    managedsave_routes,
    migration_routes,
    network_routes,
    snapshot_routes,
    stats_routes,
    storage_routes,
    system_routes,
    virsh_routes,
    webui,
)
from virtkit.api.audit import AuditLog
from virtkit.api.middleware import middlewares
from virtkit.api.services import AUDIT, SERVICES, Services
from virtkit.api.websession import SessionStore
from virtkit.service.weblogin import WebLogin

#: the largest request body read whole (JSON); volume uploads stream past it
MAX_BODY = 4 * 1024 * 1024

#: the route tables the daemon serves, each with the services it needs as
#: (application key, service of the container); a table whose services the container
#: lacks is left out whole
ROUTE_TABLES: list[tuple[web.RouteTableDef,
                         list[tuple[web.AppKey[Any], Callable[[Services], Any]]]]] = [
    (system_routes.routes, []),
    (system_routes.recovery_routes, [(system_routes.RECOVERY, lambda s: s.recovery)]),
    (domain_routes.routes, []),
    (console_routes.routes, []),
    (events_routes.routes, []),
    (storage_routes.routes, [(storage_routes.STORAGE, lambda s: s.storage)]),
    (network_routes.routes, [(network_routes.NETWORKS, lambda s: s.networks)]),
    (snapshot_routes.routes, [(snapshot_routes.SNAPSHOTS, lambda s: s.snapshots)]),
    (install_routes.routes, [(install_routes.INSTALL, lambda s: s.install)]),
    (guest_routes.routes, [(guest_routes.GUEST, lambda s: s.guest)]),
    (device_routes.routes, [(device_routes.DEVICES, lambda s: s.devices),
                            (device_routes.DOMAINS, lambda s: s.domains)]),
    (clone_routes.routes, [(clone_routes.CLONES, lambda s: s.clones)]),
    (migration_routes.routes, [(migration_routes.MIGRATIONS, lambda s: s.migrations)]),
    (stats_routes.routes, [(stats_routes.STATS, lambda s: s.stats),
                           (stats_routes.TUNING, lambda s: s.tuning)]),
    (virsh_routes.routes, [(virsh_routes.VIRSH, lambda s: s.virsh)]),
    (cluster_routes.routes, [(cluster_routes.CLUSTER, lambda s: s.cluster)]),
    (managedsave_routes.routes, [(managedsave_routes.MANAGED, lambda s: s.managedsave),
                                 (managedsave_routes.GUESTS, lambda s: s.guests)]),
    (limits_routes.routes, [(limits_routes.LIMITS, lambda s: s.limits)]),
]


def create_app(services: Services, audit: AuditLog | None = None,
               web_sessions: SessionStore | None = None) -> web.Application:
    """The aiohttp application serving the v1 API; ``audit`` logs every mutating call;
    ``web_sessions`` (when the daemon serves the web console) adds the console's page
    and login, and lets its browser sessions use the API."""
    # A 1 MiB read buffer: uploads stream whole volumes; aiohttp's 64 KiB default
    # pauses the socket every 128 KiB.
    app = web.Application(middlewares=middlewares(audit), client_max_size=MAX_BODY,
                          handler_args={"read_bufsize": 1024 * 1024})
    app[SERVICES] = services
    if audit is not None:
        app[AUDIT] = audit
    for table, needs in ROUTE_TABLES:
        wanted = [(key, pick(services)) for key, pick in needs]
        if all(service is not None for _key, service in wanted):
            for key, service in wanted:
                app[key] = service
            app.add_routes(table)
    if services.tokens is not None and services.tls is not None:
        auth.install(app, services.tokens, services.tls)
        if web_sessions is not None:
            webui.install(app, web_sessions, WebLogin(services.tokens))
    forward.install(app, services)  # the cluster: forwarding, placement, VM records
    return app
