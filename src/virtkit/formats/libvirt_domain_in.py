"""Reading libvirt domain XML into a virtkit spec dict (see :mod:`.libvirt_xml` for the rules).

One method per part of the document; each either maps what it understands
into the spec, accepts it silently, or refuses it through :class:`XmlReader`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtkit.formats.libvirt_common import (
    TARGET_PREFIX,
    VIRTKIT_NS,
    XmlReader,
    disk_name,
    size_mib,
    whole_number,
)
from virtkit.formats.libvirt_metadata import metadata_in
from virtkit.formats.libvirt_netdisk import network_source_in
from virtkit.formats.libvirt_spice import spice_graphics, spice_plumbing
from virtkit.formats.libvirt_tuning import (
    blkiotune_in,
    cputune_in,
    hostdev_in,
    iotune_in,
    memory_backing_in,
    memtune_in,
    numa_cells_in,
    numatune_in,
)
from virtkit.model.domain import AioMode, CacheMode, DiskBus

REASONS = {
    # top level
    "vcpus": "per-vCPU hotplug settings are not supported",
    "sysinfo": "custom SMBIOS data is not supported",
    "launchSecurity": "confidential guests such as AMD SEV are not supported",
    "qemu:commandline": "raw QEMU arguments are not supported",
    "genid": "the VM generation ID device is not supported",
    # features
    "hyperv": "Hyper-V enlightenments for Windows guests are not supported",
    "kvm": "KVM feature tweaks such as a hidden KVM signature are not supported",
    "pvspinlock": "paravirtual spinlock settings are not supported",
    "pmu": "PMU settings are not supported",
    # devices
    "tpm": "TPM devices are not supported",
    "smartcard": "smartcard devices are not supported",
    "redirdev": "USB redirection is not supported",
    "hub": "USB hubs are not supported",
    "shmem": "shared memory devices are not supported",
    "memory": "memory modules such as DIMMs and virtio-mem are not supported",
    "iommu": "a virtual IOMMU is not supported",
    "vsock": "vsock devices are not supported",
    "crypto": "crypto devices are not supported",
    "boot": "virtkit boots the first disk, cdrom or NIC of each kind; move this device first",
    "shareable": "shared disks are not supported: a writable image is attached once",
    "encryption": "encrypted images are not supported",
    "filterref": "network filters are not supported",
    "bandwidth": "NIC bandwidth limits are not supported",
}

TOP = ("name", "uuid", "title", "description", "metadata", "memory", "currentMemory",
       "maxMemory", "vcpu", "os", "cpu", "features", "clock", "on_poweroff", "on_reboot",
       "on_crash", "devices", "memoryBacking", "cputune", "numatune", "memtune",
       "blkiotune")
TOP_SILENT = ("pm", "seclabel", "resource", "iothreads")
FEATURES_SILENT = ("acpi", "apic", "pae", "hap", "vmcoreinfo", "ioapic")
TIMERS = ("rtc", "pit", "hpet", "kvmclock", "tsc")
FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhdx", "qed")
LIFECYCLE = {"on_poweroff": ("destroy", "restart"), "on_reboot": ("restart", "destroy"),
             "on_crash": ("destroy", "restart", "preserve")}
AGENT = "org.qemu.guest_agent.0"
KEY_ORDER = ("name", "uuid", "title", "description", "metadata", "memory", "vcpus", "cpu",
             "machine", "firmware", "accelerator", "boot", "disks", "nics", "graphics", "serials",
             "guest_agent", "channels", "parallels", "watchdog", "video", "sound",
             "filesystems", "rng", "balloon", "on_poweroff",
             "on_reboot", "on_crash",
             "autostart", "ha", "transient", "anti_affinity", "acpi", "cputune", "memtune",
             "blkiotune", "numa", "numatune",
             "memory_backing", "hostdevs")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "inject-nmi")
RNG_SOURCES = ("/dev/urandom", "/dev/random", "/dev/hwrng")
SILENT_CONTROLLERS = ("pci", "usb", "sata", "ide", "virtio-serial")


def _machine(name: str) -> str | None:
    if name == "q35" or name.startswith("pc-q35-"):
        return "q35"
    if name == "pc" or name.startswith("pc-i440fx-") or name.startswith("pc-0.") \
            or name.startswith("pc-1."):
        return "pc"
    return "microvm" if name == "microvm" else None


class DomainReader(XmlReader):
    """Reads one ``<domain>`` document: ``DomainReader(root, force=...).read()``."""

    def __init__(self, root: ET.Element, *, force: bool) -> None:
        super().__init__(root, force=force, reasons=REASONS)
        self.spec: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.boot_orders: list[tuple[int, str, ET.Element, bool]] = []
        self.prefixes: dict[str, str] = {}  # namespace URI -> the document's prefix

    def read(self) -> tuple[dict[str, Any], list[str]]:
        root, spec = self.root, self.spec
        self.check(root, attrs=("type", "id"), children=TOP, silent=TOP_SILENT)
        for tag in ("name", "uuid", "title", "description"):
            element = root.find(tag)
            if element is not None:
                spec[tag] = element.text or ""
        self._metadata(root.find(f"metadata/{{{VIRTKIT_NS}}}domain"))
        if foreign := metadata_in(root.find("metadata"), self.prefixes):
            spec["metadata"] = foreign
        self._accelerator(root)
        self._memory(root)
        self._vcpus(root.find("vcpu"))
        self._cpu(root.find("cpu"))
        self._os(root.find("os"))
        self._features(root.find("features"))
        self._clock(root.find("clock"))
        self._devices(root.find("devices"))
        memory_backing_in(self, root.find("memoryBacking"), spec)
        cputune_in(self, root.find("cputune"), spec)
        memtune_in(self, root.find("memtune"), spec)
        blkiotune_in(self, root.find("blkiotune"), spec)
        numatune_in(self, root.find("numatune"), spec)
        for tag, allowed in LIFECYCLE.items():
            element = root.find(tag)
            if element is None:
                continue
            value = (element.text or "").strip()
            if value in allowed:
                spec[tag] = value
            else:
                self.refuse(self.where(element), f"'{value}' is not supported; use "
                            + ", ".join(allowed[:-1]) + " or " + allowed[-1])
        for flag in ("autostart", "ha", "transient"):
            if self.meta.get(flag):
                spec[flag] = True
        if self.meta.get("anti_affinity"):
            spec["anti_affinity"] = self.meta["anti_affinity"]
        if spec.get("acpi") is False and spec.get("machine", "q35") != "pc":
            del spec["acpi"]  # QEMU's q35 keeps its ACPI tables even with acpi=off
        warnings = self.finish("domain")
        return {key: spec[key] for key in KEY_ORDER if key in spec}, warnings

    # -- top level ----------------------------------------------------------------------

    def _metadata(self, ours: ET.Element | None) -> None:
        if ours is None:
            return
        for element in ours:
            tag = element.tag.rpartition("}")[2]
            if tag == "accelerator":
                self.meta["accelerator"] = (element.text or "").strip()
            elif tag in ("autostart", "ha", "transient"):
                self.meta[tag] = (element.text or "").strip() == "yes"
            elif tag == "anti_affinity":
                self.meta[tag] = (element.text or "").strip()
            elif tag == "serial" and element.get("log") == "no":
                self.meta.setdefault("nolog", set()).add(element.get("port", ""))

    def _accelerator(self, root: ET.Element) -> None:
        kind = root.get("type", "kvm")
        if kind == "qemu":
            self.spec["accelerator"] = "tcg"
        elif kind == "kvm":
            strict = self.meta.get("accelerator") == "kvm"
            self.spec["accelerator"] = "kvm" if strict else "auto"
        else:
            self.refuse(self.where(root, "type"), "virtkit runs QEMU guests: type kvm or qemu")

    def _memory(self, root: ET.Element) -> None:
        memory = root.find("memory")
        if memory is None:
            return
        self.check(memory, attrs=("unit",))
        current = size_mib(memory.text, memory.get("unit"), where="memory")
        spec: dict[str, Any] = {"current": current}
        balloon = root.find("currentMemory")
        if balloon is not None:
            self.check(balloon, attrs=("unit",))
            target = size_mib(balloon.text, balloon.get("unit"), where="currentMemory")
            if target < current:
                self.refuse(self.where(balloon), "a balloon target below <memory> is not "
                            "supported; the guest boots with all of <memory>")
        maximum = root.find("maxMemory")
        if maximum is not None:
            self.check(maximum, attrs=("unit", "slots"))
            spec["max"] = size_mib(maximum.text, maximum.get("unit"), where="maxMemory")
        self.spec["memory"] = spec

    def _vcpus(self, vcpu: ET.Element | None) -> None:
        if vcpu is None:
            self.spec["vcpus"] = {"current": 1}
            return
        self.check(vcpu, attrs=("placement", "current", "cpuset"))
        if vcpu.get("placement", "static") != "static":
            self.refuse(self.where(vcpu, "placement"), "automatic (numad) placement is not "
                        "supported")
        maximum = whole_number((vcpu.text or "").strip() or "1", where=self.where(vcpu))
        current = vcpu.get("current")
        vcpus: dict[str, Any] = {"current": maximum}
        if current is not None and (count := whole_number(
                current, where=self.where(vcpu, "current"))) != maximum:
            vcpus = {"current": count, "max": maximum}
        if vcpu.get("cpuset"):
            vcpus["cpuset"] = vcpu.get("cpuset")
        self.spec["vcpus"] = vcpus

    def _cpu(self, cpu: ET.Element | None) -> None:
        if cpu is None:
            return
        self.check(cpu, attrs=("mode", "match", "check", "migratable"),
                   children=("model", "feature", "topology", "numa"), silent=("vendor",))
        model_el = cpu.find("model")
        mode = cpu.get("mode", "custom")
        modes = {"host-passthrough": "host", "maximum": "max", "host-model": "auto"}
        if mode in modes:
            model = modes[mode]
        elif mode == "custom":
            model = (model_el.text or "").strip() if model_el is not None else ""
            model = model or "auto"
        else:
            self.refuse(self.where(cpu, "mode"))
            model = "auto"
        if model_el is not None:
            self.check(model_el, attrs=("fallback",))
        features = []
        for feature in cpu.findall("feature"):
            self.check(feature, attrs=("policy", "name"))
            policy = feature.get("policy", "require")
            sign = {"require": "+", "force": "+", "disable": "-"}.get(policy)
            if sign is None:
                self.refuse(self.where(feature, "policy"), "use require or disable")
            else:
                features.append(sign + feature.get("name", ""))
        result: dict[str, Any] = {"model": model}
        if features:
            result["features"] = features
        self.spec["cpu"] = result
        self._topology(cpu.find("topology"))
        numa = cpu.find("numa")
        if numa is not None:
            numa_cells_in(self, numa, self.spec)

    def _topology(self, topology: ET.Element | None) -> None:
        if topology is None:
            return
        self.check(topology, attrs=("sockets", "dies", "clusters", "cores", "threads"))
        for attr in ("dies", "clusters"):
            if topology.get(attr, "1") != "1":
                self.refuse(self.where(topology, attr), "only one die/cluster per socket")
        vcpus = self.spec.setdefault("vcpus", {"current": 1})
        for attr in ("sockets", "cores", "threads"):
            if topology.get(attr, "").isdecimal():
                vcpus[attr] = int(topology.get(attr, "1"))

    def _os(self, os_el: ET.Element | None) -> None:
        if os_el is None:
            return
        self.check(os_el, attrs=("firmware",), silent=("nvram",), children=(
            "type", "loader", "boot", "bootmenu", "kernel", "initrd", "cmdline", "firmware"))
        spec = self.spec
        os_type = os_el.find("type")
        if os_type is not None:
            self._os_type(os_type)
        firmware = os_el.get("firmware")
        if firmware == "efi":
            spec["firmware"] = "uefi"
        elif firmware not in (None, "bios"):
            self.refuse(self.where(os_el, "firmware"))
        self._loader(os_el.find("loader"))
        for feature in os_el.findall("firmware/feature"):
            if feature.get("name") == "secure-boot" and feature.get("enabled") == "yes":
                self.refuse(self.where(feature), "secure boot is not supported")
        self._os_boot(os_el)

    def _os_boot(self, os_el: ET.Element) -> None:
        boot: dict[str, Any] = {}
        order = []
        for element in os_el.findall("boot"):
            self.check(element, attrs=("dev",))
            dev = element.get("dev", "")
            if dev in ("hd", "cdrom", "network"):
                order.append(dev)
            else:
                self.refuse(self.where(element, "dev"), "boot from hd, cdrom or network")
        if order:
            boot["order"] = order
        menu = os_el.find("bootmenu")
        if menu is not None:
            self.check(menu, attrs=("enable", "timeout"))
            if menu.get("enable") == "yes":
                boot["menu"] = True
        for tag in ("kernel", "initrd", "cmdline"):
            part = os_el.find(tag)
            if part is not None and (part.text or tag == "cmdline"):
                boot[tag] = part.text or ""
        if boot:
            self.spec["boot"] = boot

    def _os_type(self, os_type: ET.Element) -> None:
        self.check(os_type, attrs=("arch", "machine"))
        if (os_type.text or "hvm").strip() != "hvm":
            self.refuse(self.where(os_type), "virtkit runs full (hvm) guests only")
        if os_type.get("arch", "x86_64") != "x86_64":
            self.refuse(self.where(os_type, "arch"), "virtkit runs x86_64 guests")
        name = os_type.get("machine")
        if name is not None:
            machine = _machine(name)
            if machine is None:
                self.refuse(self.where(os_type, "machine"), "use q35, pc or microvm")
            else:
                self.spec["machine"] = machine

    def _loader(self, loader: ET.Element | None) -> None:
        if loader is None:
            return
        self.check(loader, attrs=("readonly", "type", "secure", "format", "stateless"))
        if loader.get("secure") == "yes":
            self.refuse(self.where(loader, "secure"), "secure boot is not supported")
        path = (loader.text or "").lower()
        if loader.get("type") == "pflash" or "ovmf" in path or "edk2" in path:
            self.spec["firmware"] = "uefi"
        elif path:
            self.refuse(self.where(loader), "custom firmware ROMs are not supported")

    def _features(self, features: ET.Element | None) -> None:
        """As libvirt: without ``<acpi/>`` the guest has no ACPI."""
        if features is None or features.find("acpi") is None:
            self.spec["acpi"] = False
        if features is None:
            return
        for feature in features:
            tag = feature.tag
            if tag in FEATURES_SILENT:
                continue
            if tag == "vmport" and feature.get("state") == "off":
                continue
            if tag == "smm" and feature.get("state", "on") == "on" and len(feature) == 0:
                continue
            self.refuse_element(feature)

    def _clock(self, clock: ET.Element | None) -> None:
        if clock is None:
            return
        self.check(clock, attrs=("offset",), children=("timer",))
        if clock.get("offset", "utc") != "utc":
            self.refuse(self.where(clock, "offset"), "the guest clock runs in UTC only")
        for timer in clock.findall("timer"):
            if timer.get("name") not in TIMERS:
                self.refuse(self.where(timer, "name"), f"the {timer.get('name')} timer is not "
                            "supported")

    # -- devices ------------------------------------------------------------------------

    def _devices(self, devices: ET.Element | None) -> None:
        spec = self.spec
        spec.update(disks=[], nics=[], guest_agent=False, rng=None, balloon=True)
        serials: list[str | None] = []  # each serial port's log file, if it names one
        consoles = 0
        if devices is not None:
            handlers = {"disk": self._disk, "interface": self._interface,
                        "channel": self._channel, "graphics": self._graphics,
                        "watchdog": self._watchdog, "rng": self._rng,
                        "memballoon": self._memballoon, "controller": self._controller,
                        "input": self._input, "redirdev": self._redirdev,
                        "video": self._video, "panic": self._panic,
                        "sound": self._sound, "filesystem": self._filesystem,
                        "parallel": self._parallel,
                        "hostdev": self._hostdev}
            for device in devices:
                tag = device.tag
                if tag in handlers:
                    handlers[tag](device)
                elif tag == "serial":
                    serials += self._serial(device)
                elif tag == "console":
                    consoles += self._console(device)
                elif tag == "audio" and device.get("type") == "spice":
                    spice_plumbing(self, device)
                elif tag not in ("emulator", "audio"):
                    self.refuse_element(device)
        ports = serials or [None] * min(consoles, 1)
        nolog = self.meta.get("nolog", set())
        spec["serials"] = [{"log": False} if str(i) in nolog else
                           ({"log_path": path} if path else {}) for i, path in enumerate(ports)]
        self._disk_defaults()
        self._boot_order()

    def _hostdev(self, hostdev: ET.Element) -> None:
        hostdev_in(self, hostdev, self.spec)

    def _disk(self, disk: ET.Element) -> None:
        kind, device = disk.get("type", "file"), disk.get("device", "disk")
        self.check(disk, attrs=("type", "device", "snapshot"),
                   children=("driver", "source", "target", "readonly", "serial", "boot",
                             "iotune", *(("auth",) if kind == "network" else ())),
                   silent=("backingStore",))
        source = disk.find("source")
        if kind not in ("file", "block", "volume", "network"):
            self.refuse(self.where(disk, "type"), "disks are files, block devices, pool "
                        "volumes or rbd/nfs network disks")
            return
        if device not in ("disk", "cdrom"):
            self.refuse(self.where(disk, "device"), "floppies and LUN passthrough are not "
                        "supported")
            return
        spec: dict[str, Any] = {"device": device} if device == "cdrom" else {}
        if not self._disk_driver(disk.find("driver"), spec):
            return
        if kind == "network":
            if not network_source_in(self, disk, source, spec):
                return
        elif source is not None:
            self._disk_source(source, kind, spec)
        target = disk.find("target")
        if target is not None:
            self._disk_target(target, spec)
        if disk.find("readonly") is not None and device == "disk":
            spec["readonly"] = True
        serial = disk.find("serial")
        if serial is not None and serial.text:
            spec["serial"] = serial.text.strip()
        self._boot(disk, "cdrom" if device == "cdrom" else "hd", spec)
        iotune_in(self, disk.find("iotune"), spec)
        self.spec["disks"].append(spec)

    def _disk_driver(self, driver: ET.Element | None, spec: dict[str, Any]) -> bool:
        if driver is None:
            return True
        self.check(driver, attrs=("name", "type", "cache", "io", "discard", "detect_zeroes",
                                  "iothread", "queues", "queue_size", "ioeventfd",
                                  "event_idx"))
        if driver.get("name", "qemu") != "qemu":
            self.refuse(self.where(driver, "name"), "virtkit drives QEMU")
        fmt = driver.get("type")
        if fmt is not None:
            if fmt not in FORMATS:
                self.refuse(self.where(driver, "type"), "use " + ", ".join(FORMATS))
                return False
            spec["format"] = fmt
        cache = driver.get("cache", "default")
        if cache in {mode.value for mode in CacheMode}:
            spec["cache"] = cache
        elif cache != "default":
            self.refuse(self.where(driver, "cache"))
        io = driver.get("io", "default")
        if io in {mode.value for mode in AioMode}:
            spec["aio"] = io
        elif io != "default":
            self.refuse(self.where(driver, "io"))
        return True

    def _disk_source(self, source: ET.Element, kind: str, spec: dict[str, Any]) -> None:
        attrs = {"file": ("file",), "block": ("dev",), "volume": ("pool", "volume")}[kind]
        self.check(source, attrs=(*attrs, "index"), silent=("seclabel",))
        if kind == "volume":
            spec["pool"], spec["volume"] = source.get("pool"), source.get("volume")
        elif source.get(attrs[0]):
            spec["path"] = source.get(attrs[0])

    def _disk_target(self, target: ET.Element, spec: dict[str, Any]) -> None:
        self.check(target, attrs=("dev", "bus", "tray", "removable", "rotation_rate"))
        dev = target.get("dev", "")
        bus = target.get("bus")
        if bus is None:
            bus = {"vd": "virtio", "sd": "scsi", "hd": "ide"}.get(dev[:2])
        if bus in {kind.value for kind in DiskBus}:
            spec["bus"] = bus
        elif bus is not None:
            self.refuse(self.where(target, "bus"), "use virtio, sata, scsi or ide")
            return  # the disk goes on virtkit's default bus, under the name virtkit gives
        if dev:
            spec["target"] = dev

    def _disk_defaults(self) -> None:
        """Forget bus and target names that equal what virtkit picks anyway."""
        counters: dict[str, int] = {}
        for disk in self.spec["disks"]:
            cdrom = disk.get("device") == "cdrom"
            default = "sata" if cdrom else "virtio"
            if disk.get("bus") == default:
                del disk["bus"]
            prefix = TARGET_PREFIX[DiskBus(disk.get("bus") or default)]
            number = counters.get(prefix, 0)
            counters[prefix] = number + 1
            if disk.get("target") == disk_name(prefix, number):
                del disk["target"]

    def _boot(self, device: ET.Element, kind: str, spec: dict[str, Any]) -> None:
        boot = device.find("boot")
        if boot is None:
            return
        self.check(boot, attrs=("order",))
        order = boot.get("order", "")
        if order.isdecimal():
            first = {"hd": not any(d.get("device") != "cdrom" for d in self.spec["disks"]),
                     "cdrom": not any(d.get("device") == "cdrom" for d in self.spec["disks"]),
                     "network": not self.spec["nics"]}[kind]
            self.boot_orders.append((int(order), kind, boot, first))

    def _boot_order(self) -> None:
        """Per-device ``<boot order=N/>`` becomes boot.order (unless <os> gave one)."""
        if not self.boot_orders or "order" in self.spec.get("boot", {}):
            return
        order = []
        for _rank, kind, element, first in sorted(self.boot_orders, key=lambda b: b[0]):
            if not first:
                self.refuse_element(element)
            elif kind not in order:
                order.append(kind)
        if order:
            self.spec.setdefault("boot", {})["order"] = order

    def _interface(self, iface: ET.Element) -> None:
        self.check(iface, attrs=("type",), children=("mac", "source", "model", "link", "boot"),
                   silent=("target", "driver", "guest"))
        kind = iface.get("type", "")
        if kind not in ("network", "bridge", "user"):
            self.refuse(self.where(iface, "type"), "NICs join a network, a bridge, or are "
                        "user-mode")
            return
        spec: dict[str, Any] = {"type": kind}
        source = iface.find("source")
        if source is not None:
            self.check(source, attrs=("network", "bridge", "portid"))
            if kind in ("network", "bridge") and source.get(kind):
                spec[kind] = source.get(kind)
        mac = iface.find("mac")
        if mac is not None:
            self.check(mac, attrs=("address",))
            spec["mac"] = mac.get("address")
        model = iface.find("model")
        if model is not None:
            self.check(model, attrs=("type",))
            if model.get("type") in ("virtio", "e1000", "rtl8139"):
                spec["model"] = model.get("type")
            else:
                self.refuse(self.where(model, "type"), "NIC models are virtio, e1000 and "
                            "rtl8139")
        link = iface.find("link")
        if link is not None:
            self.check(link, attrs=("state",))
            if link.get("state") == "down":
                spec["link"] = "down"
        if kind == "user":
            self.note(f"{self.where(iface)}: a user-mode NIC in virtkit is restricted and "
                      "reaches no network at all; use <interface type='network'> for NAT")
        self._boot(iface, "network", spec)
        self.spec["nics"].append(spec)

    def _serial(self, serial: ET.Element) -> list[str | None]:
        """One serial port; its log file: ``<log file=>``, or a ``type='file'`` source
        (virtkit's ports are consoles that also log, so a file port keeps its console)."""
        self.check(serial, attrs=("type",), children=("target", "log", "source"))
        kind = serial.get("type", "pty")
        log = serial.find("log")
        path = log.get("file") if log is not None else None
        if kind == "file":
            source = serial.find("source")
            path = source.get("path") if source is not None else path
        elif kind not in ("pty", "unix"):
            self.refuse(self.where(serial, "type"), "serial ports go to virtkit's console "
                        "socket and log (types pty, unix and file)")
        target = serial.find("target")
        if target is not None:
            self.check(target, attrs=("type", "port"), silent=("model",))
            if target.get("type", "isa-serial") != "isa-serial":
                self.refuse(self.where(target, "type"), "serial ports are isa-serial")
        return [path]

    def _console(self, console: ET.Element) -> int:
        self.check(console, attrs=("type", "tty"), children=("target",),
                   silent=("source", "log"))
        target = console.find("target")
        if target is not None:
            self.check(target, attrs=("type", "port"))
            if target.get("type", "serial") != "serial":
                self.refuse(self.where(target, "type"), "use a serial console")
                return 0
        return 1

    def _channel(self, channel: ET.Element) -> None:
        self.check(channel, attrs=("type",), children=("target",), silent=("source",))
        if channel.get("type") == "spicevmc":
            spice_plumbing(self, channel)
            return
        target = channel.find("target")
        name = target.get("name") if target is not None else None
        if channel.get("type") in ("unix", "pty") and name == AGENT:
            self.spec["guest_agent"] = True
        elif channel.get("type") == "unix" and name and (
                target is None or target.get("type", "virtio") == "virtio"):
            source = channel.find("source")
            path = source.get("path") if source is not None else None
            entry = {"name": name, **({"path": path} if path else {})}
            self.spec.setdefault("channels", []).append(entry)
        else:
            self.refuse(self.where(channel), f"channels are the guest agent ({AGENT}) and "
                        "named virtio ports on unix sockets")

    def _graphics(self, graphics: ET.Element) -> None:
        kind = graphics.get("type")
        if kind == "none":
            return
        if kind == "spice":  # virt-manager's default: the display becomes VNC
            graphics = spice_graphics(self, graphics)
            kind = "vnc"
        if kind != "vnc":
            self.refuse(self.where(graphics, "type"), "the only display is VNC: use "
                        "<graphics type='vnc'/>")
            return
        if "graphics" in self.spec:
            self.refuse(self.where(graphics), "virtkit gives a domain one display")
            return
        self.check(graphics, attrs=("type", "port", "autoport", "listen", "passwd", "keymap"),
                   children=("listen",))
        spec: dict[str, Any] = {"type": "vnc"}
        listen = graphics.get("listen")
        for element in graphics.findall("listen"):
            self.check(element, attrs=("type", "address"))
            if element.get("type", "address") != "address":
                self.refuse(self.where(element, "type"), "VNC listens on an address")
            listen = element.get("address") or listen
        if listen:
            spec["listen"] = listen
        port = graphics.get("port", "-1")
        if graphics.get("autoport") != "yes" and port.isdecimal():
            spec["port"] = int(port)
        for attr, key in (("passwd", "password"), ("keymap", "keymap")):
            if graphics.get(attr):
                spec[key] = graphics.get(attr)
        self.spec["graphics"] = spec

    def _watchdog(self, watchdog: ET.Element) -> None:
        self.check(watchdog, attrs=("model", "action"))
        model = watchdog.get("model", "i6300esb")
        if model not in ("i6300esb", "itco"):
            self.refuse(self.where(watchdog, "model"), "watchdogs are i6300esb or itco")
            return
        spec = {"model": model}
        action = watchdog.get("action", "reset")
        if action in WATCHDOG_ACTIONS:
            spec["action"] = action
        else:
            self.refuse(self.where(watchdog, "action"), "use " + ", ".join(WATCHDOG_ACTIONS))
        self.spec["watchdog"] = spec

    def _rng(self, rng: ET.Element) -> None:
        self.check(rng, attrs=("model",), children=("backend",), silent=("driver",))
        backend = rng.find("backend")
        if rng.get("model", "virtio") != "virtio":
            self.refuse(self.where(rng, "model"), "the random number generator is virtio-rng")
            return
        source = "/dev/urandom"  # also for QEMU's builtin backend, which reads getrandom()
        if backend is not None:
            model = backend.get("model", "random")
            if model not in ("random", "builtin"):
                self.refuse(self.where(backend, "model"), "the backend is a host random device")
                return
            self.check(backend, attrs=("model",))
            if model == "random":
                source = (backend.text or "").strip() or source
            if source not in RNG_SOURCES:
                self.refuse(self.where(backend), "the backend is one of "
                            + ", ".join(RNG_SOURCES))
                return
        self.spec["rng"] = {"backend": source}

    def _memballoon(self, balloon: ET.Element) -> None:
        self.check(balloon, attrs=("model", "autodeflate", "freePageReporting"),
                   silent=("stats", "driver"))
        self.spec["balloon"] = balloon.get("model", "virtio") != "none"

    def _controller(self, controller: ET.Element) -> None:
        kind = controller.get("type", "")
        model = controller.get("model", "virtio-scsi")
        if kind in SILENT_CONTROLLERS or (kind == "scsi" and model == "virtio-scsi"):
            return
        location = self.where(controller, "model" if kind == "scsi" else "type")
        self.refuse(location, "virtkit adds its own pci, usb, sata, ide, virtio-serial and "
                    "virtio-scsi controllers")

    def _input(self, device: ET.Element) -> None:
        if device.get("type") not in ("tablet", "mouse", "keyboard"):
            self.refuse(self.where(device, "type"), "input devices are tablet, mouse and "
                        "keyboard")

    def _redirdev(self, device: ET.Element) -> None:
        if device.get("type") == "spicevmc":
            spice_plumbing(self, device)
        else:
            self.refuse_element(device)

    def _video(self, video: ET.Element) -> None:
        for acceleration in video.findall("model/acceleration"):
            if acceleration.get("accel3d") == "yes":
                self.refuse(self.where(acceleration, "accel3d"), "3D acceleration is not "
                            "supported")
        model = video.find("model")
        kind = model.get("type", "vga") if model is not None else "vga"
        if model is not None and model.get("primary", "yes") == "no":
            return  # a secondary head: virtkit shows one display
        if kind in ("vga", "virtio", "bochs", "qxl", "cirrus"):
            self.spec["video"] = kind
        elif kind != "none":  # vmvga, ramfb ...: the standard VGA shows the same console
            self.warnings.append(f"video model {kind!r} became vga")

    def _sound(self, sound: ET.Element) -> None:
        models = {"ich9": "ich9", "ich6": "hda", "ac97": "ac97", "es1370": "es1370"}
        model = sound.get("model", "")
        if model not in models:
            self.refuse(self.where(sound, "model"), "virtkit's sound cards are ich9, ich6, "
                        "ac97 and es1370")
            return
        self.spec.setdefault("sound", []).append({"model": models[model]})

    def _parallel(self, parallel: ET.Element) -> None:
        """A parallel port writing to a file (the one kind virtkit gives)."""
        self.check(parallel, attrs=("type",), children=("source", "target"))
        source = parallel.find("source")
        path = source.get("path") if source is not None else None
        if parallel.get("type") != "file" or not path:
            self.refuse(self.where(parallel, "type"), "parallel ports write to a file "
                        "(type='file' with <source path=>)")
            return
        self.spec.setdefault("parallels", []).append({"path": path})

    def _filesystem(self, fs: ET.Element) -> None:
        """A shared folder: type='mount' over virtiofs, or 9p (driver path, or none)."""
        self.check(fs, attrs=("type", "accessmode"), children=("driver", "source", "target",
                                                               "readonly"),
                   silent=("alias",))
        if fs.get("type", "mount") != "mount":
            self.refuse(self.where(fs, "type"), "shared folders are host folders "
                        "(type='mount')")
            return
        driver = fs.find("driver")
        kind = driver.get("type", "path") if driver is not None else "path"
        if driver is not None and kind not in ("path", "virtiofs"):
            self.refuse(self.where(driver, "type"), "shared folders use virtiofs or 9p "
                        "(driver type='path')")
            return
        source, target = fs.find("source"), fs.find("target")
        if source is None or target is None or not source.get("dir") or not target.get("dir"):
            self.refuse(self.where(fs), "a shared folder needs <source dir=> and <target dir=>")
            return
        accessmode = fs.get("accessmode", "passthrough")
        if accessmode not in ("passthrough", "mapped", "squash"):
            self.refuse(self.where(fs, "accessmode"), "accessmode is passthrough, mapped or "
                        "squash")
            return
        entry: dict[str, Any] = {"source": source.get("dir"), "target": target.get("dir"),
                                 "accessmode": accessmode,
                                 "driver": "virtiofs" if kind == "virtiofs" else "9p"}
        if fs.find("readonly") is not None:
            entry["readonly"] = True
        self.spec.setdefault("filesystems", []).append(entry)

    def _panic(self, panic: ET.Element) -> None:
        if panic.get("model", "isa") not in ("isa", "pvpanic"):
            self.refuse(self.where(panic, "model"), "virtkit gives every guest a pvpanic device")
