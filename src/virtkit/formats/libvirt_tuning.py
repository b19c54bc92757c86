"""libvirt XML of the tuning parts: <cputune>, <numatune>, <cpu><numa>, <memoryBacking>, <hostdev>.

Pure functions used by :mod:`virtkit.formats.libvirt_xml` (out) and
:mod:`virtkit.formats.libvirt_domain_in` (in).  What virtkit cannot honour
(scheduler shares, per-cell numatune, USB host devices ...) is refused through the
reader, by location, like every other unsupported item.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtkit.formats.libvirt_common import XmlReader, size_mib
from virtkit.model.domain import Domain
from virtkit.model.tuning import IOTUNE_KEYS


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


# -- out ----------------------------------------------------------------------------------

def memory_backing_out(root: ET.Element, domain: Domain) -> None:
    """<memoryBacking>: hugepages, and the shared memfd virtiofs needs."""
    virtiofs = any(fs.driver == "virtiofs" for fs in domain.filesystems)
    hugepages = domain.memory_backing.hugepages
    if not (virtiofs or hugepages):
        return
    backing = _sub(root, "memoryBacking")
    if hugepages:
        pages = _sub(backing, "hugepages")
        _sub(pages, "page", size=str(domain.memory_backing.page_size_kib), unit="KiB")
    if virtiofs:
        _sub(backing, "source", type="memfd")
        _sub(backing, "access", mode="shared")


def cputune_out(root: ET.Element, domain: Domain) -> None:
    """<cputune> (vcpupin, emulatorpin) and <numatune>, after <vcpu> as libvirt orders them."""
    tune = domain.cputune
    limits = {"shares": tune.shares, "period": tune.period, "quota": tune.quota}
    if domain.memtune.hard_limit or domain.memtune.soft_limit \
            or domain.memtune.swap_hard_limit:
        memtune = _sub(root, "memtune")
        for key, value in domain.memtune.model_dump().items():
            if value:
                _sub(memtune, key, str(value), unit="KiB")
    if domain.blkiotune.weight is not None or domain.blkiotune.devices:
        blkiotune = _sub(root, "blkiotune")
        if domain.blkiotune.weight is not None:
            _sub(blkiotune, "weight", str(domain.blkiotune.weight))
        for device in domain.blkiotune.devices:
            element = _sub(blkiotune, "device")
            for key, value in device.model_dump().items():
                if value is not None:
                    _sub(element, key, str(value))
    if tune.vcpupin or tune.emulatorpin or any(v is not None for v in limits.values()):
        cputune = _sub(root, "cputune")
        for key, value in limits.items():
            if value is not None:
                _sub(cputune, key, str(value))
        for vcpu, cpus in tune.vcpupin.items():
            _sub(cputune, "vcpupin", vcpu=str(vcpu), cpuset=cpus)
        if tune.emulatorpin:
            _sub(cputune, "emulatorpin", cpuset=tune.emulatorpin)
    if domain.numatune is not None:
        numatune = _sub(root, "numatune")
        _sub(numatune, "memory", mode=domain.numatune.mode, nodeset=domain.numatune.nodeset)


def numa_cells_out(cpu: ET.Element, domain: Domain) -> bool:
    """<numa><cell .../></numa> inside <cpu> for explicit cells; False when there are none."""
    if not domain.numa:
        return False
    numa = _sub(cpu, "numa")
    for index, cell in enumerate(domain.numa):
        _sub(numa, "cell", id=str(index), cpus=cell.cpus, memory=str(cell.memory * 1024),
             unit="KiB")
    return True


def hostdevs_out(devices: ET.Element, domain: Domain) -> None:
    for dev in domain.hostdevs:
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci",
                       managed="yes" if dev.managed else "no")
        source = _sub(hostdev, "source")
        pci_domain, bus, rest = dev.address.split(":")
        slot, function = rest.split(".")
        _sub(source, "address", domain=f"0x{pci_domain}", bus=f"0x{bus}", slot=f"0x{slot}",
             function=f"0x{function}")


# -- in -----------------------------------------------------------------------------------

def cputune_in(reader: XmlReader, cputune: ET.Element | None, spec: dict[str, Any]) -> None:
    """vcpupin and emulatorpin; scheduler shares, quotas, iothread pins are refused."""
    if cputune is None:
        return
    result: dict[str, Any] = {}
    for child in cputune:
        if child.tag == "vcpupin" and child.get("vcpu", "").isdecimal() and child.get("cpuset"):
            result.setdefault("vcpupin", {})[int(child.get("vcpu", "0"))] = child.get("cpuset")
        elif child.tag == "emulatorpin" and child.get("cpuset"):
            result["emulatorpin"] = child.get("cpuset")
        elif child.tag in ("shares", "period", "quota") and _whole(child.text):
            result[child.tag] = int((child.text or "").strip())
        else:
            reader.refuse(reader.where(child), "only shares, period, quota, vcpupin and "
                          "emulatorpin are supported in cputune")
    if result:
        spec["cputune"] = result


def numatune_in(reader: XmlReader, numatune: ET.Element | None, spec: dict[str, Any]) -> None:
    """<memory mode= nodeset=>; automatic placement and per-cell memnode are refused."""
    if numatune is None:
        return
    for child in numatune:
        if child.tag != "memory":
            reader.refuse(reader.where(child), "only <memory mode nodeset> is supported")
            continue
        reader.check(child, attrs=("mode", "nodeset", "placement"))
        mode = child.get("mode", "strict")
        if child.get("placement", "static") != "static" or not child.get("nodeset"):
            reader.refuse(reader.where(child), "automatic (numad) placement is not supported; "
                          "name the nodeset")
        elif mode not in ("strict", "preferred", "interleave"):
            reader.refuse(reader.where(child, "mode"), "use strict, preferred or interleave")
        else:
            spec["numatune"] = {"nodeset": child.get("nodeset"), "mode": mode}


def numa_cells_in(reader: XmlReader, numa: ET.Element, spec: dict[str, Any]) -> None:
    """Guest NUMA cells.  One cell spanning every vCPU and all memory of a domain with
    memory.max is what libvirt needs for memory hot-add, not a topology: not kept."""
    cells = []
    for cell in numa.findall("cell"):
        reader.check(cell, attrs=("id", "cpus", "memory", "unit", "memAccess", "discard"))
        cells.append({"cpus": cell.get("cpus", ""),
                      "memory": size_mib(cell.get("memory"), cell.get("unit"),
                                         where="cpu/numa/cell@memory")})
    memory = spec.get("memory", {})
    if len(cells) == 1 and memory.get("max") is not None \
            and cells[0]["memory"] == memory.get("current"):
        return
    if cells:
        spec["numa"] = cells


def memory_backing_in(reader: XmlReader, backing: ET.Element | None,
                      spec: dict[str, Any]) -> None:
    """Hugepages (one page size) and the shared memfd virtiofs needs; others refused."""
    if backing is None:
        return
    for child in backing:
        if (child.tag, child.get("type"), child.get("mode")) in (
                ("source", "memfd", None), ("access", None, "shared")):
            continue
        if child.tag == "hugepages":
            result: dict[str, Any] = {"hugepages": True}
            pages = child.findall("page")
            if len(pages) > 1 or any(page.get("nodeset") for page in pages):
                reader.refuse(reader.where(child), "one huge page size for all guest memory")
            elif pages:
                kib = size_mib(pages[0].get("size"), pages[0].get("unit"),
                               where="memoryBacking/hugepages/page") * 1024
                result["page_size_kib"] = kib
            spec["memory_backing"] = result
            continue
        reader.refuse(reader.where(child), "only hugepages and a shared memfd are supported "
                      "as memory backing")


def hostdev_in(reader: XmlReader, hostdev: ET.Element, spec: dict[str, Any]) -> None:
    """A PCI <hostdev mode='subsystem' type='pci'>; USB and SCSI host devices are refused."""
    address = hostdev.find("source/address")
    if hostdev.get("type") != "pci" or hostdev.get("mode", "subsystem") != "subsystem" \
            or address is None:
        reader.refuse(reader.where(hostdev), "only PCI host devices (VFIO) are supported")
        return
    try:
        parts = [int(address.get(key, "0"), 0) for key in ("domain", "bus", "slot", "function")]
    except ValueError:
        reader.refuse(reader.where(address), "the PCI address is not readable")
        return
    text = f"{parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}"
    entry: dict[str, Any] = {"address": text}
    if hostdev.get("managed", "no") != "yes":
        entry["managed"] = False
    spec.setdefault("hostdevs", []).append(entry)


def _whole(text: str | None) -> bool:
    return (text or "").strip().lstrip("-").isdecimal()


_KIB_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
              "m": 1024, "mib": 1024, "g": 1024**2, "gib": 1024**2}


def memtune_in(reader: XmlReader, memtune: ET.Element | None, spec: dict[str, Any]) -> None:
    """<memtune> hard_limit, soft_limit, swap_hard_limit (KiB unless a unit says);
    min_guarantee (ESX only) is refused."""
    if memtune is None:
        return
    result: dict[str, int] = {}
    for child in memtune:
        unit = child.get("unit", "KiB").lower()
        if child.tag in ("hard_limit", "soft_limit", "swap_hard_limit") \
                and _whole(child.text) and unit in _KIB_UNITS:
            result[child.tag] = int(int((child.text or "").strip()) * _KIB_UNITS[unit])
        else:
            reader.refuse(reader.where(child), "only hard_limit, soft_limit and "
                          "swap_hard_limit are supported in memtune")
    if result:
        spec["memtune"] = result


BLKIO_DEVICE_KEYS = ("weight", "read_bytes_sec", "write_bytes_sec", "read_iops_sec",
                     "write_iops_sec")


def blkiotune_in(reader: XmlReader, blkiotune: ET.Element | None,
                 spec: dict[str, Any]) -> None:
    """<blkiotune>: <weight>, and <device> (<path>, <weight>, <read_bytes_sec> ...)."""
    if blkiotune is None:
        return
    result: dict[str, Any] = {}
    for child in blkiotune:
        if child.tag == "weight" and _whole(child.text):
            result["weight"] = int((child.text or "").strip())
        elif child.tag == "device":
            device: dict[str, Any] = {}
            for item in child:
                if item.tag == "path" and (item.text or "").strip():
                    device["path"] = (item.text or "").strip()
                elif item.tag in BLKIO_DEVICE_KEYS and _whole(item.text):
                    device[item.tag] = int((item.text or "").strip())
                else:
                    reader.refuse(reader.where(item), "a blkiotune <device> has <path>, "
                                  "<weight>, <read_bytes_sec>, <write_bytes_sec>, "
                                  "<read_iops_sec> and <write_iops_sec>")
            if "path" not in device:
                reader.refuse(reader.where(child), "a blkiotune <device> needs its <path>")
            else:
                result.setdefault("devices", []).append(device)
        else:
            reader.refuse(reader.where(child), "blkiotune has <weight> and <device>")
    if result:
        spec["blkiotune"] = result


def iotune_out(disk_element: ET.Element, iotune: Any) -> None:
    """A disk's <iotune> (libvirt's element names are the spec's keys)."""
    if iotune is None or iotune.empty():
        return
    element = _sub(disk_element, "iotune")
    for key, value in iotune.model_dump().items():
        if value:
            _sub(element, key, str(value))


def iotune_in(reader: XmlReader, iotune: ET.Element | None, disk: dict[str, Any]) -> None:
    if iotune is None:
        return
    result: dict[str, int] = {}
    for child in iotune:
        if child.tag in IOTUNE_KEYS and _whole(child.text):
            result[child.tag] = int((child.text or "").strip())
        else:
            reader.refuse(reader.where(child), f"only {', '.join(IOTUNE_KEYS)} are "
                          "supported in iotune")
    if result:
        disk["iotune"] = result
