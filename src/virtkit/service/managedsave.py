"""virsh managedsave: the daemon keeps a domain's memory image in its own state folder.

The image is an ordinary save file (runtime/savefile.py) at
``<root>/save/<uuid>.save``, written by the same code as ``virtkit save``.
``start`` restores it instead of booting and then removes it (``--force-boot``
discards it; service/domains.py), ``dominfo`` and ``list`` show it, and
``undefine`` refuses while it exists unless given ``--managed-save``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from virtkit.errors import NotFound
from virtkit.formats.libvirt_xml import domain_to_xml
from virtkit.model.load import domain_without_secrets, load_domain
from virtkit.runtime import blockjobs, savefile
from virtkit.service.domains import DomainService


class ManagedSaveService:
    """managedsave, managedsave-remove, managedsave-dumpxml."""

    def __init__(self, domains: DomainService) -> None:
        self._domains = domains

    def _image(self, ref: str) -> tuple[dict[str, Any], Path]:
        info = self._domains.summary(ref)
        return info, self._domains.managed_image(info["uuid"])

    async def save(self, ref: str, *, resume: bool | None = None, bypass_cache: bool = False,
                   progress: blockjobs.Progress | None = None,
                   reason: str = "saved") -> dict[str, Any]:
        """Save the running domain's state to its managed image and stop it."""
        info, image = self._image(ref)
        image.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        await self._domains.lifecycle.save(info["uuid"], info["name"], image, resume=resume,
                                      progress=progress, drop_cache=bypass_cache,
                                      reason=reason)
        return {**self._domains.summary(info["uuid"]), "path": str(image)}

    def remove(self, ref: str) -> dict[str, Any]:
        """Delete the managed save image (the next start boots afresh)."""
        info, image = self._image(ref)
        try:
            image.unlink()
        except FileNotFoundError:
            raise NotFound(f"domain '{info['name']}' has no managed save image") from None
        return {"name": info["name"], "uuid": info["uuid"], "removed": True}

    async def dumpxml(self, ref: str, *, secrets: bool = False) -> str:
        """The domain definition stored in the image, as libvirt XML."""
        return await asyncio.to_thread(self._dumpxml, ref, secrets)

    def _dumpxml(self, ref: str, secrets: bool) -> str:
        info, image = self._image(ref)
        try:
            fd = os.open(image, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"domain '{info['name']}' has no managed save image",
                           fix=f"virtkit managedsave {info['name']}") from None
        try:
            header = savefile.read_header(fd, str(image))
        finally:
            os.close(fd)
        domain = load_domain(header["spec"])
        return domain_to_xml(domain if secrets else domain_without_secrets(domain))
