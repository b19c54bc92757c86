"""virsh's live block jobs (blockcommit, blockpull, blockcopy, blockjob, blockresize) by
domain name or UUID; the work is :class:`virtkit.runtime.blockcopy.BlockCopyOps`'.

blockcopy's destination is resolved here: an absolute path (a new file, or with
``reuse_external``/``blockdev`` an existing file or block device), or a volume of a
directory pool (``pool`` + volume name, or ``POOL/VOLUME``).  Every destination passes
the path policy (host/pathpolicy.py) like any file a guest is given, so remote callers
name pool volumes only.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from virtkit.errors import InvalidSpec, NotFound
from virtkit.model.pool import Pool, PoolState, PoolType
from virtkit.runtime.blockcopy import BlockCopyOps, Destination
from virtkit.runtime.blockjobs import Progress
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service.models.blockjobs import BlockJob, BlockResized
from virtkit.storage.lvm import lvm_config_from_env
from virtkit.storage.pools import backend_for
from virtkit.store.db import Store


class BlockJobService:
    """Block jobs of running domains, found by name or UUID."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._life = lifecycle
        self._ops = BlockCopyOps(lifecycle, store)

    def _row(self, ref: str) -> tuple[str, str]:
        row = self._store.get_domain(ref)
        return row.uuid, row.name

    async def commit(self, ref: str, disk: str, progress: Progress | None = None,
                     **options: Any) -> BlockJob:
        return BlockJob.model_validate(
            await self._ops.commit(*self._row(ref), disk, progress=progress, **options))

    async def pull(self, ref: str, disk: str, progress: Progress | None = None,
                   **options: Any) -> BlockJob:
        return BlockJob.model_validate(
            await self._ops.pull(*self._row(ref), disk, progress=progress, **options))

    async def job(self, ref: str, disk: str, progress: Progress | None = None,
                  **options: Any) -> BlockJob:
        return BlockJob.model_validate(
            await self._ops.job(*self._row(ref), disk, progress=progress, **options))

    async def resize(self, ref: str, disk: str, size: int) -> BlockResized:
        return BlockResized.model_validate(await self._ops.resize(*self._row(ref), disk, size))

    async def copy(self, ref: str, disk: str, progress: Progress | None = None, *,
                   dest: str, pool: str | None = None, format: str | None = None,
                   reuse_external: bool = False, blockdev: bool = False,
                   **options: Any) -> BlockJob:
        """virsh blockcopy of ``disk`` to ``dest`` (a path, or a volume: see the module)."""
        uuid, name = self._row(ref)
        target = await asyncio.to_thread(self._destination, dest, pool, format,
                                         reuse_external or blockdev, blockdev)
        return BlockJob.model_validate(
            await self._ops.copy(uuid, name, disk, target, progress=progress, **options))

    def _destination(self, dest: str, pool: str | None, fmt: str | None, reuse: bool,
                     blockdev: bool) -> Destination:
        """The checked destination path (blocks: stat, the path policy)."""
        if pool is None and not dest.startswith("/") and dest.count("/") == 1:
            pool, dest = dest.split("/")
        if pool is not None:
            path = self._volume_path(pool, dest)
        elif not dest.startswith("/"):
            raise InvalidSpec(f"destination {dest!r} is neither an absolute path nor a "
                              "pool volume", field="dest",
                              fix="give /full/path.qcow2, or a volume: --pool POOL NAME "
                                  "or POOL/NAME")
        else:
            path = dest
        kind = "file" if reuse else "new"
        real = self._life.policy.check(path, field="dest", kind=kind)
        if not reuse and not os.path.lexists(real) and \
                not os.path.isdir(os.path.dirname(real)):
            raise InvalidSpec(f"the folder of {path} does not exist", field="dest",
                              fix="create it first, or copy into another folder")
        return Destination(real, fmt, reuse, blockdev)

    def _volume_path(self, pool: str, volume: str) -> str:
        try:
            row = self._store.get_pool(pool)
        except NotFound:
            raise NotFound(f"no storage pool '{pool}'", field="pool",
                           fix="see 'virtkit pool-list --all'") from None
        spec = Pool.model_validate(row.spec)
        if spec.type is not PoolType.DIR:
            raise InvalidSpec(f"blockcopy makes volumes in directory pools only; '{pool}' "
                              f"is a {spec.type.value} pool", field="pool",
                              fix="create the volume first (vol-create-as) and copy into "
                                  "its path with --reuse-external (--blockdev for an LV)")
        if row.state != PoolState.ACTIVE:
            raise InvalidSpec(f"pool '{pool}' is not active", field="pool",
                              fix=f"start it: virtkit pool-start {pool}")
        return backend_for(spec, lvm_config=lvm_config_from_env()).volume_path(volume)
