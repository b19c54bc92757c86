"""Which disks a migration copies and where they go (--copy-storage-all, --disk-path):
one plan for live and offline migrations."""

from __future__ import annotations

from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.model.domain import Disk, DiskDevice, Domain
from virtkit.model.load import load_domain
from virtkit.runtime.qemunames import disk_slots
from virtkit.service.models.documents import DomainDocument


def disk_paths(value: Any) -> dict[str, str]:
    """``{source path: destination path}`` of copied disks (--disk-path SRC=DST)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k.startswith("/")
            and v.startswith("/") for k, v in value.items()):
        raise InvalidSpec("disk_paths must map absolute source paths to absolute "
                          "destination paths", field="disk_paths",
                          fix="e.g. --disk-path /var/lib/a.qcow2=/srv/a.qcow2")
    return dict(value)


def copied(disk: Disk) -> bool:
    """Disks --copy-storage-all copies: writable images (not CD-ROMs, read-only media)."""
    return bool(disk.path) and not disk.readonly and disk.device is DiskDevice.DISK


def copy_plan(live: Domain, definition: DomainDocument, mapping: dict[str, str],
              shared: frozenset[str] = frozenset()
              ) -> tuple[list[tuple[str, str]], Domain, DomainDocument]:
    """The (device id, destination path) of every copied disk, and both specs as the
    destination must see them: copied disks at their destination path, as plain path
    disks (a pool volume reference could name a different file there).

    ``shared``: paths of disks on a shared pool both hosts have (service/sharedstore.py):
    never copied, and they keep their pool volume reference (the same image there)."""
    on_shared = set(mapping) & shared
    if on_shared:
        raise InvalidSpec(f"--disk-path names {', '.join(sorted(on_shared))}, which is on "
                          "a shared pool both hosts have: it is not copied",
                          field="disk_paths", fix="drop that --disk-path")
    unknown = set(mapping) - {d.path for d in live.disks if copied(d)}
    if unknown:
        raise InvalidSpec(f"--disk-path names {', '.join(sorted(unknown))}, which is not a "
                          "copied disk of the running domain", field="disk_paths",
                          fix="see 'virtkit domblklist'")
    copies: list[tuple[str, str]] = []
    by_path: dict[str, str] = {}
    by_volume: dict[tuple[str, str], str] = {}
    live = live.model_copy(deep=True)
    for slot, disk in zip(disk_slots(live), live.disks, strict=True):
        if copied(disk) and disk.path not in shared:
            assert disk.path is not None
            target = mapping.get(disk.path, disk.path)
            copies.append((slot.device_id, target))
            by_path[disk.path] = target
            if disk.pool and disk.volume:
                by_volume[(disk.pool, disk.volume)] = target
            live.disks[slot.index] = disk.model_copy(
                update={"path": target, "pool": None, "volume": None})
    disks = []
    for disk in definition.get("disks", []):
        moved = by_path.get(str(disk.get("path"))) or by_volume.get(
            (str(disk.get("pool")), str(disk.get("volume"))))
        disks.append({**disk, "path": moved, "pool": None, "volume": None} if moved
                     else disk)
    return copies, live, {**definition, "disks": disks}


def align_disks(definition: DomainDocument, live: Domain,
                devices: set[str] | None = None) -> DomainDocument:
    """``definition`` with its writable disks naming the files the running VM uses for
    the same guest disk (matched by target: vda, sda ...): only those of ``devices``
    (device ids of the live VM, e.g. the copied disks), or every writable disk when
    ``devices`` is None.  A definition that names another file for a disk the VM
    now runs from would boot stale data at its next start (docs/migration.md)."""
    running = {slot.target: disk for slot, disk in zip(disk_slots(live), live.disks,
                                                        strict=True)
               if copied(disk) and (devices is None or slot.device_id in devices)}
    if not running:
        return definition
    defined = load_domain(definition)
    disks = [dict(d) for d in definition.get("disks", [])]
    changed = False
    for slot, disk in zip(disk_slots(defined), defined.disks, strict=True):
        now = running.get(slot.target)
        if now is None or not copied(disk) or (disk.path, disk.pool, disk.volume) == (
                now.path, now.pool, now.volume):
            continue
        disks[slot.index].update(path=now.path, pool=now.pool, volume=now.volume)
        if now.format is not None:
            disks[slot.index]["format"] = now.format
        changed = True
    return {**definition, "disks": disks} if changed else definition
