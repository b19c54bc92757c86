"""``virtkit clone``: virt-clone's job as one service call.

A clone is a new domain with a new UUID, name and MAC addresses, whose writable
disks are copies of the original's (read-only disks and CD-ROMs are shared, as
virt-clone does).  Copies are full (``qemu-img convert``, with progress) or
linked (a qcow2 overlay on the original image).

Safety rules:

- a running original is refused unless it is paused (QEMU flushed its disks when
  it paused) or ``force`` is given, in which case the guest agent freezes the
  guest's file systems for the copy and thaws them after (no agent: refused);
- a linked clone needs a shut-off original, and the original is moved onto a
  fresh overlay of its own too, so that neither domain ever writes the shared base
  image again (the classic linked-clone corruption: the base changing under the
  clone);
- every file created is removed again if a later step fails, and the clone is
  defined only after all copies succeeded (and, linked, after the original moved
  onto its overlay, so no definition ever writes the base): no half clone is left;
- the shared base stays read-only for ever: starting, attaching or reverting
  anything that would write it is refused (runtime/imageuse.py,
  runtime/snapshot_revert.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec, StateError
from virtkit.model.domain import Disk, DiskDevice, Domain
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.state import ACTIVE_STATES, GUEST_RUNS, Action, State, allows
from virtkit.runtime.launcher import copy_nvram
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service.domains import DomainService
from virtkit.service.guest import GuestService
from virtkit.service.models.clones import CloneRequest
from virtkit.service.models.domains import DomainInfo
from virtkit.storage import qemuimg
from virtkit.store.db import DomainRow, Store

Progress = Callable[[float, float], None]


class CloneService:
    """Clone domains, their disks with them."""

    def __init__(self, store: Store, lifecycle: Lifecycle, domains: DomainService,
                 guest: GuestService) -> None:
        self._store = store
        self._life = lifecycle
        self._domains = domains
        self._guest = guest

    async def clone(self, original: str, request: CloneRequest,
                    progress: Progress | None = None) -> DomainInfo:
        """Clone ``original`` as ``request.name``; returns the new domain's info
        (DomainService.info's answer)."""
        name, files, auto, linked = request.name, request.files, request.auto, request.linked
        force, macs = request.force, request.macs
        row = self._store.get_domain(original)
        if self._store.find_domain(name) is not None:
            raise Conflict(f"a domain named '{name}' already exists",
                           fix="choose another --name")
        source = load_domain(row.spec)
        state = self._life.vm(row.uuid, row.name).state
        live = state in ACTIVE_STATES
        self._check_state(row, state, linked=linked, force=force)
        writable = [i for i, disk in enumerate(source.disks) if _copied(disk)]
        targets = self._targets(source, name, writable, files or [], auto=auto, linked=linked)
        with contextlib.ExitStack() as undo:
            async with self._quiesced(row.name, state, force):
                await asyncio.to_thread(self._copy_disks, source, writable, targets, linked,
                                        live, progress, undo)
            if linked:
                # first: the clone's define checks that no domain writes its base, and
                # from here on neither does the original (undone on failure)
                await asyncio.to_thread(self._move_original_to_overlay, row, source,
                                        writable, undo)
            clone = self._clone_spec(source, name, writable, targets, macs or [])
            result = await asyncio.to_thread(self._domains.define, dump_domain(clone))
            undo.callback(self._store.delete_domain, result.uuid)
            self._copy_nvram(row.uuid, result.uuid, undo)
            undo.pop_all()
        return self._domains.info(result.uuid)

    # -- checks ----------------------------------------------------------------------

    @staticmethod
    def _check_state(row: DomainRow, state: State, *, linked: bool, force: bool) -> None:
        if linked and not allows(Action.LINKED_CLONE, state):
            raise StateError(f"a linked clone of '{row.name}' needs it shut off (it is "
                             f"{state.value}): its image becomes the shared base",
                             current=state.value, requested="clone",
                             fix=f"virtkit shutdown {row.name} --wait, or a full clone")
        if not allows(Action.CLONE, state) and not force:
            raise StateError(f"domain '{row.name}' is running; its disks change while they "
                             "are copied", current=state.value, requested="clone",
                             fix=f"virtkit suspend {row.name} first, shut it down, or pass "
                                 "--force to freeze its file systems with the guest agent")

    @contextlib.asynccontextmanager
    async def _quiesced(self, name: str, state: State, force: bool) -> Any:
        """Freeze the guest's file systems (running + force) for the copy; thaw after."""
        if not (force and state in GUEST_RUNS):
            yield
            return
        await self._guest.fsfreeze(name)
        try:
            yield
        finally:
            await self._guest.fsthaw(name)

    # -- where the copies go ---------------------------------------------------------

    def _targets(self, source: Domain, name: str, writable: list[int], files: list[str], *,
                 auto: bool, linked: bool) -> list[str]:
        """One new path per writable disk: from ``files`` in order, else derived."""
        if len(files) > len(writable):
            raise InvalidSpec(f"{len(files)} --file given, but '{source.name}' has only "
                              f"{len(writable)} disk(s) to copy", field="files")
        if len(files) < len(writable) and not auto:
            raise InvalidSpec(f"'{source.name}' has {len(writable)} disk(s) to copy; give a "
                              "--file for each, or --auto-clone", field="files",
                              fix="add --auto-clone to name the copies after the clone")
        targets: list[str] = []
        for position, index in enumerate(writable):
            disk = source.disks[index]
            assert disk.path is not None
            if position < len(files):
                target = files[position]
                if not target.startswith("/"):
                    raise InvalidSpec(f"--file {target} must be an absolute path",
                                      field="files")
            else:
                target = _derived_path(disk.path, source.name, name, taken=targets)
            if Path(target).exists() or target in targets:
                raise Conflict(f"{target} already exists", fix="give another --file")
            if not Path(target).parent.is_dir():
                raise InvalidSpec(f"folder {Path(target).parent} does not exist",
                                  field="files")
            targets.append(target)
        return targets

    # -- copying ---------------------------------------------------------------------

    def _copy_disks(self, source: Domain, writable: list[int], targets: list[str],
                    linked: bool, live: bool, progress: Progress | None,
                    undo: contextlib.ExitStack) -> None:
        """Full copies (qemu-img convert) or overlays; each registered for removal."""
        total = len(writable) * 100.0
        for position, (index, target) in enumerate(zip(writable, targets, strict=True)):
            disk = source.disks[index]
            assert disk.path is not None
            fmt = disk.format or qemuimg.detect_format(disk.path)
            undo.callback(_remove, target)
            if linked:
                qemuimg.create(target, "qcow2", None, backing=disk.path, backing_fmt=fmt)
            else:
                def step(done: float, _total: float, base: float = position * 100.0) -> None:
                    if progress is not None:
                        progress(base + done, total)

                dst_fmt = fmt if fmt in qemuimg.CREATE_FORMATS else "qcow2"
                qemuimg.convert(disk.path, fmt, target, dst_fmt, progress=step,
                                force_share=live)
        if progress is not None:
            progress(total, total)

    def _move_original_to_overlay(self, row: DomainRow, source: Domain, writable: list[int],
                                  undo: contextlib.ExitStack) -> None:
        """Linked clone: the original gets an overlay too; its image is now the base."""
        disks = list(source.disks)
        for index in writable:
            disk = disks[index]
            assert disk.path is not None
            fmt = disk.format or qemuimg.detect_format(disk.path)
            overlay = _derived_path(disk.path, "", "", taken=[], suffix="-top")
            qemuimg.create(overlay, "qcow2", None, backing=disk.path, backing_fmt=fmt)
            undo.callback(_remove, overlay)
            disks[index] = disk.model_copy(update={"path": overlay, "format": "qcow2",
                                                   "pool": None, "volume": None})
        updated = source.model_copy(update={"disks": disks})
        self._domains.replace_spec(row, updated)
        undo.callback(self._restore_spec, row)

    def _restore_spec(self, row: DomainRow) -> None:
        """Undo of the move onto an overlay: the original's definition as it was."""
        self._store.update_domain(row.uuid, row.name, row.spec, None)

    @staticmethod
    def _clone_spec(source: Domain, name: str, writable: list[int], targets: list[str],
                    macs: list[str]) -> Domain:
        disks = list(source.disks)
        for index, target in zip(writable, targets, strict=True):
            disks[index] = disks[index].model_copy(update={
                "path": target, "pool": None, "volume": None, "serial": None,
                "format": qemuimg.detect_format(target)})
        if len(macs) > len(source.nics):
            raise InvalidSpec(f"{len(macs)} --mac given for {len(source.nics)} interface(s)",
                              field="macs")
        nics = [nic.model_copy(update={"mac": macs[i] if i < len(macs) else None})
                for i, nic in enumerate(source.nics)]
        data = dump_domain(source.model_copy(update={
            "name": name, "disks": disks, "nics": nics, "autostart": False,
            "transient": False}))
        data["uuid"] = str(uuidlib.uuid4())
        return load_domain(data)

    def _copy_nvram(self, old_uuid: str, new_uuid: str, undo: contextlib.ExitStack) -> None:
        """A UEFI original's NVRAM (boot entries) goes with the clone."""
        copy = copy_nvram(self._life.paths, old_uuid, new_uuid)
        if copy is not None:
            undo.callback(_remove, str(copy))


def _copied(disk: Disk) -> bool:
    """Writable disks are copied; CD-ROMs and read-only disks are shared."""
    return disk.device is DiskDevice.DISK and not disk.readonly and disk.path is not None


def _derived_path(path: str, old: str, new: str, *, taken: list[str],
                  suffix: str = "-clone") -> str:
    """virt-clone's naming: the original's name in the file name becomes the clone's,
    else ``-clone`` is added; ``-1``, ``-2`` ... until the name is free."""
    original = Path(path)
    stem, ext = original.stem, original.suffix
    if old and old in stem:
        stem = stem.replace(old, new)
    else:
        stem += suffix if not new else f"-{new}"
    candidate = original.with_name(stem + ext)
    number = 1
    while candidate.exists() or str(candidate) in taken:
        candidate = original.with_name(f"{stem}-{number}{ext}")
        number += 1
    return str(candidate)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()

