"""What the domain services answer: service/domains.py (define, list, dominfo,
lifecycle, interfaces), service/managedsave.py and service/provision.py's undefine.

A lifecycle answer is the domain's :class:`DomainSummary` (``virsh list``'s row), a
definition's is its :class:`DomainInfo` (``dominfo``); the fields only some answers
carry (``note``, ``path``, ``warnings``, ``host``) are left unset otherwise, so the
JSON is the same as the dictionaries these replaced.
"""

from __future__ import annotations

from pydantic import Field

from virtkit.service.models.base import Result, SpecDocument


class DomainSummary(Result):
    """One domain as ``virsh list`` shows it; the answer of start's relatives."""

    name: str
    uuid: str
    state: str
    reason: str
    vcpus: int
    memory_mib: int
    autostart: bool
    pid: int | None
    #: virsh's small Id: one per QEMU process (None when shut off)
    id: int | None
    title: str | None
    managed_save: bool
    #: shutdown/reboot: the guest reboots into a new QEMU that runs the changed definition
    note: str | None = None
    #: save and managedsave: the memory image written
    path: str | None = None


class DiskInfo(Result):
    """domblklist: one disk, with the pool volume its path is (if any)."""

    target: str
    bus: str
    path: str | None
    device: str
    format: str | None
    pool: str | None
    volume: str | None


class VncDisplay(Result):
    """vncdisplay: where QEMU's VNC server listens, and virsh's ``host:display``."""

    host: str | None
    port: int
    display: str


class SecurityContext(Result):
    """dominfo's Security lines: the running QEMU's uid/gid label, cgroup and sandbox
    when confined (runtime/confine.py), model ``none`` when not."""

    model: str
    doi: str
    label: str | None
    uid: int | None = None
    gid: int | None = None
    cgroup: list[str] | None = None
    sandbox: bool | None = None
    notes: list[str] | None = None


class DomainInfo(DomainSummary):
    """dominfo (``GET /v1/domains/{ref}``) and the answer of define, start, restore."""

    description: str | None
    version: int
    #: the stored definition (model/domain.py's Domain as JSON; secrets left out
    #: unless asked for)
    spec: SpecDocument
    max_memory_mib: int
    max_vcpus: int
    machine: str
    accelerator: str
    started: float | None
    installing: bool
    vnc: VncDisplay | None
    disks: list[DiskInfo]
    console_log: str
    security: SecurityContext | None
    #: virsh dominfo's Persistent: a transient domain goes when it stops
    persistent: bool
    #: seconds of CPU QEMU used (None when shut off)
    cpu_time: float | None
    #: in a cluster: the host it is defined on
    host: str | None = None
    #: define from libvirt XML and create: what force dropped, and notes
    warnings: list[str] | None = None


class DomainSpecText(Result):
    """``GET /v1/domains/{ref}/spec``: the spec as YAML and its version (virtkit edit)."""

    name: str
    version: int
    yaml: str


class Autostart(Result):
    name: str
    autostart: bool


class Undefined(Result):
    """undefine's answer.  With ``--remove-all-storage`` the service also hands its
    caller (service/provision.py) the intent row and the volumes to remove; those are
    never sent."""

    name: str
    uuid: str
    intent: int | None = Field(default=None, exclude=True)
    volumes: list[list[str]] | None = Field(default=None, exclude=True)


class UndefinedWithStorage(Result):
    """``undefine --remove-all-storage``: the definition, then its volumes."""

    name: str
    uuid: str
    removed_volumes: list[str]
    kept_volumes: list[str]
    #: why each kept volume was kept, by volume
    kept_reasons: dict[str, str]


class Interface(Result):
    """domiflist/domifaddr: one NIC with its source, tap, link and leased addresses."""

    index: int
    type: str
    model: str
    mac: str | None
    #: the network or bridge, or "user"
    source: str
    tap: str | None
    link: str
    addresses: list[str]
    prefix: int | None


class LinkSet(Result):
    """domif-setlink's answer."""

    name: str
    index: int
    mac: str | None
    link: str


class ManagedSaveRemoved(Result):
    name: str
    uuid: str
    removed: bool


class ManagedSaveDefined(Result):
    """managedsave-define: the image's definition replaced; whether it resumes running."""

    name: str
    uuid: str
    running: bool
