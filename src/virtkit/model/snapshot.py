"""Snapshot planning: pure decisions about which disk gets what, and how chains merge.

Nothing here touches files or QEMU.  :func:`plan_create` decides, from the
domain's disks and the user's flags, whether a snapshot is internal (saved
inside each qcow2) or external (each disk's current image is frozen and a new
qcow2 overlay takes the writes), and which disks take part (read-only disks and
CD-ROMs never do).  :func:`plan_delete` decides how an external snapshot's
frozen image leaves a chain without losing data: merged down, dropped, or kept.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from virtkit.errors import Conflict, InvalidSpec
from virtkit.model.domain import Disk, DiskDevice
from virtkit.model.naming import naming_problem

Kind = Literal["internal", "external"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")


def check_name(name: str) -> str:
    """A snapshot name: 1-64 letters, digits, ``_ . + -``, not starting with a symbol
    (it becomes part of overlay file names and a QEMU tag)."""
    if name == "current":
        raise InvalidSpec("the snapshot name 'current' is reserved (it stands for the current "
                          "snapshot in the API)", field="name", fix="choose another name")
    problem = naming_problem(name)  # the naming rule of every object (model/naming.py)
    if problem:
        raise InvalidSpec(problem, field="name", fix="choose another name")
    if not _NAME.fullmatch(name):
        raise InvalidSpec(f"invalid snapshot name {name!r}", field="name",
                          fix="use 1-64 characters of A-Z a-z 0-9 _ . + - "
                              "starting with a letter or digit")
    return name


def takes_part(disk: Disk) -> bool:
    """Whether a disk is snapshotted: writable disks with an image (not CD-ROMs)."""
    return disk.path is not None and not disk.readonly and disk.device is DiskDevice.DISK


def on_image(disk: Disk, path: str, fmt: str | None) -> Disk:
    """``disk`` moved onto another image (an overlay, or a merged-into frozen image).

    A disk that named a pool volume loses the pool/volume reference: it would be
    resolved back to the volume at the next start, under the overlay's data.
    """
    return disk.model_copy(update={"path": path, "format": fmt, "pool": None, "volume": None})


@dataclass
class SnapDisk:
    """What one disk did in a snapshot.

    ``file``: internal - the qcow2 holding the snapshot; external - the frozen image
    (the top before the snapshot). ``overlay``: external - the qcow2 created on top.
    ``origin``: the disk's first image before any external snapshot (names overlays).
    """

    target: str
    index: int
    mode: Literal["internal", "external", "skipped"]
    file: str | None = None
    format: str | None = None
    overlay: str | None = None
    origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapDisk:
        return cls(str(data["target"]), int(data["index"]), data["mode"], data.get("file"),
                   data.get("format"), data.get("overlay"), data.get("origin"))


@dataclass
class CreatePlan:
    """The decision for one snapshot: its kind, whether it has memory, each disk's part."""

    kind: Kind
    memory: bool
    disks: list[SnapDisk] = field(default_factory=list)

    @property
    def taking_part(self) -> list[SnapDisk]:
        return [d for d in self.disks if d.mode != "skipped"]


