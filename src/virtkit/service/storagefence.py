"""Storage fencing on the HA restart path (docs/cluster.md, "Storage fencing"): before
this host starts an HA VM another host owned, the VM's rbd images are taken from
whatever Ceph client still has them open (storage/rbdfence.py).  Disks on other
pools have no storage fence: QEMU's image locks and the self-fence cover them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from virtkit.errors import VirtkitError
from virtkit.storage import rbdfence

if TYPE_CHECKING:
    from virtkit.service.storage import StorageService

log = logging.getLogger(__name__)


def _resolved(storage: StorageService | None, spec: dict[str, Any]) -> list[str]:
    """The pool/volume disks' paths through this host's pools (the same images as the
    stored paths when both hosts define the pool alike; both are fenced otherwise)."""
    paths = []
    for disk in spec.get("disks") or []:
        if storage is None or not isinstance(disk, dict) or disk.get("readonly") \
                or not disk.get("pool") or not disk.get("volume"):
            continue
        with contextlib.suppress(VirtkitError):
            paths.append(storage.resolve(str(disk["pool"]), str(disk["volume"])))
    return [p for p in paths if p.startswith("rbd://")]


async def fence_storage(storage: StorageService | None, name: str,
                        spec: dict[str, Any]) -> list[rbdfence.FencedImage]:
    """Fence the VM's writable rbd images; raises (HostError naming the image and the
    reason) when that fails, and then the VM must not be started here."""
    extra = await asyncio.to_thread(_resolved, storage, spec)
    refs = rbdfence.rbd_disks(spec, extra)
    if not refs:
        return []
    fenced = await asyncio.to_thread(rbdfence.fence_images, refs)
    log.warning("cluster: HA VM %s: storage fenced (%s)", name,
                "; ".join(f"{f.image}: {', '.join(f.blocklisted) or 'no client'}"
                          for f in fenced))
    return fenced
