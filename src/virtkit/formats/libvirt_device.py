"""One libvirt device element (``virsh attach-device`` FILE) -> what virtkit attaches.

``<disk>`` and ``<interface>`` are read by the domain importer itself (the snippet
is placed in a minimal ``<domain>``), so a device means the same here as in a
full domain XML and anything virtkit cannot honour is refused the same way.
``<memory model='dimm'>`` gives a size to hot-add; ``<hostdev>`` is passed on as
XML to the PCI passthrough code.  Pure: no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import parse_document, size_mib
from virtkit.formats.libvirt_xml import domain_from_xml

KINDS = ("disk", "interface", "memory", "hostdev")


@dataclass(frozen=True)
class DeviceXml:
    """``kind`` and its spec: a Disk or Nic dict, ``{"size_mib": n}``, or ``{"xml"}``."""

    kind: str
    spec: dict[str, Any]


def device_from_xml(text: str) -> DeviceXml:
    """Read one device element; refuse other elements with the list of those we take."""
    element = parse_document(text, KINDS, command="virtkit attach-device")
    if element.tag == "hostdev":
        return DeviceXml("hostdev", {"xml": text})
    if element.tag == "memory":
        return DeviceXml("memory", {"size_mib": _dimm_mib(element)})
    wrapped = ("<domain type='kvm'><name>device</name><memory unit='MiB'>64</memory>"
               f"<devices>{ET.tostring(element, encoding='unicode')}</devices></domain>")
    spec, _warnings = domain_from_xml(wrapped)
    key = "disks" if element.tag == "disk" else "nics"
    items = spec.get(key) or []
    if len(items) != 1:
        raise InvalidSpec(f"the <{element.tag}> element describes no device virtkit can "
                          "attach", field="xml")
    return DeviceXml(element.tag, items[0])


def _dimm_mib(element: ET.Element) -> int:
    model = element.get("model")
    if model != "dimm":
        raise InvalidSpec(f"memory model {model!r} is not supported; use model='dimm'",
                          field="xml")
    size = element.find("target/size")
    if size is None:
        raise InvalidSpec("<memory model='dimm'> needs <target><size unit='MiB'>...</size>",
                          field="xml")
    return size_mib(size.text, size.get("unit"), where="memory/target/size")
