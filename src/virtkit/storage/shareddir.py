"""Shared directory pools: a folder the admin mounts on every host (NFS, CephFS, a
cluster file system), holding volumes exactly as a ``dir`` pool does.

Everything a :class:`~virtkit.storage.dirpool.DirPool` does holds here unchanged
(names confined to the folder, staged writes, the format xattr, qemu-img without
force-share).  What differs is what the pool promises to the rest of virtkit: the
same volume name is the same image on every host that defines this pool at the same
folder, so a live migration between two of them copies no disk (the migration's copy
plan skips such disks, service/sharedstore.py), and QEMU's image locks (POSIX locks on
the image, which NFSv4, CephFS and a local file system all carry across hosts) keep a
second writer from opening it on another host.

The folder is the admin's mount: ``pool-build`` creates it only when its parent
exists (a mount point's parent), and never mounts anything itself.
"""

from __future__ import annotations

import os

from virtkit.errors import NotFound
from virtkit.storage.dirpool import DirPool


class SharedDirPool(DirPool):
    """A :class:`DirPool` whose folder every host of the cluster mounts."""

    shared = True

    def build(self) -> None:
        """Create the folder inside an existing parent (the mounted file system); a
        missing parent means the shared file system is not mounted here."""
        parent = os.path.dirname(self.root)
        if not os.path.isdir(parent):
            raise NotFound(f"pool {self.pool.name!r}: {parent} does not exist, so the shared "
                           f"file system is not mounted here",
                           fix=f"mount the shared file system (NFS, CephFS ...) so that "
                               f"{parent} exists on this host, then pool-build again")
        super().build()
