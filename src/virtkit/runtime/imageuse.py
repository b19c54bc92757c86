"""Who else uses an image: the one cross-domain check behind "one writer per image".

QEMU's own image locks only catch a clash once a second QEMU opens the file, as
an error that names no one; and they say nothing about a shut-off domain whose
definition writes a file that another image is backed by (a linked clone's
base).  Every operation that gives a domain an image (define, start, restore,
attach live or in the definition, vol-clone --linked) and every one that removes
an image (vol-delete, undefine --remove-all-storage, dropping an old overlay)
asks :class:`ImageUse` first.  It looks at:

* every domain's definition and, when it runs, its running configuration
  (hot-plugged disks included);
* the backing chain below each of those disks (read from the qcow2 header, no
  process spawned);
* the files of the active directory pools and of the folder each image lies in
  (a volume can be backed by another without any domain using it).

The rules (a refusal is a :class:`~virtkit.errors.Conflict` naming the other user
and the fix):

1. a writable disk's image is used by no other running domain, and a read-only
   one by no running writer (two read-only users are fine) -- at start, restore and
   attach --live; at define and attach --config no two definitions may name one
   image writable (a read-only user next to a writer is only refused when both
   would run);
2. an image that backs another image (any domain's, any pool volume's) is never
   a writable disk;
3. an image whose backing chain holds a file another domain writes is refused.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from virtkit.errors import Conflict, QemuError
from virtkit.model.domain import Disk, DiskDevice, Domain
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.store.db import Store

QCOW2_MAGIC = b"QFI\xfb"
#: a backing chain deeper than this is taken as a loop
MAX_CHAIN = 64


def backing_file(path: str) -> str | None:
    """The real path of the file ``path`` (a qcow2) is backed by, read from its header;
    None for raw images, unreadable files and non-file backings (json:, nbd:)."""
    try:
        with open(path, "rb") as image:
            head = image.read(20)
            if len(head) < 20 or head[:4] != QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not 0 < size <= 4096:
                return None
            image.seek(offset)
            name = image.read(size).decode(errors="replace")
    except OSError:
        return None
    if not name or re.match(r"^[a-z0-9+]+:", name):
        return None
    return os.path.realpath(os.path.join(os.path.dirname(path), name))


def chain_below(path: str) -> list[str]:
    """The real paths of the backing files under ``path``, nearest first."""
    found: list[str] = []
    current = os.path.realpath(path)
    for _ in range(MAX_CHAIN):
        below = backing_file(current)
        if below is None or below in found or below == os.path.realpath(path):
            break
        found.append(below)
        current = below
    return found


@dataclass(frozen=True)
class Use:
    """One use of an image: as a disk of domain ``domain`` (``via`` None), or as a file
    in the backing chain of ``via`` (a domain's disk or a pool volume)."""

    image: str
    domain: str | None
    uuid: str | None
    writable: bool
    running: bool
    via: str | None = None

    def who(self) -> str:
        if self.domain is None:
            return f"image {self.via}"
        if self.via is not None:
            return f"domain '{self.domain}' (through {self.via})"
        state = "running" if self.running else "defined"
        return f"{state} domain '{self.domain}'"


@dataclass(frozen=True)
class Wanted:
    """An image a domain wants: its path, whether writable, and the spec field naming it."""

    path: str
    writable: bool
    field: str


def wanted_disks(domain: Domain) -> list[Wanted]:
    """The images ``domain``'s disks name (empty CD-ROMs left out)."""
    return wanted_images(domain.disks)


def wanted_images(disks: list[Disk], prefix: str = "disks") -> list[Wanted]:
    """The images ``disks`` name, as ``prefix[i].path`` fields."""
    return [Wanted(disk.path, disk.device is DiskDevice.DISK and not disk.readonly,
                   f"{prefix}[{index}].path" if prefix == "disks" else f"{prefix}.path")
            for index, disk in enumerate(disks) if disk.path]


#: at most this many files of one folder are looked at for backing files
MAX_FOLDER_FILES = 4096


def _folder_files(folders: Iterable[str]) -> set[str]:
    """The regular files of ``folders`` (block devices and /dev are not scanned)."""
    found: set[str] = set()
    for folder in set(folders):
        if folder.startswith("/dev") or not os.path.isdir(folder):
            continue
        try:
            with os.scandir(folder) as entries:
                for count, entry in enumerate(entries):
                    if count >= MAX_FOLDER_FILES:
                        break
                    if entry.is_file(follow_symlinks=False):
                        found.add(os.path.realpath(entry.path))
        except OSError:
            continue
    return found


def _disk_dicts(disks: Iterable[Any]) -> list[tuple[str, bool]]:
    """(path, writable) of spec disks given as dicts or :class:`Disk` objects."""
    out = []
    for disk in disks:
        if isinstance(disk, dict):
            path, device, readonly = disk.get("path"), disk.get("device", "disk"), \
                disk.get("readonly", False)
        else:
            path, device, readonly = disk.path, getattr(disk.device, "value", disk.device), \
                disk.readonly
        if path:
            out.append((str(path), device == "disk" and not readonly))
    return out


class ImageUse:
    """Answers "who else uses this image" over all domains, running and defined."""

    def __init__(self, store: Store, lifecycle: Lifecycle,
                 pool_files: Callable[[], list[str]] | None = None) -> None:
        self._store = store
        self._life = lifecycle
        self._pool_files = pool_files or (lambda: [])

    # -- gathering -------------------------------------------------------------------

    def uses(self, *, exclude: str | None = None, pools: bool = True,
             folders: Iterable[str] = ()) -> list[Use]:
        """Every use of every image by domains other than ``exclude`` (a uuid), and the
        backing files of the files in the pools and in ``folders``."""
        found: list[Use] = []
        tops: set[str] = set()
        for row in self._store.list_domains():
            if row.uuid == exclude:  # its own overlays are no dependents of its images
                tops.update(os.path.realpath(p) for p, _w in
                            _disk_dicts(row.spec.get("disks", [])))
                continue
            running = self._life.vm(row.uuid, row.name).running
            configs: list[tuple[list[tuple[str, bool]], bool]] = [
                (_disk_dicts(row.spec.get("disks", [])), False)]
            live = getattr(running, "live", None) if running is not None else None
            if isinstance(live, Domain):
                configs.append((_disk_dicts(live.disks), True))
            for disks, is_live in configs:
                for path, writable in disks:
                    real = os.path.realpath(path)
                    tops.add(real)
                    found.append(Use(real, row.name, row.uuid, writable, is_live))
                    for below in chain_below(real):
                        found.append(Use(below, row.name, row.uuid, False, is_live, via=path))
        if pools:
            files = {os.path.realpath(p) for p in self._pool_files()}
            files.update(_folder_files(folders))
            for real in sorted(files):
                if real in tops:
                    continue
                base = backing_file(real)
                if base is not None:
                    found.append(Use(base, None, None, False, False, via=real))
        return found

    def dependents(self, path: str, *, exclude: str | None = None) -> list[Use]:
        """The images (domains' disks' chains, pool volumes) ``path`` is a backing file of."""
        real = os.path.realpath(path)
        return [use for use in self.uses(exclude=exclude, folders=[os.path.dirname(real)])
                if use.image == real and use.via is not None]

    def users(self, path: str, *, exclude: str | None = None) -> list[Use]:
        """The domains with ``path`` as a disk (not counting backing use)."""
        real = os.path.realpath(path)
        return [use for use in self.uses(exclude=exclude, pools=False)
                if use.image == real and use.via is None]

    # -- the check -------------------------------------------------------------------

    def check(self, name: str, uuid: str | None, wanted: list[Wanted], *,
              defined: bool) -> None:
        """Refuse (Conflict) if domain ``name`` may not have the images ``wanted``.

        ``defined``: other domains' definitions count as users too (define, attach
        --config); else only running domains do (start, attach --live).  Backing use
        always counts: a base is read by its overlays whether they run or not."""
        if not wanted:
            return
        others = self.uses(exclude=uuid, folders={
            os.path.dirname(os.path.realpath(w.path)) for w in wanted if w.writable})
        for want in wanted:
            problem = self._problem(want, others, defined=defined)
            if problem is not None:
                message, fix, other = problem
                raise Conflict(f"{want.field}: {message}", fix=fix, path=want.path,
                               used_by=other)

    @staticmethod
    def _problem(want: Wanted, others: list[Use], *, defined: bool
                 ) -> tuple[str, str, str | None] | None:
        real = os.path.realpath(want.path)
        for use in others:
            if use.image != real:
                continue
            if use.via is not None and want.writable:
                return (f"{want.path} is the backing file of {use.via}"
                        + (f" (domain '{use.domain}')" if use.domain else "")
                        + ", so it must never be written again",
                        "a base image stays read-only: attach it with readonly, give the "
                        "domain an overlay of it ('virtkit clone --linked' moves a domain onto "
                        "one), or remove/flatten the images on top of it first", use.domain)
            clash = (use.running and (want.writable or use.writable)) or \
                (defined and want.writable and use.writable)
            if use.via is None and clash:
                how = "writable" if use.writable else "read-only"
                return (f"{want.path} is in use by {use.who()} ({how}); two domains writing "
                        "one image corrupt it",
                        f"shut '{use.domain}' down or detach the disk from it, give this "
                        "domain its own copy (virtkit vol-clone, or virtkit clone), or use "
                        "the image read-only in both", use.domain)
        below = set(chain_below(real))
        for use in others:
            if use.image in below and use.via is None and use.writable \
                    and (use.running or defined):
                return (f"{want.path} is backed by {use.image}, which {use.who()} uses as a "
                        "writable disk: its writes would change this image's data",
                        f"move '{use.domain}' onto an overlay of its own (shut it off and "
                        f"'virtkit clone {use.domain} --linked ...' does that), or make a "
                        "full copy instead of a linked one", use.domain)
        return None


#: QEMU's lock error: Failed to get "write" lock ... Is another process using the image [PATH]?
_LOCK_ERROR = re.compile(r'Failed to get "?(\w+)"? lock', re.IGNORECASE)
_LOCK_PATH = re.compile(r"using the image \[([^\]]+)\]")


def lock_conflict(exc: QemuError, users: Callable[[str], list[Use]] | None = None
                  ) -> Conflict | None:
    """QEMU's "Failed to get ... lock" as a Conflict naming the image (and, with
    ``users``, the domain holding it); None for any other error."""
    text = exc.message + " " + " ".join(str(v) for v in exc.details.values())
    if not _LOCK_ERROR.search(text):
        return None
    found = _LOCK_PATH.search(text)
    path = found.group(1) if found else None
    holders = [u.domain for u in users(path)] if users is not None and path else []
    holder = f" (held by domain {', '.join(repr(h) for h in holders if h)})" \
        if any(holders) else " (held by another process)"
    what = f"image {path}" if path else "an image"
    return Conflict(f"{what} is locked by another QEMU{holder}; two writers would corrupt it",
                    fix="stop the other user first, or give this domain its own copy",
                    path=path)


__all__ = ["ImageUse", "Use", "Wanted", "backing_file", "chain_below", "lock_conflict",
           "wanted_disks", "wanted_images"]
