"""libvirt's host description documents, written from facts the service gathers:
``sysinfo`` (SMBIOS), ``capabilities`` and ``domainCapabilities``.

PURE: the caller probes the host (QEMU binary, accelerator verdict, OVMF, sysfs);
these functions only lay the facts out as virsh prints them.  Element and attribute
names follow libvirt's formats (formatcaps.html, formatdomaincaps.html), so tools
that read virsh's output (virt-manager, virt-install --connect) find what they expect.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from virtkit.formats.libvirt_common import libvirt_text
from virtkit.model.domain import MAX_VCPUS, DiskBus, DiskDevice

#: the display adapters virtkit builds (model/domain.py VideoModel)
VIDEO_MODELS = ("vga", "cirrus", "virtio", "bochs", "qxl")
#: libvirt's cpu arch names for uname -m
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "i686": "i686"}


@dataclass
class HostFacts:
    """What the capabilities documents say about the host and its QEMU."""

    arch: str
    uuid: str | None
    cpus: int
    memory_kib: int
    emulator: str
    machines: Sequence[tuple[str, str | None]]  # (name, canonical name of an alias)
    kvm: bool  # the accelerator verdict lets guests use KVM
    loaders: Sequence[str] = field(default_factory=list)  # OVMF code images
    secure_loaders: bool = False


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _text(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return libvirt_text(root)


def _enum(parent: ET.Element, name: str, values: Iterable[str]) -> None:
    element = _sub(parent, "enum", name=name)
    for value in values:
        _sub(element, "value", value)


def sysinfo_xml(tables: dict[str, list[tuple[str, str]]]) -> str:
    """``<sysinfo type='smbios'>`` with one block per SMBIOS table (virsh sysinfo)."""
    root = ET.Element("sysinfo", type="smbios")
    for block, entries in tables.items():
        element = _sub(root, block)
        for name, value in entries:
            _sub(element, "entry", value, name=name)
    return _text(root)


def capabilities_xml(facts: HostFacts) -> str:
    """``<capabilities>``: the host's CPU arch and topology, and the one guest kind
    (hvm on x86_64) with QEMU's machine types; domain type kvm only when the
    accelerator verdict lets guests run on KVM."""
    root = ET.Element("capabilities")
    host = _sub(root, "host")
    if facts.uuid:
        _sub(host, "uuid", facts.uuid)
    cpu = _sub(host, "cpu")
    _sub(cpu, "arch", facts.arch)
    _sub(cpu, "topology", sockets="1", dies="1", cores=str(facts.cpus), threads="1")
    _sub(cpu, "pages", unit="KiB", size="4")
    _sub(host, "power_management")
    _sub(host, "iommu", support="no")
    migration = _sub(host, "migration_features")
    _sub(migration, "live")
    transports = _sub(migration, "uri_transports")
    _sub(transports, "uri_transport", "tcp")
    topology = _sub(host, "topology")
    cells = _sub(topology, "cells", num="1")
    cell = _sub(cells, "cell", id="0")
    _sub(cell, "memory", str(facts.memory_kib), unit="KiB")
    cpus = _sub(cell, "cpus", num=str(facts.cpus))
    for index in range(facts.cpus):
        _sub(cpus, "cpu", id=str(index), socket_id="0", die_id="0", core_id=str(index),
             siblings=str(index))
    secmodel = _sub(host, "secmodel")
    _sub(secmodel, "model", "none")
    _sub(secmodel, "doi", "0")
    guest = _sub(root, "guest")
    _sub(guest, "os_type", "hvm")
    arch = _sub(guest, "arch", name=facts.arch)
    _sub(arch, "wordsize", "64" if facts.arch in ("x86_64", "aarch64") else "32")
    _sub(arch, "emulator", facts.emulator)
    for name, canonical in facts.machines:
        attrs = {"canonical": canonical} if canonical else {}
        _sub(arch, "machine", name, maxCpus=str(MAX_VCPUS), **attrs)
    _sub(arch, "domain", type="qemu")
    if facts.kvm:
        _sub(arch, "domain", type="kvm")
    features = _sub(guest, "features")
    _sub(features, "acpi", default="on", toggle="yes")
    _sub(features, "apic", default="on", toggle="no")
    _sub(features, "cpuselection")
    _sub(features, "deviceboot")
    _sub(features, "disksnapshot", default="on", toggle="no")
    return _text(root)


def domcapabilities_xml(facts: HostFacts, machine: str, virttype: str) -> str:
    """``<domainCapabilities>`` for one machine type and domain type (kvm or qemu):
    the firmware, disk buses, display and video models virtkit builds."""
    root = ET.Element("domainCapabilities")
    _sub(root, "path", facts.emulator)
    _sub(root, "domain", virttype)
    _sub(root, "machine", machine)
    _sub(root, "arch", facts.arch)
    _sub(root, "vcpu", max=str(MAX_VCPUS))
    _sub(root, "iothreads", supported="no")
    os_el = _sub(root, "os", supported="yes")
    _enum(os_el, "firmware", ["bios", *(["efi"] if facts.loaders else [])])
    loader = _sub(os_el, "loader", supported="yes" if facts.loaders else "no")
    for path in facts.loaders:
        _sub(loader, "value", path)
    if facts.loaders:
        _enum(loader, "type", ["pflash"])
        _enum(loader, "readonly", ["yes"])
        _enum(loader, "secure", ["no", "yes"] if facts.secure_loaders else ["no"])
    cpu = _sub(root, "cpu")
    _sub(cpu, "mode", name="host-passthrough", supported="yes" if virttype == "kvm" else "no")
    _sub(cpu, "mode", name="maximum", supported="yes")
    _sub(cpu, "mode", name="custom", supported="yes")
    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", supported="yes")
    _enum(disk, "diskDevice", [device.value for device in DiskDevice])
    _enum(disk, "bus", [bus.value for bus in DiskBus])
    _enum(disk, "model", ["virtio"])
    graphics = _sub(devices, "graphics", supported="yes")
    _enum(graphics, "type", ["vnc"])
    video = _sub(devices, "video", supported="yes")
    _enum(video, "modelType", VIDEO_MODELS)
    hostdev = _sub(devices, "hostdev", supported="yes")
    _enum(hostdev, "mode", ["subsystem"])
    _enum(hostdev, "subsysType", ["pci"])
    rng = _sub(devices, "rng", supported="yes")
    _enum(rng, "model", ["virtio"])
    _enum(rng, "backendModel", ["random"])
    filesystem = _sub(devices, "filesystem", supported="yes")
    _enum(filesystem, "driverType", ["path", "virtiofs"])
    features = _sub(root, "features")
    for name in ("gic", "vmcoreinfo", "genid", "sev", "sgx"):
        _sub(features, name, supported="no")
    return _text(root)
