"""The storage command API: pools and volumes (virsh's pool-* and vol-*).

Pool definitions live in the store; what is inside a pool is asked of its
backend each time (as libvirt's pool-refresh would find it), so volumes made
or removed outside virtkit are never out of date.  Rules that need knowledge of
domains live here: a volume used by a defined domain, or that other volumes
are backed by, is not deleted unless forced, and the error names the users; a
volume a running domain holds is never opened for writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound
from virtkit.formats.libvirt_pool_xml import pool_from_xml, pool_to_xml
from virtkit.model.load import invalid_spec_from, parse_text
from virtkit.model.pool import (
    NETWORK_TYPES,
    Pool,
    PoolState,
    PoolType,
    validate_volume_name,
)
from virtkit.model.state import ACTIVE_STATES, State
from virtkit.model.units import parse_mib
from virtkit.runtime.blockops import BlockOps
from virtkit.runtime.events import EventBus
from virtkit.runtime.imageuse import ImageUse
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service.models import storage as results
from virtkit.service.models.storage import (
    PoolDocument,
    PoolInfo,
    PoolRemoved,
    VolumeDeleted,
    VolumeDownloaded,
)
from virtkit.storage import fastcopy
from virtkit.storage.base import PoolBackend, Progress, VolumeInfo
from virtkit.storage.dirpool import DirPool
from virtkit.storage.lvm import lvm_config_from_env
from virtkit.storage.pools import backend_for
from virtkit.storage.qemuimg import detect_format
from virtkit.store.db import PoolRow, Store

DEFAULT_POOL = "default"


def parse_bytes(value: int | str, *, field: str) -> int:
    """Sizes for volumes: bytes as an int, or '10G', '512M' (virsh's suffixes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise InvalidSpec(f"{field}: size must be above 0", field=field)
        return value
    text = str(value).strip()
    if text.isdecimal():
        return parse_bytes(int(text), field=field)
    try:
        mib = parse_mib(text, field=field)
    except ValueError as exc:
        raise InvalidSpec(str(exc), field=field, fix="write e.g. 10G or 512M") from None
    if mib <= 0:
        raise InvalidSpec(f"{field}: size must be above 0", field=field)
    return mib * 1024 * 1024


def _default_format(row: PoolRow) -> str:
    """A new volume's format when none is asked: raw in an rbd pool (its images are
    raw), qcow2 elsewhere."""
    return "raw" if row.spec.get("type") == PoolType.RBD else "qcow2"


def load_pool(data: PoolDocument) -> Pool:
    try:
        return Pool.model_validate(data)
    except ValidationError as exc:
        raise invalid_spec_from(exc, kind="pool") from None


class StorageService:
    """Define, build and inspect pools; create, copy and remove volumes."""

    def __init__(self, store: Store, lifecycle: Lifecycle, bus: EventBus,
                 default_pool_dir: Path) -> None:
        self._store = store
        self._life = lifecycle
        self._bus = bus
        self._default_dir = default_pool_dir
        #: who else uses an image (domains' disks, backing chains, pool volumes)
        self.images = ImageUse(store, lifecycle, self.pool_files)
        #: live resizes of volumes in use (vol-resize)
        self._ops = BlockOps(lifecycle, store)

    # -- pools ---------------------------------------------------------------

    def _backend(self, row: PoolRow) -> PoolBackend:
        return backend_for(Pool.model_validate(row.spec), lvm_config=lvm_config_from_env())

    def _active(self, ref: str) -> tuple[PoolRow, PoolBackend]:
        row = self._store.get_pool(ref)
        if row.state != PoolState.ACTIVE:
            raise Conflict(f"pool '{row.name}' is not active",
                           fix=f"start it: virtkit pool-start {row.name}")
        return row, self._backend(row)

    def pool_info(self, ref: str) -> PoolInfo:
        row = self._store.get_pool(ref)
        info = PoolInfo(name=row.name, uuid=row.uuid, state=row.state,
                        type=row.spec["type"], target=row.spec["target"],
                        autostart=row.spec.get("autostart", False),
                        source_devices=row.spec.get("source_devices", []),
                        shared=load_pool(row.spec).shared,
                        source_host=row.spec.get("source_host"),
                        source_path=row.spec.get("source_path"),
                        source_hosts=row.spec.get("source_hosts") or [],
                        source_name=row.spec.get("source_name"),
                        auth_username=row.spec.get("auth_username"),
                        capacity=None, allocation=None, available=None)
        if row.state == PoolState.ACTIVE:
            backend = self._backend(row)
            capacity = backend.capacity()
            info = info.model_copy(update={
                "capacity": capacity.capacity, "allocation": capacity.allocation,
                "available": capacity.available, "volumes": len(backend.list_volumes())})
        return info

    def list_pools(self, *, include_inactive: bool = True) -> list[PoolInfo]:
        pools = [self.pool_info(row.uuid) for row in self._store.list_pools()]
        return [p for p in pools if include_inactive or p.state == PoolState.ACTIVE]

    def define_pool(self, data: PoolDocument | str) -> PoolInfo:
        pool = load_pool(parse_text(data, source="pool spec") if isinstance(data, str)
                         else data)
        # the path policy (host/pathpolicy.py): a pool's files are what callers may name
        # (a netfs pool's are on its NFS server, an rbd pool's in Ceph: no host files)
        if pool.type not in NETWORK_TYPES:
            self._life.policy.check_pool_target(pool.target,
                                                folder=pool.type is not PoolType.LOGICAL)
        if pool.type not in (PoolType.LOGICAL, *NETWORK_TYPES):
            for other in self._store.list_pools():
                if other.spec["type"] not in (PoolType.LOGICAL, *NETWORK_TYPES) and \
                        os.path.realpath(other.spec["target"]) == os.path.realpath(pool.target):
                    raise Conflict(f"pool '{other.name}' already uses {pool.target}",
                                   fix="use that pool, or another folder")
        row = self._store.insert_pool(pool.uuid, pool.name, pool.model_dump(mode="json"))
        self._publish("pool-defined", row)
        return self.pool_info(row.uuid)

    def define_pool_xml(self, text: str, *, force: bool = False) -> PoolInfo:
        """Define from libvirt pool XML; ``warnings``: what force dropped."""
        spec, warnings = pool_from_xml(text, force=force)
        return self.define_pool(spec).model_copy(update={"warnings": warnings})

    def pool_dumpxml(self, ref: str) -> str:
        """The pool as libvirt pool XML (``virsh pool-dumpxml``)."""
        return pool_to_xml(load_pool(self._store.get_pool(ref).spec))

    def build_pool(self, ref: str) -> PoolInfo:
        row = self._store.get_pool(ref)
        self._backend(row).build()
        return self.pool_info(row.uuid)

    def start_pool(self, ref: str) -> PoolInfo:
        row = self._store.get_pool(ref)
        backend = self._backend(row)
        if not backend.exists():
            raise NotFound(f"the storage of pool '{row.name}' ({row.spec['target']}) is missing",
                           fix=f"create it: virtkit pool-build {row.name}")
        self._store.update_pool(row.uuid, state=PoolState.ACTIVE)
        self._publish("pool-started", row)
        return self.pool_info(row.uuid)

    def destroy_pool(self, ref: str) -> PoolInfo:
        row = self._store.get_pool(ref)
        self._store.update_pool(row.uuid, state=PoolState.INACTIVE)
        self._publish("pool-stopped", row)
        return self.pool_info(row.uuid)

    def delete_pool(self, ref: str) -> PoolInfo:
        """Remove the pool's storage (pool-delete); refused for a non-empty pool."""
        row = self._store.get_pool(ref)
        if row.state == PoolState.ACTIVE:
            raise Conflict(f"pool '{row.name}' is active",
                           fix=f"stop it first: virtkit pool-destroy {row.name}")
        self._backend(row).delete()
        return self.pool_info(row.uuid)

    def undefine_pool(self, ref: str) -> PoolRemoved:
        row = self._store.get_pool(ref)
        if row.state == PoolState.ACTIVE:
            raise Conflict(f"pool '{row.name}' is active",
                           fix=f"stop it first: virtkit pool-destroy {row.name}")
        self._store.delete_pool(row.uuid)
        self._publish("pool-undefined", row)
        return PoolRemoved(name=row.name, uuid=row.uuid)

    def set_pool_autostart(self, ref: str, enabled: bool) -> PoolInfo:
        row = self._store.get_pool(ref)
        self._store.update_pool(row.uuid, spec=dict(row.spec, autostart=enabled))
        return self.pool_info(row.uuid)

    def autostart_pools(self) -> list[str]:
        """Bring up autostart pools (daemon start-up); create the default pool once."""
        if self._store.find_pool(DEFAULT_POOL) is None:
            self._default_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.define_pool({"name": DEFAULT_POOL, "type": "dir",
                              "target": str(self._default_dir), "autostart": True})
        started = []
        for row in self._store.list_pools():
            if row.spec.get("autostart") and row.state != PoolState.ACTIVE:
                try:
                    self.start_pool(row.uuid)
                    started.append(row.name)
                except Exception as exc:
                    self._bus.publish("error", row.uuid, pool=row.name,
                                      reason=f"pool autostart failed: {exc}")
        return started

    def remove_stale_partials(self) -> dict[str, list[str]]:
        """Hidden temps of unfinished volumes (a killed daemon's) removed from every
        active directory pool, by pool name (daemon start-up)."""
        removed: dict[str, list[str]] = {}
        for row in self._store.list_pools():
            backend = self._backend(row) if row.state == PoolState.ACTIVE else None
            if isinstance(backend, DirPool) and backend.exists():
                names = backend.remove_stale_partials()
                if names:
                    removed[row.name] = names
        return removed

    def _publish(self, kind: str, row: PoolRow) -> None:
        self._bus.publish(kind, row.uuid, pool=row.name, uuid=row.uuid)

    # -- volumes ---------------------------------------------------------------

    def list_volumes(self, pool: str) -> list[results.VolumeInfo]:
        row, backend = self._active(pool)
        return [self._volume_dict(row, v) for v in backend.list_volumes()]

    def volume_info(self, pool: str, name: str) -> results.VolumeInfo:
        row, backend = self._active(pool)
        return self._volume_dict(row, backend.volume(name))

    def _volume_dict(self, row: PoolRow, volume: VolumeInfo) -> results.VolumeInfo:
        return results.VolumeInfo(**volume.to_dict(), pool=row.name,
                                  used_by=[name for name, _state in self._users(volume.path)])

    def create_volume(self, pool: str, name: str, capacity: int | str, fmt: str | None = None, *,
                      backing: str | None = None, prealloc: bool = False
                      ) -> results.VolumeInfo:
        row, backend = self._active(pool)
        _check_name(name)
        fmt = fmt or _default_format(row)
        if fmt not in ("qcow2", "raw"):
            raise InvalidSpec(f"format {fmt!r} is not one of qcow2, raw", field="format")
        base = backend.volume(backing) if backing else None
        volume = backend.create_volume(name, parse_bytes(capacity, field="capacity"), fmt,
                                       backing=base, prealloc=prealloc)
        self._bus.publish("volume-created", row.uuid, pool=row.name, volume=name)
        return self._volume_dict(row, volume)

    def delete_volume(self, pool: str, name: str, *, force: bool = False) -> VolumeDeleted:
        """vol-delete.  A volume another image is backed by is never removed, --force
        or not (the images on top of it would lose their data); --force only skips
        the check for shut-off domains that name the volume as a disk."""
        row, backend = self._active(pool)
        volume = backend.volume(name)
        self._refuse_running(volume)
        dependents = self.backed_by(volume.path)
        if dependents:
            raise Conflict(f"volume '{name}' is the backing file of {', '.join(dependents)}; "
                           "removing it would destroy their data",
                           fix="delete or flatten those first (virtkit vol-delete, or "
                               "qemu-img rebase/convert to make them stand alone)",
                           dependents=dependents)
        if not force:
            users = [n for n, _ in self._users(volume.path)]
            if users:
                raise Conflict(f"volume '{name}' is used by domain(s) {', '.join(users)}",
                               fix="detach it from them, or pass --force")
        backend.delete_volume(name)
        self._bus.publish("volume-deleted", row.uuid, pool=row.name, volume=name)
        return VolumeDeleted(pool=row.name, name=name)

    def resize_volume(self, pool: str, name: str, capacity: int | str, *,
                      shrink: bool = False) -> results.VolumeInfo:
        row, backend = self._active(pool)
        volume = backend.volume(name)
        self._refuse_running(volume)
        # whole 512-byte sectors, rounded up: what qemu-img create (vol-create) and a
        # qcow2 resize do themselves; a raw resize would refuse the size (a 500 before)
        size = -(-parse_bytes(capacity, field="capacity") // 512) * 512
        if size < volume.capacity and not shrink:
            raise InvalidSpec(f"{size} bytes is smaller than volume '{name}' ({volume.capacity})",
                              field="capacity", fix="pass --shrink if you mean it: data is lost")
        return self._volume_dict(row, backend.resize_volume(name, size, shrink=shrink))

    async def resize_volume_live(self, pool: str, name: str, capacity: int | str, *,
                                 shrink: bool = False) -> results.VolumeInfo:
        """vol-resize: a volume a running domain has as its disk grows live (QMP
        block_resize on that QEMU's node: the guest sees the new size); a shrink of it is
        refused.  Any other volume is resized offline (qemu-img, lvresize)."""
        row, backend = await asyncio.to_thread(self._active, pool)
        volume = await asyncio.to_thread(backend.volume, name)
        users = await asyncio.to_thread(self._ops.live_users, volume.path)
        if not users:
            return await asyncio.to_thread(self.resize_volume, pool, name, capacity,
                                           shrink=shrink)
        names = ", ".join(f"'{vm.name}' ({target})" for vm, target, _w in users)
        size = -(-parse_bytes(capacity, field="capacity") // 512) * 512
        if size < volume.capacity:
            raise InvalidSpec(f"cannot shrink volume '{name}' to {size} bytes "
                              f"({volume.capacity} now) while domain {names} runs on it: "
                              "the guest would lose the end of its disk", field="capacity",
                              fix="shrink the guest's file system, shut the domain down, "
                                  "then vol-resize --shrink")
        if len(users) > 1 or not users[0][2]:
            raise Conflict(f"volume '{name}' is in use by running domain(s) {names} "
                           "read-only or more than once; it is resized live only as one "
                           "domain's writable disk", fix="shut them down first")
        vm, target, _writable = users[0]
        await self._ops.resize(vm.uuid, vm.name, target, size)
        return await asyncio.to_thread(lambda: self._volume_dict(row, backend.volume(name)))

    def wipe_volume(self, pool: str, name: str) -> results.VolumeInfo:
        row, backend = self._active(pool)
        self._refuse_running(backend.volume(name))
        backend.wipe_volume(name)
        return self._volume_dict(row, backend.volume(name))

    def clone_volume(self, pool: str, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None
                     ) -> results.VolumeInfo:
        row, backend = self._active(pool)
        _check_name(name)
        original = backend.volume(source)
        if not linked:
            self._refuse_running(original)
        else:
            writers = sorted({use.domain for use in self.images.users(original.path)
                              if use.writable and use.domain})
            if writers:
                raise Conflict(
                    f"volume '{source}' is a writable disk of domain(s) "
                    f"{', '.join(writers)}: a linked clone would be corrupted by their next "
                    "start (a base must stay read-only)",
                    fix=f"clone the domain instead (virtkit clone --original {writers[0]} "
                        "--linked ... moves it onto an overlay), or make a full copy "
                        "(vol-clone without --linked)", used_by=writers)
        volume = backend.clone_volume(source, name, linked=linked, fmt=fmt, progress=progress)
        self._bus.publish("volume-created", row.uuid, pool=row.name, volume=name)
        return self._volume_dict(row, volume)

    def import_volume(self, pool: str, name: str, source: str, fmt: str | None = None, *,
                      progress: Progress | None = None) -> results.VolumeInfo:
        """Convert a host image (vmdk, vdi, vhdx, qcow2, raw) into a new volume."""
        row, backend = self._active(pool)
        fmt = fmt or _default_format(row)
        _check_name(name)
        if not os.path.isabs(source) or not os.path.isfile(source):
            raise InvalidSpec(f"source {source} is not an existing file (absolute path)",
                              field="source")
        _check_source_format(source)
        volume = backend.import_volume(name, source, fmt, progress=progress)
        self._bus.publish("volume-created", row.uuid, pool=row.name, volume=name)
        return self._volume_dict(row, volume)

    def upload_target(self, pool: str, name: str) -> tuple[Path, Path]:
        """(path to write, final path) for an upload; refuses a volume in running use.

        Files are written to a hidden temporary name and renamed at the end, so a
        broken upload leaves the old volume (or none); a logical volume is a block
        device and is written in place.
        """
        row, backend = self._active(pool)
        _check_name(name)
        if row.spec["type"] in NETWORK_TYPES:
            where = "in Ceph" if row.spec["type"] == PoolType.RBD else "on an NFS server"
            raise InvalidSpec(f"pool '{row.name}' is {where}: volumes there are "
                              "written by qemu-img, not uploaded", field="pool",
                              fix=f"vol-upload into a dir pool, then vol-import the file "
                                  f"into '{row.name}' (or virtkit vol-import directly)")
        try:
            self._refuse_running(backend.volume(name))
        except NotFound:
            if row.spec["type"] == PoolType.LOGICAL:
                raise
        final = Path(backend.volume_path(name))
        if row.spec["type"] == PoolType.LOGICAL:
            return final, final
        return final.with_name(f".{final.name}.partial"), final

    def upload_from_fd(self, pool: str, name: str, fd: int,
                       progress: Progress | None = None) -> results.VolumeInfo:
        """vol-upload from a local client's open file: an in-kernel copy into the volume,
        written under a temporary name, made durable, then renamed (atomic)."""
        size = fastcopy.check_mode(fd, write=False, what="the upload source")
        partial, final = self.upload_target(pool, name)
        in_place = partial == final
        flags = os.O_WRONLY | (0 if in_place else os.O_CREAT | os.O_TRUNC)
        try:
            out = os.open(partial, flags, 0o600)
            try:
                fastcopy.copy_fd(fd, out, size, progress, write_behind=True)
                os.fsync(out)
            finally:
                os.close(out)
            if not in_place:
                os.replace(partial, final)
        except BaseException as exc:
            if not in_place:
                partial.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                fix = ("free space in the pool, or upload to another pool"
                       if exc.errno == errno.ENOSPC else None)
                raise HostError(f"upload to {pool}/{name} failed: {exc.strerror}; nothing "
                                "was changed", fix=fix) from None
            raise
        return self.volume_info(pool, name).model_copy(update={"uploaded": size})

    def download_to_fd(self, pool: str, name: str, fd: int,
                       progress: Progress | None = None) -> VolumeDownloaded:
        """vol-download into a local client's open file: an in-kernel copy."""
        fastcopy.check_mode(fd, write=True, what="the download target")
        source = os.open(self.download_source(pool, name), os.O_RDONLY)
        try:
            size = os.lseek(source, 0, os.SEEK_END)
            fastcopy.copy_fd(source, fd, size, progress)
            # Cut what was beyond the end. Never truncate to 0 first: ext4 then flushes
            # the whole file when it is closed (its "replace via truncate" heuristic).
            os.ftruncate(fd, size)
        except OSError as exc:
            raise HostError(f"download of {pool}/{name} failed: {exc.strerror}") from None
        finally:
            os.close(source)
        return VolumeDownloaded(pool=pool, name=name, downloaded=size)

    def download_source(self, pool: str, name: str) -> Path:
        row, backend = self._active(pool)
        if row.spec["type"] in NETWORK_TYPES:
            rbd = row.spec["type"] == PoolType.RBD
            raise InvalidSpec(f"pool '{row.name}' is {'in Ceph' if rbd else 'on an NFS server'}"
                              ": its volumes are no host files to download", field="pool",
                              fix="read it with rbd export POOL/IMAGE FILE (ceph-common) from "
                                  "any host" if rbd else "vol-clone it into a dir pool "
                                  "first, or read it with qemu-img convert nfs://... from "
                                  "any host")
        return Path(backend.volume(name).path)

    # -- domains' disks ------------------------------------------------------------

    def resolve(self, pool: str, volume: str) -> str:
        """The path of ``pool/volume`` for a domain disk (both must exist and be active)."""
        _row, backend = self._active(pool)
        return backend.volume(volume).path

    def locate(self, path: str) -> tuple[str, str] | None:
        """The (pool, volume) holding ``path``, if it lies in an active pool."""
        real = os.path.realpath(path)
        for row in self._store.list_pools():
            target = row.spec["target"]
            if row.spec["type"] in (PoolType.LOGICAL, *NETWORK_TYPES):
                prefix = f"/dev/{target}/" if row.spec["type"] == PoolType.LOGICAL \
                    else f"{target.rstrip('/')}/"
                if path.startswith(prefix) and "/" not in path[len(prefix):]:
                    return row.name, path[len(prefix):]
            elif os.path.dirname(real) == os.path.realpath(target):
                return row.name, os.path.basename(real)
        return None

    def shared_volume(self, path: str) -> tuple[str, str, str] | None:
        """(pool, volume, folder) when ``path`` is a volume of an active shared pool here
        (shared-dir: every host that defines the pool at that folder sees the file)."""
        located = self.locate(path)
        if located is None:
            return None
        row = self._store.get_pool(located[0])
        if row.state != PoolState.ACTIVE or not load_pool(row.spec).shared:
            return None
        return located[0], located[1], str(row.spec["target"])

    def _users(self, path: str) -> Iterator[tuple[str, State]]:
        real = os.path.realpath(path)
        for row in self._store.list_domains():
            for disk in row.spec.get("disks", []):
                if disk.get("path") and os.path.realpath(disk["path"]) == real:
                    yield row.name, self._life.vm(row.uuid, row.name).state
                    break

    def _refuse_running(self, volume: VolumeInfo) -> None:
        running = [name for name, state in self._users(volume.path) if state in ACTIVE_STATES]
        if running:
            raise Conflict(f"volume '{volume.name}' is in use by running domain(s) "
                           f"{', '.join(running)}", fix="shut them down first")

    def pool_files(self) -> list[str]:
        """The files of every active directory pool (for backing-file lookups)."""
        files: list[str] = []
        for row in self._store.list_pools():
            if row.state != PoolState.ACTIVE or row.spec.get("type") in (PoolType.LOGICAL,
                                                                         *NETWORK_TYPES):
                continue
            folder = row.spec["target"]
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                files += [e.path for e in entries
                          if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
        return files

    def backed_by(self, path: str) -> list[str]:
        """What ``path`` is a backing file of: pool volumes (pool/volume) and domains'
        disks (domain 'x': path), read from the images' headers."""
        names = []
        for use in self.images.dependents(path):
            located = self.locate(use.via) if use.via else None
            where = f"{located[0]}/{located[1]}" if located else str(use.via)
            names.append(where if use.domain is None else f"{where} (domain '{use.domain}')")
        return sorted(set(names))


#: file extensions that promise an image format, and the format qemu-img must see.
_EXTENSION_FORMATS = {".vmdk": "vmdk", ".vdi": "vdi", ".vhdx": "vhdx", ".vhd": "vpc",
                      ".qcow2": "qcow2", ".qcow": "qcow", ".qed": "qed"}


def _check_source_format(source: str) -> None:
    """A file named like an image format must be one: a broken VDI is not imported as raw."""
    expected = _EXTENSION_FORMATS.get(os.path.splitext(source)[1].lower())
    if expected is None:
        return
    seen = detect_format(source)
    if seen != expected:
        raise InvalidSpec(f"{source} is named like a {expected} image but qemu-img reads it as "
                          f"{seen}", field="source",
                          fix="check the file (is it complete?), or rename it if it really is "
                          f"{seen}")


def _check_name(name: str) -> None:
    try:
        validate_volume_name(name)
    except ValueError as exc:
        raise InvalidSpec(str(exc), field="name") from None


__all__ = ["DEFAULT_POOL", "StorageService", "parse_bytes"]
