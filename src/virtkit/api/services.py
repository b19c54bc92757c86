"""The services container: what the API serves, and how a handler reaches it.

The daemon (api/daemon.py) builds one :class:`Services`; ``create_app`` puts it on
the application under :data:`SERVICES`.  The four first fields are always present;
an optional service that is ``None`` simply has its routes left out (api/app.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from virtkit.api.audit import AuditLog
from virtkit.service.clones import CloneService
from virtkit.service.cluster import ClusterService
from virtkit.service.devices import DeviceService
from virtkit.service.domains import DomainService
from virtkit.service.guest import GuestService
from virtkit.service.host import HostService
from virtkit.service.hostguests import HostGuestsService
from virtkit.service.install import InstallService
from virtkit.service.limits import LimitsService
from virtkit.service.managedsave import ManagedSaveService
from virtkit.service.migrations import MigrationService
from virtkit.service.networks import NetworkService
from virtkit.service.provision import ProvisionService
from virtkit.service.recovery import RecoveryService
from virtkit.service.snapshots import SnapshotService
from virtkit.service.stats import StatsService
from virtkit.service.storage import StorageService
from virtkit.service.tls import TlsService
from virtkit.service.tokens import TokenService
from virtkit.service.tuning import TuningService
from virtkit.service.virsh import VirshService


@dataclass
class Services:
    """What the API serves: the service objects."""

    domains: DomainService
    host: HostService
    storage: StorageService
    networks: NetworkService
    install: InstallService | None = None
    stats: StatsService | None = None
    tuning: TuningService | None = None
    guest: GuestService | None = None
    devices: DeviceService | None = None
    clones: CloneService | None = None
    migrations: MigrationService | None = None
    snapshots: SnapshotService | None = None
    tokens: TokenService | None = None
    tls: TlsService | None = None
    provision: ProvisionService | None = None
    recovery: RecoveryService | None = None
    virsh: VirshService | None = None
    cluster: ClusterService | None = None
    managedsave: ManagedSaveService | None = None
    guests: HostGuestsService | None = None
    limits: LimitsService | None = None
    consoles: dict[tuple[str, int], web.WebSocketResponse] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
AUDIT = web.AppKey("audit", AuditLog)


def services_of(request: web.Request) -> Services:
    """The services of the application serving ``request``."""
    return request.app[SERVICES]
