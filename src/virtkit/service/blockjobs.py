"""virsh's live block jobs (blockcommit, blockpull, blockjob, blockresize) by domain
name or UUID; the work is :class:`virtkit.runtime.blockops.BlockOps`'."""

from __future__ import annotations

from typing import Any

from virtkit.runtime.blockjobs import Progress
from virtkit.runtime.blockops import BlockOps
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.store.db import Store


class BlockJobService:
    """Block jobs of running domains, found by name or UUID."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._ops = BlockOps(lifecycle, store)

    def _row(self, ref: str) -> tuple[str, str]:
        row = self._store.get_domain(ref)
        return row.uuid, row.name

    async def commit(self, ref: str, disk: str, progress: Progress | None = None,
                     **options: Any) -> dict[str, Any]:
        return await self._ops.commit(*self._row(ref), disk, progress=progress, **options)

    async def pull(self, ref: str, disk: str, progress: Progress | None = None,
                   **options: Any) -> dict[str, Any]:
        return await self._ops.pull(*self._row(ref), disk, progress=progress, **options)

    async def job(self, ref: str, disk: str, progress: Progress | None = None,
                  **options: Any) -> dict[str, Any]:
        return await self._ops.job(*self._row(ref), disk, progress=progress, **options)

    async def resize(self, ref: str, disk: str, size: int) -> dict[str, Any]:
        return await self._ops.resize(*self._row(ref), disk, size)