def plan_create(disks: list[Disk], targets: list[str], *, running: bool,
                kind: Kind | None, disk_only: bool, memspec: str | None,
                existing_kinds: set[str]) -> CreatePlan:
    """Decide the kind, memory and per-disk mode of a new snapshot.

    Default: internal when every disk taking part is qcow2 (with memory when the VM
    runs, unless ``disk_only``), else external disk-only.  A domain's snapshots are all
    of one kind: an internal snapshot lives in the image that an external one freezes,
    so mixing them would make reverts ambiguous.
    """
    part = [(i, d) for i, d in enumerate(disks) if takes_part(d)]
    if not part:
        raise InvalidSpec("the domain has no writable disk to snapshot",
                          fix="give it a disk image (CD-ROMs and read-only disks are skipped)")
    not_qcow2 = [targets[i] for i, d in part if d.format != "qcow2"]
    explicit = kind is not None
    if kind is None:
        kind = "external" if not_qcow2 or memspec else "internal"
    if kind == "internal" and not_qcow2:
        raise InvalidSpec(
            f"disk {', '.join(not_qcow2)} is not qcow2: only qcow2 images can hold "
            "internal snapshots", field="kind",
            fix="take an external snapshot: snapshot-create-as DOMAIN NAME --disk-only "
                "--external (a qcow2 overlay takes the new writes)")
    if kind == "internal" and memspec:
        raise InvalidSpec("--memspec names a memory file, which only external snapshots have",
                          field="memspec", fix="drop --memspec, or add --external")
    other = existing_kinds - {kind}
    if other:
        raise Conflict(f"the domain already has {other.pop()} snapshots; its snapshots must "
                       f"all be of one kind (asked for {kind})",
                       fix="use the same kind, or delete the existing snapshots first")
    if kind == "internal":
        memory = running and not disk_only
    else:
        memory = running and not disk_only and (explicit or memspec is not None)
    if disk_only and memspec:
        raise InvalidSpec("--disk-only and --memspec contradict each other", field="memspec")
    planned = [SnapDisk(targets[i], i, kind if takes_part(d) else "skipped",
                        file=d.path if takes_part(d) else None,
                        format=d.format if takes_part(d) else None)
               for i, d in enumerate(disks)]
    return CreatePlan(kind, memory, planned)


def overlay_name(origin: str, snapshot: str, taken: set[str]) -> str:
    """A free file name for a new overlay next to ``origin``: ``data.SNAP.qcow2``, then
    ``data.SNAP.1.qcow2`` ... (``taken``: names that exist)."""
    path = PurePath(origin)
    stem = path.name.split(".")[0] or path.name
    candidate = str(path.with_name(f"{stem}.{snapshot}.qcow2"))
    number = 1
    while candidate in taken:
        candidate = str(path.with_name(f"{stem}.{snapshot}.{number}.qcow2"))
        number += 1
    return candidate


@dataclass(frozen=True)
class DeleteStep:
    """How an external snapshot's frozen image ``frozen`` leaves one disk's chain.

    ``merge``: the one image over it (``child``) is committed down into it, then
    removed; whatever pointed at ``child`` points at ``frozen``.  ``drop``: nothing
    uses ``frozen`` any more and it is ours: delete the file.  ``keep``: other images
    still read through it (or it is the user's own base image): it stays.
    """

    action: Literal["merge", "drop", "keep"]
    frozen: str
    child: str | None = None
    why: str = ""


def plan_delete(frozen: str, backing_of: dict[str, str | None], *, ours: bool) -> DeleteStep:
    """Decide what happens to ``frozen`` when its snapshot goes.

    ``backing_of`` maps every image still in use on this disk (the active top and the
    other snapshots' frozen images) to its backing file.  Committing the single child
    down keeps every other view intact: the child's content moves into ``frozen``, and
    the images that read the child now read ``frozen``, which holds the same data.
    """
    children = sorted(image for image, backing in backing_of.items() if backing == frozen)
    if len(children) == 1:
        return DeleteStep("merge", frozen, children[0])
    if not children:
        if ours:
            return DeleteStep("drop", frozen, why="no image reads it any more")
        return DeleteStep("keep", frozen, why="it is the disk's original image")
    return DeleteStep("keep", frozen, why=f"{len(children)} images read through it "
                                          f"({', '.join(children)})")


def descendants(parents: dict[str, str | None], name: str) -> list[str]:
    """The snapshots below ``name``, deepest first (the order --children deletes them)."""
    below: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        kids = sorted(n for n, p in parents.items() if p == current)
        below.extend(kids)
        frontier.extend(kids)
    depth = {n: _depth(parents, n) for n in below}
    return sorted(below, key=lambda n: -depth[n])


def _depth(parents: dict[str, str | None], name: str) -> int:
    depth, seen = 0, set()
    while (parent := parents.get(name)) is not None and parent not in seen:
        seen.add(parent)
        name, depth = parent, depth + 1
    return depth
