"""What the snapshot service (service/snapshots.py) takes and answers."""

from __future__ import annotations

from typing import Literal

from virtkit.service.models.base import Request, Result


class SnapshotCreate(Request):
    """snapshot-create-as: also the body of ``POST /v1/domains/{ref}/snapshots``."""

    name: str | None = None
    description: str | None = None
    kind: Literal["internal", "external"] | None = None
    disk_only: bool = False
    memspec: str | None = None
    quiesce: bool = False


class SnapshotDisk(Result):
    """One disk of a snapshot: where its state went."""

    target: str | None
    mode: str | None
    file: str | None
    format: str | None
    overlay: str | None


class SnapshotInfo(Result):
    """snapshot-list --json (one entry), snapshot-info, and create's and revert's answer."""

    name: str
    parent: str | None
    created: float
    kind: str
    memory: bool
    state: str
    current: bool
    description: str
    memory_file: str | None
    children: int
    disks: list[SnapshotDisk]
    #: snapshot-info, create and revert name the domain
    domain: str | None = None
    #: create: whether the guest's file systems were frozen
    quiesced: bool | None = None
    #: revert: the domain's state afterwards
    domain_state: str | None = None


class SnapshotsDeleted(Result):
    """snapshot-delete's answer: the snapshots deleted, deepest first, and notes."""

    domain: str
    deleted: list[str]
    notes: list[str]
