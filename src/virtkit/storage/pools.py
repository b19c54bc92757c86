"""The one place a pool definition becomes its storage backend."""

from __future__ import annotations

from virtkit.errors import InvalidSpec
from virtkit.model.pool import Pool, PoolType
from virtkit.storage.base import PoolBackend
from virtkit.storage.dirpool import DirPool
from virtkit.storage.isopool import IsoPool
from virtkit.storage.lvm import LogicalPool
from virtkit.storage.netfs import NetfsPool
from virtkit.storage.rbd import RbdPool
from virtkit.storage.shareddir import SharedDirPool


def backend_for(pool: Pool, *, lvm_config: str | None = None) -> PoolBackend:
    """The backend for ``pool``'s type: DirPool, SharedDirPool, NetfsPool,
    RbdPool,
    IsoPool or LogicalPool.

    ``lvm_config`` goes to logical pools as LVM's ``--config``; None (plain LVM) is
    the product default.  The service passes
    :func:`virtkit.storage.lvm.lvm_config_from_env`, the metadata-only test switch.
    """
    if pool.type is PoolType.DIR:
        return DirPool(pool)
    if pool.type is PoolType.NETFS:
        return NetfsPool(pool)
    if pool.type is PoolType.RBD:
        return RbdPool(pool)
    if pool.type is PoolType.SHARED_DIR:
        return SharedDirPool(pool)
    if pool.type is PoolType.ISO:
        return IsoPool(pool)
    if pool.type is PoolType.LOGICAL:
        return LogicalPool(pool, lvm_config=lvm_config)
    raise InvalidSpec(f"pool type {pool.type!r} has no backend", field="type")
