"""virsh managedsave: the daemon keeps a domain's memory image in its own state folder.

The image is an ordinary save file (runtime/savefile.py) at
``<root>/save/<uuid>.save``, written by the same code as ``virtkit save``.
``start`` restores it instead of booting and then removes it (``--force-boot``
discards it; service/domains.py), ``dominfo`` and ``list`` show it, and
``undefine`` refuses while it exists unless given ``--managed-save``.

``managedsave-define`` replaces the definition stored in the image (libvirt XML): the
memory image belongs to the device set it was taken with, so only the host side may
change (:data:`HOST_SIDE`: file paths, network backends, limits, descriptions), as
libvirt's ABI-stability check allows; anything the guest would see is refused, named.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from virtkit.errors import InvalidSpec, NotFound
from virtkit.formats.libvirt_xml import domain_from_xml, domain_to_xml
from virtkit.model.load import domain_without_secrets, dump_domain, load_domain
from virtkit.runtime import blockjobs, preflight, savefile
from virtkit.runtime.savefile import Header
from virtkit.service.domains import DomainService
from virtkit.service.models.domains import (
    DomainSummary,
    ManagedSaveDefined,
    ManagedSaveRemoved,
)

#: the spec fields (list items without their index) a save image's definition may
#: change: the host side of the same guest hardware
HOST_SIDE = frozenset({
    "title", "description", "metadata", "autostart", "on_poweroff", "on_reboot",
    "on_crash", "cputune", "memtune", "blkiotune",
    "disks.path", "disks.pool", "disks.volume", "disks.cache", "disks.aio", "disks.iotune",
    "nics.network", "nics.bridge",
    "graphics.listen", "graphics.port", "graphics.password", "graphics.keymap",
    "serials.log", "serials.log_path",
})


def merge_host_side(old: Any, new: Any, where: str = "") -> tuple[Any, list[str]]:
    """``old`` with the :data:`HOST_SIDE` fields of ``new``, and where else ``new``
    differs (what the guest would see)."""
    if isinstance(old, dict) and isinstance(new, dict):
        merged, changed = dict(old), []
        for key in sorted(old.keys() | new.keys()):
            path = f"{where}.{key}" if where else key
            if re.sub(r"\[\d+\]", "", path) in HOST_SIDE:
                merged[key] = new.get(key)
                continue
            merged[key], more = merge_host_side(old.get(key), new.get(key), path)
            changed += more
        return merged, changed
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and all(isinstance(item, dict) for item in old):
        items, changed = [], []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            item, more = merge_host_side(a, b, f"{where}[{index}]")
            items.append(item)
            changed += more
        return items, changed
    return old, ([] if old == new else [where])


class ManagedSaveService:
    """managedsave, managedsave-remove, managedsave-dumpxml."""

    def __init__(self, domains: DomainService) -> None:
        self._domains = domains

    def _image(self, ref: str) -> tuple[DomainSummary, Path]:
        info = self._domains.summary(ref)
        return info, self._domains.managed_image(info.uuid)

    async def save(self, ref: str, *, resume: bool | None = None, bypass_cache: bool = False,
                   progress: blockjobs.Progress | None = None,
                   reason: str = "saved") -> DomainSummary:
        """Save the running domain's state to its managed image and stop it."""
        info, image = self._image(ref)
        image.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        await self._domains.lifecycle.save(info.uuid, info.name, image, resume=resume,
                                           progress=progress, drop_cache=bypass_cache,
                                           reason=reason)
        saved = self._domains.summary(info.uuid)
        saved.path = str(image)
        return saved

    def remove(self, ref: str) -> ManagedSaveRemoved:
        """Delete the managed save image (the next start boots afresh)."""
        info, image = self._image(ref)
        try:
            image.unlink()
        except FileNotFoundError:
            raise NotFound(f"domain '{info.name}' has no managed save image") from None
        return ManagedSaveRemoved(name=info.name, uuid=info.uuid, removed=True)

    async def define(self, ref: str, text: str, *, running: bool | None = None
                     ) -> ManagedSaveDefined:
        """virsh managedsave-define: the image's definition becomes ``text`` (libvirt
        XML) where only the host side changes; ``running``: the vCPUs' state after the
        restore (None: as saved)."""
        return await asyncio.to_thread(self._define, ref, text, running)

    def _define(self, ref: str, text: str, running: bool | None) -> ManagedSaveDefined:
        info, image = self._image(ref)
        header = self._read(info, image)
        saved = load_domain(header["spec"])
        # both sides through the XML, so that what XML cannot say is no difference
        before = dump_domain(load_domain(domain_from_xml(domain_to_xml(saved))[0]))
        after = dump_domain(load_domain(domain_from_xml(text)[0]))
        _, changed = merge_host_side(before, after)
        if changed:
            raise InvalidSpec(
                f"the managed save image of domain '{info.name}' can take only host-side "
                f"changes; the guest would see: {', '.join(changed)}",
                fix="change only file paths, network sources, limits or descriptions; "
                    "other changes need 'virtkit managedsave-remove' and a fresh boot")
        spec, _ = merge_host_side(dump_domain(saved), after)
        domain = load_domain(spec)
        preflight.check_files(domain, self._domains.lifecycle.policy, remote=False)
        header = {**header, "spec": dump_domain(domain)}
        if running is not None:
            header["running"] = running
        savefile.rewrite_header(str(image), header)
        return ManagedSaveDefined(name=info.name, uuid=info.uuid,
                                  running=bool(header.get("running")))

    @staticmethod
    def _read(info: DomainSummary, image: Path) -> Header:
        try:
            fd = os.open(image, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"domain '{info.name}' has no managed save image",
                           fix=f"virtkit managedsave {info.name}") from None
        try:
            return savefile.read_header(fd, str(image))
        finally:
            os.close(fd)

    async def dumpxml(self, ref: str, *, secrets: bool = False) -> str:
        """The domain definition stored in the image, as libvirt XML."""
        return await asyncio.to_thread(self._dumpxml, ref, secrets)

    def _dumpxml(self, ref: str, secrets: bool) -> str:
        info, image = self._image(ref)
        domain = load_domain(self._read(info, image)["spec"])
        return domain_to_xml(domain if secrets else domain_without_secrets(domain))
