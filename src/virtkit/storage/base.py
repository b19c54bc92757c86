"""The one small interface every pool backend implements.

Backends (dir, logical, iso) own the on-disk side of a pool; the service layer
owns the pool definitions (in the store), the safety rules that need knowledge
of domains (volumes in use), and progress reporting to clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from virtkit.errors import Conflict, InvalidSpec
from virtkit.model.pool import validate_volume_name

#: progress callback: (bytes or percent done, total) -- called from worker threads.
Progress = Callable[[float, float], None]


@dataclass(frozen=True)
class PoolCapacity:
    capacity: int
    allocation: int
    available: int


@dataclass(frozen=True)
class VolumeInfo:
    """One volume as its backend sees it now."""

    name: str
    path: str
    format: str
    capacity: int
    allocation: int
    backing: str | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PoolBackend(Protocol):
    """Operations on one pool's storage.  Every method raises VirtkitError subclasses."""

    def build(self) -> None:
        """Create the storage (mkdir; pvcreate + vgcreate)."""

    def exists(self) -> bool:
        """Whether the storage is there (folder, volume group)."""

    def delete(self) -> None:
        """Remove the (empty) storage; refuses when volumes remain."""

    def capacity(self) -> PoolCapacity: ...

    def list_volumes(self) -> list[VolumeInfo]: ...

    def volume(self, name: str) -> VolumeInfo:
        """One volume; NotFound naming the pool when absent."""

    def volume_path(self, name: str) -> str:
        """Where the volume lives (confined to the pool; no symlink escapes)."""

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo: ...

    def delete_volume(self, name: str) -> None: ...

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo: ...

    def wipe_volume(self, name: str) -> None: ...

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo: ...

    def import_volume(self, name: str, source_path: str, fmt: str, *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Convert any image qemu-img reads (vmdk, vdi, vhdx, qcow2, raw) into a new volume.

        ``fmt`` is the new volume's format; ``source_fmt`` the source's, as the user
        declares it (None: detected by qemu-img, which trusts the file's header).
        """


def checked_volume_name(name: str) -> str:
    """``name`` if it is a valid volume name, else InvalidSpec naming the rule."""
    try:
        return validate_volume_name(name)
    except ValueError as exc:
        raise InvalidSpec(str(exc), field="name",
                          fix="rename it, e.g. 'disk1.qcow2' or 'web-root'") from exc


def refuse_while_holding(pool_name: str, volumes: list[VolumeInfo]) -> None:
    """A pool is deleted only empty: Conflict naming (up to five of) the volumes it
    still holds, and the fix."""
    if volumes:
        names = ", ".join(v.name for v in volumes[:5]) + (" ..." if len(volumes) > 5 else "")
        raise Conflict(f"pool {pool_name!r} still holds {len(volumes)} "
                       f"volume{'s' if len(volumes) != 1 else ''} ({names})",
                       fix="delete the volumes first (vol-delete)")
