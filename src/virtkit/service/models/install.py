"""What the install service (service/install.py) answers."""

from __future__ import annotations

from virtkit.service.models.base import Result, SpecDocument
from virtkit.service.models.domains import DomainInfo


class InstallResult(DomainInfo):
    """``virtkit install``: the defined, started domain, how it installs, and notes."""

    method: str
    #: whether an installer configuration runs first
    install_phase: bool
    notes: list[str]


class InstallPreview(Result):
    """``install --dry-run`` / ``--print-xml``: the definition an install would make."""

    name: str
    method: str
    dry_run: bool
    notes: list[str]
    spec: SpecDocument
    #: the definition as libvirt domain XML
    xml: str | None = None


class OsVariant(Result):
    """osinfo-query os: one OS variant of the osinfo database."""

    short_id: str
    aliases: list[str]
    name: str
    version: str
    family: str
    vendor: str
    id: str
    release_date: str
    eol_date: str
