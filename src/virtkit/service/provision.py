"""Define with new disks, undefine with storage: domain changes that also make or
remove volumes, kept crash-consistent by an intent row in the store.

Each operation writes an *intent* before its first step and removes it with (or
after) its last one.  A daemon killed in between leaves the intent behind, and the
next daemon finishes the job or undoes it (:mod:`virtkit.service.recovery`):

* ``define-new-disks``: intent (volumes to create) -> volumes created one by one
  (each written to a hidden temp and published by a link) -> the domain row is
  inserted *and the intent removed in one transaction*.  Left behind, the intent
  means the domain was never defined: the volumes it names are deleted (rollback).
* ``undefine-storage``: the domain row is deleted *and the intent (volumes to
  remove) inserted in one transaction* -> volumes deleted -> intent removed.  Left
  behind, it means the domain is already gone: the remaining volumes are deleted
  (roll forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, NotFound, VirtkitError
from virtkit.model.load import parse_text
from virtkit.service.domains import UNDEFINE_STORAGE, DomainService
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.domains import DomainInfo, UndefinedWithStorage
from virtkit.service.storage import StorageService, parse_bytes
from virtkit.store.db import Store

DEFINE_NEW_DISKS = "define-new-disks"
#: the largest new disk (qemu-img refuses qcow2 images much larger with its default
#: cluster size; a clean 400 rather than its error)
MAX_NEW_DISK = 2**50


@dataclass(frozen=True)
class NewVolume:
    """A volume a define creates before the domain exists: ``pool``/``volume``."""

    pool: str
    volume: str
    capacity: int
    format: str

    @classmethod
    def from_dict(cls, data: Any, index: int) -> NewVolume:
        where = f"new_disks[{index}]"
        if not isinstance(data, dict):
            raise InvalidSpec(f"{where} must be an object", field=where)
        pool, volume = data.get("pool", "default"), data.get("volume")
        if not isinstance(pool, str) or not pool:
            raise InvalidSpec(f"{where}.pool must be a pool name", field=f"{where}.pool")
        if not isinstance(volume, str) or not volume:
            raise InvalidSpec(f"{where}.volume must be a volume name", field=f"{where}.volume")
        fmt = data.get("format", "qcow2")
        if fmt not in ("qcow2", "raw"):
            raise InvalidSpec(f"{where}.format must be qcow2 or raw", field=f"{where}.format")
        capacity = parse_bytes(data.get("capacity", 0), field=f"{where}.capacity")
        if not 0 < capacity <= MAX_NEW_DISK:
            raise InvalidSpec(f"{where}.capacity must be above 0 and at most 1 PiB",
                              field=f"{where}.capacity")
        return cls(pool, volume, capacity, fmt)


class ProvisionService:
    """The two operations above, over the domain and storage services."""

    def __init__(self, store: Store, domains: DomainService, storage: StorageService) -> None:
        self._store = store
        self._domains = domains
        self._storage = storage

    async def define_with_new_disks(self, data: SpecDocument | str,
                                    new_disks: list[Any]) -> DomainInfo:
        """Create ``new_disks`` as volumes, then define the domain with a disk on each
        (appended unless the spec already names that pool/volume).  A failure removes
        the volumes made so far; so does the next start-up after a crash."""
        raw = parse_text(data) if isinstance(data, str) else dict(data)
        volumes = [NewVolume.from_dict(item, i) for i, item in enumerate(new_disks)]
        name = raw.get("name")
        if isinstance(name, str) and self._store.find_domain(name) is not None:
            raise Conflict(f"domain '{name}' already exists",
                           fix="new disks are only made for a new domain; choose another name")
        pairs = [(v.pool, v.volume) for v in volumes]
        if len(set(pairs)) != len(pairs):
            raise InvalidSpec("new_disks names the same volume twice", field="new_disks")
        for vol in volumes:
            await asyncio.to_thread(self._refuse_existing, vol)
        raw.setdefault("uuid", str(uuidlib.uuid4()))
        disks = list(raw.get("disks") or [])
        named = {(d.get("pool"), d.get("volume")) for d in disks if isinstance(d, dict)}
        disks += [{"pool": v.pool, "volume": v.volume, "format": v.format}
                  for v in volumes if (v.pool, v.volume) not in named]
        raw["disks"] = disks
        intent = self._store.add_intent(DEFINE_NEW_DISKS, str(raw["uuid"]),
                                        {"name": name, "volumes": [list(p) for p in pairs]})
        created: list[NewVolume] = []
        try:
            for vol in volumes:
                await asyncio.to_thread(self._storage.create_volume, vol.pool, vol.volume,
                                        vol.capacity, vol.format)
                created.append(vol)
            return await asyncio.to_thread(self._domains.define, raw, finish_intent=intent)
        except BaseException:
            for vol in reversed(created):
                await asyncio.to_thread(self._delete_quietly, vol.pool, vol.volume)
            self._store.finish_intent(intent)
            raise

    def _refuse_existing(self, vol: NewVolume) -> None:
        try:
            self._storage.volume_info(vol.pool, vol.volume)
        except NotFound:
            return
        raise Conflict(f"volume '{vol.volume}' already exists in pool '{vol.pool}'",
                       fix="name a new volume, or attach the existing one as a disk")

    def _delete_quietly(self, pool: str, volume: str) -> None:
        with contextlib.suppress(VirtkitError):  # best effort; a start-up rolls it back too
            self._storage.delete_volume(pool, volume, force=True)

    def storage_of(self, uuid: str) -> list[list[str]]:
        """The pool volumes ``undefine --remove-all-storage`` removes for domain ``uuid``:
        its writable disks that lie in a pool and that no other domain uses.  CD-ROMs
        and read-only disks (install media, shared bases) are kept, as are plain files
        outside every pool."""
        row = self._store.get_domain(uuid)
        others = {d.get("path") for other in self._store.list_domains() if other.uuid != uuid
                  for d in other.spec.get("disks", []) if d.get("path")}
        found: list[list[str]] = []
        for disk in row.spec.get("disks", []):
            path = disk.get("path")
            if not path or disk.get("device", "disk") != "disk" or disk.get("readonly"):
                continue
            located = self._storage.locate(path)
            if located is not None and path not in others:
                found.append([located[0], located[1], path])
        return found

    async def undefine_with_storage(self, ref: str, *, nvram: bool = False,
                                    snapshots_metadata: bool = False,
                                    managed_save: bool = False) -> UndefinedWithStorage:
        """``undefine --remove-all-storage``: the definition, then its volumes."""
        result = await self._domains.undefine(ref, nvram=nvram,
                                              snapshots_metadata=snapshots_metadata,
                                              managed_save=managed_save,
                                              storage_of=self.storage_of)
        intent, volumes = result.intent, result.volumes or []
        reasons: dict[str, str] = {}
        removed, kept = await asyncio.to_thread(remove_volumes, self._storage, volumes,
                                                reasons)
        if intent is not None:
            self._store.finish_intent(intent)
        return UndefinedWithStorage(name=result.name, uuid=result.uuid,
                                    removed_volumes=removed, kept_volumes=kept,
                                    kept_reasons=reasons)


def remove_volumes(storage: StorageService, volumes: list[list[str]],
                   reasons: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Delete ``[pool, volume, path]`` entries that still exist; (removed, kept) as
    ``pool/volume`` names.  A volume that is gone already counts as removed (a
    repeated roll-forward); one that cannot be removed -- above all one that backs
    another image (a linked clone's base: ``delete_volume`` refuses it even with
    force) -- is kept and named, with the reason in ``reasons``."""
    removed, kept = [], []
    for pool, volume, _path in volumes:
        name = f"{pool}/{volume}"
        try:
            storage.delete_volume(pool, volume, force=True)
            removed.append(name)
        except NotFound:
            removed.append(name)
        except Conflict as exc:
            kept.append(name)
            if reasons is not None:
                reasons[name] = exc.message
    return removed, kept


__all__ = ["DEFINE_NEW_DISKS", "UNDEFINE_STORAGE", "NewVolume", "ProvisionService",
           "remove_volumes"]
