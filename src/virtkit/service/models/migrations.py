"""What the migration services (service/migrations.py, incoming.py,
offline_migration.py) take and answer; docs/migration.md has the protocol.

The request models are also the bodies of the routes (api/migration_routes.py,
api/requests.py): the source's ``migrate`` and the destination's ``incoming`` and
``offline``, which the source daemon sends."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, JsonValue

from virtkit.service.models.base import Request, Result
from virtkit.service.models.documents import DomainDocument, PeerAddress, PeerAnswer

#: seconds, above 0 and finite
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class _Body(Request):
    """A request of these routes: built when first used, as api/requests.py's bodies
    (the daemon's start-up does not pay for them)."""

    model_config = ConfigDict(defer_build=True)


class MigrateRequest(_Body):
    """virsh migrate: the body of ``POST /v1/domains/{ref}/migrate`` (the CLI's)."""

    destination: PeerAddress
    address: str | None = None
    live: bool = True
    offline: bool = False
    persistent: bool = False
    undefine_source: bool = False
    auto_converge: bool = False
    copy_storage_all: bool = False
    copy_storage_inc: bool = False
    postcopy: bool = False
    postcopy_after_precopy: bool = False
    suspend: bool = False
    disk_paths: dict[str, str] | None = None
    bandwidth: Count | None = None
    downtime_limit: Count | None = None
    postcopy_bandwidth: Count | None = None
    timeout: Count | None = None


class CopyBacking(_Body):
    """--copy-storage-inc: the backing image the copied top image is created on."""

    path: str
    format: str | None = None


class CopyDisk(_Body):
    """One image the destination creates for a copied disk (runtime/storagecopy.py);
    it must be a writable disk of the spec at that device id and path."""

    device: str
    path: str
    format: str | None = None
    size: Annotated[int, Field(gt=0)]
    backing: CopyBacking | None = None


class CopyStorage(_Body):
    disks: Annotated[list[CopyDisk], Field(min_length=1)]


class SharedDisk(_Body):
    """A disk the source left out of the copy: a volume of a shared pool both hosts
    have (service/sharedstore.py checks it against this host's pools)."""

    path: str
    pool: str
    volume: str


class IncomingRequest(_Body):
    """``POST /v1/migrations/incoming`` (service/incoming.py): the running configuration,
    the definition, and what the destination checks it against."""

    spec: DomainDocument
    persistent_spec: DomainDocument | None = None
    address: str
    postcopy: bool = False
    deadline: Seconds | None = None
    keepalive: Seconds | None = None
    machine_type: str | None = None
    accelerator: str | None = None
    copy_storage: CopyStorage | None = None
    shared_disks: list[SharedDisk] | None = None
    #: where the source's hot-added disks and NICs sit (runtime/devlayout.py, checked
    #: strictly there): the destination QEMU rebuilds them at the same ids and ports
    layout: dict[str, JsonValue] | None = None


class OfflineIncomingRequest(_Body):
    """``POST /v1/migrations/offline`` (service/offline_migration.py)."""

    spec: DomainDocument
    address: str
    copy_storage: CopyStorage | None = None


class NbdServer(Result):
    """Where the source sends the copied disks: one NBD server with an export per
    device id (live), or one qemu-nbd per device (offline: ``ports``)."""

    host: str
    port: int | None = None
    exports: list[str] | None = None
    ports: dict[str, int] | None = None


class IncomingStarted(Result):
    """The destination's answer to incoming/offline: the migration's id (the domain's
    UUID), and where to send the stream (``uri``) and the disks (``nbd``)."""

    id: str
    domain: str
    uri: str | None = None
    nbd: NbdServer | None = None


class IncomingStatus(Result):
    """The source's keepalive: is the incoming migration still here and waiting?"""

    id: str
    incoming: bool
    offline: bool | None = None
    domain: str | None = None
    state: str | None = None
    reason: str | None = None


class IncomingRemoved(Result):
    """``DELETE /v1/migrations/{id}``: whether an unfinished one was removed."""

    id: str
    removed: bool


class MigrationResult(Result):
    """virsh migrate's answer, as the source saw the migration end.  Live: times,
    bytes and the copied disks; ``resolved``: how an unanswered finish was settled;
    ``offline``: an offline migration (only ``copied_disks`` then)."""

    domain: str
    #: the domain's state here afterwards (undefined when it was removed)
    source: str
    #: the destination's answer to finish: the domain there
    destination: PeerAnswer | None
    offline: bool | None = None
    total_ms: int | None = None
    downtime_ms: int | None = None
    qemu_downtime_ms: int | None = None
    transferred: int | None = None
    uri: str | None = None
    postcopy: bool | None = None
    copied_disks: list[str] | None = None
    disk_bytes: int | None = None
    shared_disks: list[str] | None = None
    resolved: str | None = None
    warnings: list[str] | None = None


Number = int | float


class JobInfo(Result):
    """virsh domjobinfo: the outgoing migration now running (``type`` none when there
    is none).  Bytes and milliseconds; memory_* from QEMU's query-migrate, disk_*
    from the disk copy."""

    domain: str
    type: str
    operation: str | None = None
    status: str | None = None
    phase: str | None = None
    elapsed_ms: int | None = None
    data_total: Number | None = None
    data_processed: Number | None = None
    data_remaining: Number | None = None
    memory_total: Number | None = None
    memory_processed: Number | None = None
    memory_remaining: Number | None = None
    dirty_rate: Number | None = None
    expected_downtime_ms: Number | None = None
    downtime_ms: Number | None = None
    disk_total: Number | None = None
    disk_processed: Number | None = None
    disk_remaining: Number | None = None


class JobAborted(Result):
    """virsh domjobabort's answer."""

    domain: str
    aborted: bool


class PostcopyRequested(Result):
    """virsh migrate-postcopy's answer."""

    domain: str
    postcopy: str
