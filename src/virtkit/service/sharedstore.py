"""Disks on shared pools during a live migration: which need no copy, checked on both ends.

A disk is *shared* for a migration when its file is a volume of an active shared pool
here (``shared-dir``) and the destination daemon has an active shared pool of the same
name at the same folder: both QEMUs then open the very same image, so
``--copy-storage-all`` leaves it out of the copy (service/copyplan.py) and the
migration moves memory and device state only.  QEMU's image locks keep the two QEMUs
from writing it at once: the destination's takes its write lock only when it
activates the image at switch-over, after the source released it.

The source asks the destination (:func:`shared_on_both`); the destination checks the
claim again against its own pools before anything starts (:func:`check_here`), so a
pool renamed or stopped there in between is a refusal, never a disk both hosts miss.
"""

from __future__ import annotations

from typing import Any

from virtkit.errors import Conflict, NotFound
from virtkit.model.domain import Domain
from virtkit.service.copyplan import copied
from virtkit.service.peer import Peer
from virtkit.service.storage import StorageService


def shared_here(storage: StorageService | None, live: Domain) -> dict[str, tuple[str, str, str]]:
    """``{path: (pool, volume, folder)}`` of the running VM's writable disks that are
    volumes of an active shared pool on this host."""
    if storage is None:
        return {}
    found: dict[str, tuple[str, str, str]] = {}
    for disk in live.disks:
        if copied(disk) and disk.path:
            located = storage.shared_volume(disk.path)
            if located is not None:
                found[disk.path] = located
    return found


async def shared_on_both(storage: StorageService | None, peer: Peer,
                         live: Domain) -> list[dict[str, str]]:
    """The disks of ``live`` whose shared pool the destination has too (same name,
    shared, active, same folder): ``[{path, pool, volume}]``."""
    here = shared_here(storage, live)
    there: dict[str, dict[str, Any] | None] = {}
    shared: list[dict[str, str]] = []
    for path, (pool, volume, folder) in sorted(here.items()):
        if pool not in there:
            try:
                there[pool] = await peer.pool(pool)
            except NotFound:
                there[pool] = None
        info = there[pool]
        if info is not None and info.get("shared") and info.get("state") == "active" \
                and info.get("target") == folder:
            shared.append({"path": path, "pool": pool, "volume": volume})
    return shared


def check_here(storage: StorageService | None, disks: Any) -> None:
    """On the destination: every disk the source left out of the copy because it is on
    a shared pool must be that very volume of an active shared pool here."""
    if not disks:
        return
    if not isinstance(disks, list):
        raise Conflict("shared_disks must be a list of {path, pool, volume}")
    for disk in disks:
        path = disk.get("path") if isinstance(disk, dict) else None
        want = (disk.get("pool"), disk.get("volume")) if isinstance(disk, dict) else None
        located = storage.shared_volume(path) if storage is not None and \
            isinstance(path, str) else None
        if located is None or located[:2] != want:
            raise Conflict(f"disk {path!r} is not a volume of the shared pool "
                           f"{want[0] if want else '?'!r} on the destination, so it would "
                           "not see the source's image",
                           fix="define and start the same shared-dir pool (same name, same "
                               "mounted folder) on the destination, or migrate to a "
                               "non-shared pool with --copy-storage-all")
