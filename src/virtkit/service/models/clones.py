"""What the clone service (service/clones.py) takes."""

from __future__ import annotations

from pydantic import Field

from virtkit.service.models.base import Request


class CloneRequest(Request):
    """virt-clone: the new name, its files (or auto), linked or full copies, new MACs;
    also the body of ``POST /v1/domains/{ref}/clone``."""

    name: str = Field(min_length=1)
    files: list[str] = Field(default_factory=list)
    auto: bool = False
    linked: bool = False
    force: bool = False
    macs: list[str] = Field(default_factory=list)
