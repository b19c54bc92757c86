"""What virsh's smaller commands (service/virsh.py) answer."""

from __future__ import annotations

from virtkit.service.models.base import Result


class KeysSent(Result):
    """send-key: the keys pressed, as QEMU's qnum numbers."""

    name: str
    qnums: list[int]


class VcpuCounts(Result):
    maximum: int
    current: int


class VcpuCount(Result):
    """vcpucount: the definition's counts, and the running QEMU's (None: not running)."""

    name: str
    config: VcpuCounts
    live: VcpuCounts | None


class DiskSizes(Result):
    """domblkinfo: one disk's capacity (guest size), allocation (host bytes in use) and
    physical size (file or device), in bytes; None for a disk without an image."""

    target: str
    path: str | None
    device: str
    capacity: int | None
    allocation: int | None
    physical: int | None


class BlockInfo(Result):
    name: str
    disks: list[DiskSizes]


class Description(Result):
    """desc: the description (None: none)."""

    name: str
    description: str | None


class Title(Result):
    """desc --title: the title (None: none)."""

    name: str
    title: str | None


class MetadataShown(Result):
    """metadata: the element of namespace ``uri``, as XML."""

    name: str
    uri: str
    xml: str


class MetadataChanged(Result):
    name: str
    uri: str
    removed: bool


class CpuStats(Result):
    """nodecpustats: ns since boot, all CPUs (``cpu`` None) or one."""

    cpu: int | None
    user: int
    system: int
    idle: int
    iowait: int
