"""The rest of virsh's everyday commands: screenshot, send-key, vcpucount, domblkinfo,
desc, and the host documents (capabilities, domcapabilities, sysinfo, node stats).

Each method is one virsh command's data; the CLI lays it out as virsh prints it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import stat
import subprocess
from pathlib import Path

from virtkit.errors import Conflict, InvalidSpec, NotFound, StateError, TimeoutExpired, VirtkitError
from virtkit.formats import libvirt_metadata as metadata_xml
from virtkit.formats.libvirt_caps import (
    ARCHES,
    HostFacts,
    capabilities_xml,
    domcapabilities_xml,
    sysinfo_xml,
)
from virtkit.host import nodefacts
from virtkit.host.accel import decide_accelerator
from virtkit.host.qemubin import qemu_info
from virtkit.model import keycodes
from virtkit.model.load import load_domain
from virtkit.model.state import ACTIVE_STATES
from virtkit.runtime import consoleio
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.qemunames import disk_slots
from virtkit.service.blockjobs import BlockJobService
from virtkit.service.models.virsh import (
    BlockInfo,
    CpuStats,
    Description,
    DiskSizes,
    KeysSent,
    MetadataChanged,
    MetadataShown,
    Title,
    VcpuCount,
    VcpuCounts,
)
from virtkit.storage.qemuimg import image_info
from virtkit.store.db import Store

#: longest title or description kept (libvirt has no limit; a spec is no document store)
MAX_DESCRIPTION = 64 * 1024
QEMU_INFO_TIMEOUT = 60.0


class VirshService:
    """virsh's smaller commands over the store, the runtime and the host probes."""

    def __init__(self, store: Store, lifecycle: Lifecycle, cache_dir: Path) -> None:
        self._store = store
        self._life = lifecycle
        self._cache_dir = cache_dir
        #: blockcommit, blockpull, blockjob, blockresize
        self.blocks = BlockJobService(store, lifecycle)

    def _running(self, ref: str, what: str) -> tuple[str, Running]:
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        if vm.running is None or vm.state not in ACTIVE_STATES:
            raise StateError(f"cannot {what} domain '{row.name}': it is not running",
                             current=vm.state.value, requested=what,
                             fix=f"virtkit start {row.name}")
        return row.name, vm.running

    # -- display -----------------------------------------------------------------------

    async def screenshot(self, ref: str, screen: int | None = None) -> tuple[bytes, str]:
        """virsh screenshot: the display's image bytes and MIME type (never a file here:
        the client writes it)."""
        if screen is not None and not 0 <= screen < 16:
            raise InvalidSpec(f"screen {screen} is out of range", field="screen",
                              fix="screens are numbered from 0")
        name, running = self._running(ref, "take a screenshot of")
        live = running.live
        if live is not None and live.graphics.type == "none":
            raise Conflict(f"domain '{name}' has no display to take a screenshot of "
                           "(graphics: none)", fix="give it one (graphics: vnc in its spec, "
                           "virtkit edit) and restart it")
        return await consoleio.screendump(running, screen)

    async def send_key(self, ref: str, keys: list[str], *, codeset: str = "linux",
                       holdtime: int | None = None) -> KeysSent:
        """virsh send-key: press ``keys`` (in ``codeset``) together, then release them."""
        if holdtime is not None and not 0 <= holdtime <= 60_000:
            raise InvalidSpec("holdtime is in milliseconds, 0 to 60000", field="holdtime")
        codes = keycodes.translate(codeset, keys)
        name, running = self._running(ref, "send keys to")
        await consoleio.send_keys(running, codes, holdtime)
        return KeysSent(name=name, qnums=codes)

    # -- domain facts ------------------------------------------------------------------

    def vcpucount(self, ref: str) -> VcpuCount:
        """virsh vcpucount: maximum and current vCPUs of the config, and of the running
        QEMU (``live`` is None when it does not run)."""
        row = self._store.get_domain(ref)
        spec = load_domain(row.spec)
        config = VcpuCounts(maximum=spec.vcpus.maximum, current=spec.vcpus.current)
        running = self._life.vm(row.uuid, row.name).running
        live = None
        if running is not None:
            now = running.live if running.live is not None else spec
            live = VcpuCounts(maximum=now.vcpus.maximum, current=now.vcpus.current)
        return VcpuCount(name=row.name, config=config, live=live)

    async def blkinfo(self, ref: str) -> BlockInfo:
        """virsh domblkinfo: capacity (guest size), allocation (host bytes in use) and
        physical (file or device size) of each disk, from qemu-img (-U: a running
        VM's images too)."""
        row = self._store.get_domain(ref)
        running = self._life.vm(row.uuid, row.name).running
        domain = running.live if running is not None and running.live is not None \
            else load_domain(row.spec)
        disks = []
        for slot, disk in zip(disk_slots(domain), domain.disks, strict=True):
            entry = DiskSizes(target=slot.target, path=disk.path,
                              device=disk.device.value, capacity=None, allocation=None,
                              physical=None)
            if disk.path:
                try:
                    sizes = await asyncio.wait_for(
                        asyncio.to_thread(_image_sizes, disk.path, disk.format),
                        QEMU_INFO_TIMEOUT)
                    entry = entry.model_copy(update=sizes)
                except TimeoutError:
                    raise TimeoutExpired(f"reading the size of {disk.path} took over "
                                         f"{QEMU_INFO_TIMEOUT:g}s") from None
            disks.append(entry)
        return BlockInfo(name=row.name, disks=disks)

    def set_description(self, ref: str, text: str | None, *, title: bool = False
                        ) -> Description | Title:
        """virsh desc: show (``text`` None) or replace the description or title, kept in
        the spec (``""`` removes it).  Neither reaches QEMU, so a running domain's
        --live and --config are the same change."""
        row = self._store.get_domain(ref)
        key = "title" if title else "description"
        if text is not None:
            if len(text) > MAX_DESCRIPTION:
                raise InvalidSpec(f"the {key} is over {MAX_DESCRIPTION} characters",
                                  field=key)
            if title and "\n" in text:
                raise InvalidSpec("a title is one line", field="title",
                                  fix="put longer text in the description")
            spec = dict(row.spec)
            if text:
                spec[key] = text
            else:
                spec.pop(key, None)
            load_domain(spec)  # still a valid spec
            row = self._store.update_domain(row.uuid, row.name, spec, None)
            running = self._life.vm(row.uuid, row.name).running
            if running is not None and running.live is not None:
                setattr(running.live, key, text or None)
        if title:
            return Title(name=row.name, title=row.spec.get(key))
        return Description(name=row.name, description=row.spec.get(key))

    def metadata(self, ref: str, uri: str, *, key: str | None = None,
                 xml: str | None = None, remove: bool = False
                 ) -> MetadataShown | MetadataChanged:
        """virsh metadata: show, set (``xml`` with ``key``, the namespace prefix) or
        remove the element of namespace ``uri`` in the spec's ``metadata``."""
        row = self._store.get_domain(ref)
        current: dict[str, str] = dict(row.spec.get("metadata") or {})
        if xml is None and not remove:
            if uri not in current:
                raise NotFound(f"metadata not found: domain '{row.name}' has no element of "
                               f"namespace {uri!r}", fix="set one with --key KEY --set XML")
            return MetadataShown(name=row.name, uri=uri, xml=metadata_xml.shown(current[uri]))
        if remove:
            current.pop(uri, None)
        else:
            if not key:
                raise InvalidSpec("namespace key is required when modifying metadata",
                                  field="key", fix="add --key PREFIX, e.g. --key app1")
            current[uri] = metadata_xml.prefixed(metadata_xml.parse(xml or ""), uri, key)
        spec = {**row.spec, "metadata": current}
        load_domain(spec)  # still a valid spec (sizes, URIs)
        row = self._store.update_domain(row.uuid, row.name, spec, None)
        running = self._life.vm(row.uuid, row.name).running
        if running is not None and running.live is not None:
            running.live.metadata = dict(current)
        return MetadataChanged(name=row.name, uri=uri, removed=remove)

    # -- host --------------------------------------------------------------------------

    def memstats(self) -> dict[str, int]:
        return nodefacts.memory_stats()

    def cpustats(self, cpu: int | None = None) -> CpuStats:
        count = os.cpu_count() or 1
        if cpu is not None and not 0 <= cpu < count:
            raise InvalidSpec(f"the host has no CPU {cpu}", field="cpu",
                              fix=f"give a number from 0 to {count - 1}")
        return CpuStats(cpu=cpu, **nodefacts.cpu_stats(cpu))

    def sysinfo(self) -> str:
        return sysinfo_xml(nodefacts.smbios())

    def _facts(self) -> HostFacts:
        qemu = qemu_info()
        verdict = decide_accelerator("auto", self._cache_dir)
        uuid = _read(Path("/sys/class/dmi/id/product_uuid")) or _machine_id()
        return HostFacts(
            arch=ARCHES.get(platform.machine(), platform.machine()), uuid=uuid,
            cpus=os.cpu_count() or 1, memory_kib=nodefacts.memory_stats()["total"],
            emulator=str(qemu.path),
            machines=[(m.name, m.alias_of) for m in qemu.machines
                      if m.name != "none"],
            kvm=verdict.accel == "kvm",
            loaders=[str(fw.code) for fw in qemu.firmware],
            secure_loaders=any(fw.secure_boot for fw in qemu.firmware))

    def capabilities(self) -> str:
        return capabilities_xml(self._facts())

    def domcapabilities(self, *, machine: str | None = None, virttype: str | None = None,
                        arch: str | None = None, emulator: str | None = None) -> str:
        """virsh domcapabilities [--virttype] [--machine] [--arch] [--emulatorbin]."""
        facts = self._facts()
        if arch not in (None, facts.arch):
            raise InvalidSpec(f"arch {arch!r}: this host's QEMU runs {facts.arch} guests",
                              field="arch")
        if emulator not in (None, facts.emulator):
            raise InvalidSpec(f"emulator {emulator!r}: virtkit runs {facts.emulator}",
                              field="emulatorbin")
        kinds = ["kvm", "qemu"] if facts.kvm else ["qemu"]
        virttype = virttype or kinds[0]
        if virttype not in kinds:
            raise InvalidSpec(f"virttype {virttype!r} is not available here: "
                              + ("KVM cannot run guests natively on this host (see "
                                 "'virtkit host check')" if virttype == "kvm"
                                 else "use kvm or qemu"), field="virttype")
        names = {name: canonical for name, canonical in facts.machines}
        machine = machine or "q35"
        if machine not in names:
            raise InvalidSpec(f"machine type {machine!r} is not one this QEMU has",
                              field="machine", fix="see 'virtkit capabilities'")
        return domcapabilities_xml(facts, names[machine] or machine, virttype)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _machine_id() -> str | None:
    """/etc/machine-id as a UUID (libvirt's fallback when SMBIOS has none)."""
    text = _read(Path("/etc/machine-id"))
    if not text or len(text) != 32:
        return None
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _image_sizes(path: str, fmt: str | None) -> dict[str, int | None]:
    """Capacity, allocation and physical size of one disk image or device."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidSpec(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as device:
            physical = device.seek(0, os.SEEK_END)
    else:
        physical = st.st_size
    try:
        info = image_info(path, fmt=fmt)
    except (VirtkitError, subprocess.TimeoutExpired):
        return {"capacity": physical, "allocation": st.st_blocks * 512, "physical": physical}
    return {"capacity": int(info.get("virtual-size", physical)),
            "allocation": int(info.get("actual-size", st.st_blocks * 512)),
            "physical": physical}
