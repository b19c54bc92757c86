"""Storage fencing for rbd images: before a host restarts an HA VM whose owner died (or
was cut off), every Ceph client that still has the VM's images open is blocklisted,
so a QEMU on the old host that is still alive can never write them again.

Why this is needed beyond the host lease: self-fencing (cluster/fence.py, the guard)
kills the old host's QEMUs before its lease can expire, but a host whose kernel hangs,
or whose guard was stopped with it, keeps a QEMU that may resume later and write an
image the new copy writes too.  Ceph can make that impossible: the OSDs refuse every
operation of a blocklisted client instance (its address with nonce), whatever its
host does later.  librbd's exclusive lock alone does not: it is cooperative between
live clients, and a paused client still holds it.

The fence, per writable rbd disk of the VM (read-only disks and CD-ROMs are left
alone: they take no lock and write nothing):

1. read who has the image open: ``rbd status`` (watchers) and ``rbd lock ls`` (the
   exclusive lock's holder);
2. ``ceph osd blocklist add ADDR`` for each of those clients, for
   :data:`BLOCKLIST_SECONDS` (the entry names one client instance, never a host, so a
   new QEMU on that host later is not affected);
3. ``rbd lock rm`` of the lock they held, so the new QEMU takes it at once instead
   of asking a holder that can no longer answer;
4. read status and locks again: a lock left, or a watcher that is not blocklisted (a
   client that opened the image in between), fails the fence.

Any failure (monitors unreachable, no permission to blocklist, an image missing) is
raised as an error naming the image and the reason: the caller must not start the VM
then (never two writers).  At the time of the fence nothing legitimate holds these
images: the VM's owner key is gone with its host's lease and this host has just
claimed it; every client found is the old owner's (or a stray reader), and cutting it
off is the point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import HostError, VirtkitError
from virtkit.model.netdisk import RbdRef, is_rbd_path, parse_rbd_url
from virtkit.storage.rbd import run, run_json

log = logging.getLogger(__name__)

#: how long a fenced client stays blocklisted: a day (a host frozen for longer than
#: that is expected to have been rebooted by its watchdog long before)
BLOCKLIST_SECONDS = 86400


@dataclass(frozen=True)
class FencedImage:
    """What the fence did to one image: the clients blocklisted and locks broken."""

    image: str  # POOL/IMAGE
    blocklisted: list[str] = field(default_factory=list)
    locks_broken: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "blocklisted": self.blocklisted,
                "locks_broken": self.locks_broken}


def rbd_disks(spec: dict[str, Any], extra_paths: Iterable[str] = ()) -> list[RbdRef]:
    """The writable rbd images of a VM spec (as stored: disks carry their paths), plus
    ``extra_paths`` (the same volumes resolved through this host's pools), one per
    Ceph pool and image."""
    paths = [str(d.get("path")) for d in spec.get("disks") or []
             if isinstance(d, dict) and not d.get("readonly") and d.get("device") != "cdrom"
             and is_rbd_path(d.get("path"))]
    found: dict[tuple[str, str], RbdRef] = {}
    for path in [*paths, *extra_paths]:
        ref = parse_rbd_url(path)
        if ref.image is not None:
            found.setdefault((ref.pool, ref.image), ref)
    return list(found.values())


def _clients(ref: RbdRef, what: str) -> tuple[set[str], list[dict[str, str]]]:
    spec = f"{ref.pool}/{ref.image}"
    status = run_json("rbd", ref, "status", spec, what=what) or {}
    watchers = {str(w["address"]) for w in status.get("watchers", []) if w.get("address")}
    locks = [{"id": str(lock["id"]), "locker": str(lock["locker"]),
              "address": str(lock.get("address", ""))}
             for lock in run_json("rbd", ref, "lock", "ls", spec, what=what) or []]
    return watchers, locks


def fence_image(ref: RbdRef, *, expire: int = BLOCKLIST_SECONDS) -> FencedImage:
    """Blocklist every client of one image and break its lock; HostError naming the
    image and the reason when that could not be done and checked."""
    spec = f"{ref.pool}/{ref.image}"
    what = f"storage fence of rbd image {spec}"
    try:
        watchers, locks = _clients(ref, what)
        addresses = sorted(watchers | {lock["address"] for lock in locks if lock["address"]})
        for address in addresses:
            run("ceph", ref, "osd", "blocklist", "add", address, str(expire), what=what)
        for lock in locks:
            run("rbd", ref, "lock", "rm", spec, lock["id"], lock["locker"], what=what)
        watchers_after, locks_after = _clients(ref, what)
    except VirtkitError as exc:
        raise HostError(f"{what} failed, so the VM is not started here (another host may "
                        f"still write the image): {exc}",
                        fix="make the Ceph monitors reachable from this host and give its "
                            "Ceph user the right to blocklist (mon 'profile rbd'); or, "
                            "after making sure the old host is powered off, start the "
                            "VM by hand") from exc
    strangers = sorted(watchers_after - set(addresses))
    if locks_after or strangers:
        holders = ", ".join(strangers or [lock["locker"] for lock in locks_after])
        raise HostError(f"{what}: the image is still held after the fence (by {holders}): "
                        "another client opened it meanwhile", fix="find that client "
                        f"(rbd status {spec}) and stop it, then start the VM again")
    if addresses:
        log.warning("%s: blocklisted %s, broke %d lock(s)", what, ", ".join(addresses),
                    len(locks))
    return FencedImage(spec, addresses, [lock["locker"] for lock in locks])


def fence_images(refs: Iterable[RbdRef], *,
                 expire: int = BLOCKLIST_SECONDS) -> list[FencedImage]:
    """:func:`fence_image` for each image, stopping at the first failure."""
    return [fence_image(ref, expire=expire) for ref in refs]
