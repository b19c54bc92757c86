"""Storage pool and volume specs: what the user asks for, validated, no I/O.

A pool is a place volumes live: a directory (``dir``), an LVM volume group
(``logical``), a directory of install media (``iso``), a directory the admin
mounts on every host of a cluster (``shared-dir``: NFS, CephFS ...), or a folder of
an NFS export that QEMU reaches itself through libnfs (``netfs``, alias ``nfs``: no
kernel mount; volumes are ``nfs://`` URLs), or a Ceph pool that QEMU reaches through
librbd (``rbd``: volumes are ``rbd://`` URLs, raw images).  A *shared* pool's volumes are the same
files on every host that defines it, so a live migration between two such hosts copies
none of them (docs/storage.md).  Volume names are
confined to their pool: no '/', no '..', no leading '.', no control characters.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from virtkit.model.domain import NamedSpec
from virtkit.model.netdisk import RbdRef, nfs_url, parse_monitor, parse_nfs_url, parse_rbd_url

_VOLUME_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,200}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_VG_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,126}")


class PoolType(StrEnum):
    DIR = "dir"
    LOGICAL = "logical"
    ISO = "iso"
    SHARED_DIR = "shared-dir"
    NETFS = "netfs"
    RBD = "rbd"


#: pool types whose volumes every host that defines the pool sees as the same images
SHARED_TYPES = frozenset({PoolType.SHARED_DIR, PoolType.NETFS, PoolType.RBD})
#: pool types whose volumes are no host files (QEMU and qemu-img open them by URL)
NETWORK_TYPES = frozenset({PoolType.NETFS, PoolType.RBD})
_RBD_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}"
_UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|[0-9A-Fa-f:.]{2,45}")


def _monitor_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PoolState(StrEnum):
    INACTIVE = "inactive"
    ACTIVE = "active"


class Pool(NamedSpec):
    """A storage pool definition."""

    type: PoolType = PoolType.DIR
    target: str = Field(default="", description="dir/iso/shared-dir: the folder; "
                        "logical: the volume group name; netfs: nfs://HOST/PATH "
                        "(made from source_host and source_path when left out); rbd: "
                        "rbd://[USER@]MON[,MON...]/POOL (made from source_hosts, "
                        "source_name and auth_username)")
    source_devices: list[str] = Field(default_factory=list,
                                      description="logical: block devices for pvcreate")
    source_host: str | None = Field(default=None, description="netfs: the NFS server")
    source_path: str | None = Field(default=None,
                                    description="netfs: the folder on the server (an "
                                                "exported path, or a folder inside one)")
    source_hosts: list[str] = Field(default_factory=list,
                                    description="rbd: the Ceph monitors, HOST or HOST:PORT "
                                                "(port 6789 when left out)")
    source_name: str | None = Field(default=None, description="rbd: the Ceph pool")
    auth_username: str | None = Field(default=None,
                                      description="rbd: the cephx user (e.g. 'admin' or "
                                                  "'libvirt'); none: no cephx")
    auth_secret_uuid: str | None = Field(default=None,
                                         description="rbd: libvirt's secret UUID, kept for "
                                                     "pool-dumpxml (the key itself is read "
                                                     "from the user's Ceph keyring)")
    autostart: bool = False

    @model_validator(mode="before")
    @classmethod
    def _rbd_fields(cls, data: Any) -> Any:
        """An rbd target is made from its monitors, pool and user, or the other way
        round (checked to agree in :meth:`_check_rbd`)."""
        if not isinstance(data, dict) or data.get("type") != "rbd":
            return data
        data = dict(data)
        hosts, name = data.get("source_hosts"), data.get("source_name")
        user = data.get("auth_username")
        if not data.get("target") and isinstance(hosts, list) and hosts \
                and isinstance(name, str) and (user is None or isinstance(user, str)):
            if not all(isinstance(h, str) for h in hosts):
                raise ValueError("source_hosts must be a list of HOST or HOST:PORT")
            ref = RbdRef(tuple(parse_monitor(h) for h in hosts), name, None, user or None)
            data["target"] = ref.url
        if isinstance(hosts, list) and all(isinstance(h, str) for h in hosts):
            data["source_hosts"] = [_monitor_text(*parse_monitor(h)) for h in hosts]
        if isinstance(data.get("target"), str) and data["target"].startswith("rbd://"):
            ref = parse_rbd_url(data["target"])
            data["target"] = ref.url  # one spelling: volumes are found by this prefix
            data.setdefault("source_hosts", [_monitor_text(h, p) for h, p in ref.monitors])
            data.setdefault("source_name", ref.pool)
            if ref.user:
                data.setdefault("auth_username", ref.user)
        return data

    @model_validator(mode="before")
    @classmethod
    def _netfs_fields(cls, data: Any) -> Any:
        """``nfs`` is ``netfs``; a netfs target is made from its source, or the other
        way round (checked to agree in :meth:`_check_netfs`)."""
        if not isinstance(data, dict) or data.get("type") not in ("nfs", "netfs"):
            return data
        data = {**data, "type": PoolType.NETFS.value}
        host, path = data.get("source_host"), data.get("source_path")
        if not data.get("target") and isinstance(host, str) and isinstance(path, str):
            if not _HOST.fullmatch(host):
                raise ValueError(f"source_host {host!r} is not a host name or IP address")
            data["target"] = nfs_url(host, path.rstrip("/") or "/")
        if isinstance(data.get("target"), str) and data["target"].startswith("nfs://"):
            target_host, target_path = parse_nfs_url(data["target"])
            data.setdefault("source_host", target_host)
            data.setdefault("source_path", target_path)
        return data

    @property
    def shared(self) -> bool:
        """Whether other hosts see this pool's volumes as the same images."""
        return self.type in SHARED_TYPES

    @model_validator(mode="after")
    def _check(self) -> Pool:
        for value in (self.target, *self.source_devices):
            if _CONTROL_CHARS.search(value):
                raise ValueError(f"{value!r} contains a control character (newline, tab ...)")
        if self.type is PoolType.RBD:
            self._check_rbd()
            return self
        if self.source_hosts or self.source_name or self.auth_username \
                or self.auth_secret_uuid:
            raise ValueError("source_hosts, source_name, auth_username and auth_secret_uuid "
                             "belong to rbd pools only")
        if self.type is PoolType.NETFS:
            self._check_netfs()
            return self
        if self.source_host is not None or self.source_path is not None:
            raise ValueError("source_host and source_path belong to netfs pools only")
        if not self.target:
            raise ValueError("a pool needs a target (its folder, or volume group name)")
        if self.type is PoolType.LOGICAL:
            if not _VG_NAME.fullmatch(self.target):
                raise ValueError(f"volume group name {self.target!r} is not valid for LVM")
            for device in self.source_devices:
                if not device.startswith("/dev/"):
                    raise ValueError(f"source device {device!r} must be a /dev path")
        else:
            if not self.target.startswith("/"):
                raise ValueError(f"pool target {self.target!r} must be an absolute folder path")
            if self.source_devices:
                raise ValueError("source devices belong to logical pools only")
        return self

    def _check_netfs(self) -> None:
        if self.source_devices:
            raise ValueError("source devices belong to logical pools only")
        if not self.target:
            raise ValueError("a netfs pool needs source_host (the NFS server) and "
                             "source_path (the exported folder), or an nfs:// target")
        host, path = parse_nfs_url(self.target)
        if (self.source_host, (self.source_path or "").rstrip("/") or "/") != (host, path):
            raise ValueError(f"target {self.target} is not source_host "
                             f"{self.source_host}, source_path {self.source_path}")

    def _check_rbd(self) -> None:
        if self.source_devices or self.source_host or self.source_path:
            raise ValueError("an rbd pool has monitors (source_hosts) and a Ceph pool "
                             "(source_name): no source devices, host or path")
        if not self.target:
            raise ValueError("an rbd pool needs source_hosts (the Ceph monitors) and "
                             "source_name (the Ceph pool), or an rbd:// target")
        ref = parse_rbd_url(self.target)
        if ref.image is not None:
            raise ValueError(f"target {self.target} names an image: give the Ceph pool "
                             "(rbd://MON/POOL)")
        if not re.fullmatch(_RBD_NAME, self.source_name or ""):
            raise ValueError(f"Ceph pool name {self.source_name!r} is not valid")
        monitors = tuple(parse_monitor(h) for h in self.source_hosts)
        if (monitors, self.source_name, self.auth_username or None) != \
                (ref.monitors, ref.pool, ref.user):
            raise ValueError(f"target {self.target} is not source_hosts "
                             f"{','.join(self.source_hosts)}, source_name {self.source_name}, "
                             f"auth_username {self.auth_username}")
        if self.auth_secret_uuid is not None:
            if not re.fullmatch(_UUID, self.auth_secret_uuid):
                raise ValueError(f"auth_secret_uuid {self.auth_secret_uuid!r} is not a UUID")
            if not self.auth_username:
                raise ValueError("auth_secret_uuid needs auth_username (the cephx user)")

    def rbd_source(self) -> RbdRef:
        """An rbd pool's monitors, Ceph pool and user (image None)."""
        return parse_rbd_url(self.target)

    def netfs_source(self) -> tuple[str, str]:
        """A netfs pool's (server, folder on it)."""
        return parse_nfs_url(self.target)


VolumeFormat = Literal["raw", "qcow2"]


def validate_volume_name(name: str) -> str:
    """Volume names stay inside their pool: no '/', no '..', no hidden or odd names."""
    if not _VOLUME_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"volume name {name!r} is not allowed: use letters, digits, '.', '_', '+', '-' "
            "(no '/', no '..', not starting with '.' or '-')"
        )
    return name
