"""Storage pool and volume specs: what the user asks for, validated, no I/O.

A pool is a place volumes live: a directory (``dir``), an LVM volume group
(``logical``), a directory of install media (``iso``), or a directory the admin
mounts on every host of a cluster (``shared-dir``: NFS, CephFS ...).  A *shared*
pool's volumes are the same files on every host that defines it, so a live
migration between two such hosts copies none of them (docs/storage.md).  Volume names are
confined to their pool: no '/', no '..', no leading '.', no control characters.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from virtkit.model.domain import NamedSpec

_VOLUME_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,200}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_VG_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,126}")


class PoolType(StrEnum):
    DIR = "dir"
    LOGICAL = "logical"
    ISO = "iso"
    SHARED_DIR = "shared-dir"


#: pool types whose volumes every host that defines the pool sees as the same images
SHARED_TYPES = frozenset({PoolType.SHARED_DIR})


class PoolState(StrEnum):
    INACTIVE = "inactive"
    ACTIVE = "active"


class Pool(NamedSpec):
    """A storage pool definition."""

    type: PoolType = PoolType.DIR
    target: str = Field(description="dir/iso/shared-dir: the folder; "
                                    "logical: the volume group name")
    source_devices: list[str] = Field(default_factory=list,
                                      description="logical: block devices for pvcreate")
    autostart: bool = False

    @property
    def shared(self) -> bool:
        """Whether other hosts see this pool's volumes as the same images."""
        return self.type in SHARED_TYPES

    @model_validator(mode="after")
    def _check(self) -> Pool:
        for value in (self.target, *self.source_devices):
            if _CONTROL_CHARS.search(value):
                raise ValueError(f"{value!r} contains a control character (newline, tab ...)")
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


VolumeFormat = Literal["raw", "qcow2"]


def validate_volume_name(name: str) -> str:
    """Volume names stay inside their pool: no '/', no '..', no hidden or odd names."""
    if not _VOLUME_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"volume name {name!r} is not allowed: use letters, digits, '.', '_', '+', '-' "
            "(no '/', no '..', not starting with '.' or '-')"
        )
    return name
