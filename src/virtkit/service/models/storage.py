"""What the storage service (service/storage.py) takes and answers."""

from __future__ import annotations

from virtkit.service.models.base import Result
from virtkit.service.models.documents import PoolDocument

__all__ = ["PoolDocument", "PoolInfo", "PoolRemoved", "VolumeDeleted", "VolumeDownloaded",
           "VolumeInfo"]


class PoolInfo(Result):
    """pool-info, pool-list --json, and the answer of every pool change."""

    name: str
    uuid: str
    #: active or inactive
    state: str
    type: str
    #: the folder, the volume group, or the nfs:// URL
    target: str
    autostart: bool
    source_devices: list[str]
    #: the volumes are the same images on every host (shared-dir, netfs, rbd)
    shared: bool
    source_host: str | None
    source_path: str | None
    #: rbd: the Ceph monitors (host[:port]), the Ceph pool, the cephx user
    source_hosts: list[str]
    source_name: str | None
    auth_username: str | None
    #: bytes; null while the pool is inactive
    capacity: int | None
    allocation: int | None
    available: int | None
    #: the number of volumes (only while the pool is active)
    volumes: int | None = None
    #: pool-define from libvirt XML: what force dropped, and notes
    warnings: list[str] | None = None


class PoolRemoved(Result):
    """pool-undefine's answer."""

    name: str
    uuid: str


class VolumeInfo(Result):
    """vol-info, vol-list --json, and the answer of every volume change."""

    name: str
    path: str
    format: str
    #: bytes the guest sees, and bytes the image takes on the host
    capacity: int
    allocation: int
    backing: str | None
    label: str | None
    pool: str
    #: the domains whose definition names this volume
    used_by: list[str]
    #: vol-upload: the bytes written
    uploaded: int | None = None


class VolumeDeleted(Result):
    """vol-delete's answer."""

    pool: str
    name: str


class VolumeDownloaded(Result):
    """vol-download into a local client's descriptor: the bytes copied."""

    pool: str
    name: str
    downloaded: int
