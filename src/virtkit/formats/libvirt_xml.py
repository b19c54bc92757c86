"""libvirt domain XML in and out: ``virsh dumpxml`` / ``virsh define`` interop.

Pure functions (no I/O): :func:`domain_to_xml` writes a :class:`Domain` as the
XML virt-install and virt-manager write for a KVM guest; :func:`domain_from_xml`
reads such XML (inactive or live ``dumpxml`` output) into a spec dict that
:func:`virtkit.model.load.load_domain` accepts, plus warnings.

Mapping choices
---------------
- ``<domain type='kvm'>`` is written for accelerator ``auto`` and ``kvm`` (libvirt
  users expect kvm), ``type='qemu'`` for ``tcg``.  Reading, ``type='kvm'`` becomes
  ``auto``: virt-install writes kvm whenever /dev/kvm exists, even where KVM cannot
  run a stock guest (see ``virtkit host check``), and ``auto`` uses KVM whenever it
  really works.  A strict ``accelerator: kvm`` survives a round trip through the
  virtkit metadata element (below).
- CPU: ``host`` <-> ``host-passthrough``, ``max`` <-> ``maximum``, ``auto`` <->
  ``host-model`` (host under KVM, max under TCG: the closest libvirt mode), any
  other model <-> ``mode='custom'``.  Features ``require``/``force`` -> ``+f``,
  ``disable`` -> ``-f``.
- Machine types lose their version (``pc-q35-7.2`` -> ``q35``): virtkit pins the
  versioned type of its own QEMU.  UEFI is ``<os firmware='efi'>`` or a pflash
  ``<loader>``; loader and NVRAM paths are not kept (virtkit picks its OVMF and
  keeps a NVRAM per domain).
- Memory units follow libvirt (KiB by default; ``KB``/``MB``... are powers of 1000,
  ``K``/``KiB``/``M``/``MiB``... powers of 1024); sizes round up to whole MiB, as
  libvirt aligns them for QEMU.
- A disk's bus comes from ``target@bus``, else from its name as libvirt does
  (``vd*`` virtio, ``sd*`` scsi, ``hd*`` ide).  A target name equal to the one
  virtkit would give anyway is not stored.
- ``<interface type='user'>`` becomes virtkit's restricted user-mode NIC, which
  reaches no network at all; a warning says so (even without force).
- Settings libvirt XML cannot carry (a strict ``kvm`` accelerator, autostart, a
  serial port without a log) go into ``<metadata>`` as ``<virtkit:domain
  xmlns:virtkit="urn:virtkit:domain:1">``, written only when they differ from the
  default.

What is read silently, and what is refused
------------------------------------------
Every element and attribute is either understood, accepted silently, or refused.
Accepted silently, because virtkit provides the same thing itself or because it
only describes the host side: ``emulator``, ``metadata`` of other programs,
``seclabel``, ``resource``, ``pm``, ``iothreads``, features ``acpi`` ``apic`` ``pae``
``hap`` ``vmcoreinfo`` ``vmport state='off'`` ``smm state='on'``, clock
``offset='utc'`` with ``rtc``/``pit``/``hpet``/``kvmclock``/``tsc`` timers,
controllers of type pci, usb, sata, ide, virtio-serial and virtio-scsi, input
tablet/mouse/keyboard, video models other than vga, virtio, qxl, bochs and cirrus
(which are kept; the others become vga, with a warning),
``panic``, ``audio`` backends, ``memballoon`` models and stats, ``address``,
``alias`` and live-state details (``target dev`` of a NIC, ``source path`` of a
pty, ``backingStore``), disk tuning that changes nothing the guest sees
(``discard``, ``detect_zeroes``, ``iothread``, ``queues``), and spice plumbing
(``spicevmc`` channels and USB redirections) which only works with spice
graphics -- spice graphics itself is refused.

Sound cards ich9, ich6, ac97 and es1370 are kept (other models are refused). As in
libvirt, a domain without ``<features><acpi/>`` has no ACPI -- on machine ``pc``; a q35
machine keeps ACPI (QEMU builds its tables even with ``acpi=off``).

Refused: anything else, e.g. host devices, shared folders, TPM,
spice or more than one display, Hyper-V enlightenments, ``clock
offset='localtime'``, CPU pinning and NUMA tuning, hugepages, network disks other
than rbd and nfs (formats/libvirt_netdisk.py),
macvtap NICs, NIC models other than virtio/e1000/rtl8139, secure boot, a
balloon target (``currentMemory``) below ``memory``.  Without ``force``
:class:`InvalidSpec` lists every refused item by its location
(``devices/hostdev``, ``devices/disk[2]/source@protocol='iscsi'``); with ``force``
they are dropped (a refused attribute alone, or the whole device that cannot work
without it) and each drop is a warning.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtkit.formats.libvirt_common import (
    TARGET_PREFIX,
    VIRTKIT_NS,
    disk_name,
    libvirt_text,
    parse_document,
)
from virtkit.formats.libvirt_domain_in import DomainReader
from virtkit.formats.libvirt_metadata import element_out, namespace_prefixes
from virtkit.formats.libvirt_netdisk import is_network_disk, network_disk_out
from virtkit.formats.libvirt_tuning import (
    cputune_out,
    hostdevs_out,
    iotune_out,
    memory_backing_out,
    numa_cells_out,
)
from virtkit.model.domain import (
    Accelerator,
    Disk,
    Domain,
    Firmware,
    Machine,
)

_CPU_MODES = {"host": "host-passthrough", "max": "maximum", "auto": "host-model"}


# -- out ------------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _targets(domain: Domain) -> list[str]:
    """Guest names of the disks (vda, sda, hda ...), as virtkit assigns them."""
    counters: dict[str, int] = {}
    names = []
    for disk in domain.disks:
        prefix = TARGET_PREFIX[disk.effective_bus]
        number = counters.get(prefix, 0)
        counters[prefix] = number + 1
        names.append(disk.target or disk_name(prefix, number))
    return names


def domain_to_xml(domain: Domain) -> str:
    """The libvirt domain XML of ``domain``, pretty-printed with 2-space indentation."""
    root = ET.Element("domain", type="qemu" if domain.accelerator is Accelerator.TCG else "kvm")
    _sub(root, "name", domain.name)
    _sub(root, "uuid", domain.uuid)
    if domain.title is not None:
        _sub(root, "title", domain.title)
    if domain.description is not None:
        _sub(root, "description", domain.description)
    _metadata_out(root, domain)
    kib = domain.memory.current * 1024
    if domain.memory.max is not None:
        _sub(root, "maxMemory", str(domain.memory.max * 1024), slots="16", unit="KiB")
    _sub(root, "memory", str(kib), unit="KiB")
    _sub(root, "currentMemory", str(kib), unit="KiB")
    memory_backing_out(root, domain)
    vcpus = domain.vcpus
    vcpu = _sub(root, "vcpu", str(vcpus.maximum), placement="static")
    if vcpus.cpuset is not None:
        vcpu.set("cpuset", vcpus.cpuset)
    if vcpus.current != vcpus.maximum:
        vcpu.set("current", str(vcpus.current))
    cputune_out(root, domain)
    _os_out(root, domain)
    features = _sub(root, "features")
    if domain.acpi:
        _sub(features, "acpi")
    if domain.machine is not Machine.MICROVM:
        _sub(features, "apic")
        _sub(features, "vmport", state="off")
    _cpu_out(root, domain)
    clock = _sub(root, "clock", offset="utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(root, "on_poweroff", domain.on_poweroff.value)
    _sub(root, "on_reboot", domain.on_reboot.value)
    _sub(root, "on_crash", domain.on_crash.value)
    _devices_out(_sub(root, "devices"), domain)
    ET.indent(root, space="  ")
    # ElementTree writes empty elements as "<acpi />"; libvirt and virt-install as "<acpi/>".
    # Text and attribute values have their '>' escaped, so only tag ends match.
    return libvirt_text(root)


def _metadata_out(root: ET.Element, domain: Domain) -> None:
    extra: list[tuple[str, dict[str, str], str | None]] = []
    if domain.accelerator is Accelerator.KVM:
        extra.append(("accelerator", {}, "kvm"))
    for flag in ("autostart", "ha", "transient"):
        if getattr(domain, flag):
            extra.append((flag, {}, "yes"))
    if domain.anti_affinity:
        extra.append(("anti_affinity", {}, domain.anti_affinity))
    for port, serial in enumerate(domain.serials):
        if not serial.log:
            extra.append(("serial", {"port": str(port), "log": "no"}, None))
    if not extra and not domain.metadata:
        return
    metadata = _sub(root, "metadata")
    for uri, element in domain.metadata.items():  # other programs' (libosinfo, virsh's)
        metadata.append(element_out(uri, element))
    if not extra:
        return
    # Prefixed names written as they are, so that the namespace is declared here, where
    # libvirt keeps it, and not on <domain>.
    ours = _sub(metadata, "virtkit:domain", **{"xmlns:virtkit": VIRTKIT_NS})
    for tag, attrs, text in extra:
        _sub(ours, f"virtkit:{tag}", text, **attrs)


def _os_out(root: ET.Element, domain: Domain) -> None:
    os_el = _sub(root, "os")
    if domain.firmware is Firmware.UEFI:
        os_el.set("firmware", "efi")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=domain.machine.value)
    if domain.firmware is Firmware.UEFI:
        _sub(os_el, "loader", readonly="yes", type="pflash")
    boot = domain.boot
    if boot.kernel:
        _sub(os_el, "kernel", boot.kernel)
        if boot.initrd:
            _sub(os_el, "initrd", boot.initrd)
        if boot.cmdline is not None:
            _sub(os_el, "cmdline", boot.cmdline)
    for device in boot.order:
        _sub(os_el, "boot", dev=device.value)
    if boot.menu:
        _sub(os_el, "bootmenu", enable="yes")


def _cpu_out(root: ET.Element, domain: Domain) -> None:
    model = domain.cpu.model
    cpu = _sub(root, "cpu")
    if model in _CPU_MODES:
        cpu.set("mode", _CPU_MODES[model])
    else:
        cpu.attrib.update(mode="custom", match="exact", check="none")
        _sub(cpu, "model", model, fallback="forbid")
    vcpus = domain.vcpus
    if any(part is not None for part in (vcpus.sockets, vcpus.cores, vcpus.threads)):
        cores, threads = vcpus.cores or 1, vcpus.threads or 1
        sockets = vcpus.sockets or vcpus.maximum // (cores * threads)
        _sub(cpu, "topology", sockets=str(sockets), dies="1", cores=str(cores),
             threads=str(threads))
    for feature in domain.cpu.features:
        _sub(cpu, "feature", policy="require" if feature[0] == "+" else "disable",
             name=feature[1:])
    if not numa_cells_out(cpu, domain) and domain.memory.max is not None:
        numa = _sub(cpu, "numa")
        last = vcpus.maximum - 1
        _sub(numa, "cell", id="0", cpus=f"0-{last}" if last else "0",
             memory=str(domain.memory.current * 1024), unit="KiB")


def _devices_out(devices: ET.Element, domain: Domain) -> None:
    for disk, target in zip(domain.disks, _targets(domain), strict=True):
        _disk_out(devices, disk, target)
    graphics = domain.graphics.type == "vnc"
    _sub(devices, "controller", type="usb", model="qemu-xhci" if graphics else "none")
    for nic in domain.nics:
        iface = _sub(devices, "interface", type=nic.type)
        if nic.mac:
            _sub(iface, "mac", address=nic.mac)
        if nic.type == "network" and nic.network:
            _sub(iface, "source", network=nic.network)
        elif nic.type == "bridge" and nic.bridge:
            _sub(iface, "source", bridge=nic.bridge)
        _sub(iface, "model", type=nic.model)
        if nic.link == "down":
            _sub(iface, "link", state="down")
    for port, port_spec in enumerate(domain.serials):
        serial = _sub(devices, "serial", type="pty")
        if port_spec.log_path:
            _sub(serial, "log", file=port_spec.log_path, append="on")
        serial_target = _sub(serial, "target", type="isa-serial", port=str(port))
        _sub(serial_target, "model", name="isa-serial")
    for port, parallel in enumerate(domain.parallels):
        element = _sub(devices, "parallel", type="file")
        _sub(element, "source", path=parallel.path)
        _sub(element, "target", port=str(port))
    if domain.serials:
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial", port="0")
    if domain.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "source", mode="bind")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    for named in domain.channels:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "source", mode="bind", **({"path": named.path} if named.path else {}))
        _sub(channel, "target", type="virtio", name=named.name)
    if graphics:
        _sub(devices, "input", type="tablet", bus="usb")
        _graphics_out(devices, domain)
        video = _sub(devices, "video")
        vram = {"vram": "16384"} if domain.video in ("vga", "cirrus", "qxl") else {}
        _sub(video, "model", type=domain.video, **vram, heads="1", primary="yes")
    for card in domain.sound:
        _sub(devices, "sound", model="ich6" if card.model == "hda" else card.model)
    for fs in domain.filesystems:
        element = _sub(devices, "filesystem", type="mount", accessmode=fs.accessmode)
        if fs.driver != "auto":  # auto is resolved when the domain is defined
            _sub(element, "driver", type="path" if fs.driver == "9p" else "virtiofs")
        _sub(element, "source", dir=fs.source)
        _sub(element, "target", dir=fs.target)
        if fs.readonly:
            _sub(element, "readonly")
    if domain.watchdog is not None:
        _sub(devices, "watchdog", model=domain.watchdog.model, action=domain.watchdog.action)
    hostdevs_out(devices, domain)
    _sub(devices, "memballoon", model="virtio" if domain.balloon else "none")
    if domain.rng is not None:
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", domain.rng.backend, model="random")
    if domain.machine is not Machine.MICROVM:
        _sub(devices, "panic", model="isa")


def _disk_out(devices: ET.Element, disk: Disk, target: str) -> None:
    if is_network_disk(disk.path):
        kind = "network"
    elif disk.volume is not None:
        kind = "volume"
    elif disk.path is not None and disk.path.startswith("/dev/"):
        kind = "block"
    else:
        kind = "file"
    element = _sub(devices, "disk", type=kind, device=disk.device.value)
    driver = _sub(element, "driver", name="qemu")
    if disk.format:
        driver.set("type", disk.format)
    driver.attrib.update(cache=disk.cache.value, io=disk.aio.value)
    if not disk.readonly:
        driver.set("discard", "unmap")
    if kind == "network" and disk.path is not None:
        network_disk_out(element, disk.path)
    elif kind == "volume":
        _sub(element, "source", pool=disk.pool or "", volume=disk.volume or "")
    elif disk.path is not None:
        _sub(element, "source", **{"dev" if kind == "block" else "file": disk.path})
    _sub(element, "target", dev=target, bus=disk.effective_bus.value)
    if disk.readonly:
        _sub(element, "readonly")
    if disk.serial:
        _sub(element, "serial", disk.serial)
    iotune_out(element, disk.iotune)


def _graphics_out(devices: ET.Element, domain: Domain) -> None:
    spec = domain.graphics
    graphics = _sub(devices, "graphics", type="vnc")
    if spec.port == "auto":
        graphics.attrib.update(port="-1", autoport="yes")
    else:
        graphics.attrib.update(port=str(spec.port), autoport="no")
    graphics.set("listen", spec.listen)
    if spec.password:
        graphics.set("passwd", spec.password)
    if spec.keymap:
        graphics.set("keymap", spec.keymap)
    _sub(graphics, "listen", type="address", address=spec.listen)


# -- in -------------------------------------------------------------------------------------

def domain_from_xml(text: str, *, force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Read libvirt domain XML into a spec dict and warnings; see the module docstring."""
    root = parse_document(text, "domain", command="virtkit define")
    reader = DomainReader(root, force=force)
    reader.prefixes = namespace_prefixes(text)  # other programs' metadata keeps its prefix
    return reader.read()
