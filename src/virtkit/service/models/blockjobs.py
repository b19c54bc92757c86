"""What the block job service (service/blockjobs.py) answers: virsh blockcommit,
blockpull, blockcopy, blockjob and blockresize (runtime/blockops.py and
runtime/blockcopy.py do the work and report these fields)."""

from __future__ import annotations

from virtkit.service.models.base import Result


class BlockJob(Result):
    """One disk's block job: what was started, where it is, and what it left.
    The fields beyond ``name``, ``disk`` and ``job`` are set by the jobs that have
    them (``base`` only for a commit, ``dest`` only for a copy ...)."""

    name: str
    #: the disk's target (vda)
    disk: str
    #: commit, active-commit, stream, mirror; null: no job on that disk
    job: str | None
    #: started, ready, completed, pivoted, copied, aborted, or QEMU's job status
    status: str | None = None
    #: commit: the image merged into, and the top of what was merged
    base: str | None = None
    top: str | None = None
    #: blockcopy: the copy's path and format
    dest: str | None = None
    format: str | None = None
    #: blockjob --info: progress (QEMU's units) and the bandwidth limit (bytes/s)
    cur: int | None = None
    end: int | None = None
    bandwidth: int | None = None
    #: commit: the images merged (removed with --delete, else left in place)
    deleted: list[str] | None = None
    unused: list[str] | None = None


class BlockResized(Result):
    """blockresize's answer: the new size in bytes."""

    name: str
    disk: str
    size: int
