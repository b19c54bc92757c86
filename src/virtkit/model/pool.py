"""Storage pool and volume specs: what the user asks for, validated, no I/O.

A pool is a place volumes live: a directory (``dir``), an LVM volume group
(``logical``), a directory of install media (``iso``), a directory the admin
mounts on every host of a cluster (``shared-dir``: NFS, CephFS ...), or a folder of
an NFS export that QEMU reaches itself through libnfs (``netfs``, alias ``nfs``: no
kernel mount; volumes are ``nfs://`` URLs).  A *shared* pool's volumes are the same
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
from virtkit.model.netdisk import nfs_url, parse_nfs_url

_VOLUME_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,200}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_VG_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,126}")


class PoolType(StrEnum):
    DIR = "dir"
    LOGICAL = "logical"
    ISO = "iso"
    SHARED_DIR = "shared-dir"
    NETFS = "netfs"


#: pool types whose volumes every host that defines the pool sees as the same images
SHARED_TYPES = frozenset({PoolType.SHARED_DIR, PoolType.NETFS})
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|[0-9A-Fa-f:.]{2,45}")


class PoolState(StrEnum):
    INACTIVE = "inactive"
    ACTIVE = "active"


class Pool(NamedSpec):
    """A storage pool definition."""

    type: PoolType = PoolType.DIR
    target: str = Field(default="", description="dir/iso/shared-dir: the folder; "
                        "logical: the volume group name; netfs: nfs://HOST/PATH "
                        "(made from source_host and source_path when left out)")
    source_devices: list[str] = Field(default_factory=list,
                                      description="logical: block devices for pvcreate")
    source_host: str | None = Field(default=None, description="netfs: the NFS server")
    source_path: str | None = Field(default=None,
                                    description="netfs: the folder on the server (an "
                                                "exported path, or a folder inside one)")
    autostart: bool = False

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
