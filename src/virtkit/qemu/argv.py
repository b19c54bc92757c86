"""Build the QEMU command line from a domain spec: a pure function.

``build_argv(domain, caps, files)`` returns the full argv for
``qemu-system-x86_64``.  It performs no I/O, so golden files under
``tests/data/argv`` pin its output.  The argv is rebuilt at every start and
never stored.

Safety: user-supplied paths reach QEMU only inside JSON (``-blockdev`` and
``-device`` accept JSON objects), where no value can spill into another
option.  The few ``key=value`` options that carry user text (``-name``) have
their commas doubled, QEMU's own escape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from virtkit.model.cpulist import cpulist_ranges, parse_cpulist
from virtkit.model.domain import (
    BootDevice,
    CacheMode,
    Disk,
    DiskBus,
    DiskDevice,
    Domain,
    Firmware,
    LifecycleAction,
    Machine,
    Nic,
)
from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.netdisk import (
    is_network_path,
    is_rbd_path,
    parse_nfs_url,
    parse_rbd_url,
    rbd_blockdev,
)

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def qemu_escape(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` syntax (commas are doubled)."""
    return value.replace(",", ",,")


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class DiskSlot:
    """Where one spec disk lands: QEMU ids and the guest-visible target name."""

    index: int
    device_id: str
    node: str
    target: str
    bus: DiskBus


_TARGET_PREFIX = {DiskBus.VIRTIO: "vd", DiskBus.SATA: "sd", DiskBus.SCSI: "sd", DiskBus.IDE: "hd"}


def disk_slots(domain: Domain) -> list[DiskSlot]:
    """Assign device ids, node names and guest names (vda, sda, hda) to the disks."""
    counters: dict[str, int] = {}
    slots = []
    for index, disk in enumerate(domain.disks):
        bus = disk.effective_bus
        prefix = _TARGET_PREFIX[bus]
        number = counters.get(prefix, 0)
        counters[prefix] = number + 1
        target = disk.target or prefix + chr(ord("a") + number)
        slots.append(DiskSlot(index, f"disk{index}", f"drive-disk{index}", target, bus))
    return slots


#: free PCIe root ports a q35 domain gets for hot-added disks and NICs
HOTPLUG_PORTS = 4


def pcie_ports(domain: Domain) -> dict[str, str]:
    """On q35, each virtio disk and each NIC sits on a PCIe root port of its own, as
    libvirt does, so it can be unplugged (devices on the root bus cannot be); plus
    :data:`HOTPLUG_PORTS` free ports for hot-added devices.  Maps the device id
    (``disk0``, ``nic1``, ``free1`` ...) to its port id (``pci.N``)."""
    if domain.machine is not Machine.Q35:
        return {}
    owners = [f"disk{slot.index}" for slot in disk_slots(domain) if slot.bus is DiskBus.VIRTIO]
    owners += [f"nic{index}" for index in range(len(domain.nics))]
    owners += [f"hostdev{index}" for index in range(len(domain.hostdevs))]
    owners += [f"free{number}" for number in range(HOTPLUG_PORTS)]
    return {owner: f"pci.{number}" for number, owner in enumerate(owners, start=1)}


def root_port(port: str) -> dict[str, Any]:
    """The ``pcie-root-port`` device object for port ``pci.N``."""
    number = int(port.split(".")[1])
    return {"driver": "pcie-root-port", "id": port, "bus": "pcie.0", "chassis": number,
            "port": number}


#: what a recorded placement may say: a bus id (``pci.3``, ``pcie.0``) and a slot
_PLACEMENT = {"bus": re.compile(r"^pcie?\.[0-9]{1,3}$"),
              "addr": re.compile(r"^0x[0-9a-f]{1,2}(\.[0-7])?$")}


#: a hot-added vCPU's recorded device: its id (hotplug's ``vcpu-S-D-C-T``), its CPU type
#: and its topology properties (query-hotpluggable-cpus' ``props``)
_VCPU_ID = re.compile(r"^vcpu(-[0-9]{1,4}){4}$")
_VCPU_DRIVER = re.compile(r"^[A-Za-z0-9._-]{1,60}-x86_64-cpu$")
_VCPU_PROPS = ("node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id")


def hot_vcpu_device(raw: Any) -> dict[str, Any]:
    """One recorded hot-added vCPU, checked strictly (ValueError says what is wrong)."""
    if not isinstance(raw, dict) or set(raw) != {"id", "driver", "props"} or \
            not isinstance(raw["id"], str) or not _VCPU_ID.match(raw["id"]) or \
            not isinstance(raw["driver"], str) or not _VCPU_DRIVER.match(raw["driver"]) or \
            not isinstance(raw["props"], dict) or not set(raw["props"]) <= set(_VCPU_PROPS) \
            or not all(type(v) is int and 0 <= v < 10000 for v in raw["props"].values()):
        raise ValueError("a hot-added vCPU of a device layout has an id vcpu-S-D-C-T, an "
                         "x86_64 CPU type and its topology numbers")
    return {"id": raw["id"], "driver": raw["driver"], "props": dict(raw["props"])}


@dataclass(frozen=True)
class Layout:
    """The device layout of a QEMU that had disks or NICs hot-added.

    The first ``boot_disks``/``boot_nics`` entries of the running configuration's
    lists were on its command line (QEMU ids = their positions); the others were
    hot-added with ids ``disk{n}``/``nic{n}`` (``disk_ids``/``nic_ids``, position by
    position) where QEMU put them, ``placement[id]`` (``{"bus": "pci.6"}`` on q35's
    root ports, ``{"addr": "0x5"}`` on pc's root bus).  A QEMU that is to take that
    run's RAM and device state (restore, a memory snapshot's revert, a migration's
    destination) is started from the same boot part plus the same hot-added devices:
    :func:`build_argv` with ``layout``."""

    boot_disks: int
    boot_nics: int
    disk_ids: tuple[int, ...]
    nic_ids: tuple[int, ...]
    placement: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: vCPUs hot-added with device_add (setvcpus --live), in topology order: the
    #: rebuilt QEMU starts with that many fewer on ``-smp`` and adds them as ``-device``
    #: with the same id, type and topology, so it is the same machine
    vcpus: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {"boot_disks": self.boot_disks, "boot_nics": self.boot_nics,
               "disk_ids": list(self.disk_ids), "nic_ids": list(self.nic_ids),
               "placement": {k: dict(v) for k, v in self.placement.items()}}
        if self.vcpus:
            out["vcpus"] = [{**v, "props": dict(v["props"])} for v in self.vcpus]
        return out

    @classmethod
    def unchanged(cls, domain: Domain) -> Layout:
        """The layout of a QEMU whose disks and NICs are all as started (for a run
        that only had vCPUs hot-added)."""
        return cls(len(domain.disks), len(domain.nics), tuple(range(len(domain.disks))),
                   tuple(range(len(domain.nics))))

    @classmethod
    def from_dict(cls, raw: Any, domain: Domain) -> Layout:
        """Parse a recorded layout (a save file's header, a snapshot, a migration),
        strictly: ValueError names what does not fit ``domain``."""
        if not isinstance(raw, dict) or set(raw) - {"vcpus"} != {
                "boot_disks", "boot_nics", "disk_ids", "nic_ids", "placement"}:
            raise ValueError("a device layout has boot_disks, boot_nics, disk_ids, "
                             "nic_ids and placement (and vcpus)")
        vcpus = raw.get("vcpus", [])
        if not isinstance(vcpus, list):
            raise ValueError("a device layout's vcpus is a list")
        hot_vcpus = tuple(hot_vcpu_device(v) for v in vcpus)
        if len({v["id"] for v in hot_vcpus}) != len(hot_vcpus) or \
                len(hot_vcpus) >= domain.vcpus.current:
            raise ValueError("the device layout's hot-added vCPUs do not fit the domain's "
                             f"{domain.vcpus.current} vCPUs")
        if not isinstance(raw["disk_ids"], list) or not isinstance(raw["nic_ids"], list):
            raise ValueError("a device layout's disk_ids and nic_ids are lists")
        ints = [raw["boot_disks"], raw["boot_nics"], *raw["disk_ids"], *raw["nic_ids"]]
        if not all(type(n) is int and 0 <= n < 1000 for n in ints):
            raise ValueError("device layout numbers are small non-negative integers")
        layout = cls(raw["boot_disks"], raw["boot_nics"], tuple(raw["disk_ids"]),
                     tuple(raw["nic_ids"]), {})
        if len(layout.disk_ids) != len(domain.disks) or \
                len(layout.nic_ids) != len(domain.nics) or \
                layout.disk_ids[:layout.boot_disks] != tuple(range(layout.boot_disks)) or \
                layout.nic_ids[:layout.boot_nics] != tuple(range(layout.boot_nics)) or \
                len(set(layout.disk_ids)) != len(layout.disk_ids) or \
                len(set(layout.nic_ids)) != len(layout.nic_ids):
            raise ValueError("the device layout does not fit the domain's disks and NICs")
        hot = {f"disk{n}" for n in layout.disk_ids[layout.boot_disks:]} | \
            {f"nic{n}" for n in layout.nic_ids[layout.boot_nics:]}
        placement = raw["placement"]
        if not isinstance(placement, dict) or set(placement) != hot or not all(
                isinstance(where, dict) and set(where) <= set(_PLACEMENT) and all(
                    isinstance(v, str) and _PLACEMENT[k].match(v) for k, v in where.items())
                for where in placement.values()):
            raise ValueError("the device layout's placements do not fit its hot-added devices")
        for index in range(layout.boot_disks, len(domain.disks)):
            if domain.disks[index].effective_bus is not DiskBus.VIRTIO or \
                    domain.disks[index].path is None:
                raise ValueError("only virtio disks with an image are hot-added")
        return cls(layout.boot_disks, layout.boot_nics, layout.disk_ids, layout.nic_ids,
                   {k: dict(v) for k, v in placement.items()}, hot_vcpus)


def hot_disk_device(disk: Disk, number: int) -> dict[str, Any]:
    """The ``device_add`` object of a hot-added virtio disk ``disk{number}`` (without
    its placement); a QEMU rebuilt from a :class:`Layout` gets the same."""
    device: dict[str, Any] = {"driver": "virtio-blk-pci", "id": f"disk{number}",
                              "drive": f"drive-disk{number}"}
    if disk.serial:
        device["serial"] = disk.serial
    return device


def _boot_part(domain: Domain, layout: Layout) -> Domain:
    """The domain as its QEMU was first started: the devices and vCPUs not hot-added."""
    vcpus = domain.vcpus.model_copy(update={"current": domain.vcpus.current
                                            - len(layout.vcpus)})
    return domain.model_copy(update={"disks": domain.disks[:layout.boot_disks],
                                     "nics": domain.nics[:layout.boot_nics], "vcpus": vcpus})


def _hot_added(domain: Domain, layout: Layout, caps: HostCaps,
               files: LaunchFiles) -> list[str]:
    """The hot-added vCPUs, disks and NICs of ``layout``, with their ids and placements,
    in the order they were added (after every other device, as QEMU saw them come)."""
    argv: list[str] = []
    for vcpu in layout.vcpus:
        argv += ["-device", _json({"driver": vcpu["driver"], "id": vcpu["id"],
                                   **vcpu["props"]})]
    for index in range(layout.boot_disks, len(domain.disks)):
        disk, number = domain.disks[index], layout.disk_ids[index]
        for node in blockdev_nodes(disk, f"drive-disk{number}"):
            argv += ["-blockdev", _json(node)]
        device = {**hot_disk_device(disk, number), **layout.placement[f"disk{number}"]}
        argv += ["-device", _json(device)]
    for index in range(layout.boot_nics, len(domain.nics)):
        nic, number = domain.nics[index], layout.nic_ids[index]
        argv += ["-netdev", netdev_option(index, nic, caps, files, number=number)]
        device = {**nic_device(nic, number, pci=True, port=None),
                  **layout.placement[f"nic{number}"]}
        argv += ["-device", _json(device)]
    return argv


def build_argv(domain: Domain, caps: HostCaps, files: LaunchFiles, binary: str,
               layout: Layout | None = None) -> list[str]:
    """The complete QEMU argv that starts ``domain`` paused, ready for QMP set-up
    (with the hot-added devices of ``layout`` where that run had them)."""
    hot = _hot_added(domain, layout, caps, files) if layout is not None else []
    if layout is not None:
        domain = _boot_part(domain, layout)
    argv = [binary]
    argv += _base(domain, caps)
    argv += _machine(domain, caps, files)
    argv += _cpu_memory(domain, caps)
    argv += _monitor(files)
    argv += _boot(domain)
    argv += _firmware_blockdevs(domain, caps, files)
    for port in pcie_ports(domain).values():
        argv += ["-device", _json(root_port(port))]
    argv += list(_disks(domain))
    argv += _nics(domain, caps, files)
    argv += _serials(domain, files)
    argv += _agent(domain, files)
    argv += _display(domain)
    argv += _misc_devices(domain)
    argv += hostdev_devices(domain)
    argv += _sound(domain)
    argv += _filesystems(domain, files)
    argv += _parallels(domain)
    argv += hot
    argv += _actions(domain)
    if caps.sandbox:
        argv += ["-sandbox", SANDBOX]
    if files.incoming:
        argv += ["-incoming", files.incoming]
    return argv


def _base(domain: Domain, caps: HostCaps) -> list[str]:
    return [
        "-name", f"guest={qemu_escape(domain.name)},debug-threads=on",
        "-uuid", domain.uuid,
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-msg", "timestamp=on",
        "-accel", "kvm" if caps.accel == "kvm" else "tcg,thread=multi",
    ]


def _machine(domain: Domain, caps: HostCaps, files: LaunchFiles) -> list[str]:
    if domain.machine is Machine.MICROVM:
        options = "microvm,acpi=on,pit=off,pic=off,rtc=on,isa-serial=on"
    else:
        options = f"{caps.machine_type(domain.machine.value)},usb=off,dump-guest-core=off"
        if domain.machine is Machine.PC or domain.machine is Machine.Q35:
            options += ",vmport=off"
        if domain.firmware is Firmware.UEFI:
            options += ",pflash0=pflash0,pflash1=pflash1"
        if not domain.acpi:
            options += ",acpi=off"
        if needs_memory_backend(domain) and not domain.numa:
            options += ",memory-backend=ram0"
    return ["-machine", options]


def _cpu_memory(domain: Domain, caps: HostCaps) -> list[str]:
    model = domain.cpu.model
    if model == "auto" or (model == "host" and caps.accel != "kvm"):
        # 'host' (libvirt's host-passthrough, virt-manager's default) exists only under
        # KVM; under TCG 'max' is the same idea: every feature this QEMU can give.  The
        # spec keeps 'host', so the VM passes the host CPU through again on a KVM host.
        model = "host" if caps.accel == "kvm" else "max"
    cpu = model + "".join(
        f",{feature[1:]}={'on' if feature[0] == '+' else 'off'}" for feature in domain.cpu.features
    )
    vcpus = domain.vcpus
    maximum = vcpus.maximum
    sockets = vcpus.sockets or (1 if (vcpus.cores or vcpus.threads) else maximum)
    cores = vcpus.cores or 1
    threads = vcpus.threads or 1
    if vcpus.sockets is None and (vcpus.cores or vcpus.threads):
        sockets = maximum // (cores * threads)
    smp = f"{vcpus.current},maxcpus={maximum},sockets={sockets},cores={cores},threads={threads}"
    memory = f"size={domain.memory.current}M"
    argv_mem = memory_backends(domain)
    if domain.memory.max is not None and domain.memory.max > domain.memory.current:
        memory += f",slots=16,maxmem={domain.memory.max}M"
    argv = [*argv_mem, "-cpu", cpu, "-m", memory, "-smp", smp, "-overcommit", "mem-lock=off"]
    argv += ["-rtc", "base=utc,driftfix=slew"]
    if caps.accel == "kvm" and domain.machine is not Machine.MICROVM:
        argv += ["-global", "kvm-pit.lost_tick_policy=delay"]
    return argv


def needs_memory_backend(domain: Domain) -> bool:
    """Guest RAM needs an explicit backend object: virtiofs (shared), hugepages, a host
    NUMA binding, or guest NUMA cells (one backend per cell)."""
    return (any(fs.driver == "virtiofs" for fs in domain.filesystems)
            or domain.memory_backing.hugepages or domain.numatune is not None
            or bool(domain.numa))


_NUMA_POLICY = {"strict": "bind", "preferred": "preferred", "interleave": "interleave"}


def _backend(domain: Domain, backend_id: str, mib: int) -> dict[str, Any]:
    """One memory backend: memfd (shared for virtiofs, hugetlb for hugepages), bound to
    host NUMA nodes when the spec has numatune."""
    backend: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": backend_id,
                               "size": mib * 2**20}
    shared = any(fs.driver == "virtiofs" for fs in domain.filesystems)
    if shared or domain.memory_backing.hugepages:
        backend["qom-type"] = "memory-backend-memfd"
    if shared:
        # vhost-user-fs needs guest RAM that virtiofsd can map: a shared memfd backend
        backend["share"] = True
    if domain.memory_backing.hugepages:
        backend["hugetlb"] = True
        backend["hugetlbsize"] = domain.memory_backing.page_size_kib * 1024
    if domain.numatune is not None:
        backend["host-nodes"] = sorted(parse_cpulist(domain.numatune.nodeset))
        backend["policy"] = _NUMA_POLICY[domain.numatune.mode]
    return backend


def memory_backends(domain: Domain) -> list[str]:
    """``-object`` memory backends, and ``-numa node`` options for guest NUMA cells."""
    if not needs_memory_backend(domain):
        return []
    if not domain.numa:
        return ["-object", _json(_backend(domain, "ram0", domain.memory.current))]
    argv: list[str] = []
    for index, cell in enumerate(domain.numa):
        argv += ["-object", _json(_backend(domain, f"ram-node{index}", cell.memory))]
    for index, cell in enumerate(domain.numa):
        cpus = "".join(f",cpus={first}" + (f"-{last}" if last != first else "")
                       for first, last in cpulist_ranges(parse_cpulist(cell.cpus)))
        argv += ["-numa", f"node,nodeid={index}{cpus},memdev=ram-node{index}"]
    return argv


def hostdev_devices(domain: Domain) -> list[str]:
    """``-device vfio-pci`` for each passed-through host PCI device (on q35 on a root
    port of its own, so it can be unplugged)."""
    argv: list[str] = []
    ports = pcie_ports(domain)
    for index, dev in enumerate(domain.hostdevs):
        device = {"driver": "vfio-pci", "host": dev.address, "id": f"hostdev{index}"}
        if f"hostdev{index}" in ports:
            device["bus"] = ports[f"hostdev{index}"]
        argv += ["-device", _json(device)]
    return argv


def _monitor(files: LaunchFiles) -> list[str]:
    return [
        "-chardev", f"socket,id=charmonitor,fd={files.fds['qmp']},server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control",
    ]


def _boot(domain: Domain) -> list[str]:
    argv = ["-boot", "strict=on" + (",menu=on" if domain.boot.menu else "")]
    if domain.boot.kernel:
        argv += ["-kernel", domain.boot.kernel]
        if domain.boot.initrd:
            argv += ["-initrd", domain.boot.initrd]
        if domain.boot.cmdline:
            argv += ["-append", domain.boot.cmdline]
    return argv


def _firmware_blockdevs(domain: Domain, caps: HostCaps, files: LaunchFiles) -> list[str]:
    if domain.firmware is not Firmware.UEFI or domain.machine is Machine.MICROVM:
        return []
    code = {"driver": "file", "filename": caps.ovmf_code, "node-name": "pflash0", "read-only": True}
    nvram = {"driver": "file", "filename": files.nvram, "node-name": "pflash1"}
    return ["-blockdev", _json(code), "-blockdev", _json(nvram)]


def _bootindexes(domain: Domain) -> dict[int, int]:
    """Map disk index -> bootindex following ``boot.order`` (first disk of each kind)."""
    if domain.boot.kernel:
        return {}
    indexes: dict[int, int] = {}
    rank = 1
    for device in domain.boot.order:
        wanted = DiskDevice.CDROM if device is BootDevice.CDROM else DiskDevice.DISK
        if device is BootDevice.NETWORK:
            rank += 1
            continue
        for index, disk in enumerate(domain.disks):
            if disk.device is wanted and index not in indexes:
                indexes[index] = rank
                rank += 1
                break
    return indexes


def nic_bootindex(domain: Domain) -> int | None:
    """The bootindex of the first NIC when ``network`` is in the boot order."""
    if domain.boot.kernel or BootDevice.NETWORK not in domain.boot.order:
        return None
    rank = 1
    for device in domain.boot.order:
        if device is BootDevice.NETWORK:
            return rank
        wanted = DiskDevice.CDROM if device is BootDevice.CDROM else DiskDevice.DISK
        if any(disk.device is wanted for disk in domain.disks):
            rank += 1
    return rank


_CACHE = {
    CacheMode.NONE: ({"direct": True, "no-flush": False}, True),
    CacheMode.WRITEBACK: ({"direct": False, "no-flush": False}, True),
    CacheMode.WRITETHROUGH: ({"direct": False, "no-flush": False}, False),
    CacheMode.DIRECTSYNC: ({"direct": True, "no-flush": False}, False),
    CacheMode.UNSAFE: ({"direct": False, "no-flush": True}, True),
}


def blockdev_nodes(disk: Disk, node: str) -> list[dict[str, Any]]:
    """The protocol and format blockdev objects for one disk (also used by hotplug)."""
    assert disk.path is not None
    cache, _ = _CACHE[disk.cache]
    if is_rbd_path(disk.path):
        return [_rbd_node(disk, node, cache), _format_node(disk, node, cache)]
    if is_network_path(disk.path):
        return [_nfs_node(disk, node, cache), _format_node(disk, node, cache)]
    if disk.path.startswith("/dev/"):
        driver = "host_cdrom" if disk.device is DiskDevice.CDROM else "host_device"
    else:
        driver = "file"
    protocol: dict[str, Any] = {
        "driver": driver,
        "filename": disk.path,
        "node-name": f"file-{node}",
        "cache": cache,
        "aio": disk.aio.value,
        "read-only": disk.readonly,
    }
    if not disk.readonly:
        protocol["discard"] = "unmap"
    return [protocol, _format_node(disk, node, cache)]


def _format_node(disk: Disk, node: str, cache: dict[str, bool]) -> dict[str, Any]:
    fmt: dict[str, Any] = {
        "node-name": node,
        "driver": disk.format or "raw",
        "file": f"file-{node}",
        "cache": cache,
        "read-only": disk.readonly,
    }
    if not disk.readonly:
        fmt["discard"] = "unmap"
    return fmt


def _nfs_node(disk: Disk, node: str, cache: dict[str, bool]) -> dict[str, Any]:
    """An image on an NFS server, opened by QEMU's libnfs driver (model/netdisk.py):
    server and path as separate JSON members, so nothing in the URL becomes an option.
    libnfs does no O_DIRECT: the host page cache is not involved either way."""
    assert disk.path is not None
    server, path = parse_nfs_url(disk.path)
    # one NFS identity on every host (root, squashed as the server decides): the image
    # qemu-img made is the one a confined QEMU opens, whatever uid it runs as here
    return {"driver": "nfs", "server": {"type": "inet", "host": server}, "path": path,
            "user": 0, "group": 0, "node-name": f"file-{node}", "cache": {**cache, "direct": False},
            "read-only": disk.readonly}


def _rbd_node(disk: Disk, node: str, cache: dict[str, bool]) -> dict[str, Any]:
    """An image of a Ceph pool, opened by QEMU's librbd driver (model/netdisk.py):
    pool, image, monitors and user as JSON members.  librbd caches in its own way
    (rbd_cache follows QEMU's writeback setting); O_DIRECT means nothing to it."""
    assert disk.path is not None
    return {**rbd_blockdev(parse_rbd_url(disk.path)), "node-name": f"file-{node}",
            "cache": {**cache, "direct": False}, "read-only": disk.readonly,
            **({} if disk.readonly else {"discard": "unmap"})}


def _controllers(domain: Domain) -> Iterator[str]:
    buses = {disk.effective_bus for disk in domain.disks}
    pci = domain.machine is not Machine.MICROVM
    if DiskBus.SATA in buses:
        yield from ("-device", _json({"driver": "ahci", "id": "sata0"}))
    if DiskBus.SCSI in buses:
        driver = "virtio-scsi-pci" if pci else "virtio-scsi-device"
        yield from ("-device", _json({"driver": driver, "id": "scsi0"}))


def disk_device(domain: Domain, disk: Disk, slot: DiskSlot,
                bootindex: int | None) -> dict[str, Any]:
    """The ``-device``/``device_add`` object that puts one disk on its bus."""
    cdrom = disk.device is DiskDevice.CDROM
    device: dict[str, Any] = {"id": slot.device_id}
    if slot.bus is DiskBus.VIRTIO:
        pci = domain.machine is not Machine.MICROVM
        device["driver"] = "virtio-blk-pci" if pci else "virtio-blk-device"
        root_port_id = pcie_ports(domain).get(slot.device_id)
        if root_port_id is not None:
            device["bus"] = root_port_id
    elif slot.bus is DiskBus.SATA:
        port = sum(1 for s in disk_slots(domain)[: slot.index] if s.bus is DiskBus.SATA)
        device.update(driver="ide-cd" if cdrom else "ide-hd", bus=f"sata0.{port}")
    elif slot.bus is DiskBus.IDE:
        unit = sum(1 for s in disk_slots(domain)[: slot.index] if s.bus is DiskBus.IDE)
        device.update(driver="ide-cd" if cdrom else "ide-hd", bus=f"ide.{unit // 2}", unit=unit % 2)
    else:
        lun = sum(1 for s in disk_slots(domain)[: slot.index] if s.bus is DiskBus.SCSI)
        device.update(driver="scsi-cd" if cdrom else "scsi-hd", bus="scsi0.0",
                      channel=0, **{"scsi-id": 0}, lun=lun)
    if disk.path is not None:
        device["drive"] = slot.node
    if bootindex is not None:
        device["bootindex"] = bootindex
    if disk.serial:
        device["serial"] = disk.serial
    if disk.path is not None and not cdrom:
        device["write-cache"] = "on" if _CACHE[disk.cache][1] else "off"
    return device


def _disks(domain: Domain) -> Iterator[str]:
    yield from _controllers(domain)
    bootindexes = _bootindexes(domain)
    for slot, disk in zip(disk_slots(domain), domain.disks, strict=True):
        if disk.path is not None:
            for node in blockdev_nodes(disk, slot.node):
                yield from ("-blockdev", _json(node))
        device = disk_device(domain, disk, slot, bootindexes.get(slot.index))
        yield from ("-device", _json(device))


def netdev_option(index: int, nic: Nic, caps: HostCaps, files: LaunchFiles,
                  number: int | None = None) -> str:
    """The ``-netdev`` value: a tap the daemon opened (by fd, ``tap{index}``), or
    restricted user mode; its id is ``net{number}`` (default: the index)."""
    ident = index if number is None else number
    if nic.type == "user":
        return f"user,id=net{ident},restrict={'on' if nic.restrict else 'off'}"
    vhost = "on" if caps.vhost_net else "off"
    return f"tap,id=net{ident},fd={files.fds[f'tap{index}']},vhost={vhost}"


def _nics(domain: Domain, caps: HostCaps, files: LaunchFiles) -> list[str]:
    argv: list[str] = []
    pci = domain.machine is not Machine.MICROVM
    first_boot = nic_bootindex(domain)
    ports = pcie_ports(domain)
    for index, nic in enumerate(domain.nics):
        argv += ["-netdev", netdev_option(index, nic, caps, files)]
        device = nic_device(nic, index, pci=pci, port=ports.get(f"nic{index}"))
        if index == 0 and first_boot is not None:
            device["bootindex"] = first_boot
        argv += ["-device", _json(device)]
    return argv


def nic_device(nic: Nic, number: int, *, pci: bool, port: str | None) -> dict[str, Any]:
    """The ``-device``/``device_add`` object of NIC ``nic{number}`` (also for hotplug)."""
    driver = {"virtio": "virtio-net-pci" if pci else "virtio-net-device",
              "e1000": "e1000", "rtl8139": "rtl8139"}[nic.model]
    device: dict[str, Any] = {"driver": driver, "netdev": f"net{number}", "id": f"nic{number}"}
    if nic.mac:
        device["mac"] = nic.mac
    if port is not None:
        device["bus"] = port
    return device


def _serials(domain: Domain, files: LaunchFiles) -> list[str]:
    argv: list[str] = []
    for index, serial in enumerate(domain.serials):
        chardev = f"socket,id=charserial{index},fd={files.fds[f'serial{index}']},server=on,wait=off"
        if serial.log:
            log = serial.log_path or f"{files.log_dir}/serial{index}.log"
            chardev += f",logfile={qemu_escape(log)},logappend=on"
        argv += ["-chardev", chardev]
        argv += ["-device", _json({"driver": "isa-serial", "chardev": f"charserial{index}",
                                   "id": f"serial{index}"})]
    return argv


def _agent(domain: Domain, files: LaunchFiles) -> list[str]:
    """The virtio-serial controller with the guest agent's port and the named channels."""
    if not domain.guest_agent and not domain.channels:
        return []
    pci = domain.machine is not Machine.MICROVM
    argv: list[str] = []
    if domain.guest_agent:
        argv += ["-chardev", f"socket,id=charagent,fd={files.fds['agent']},server=on,wait=off"]
    argv += ["-device", _json({"driver": "virtio-serial-pci" if pci else "virtio-serial-device",
                               "id": "virtio-serial0"})]
    if domain.guest_agent:
        argv += ["-device", _json({"driver": "virtserialport", "bus": "virtio-serial0.0",
                                   "nr": 1, "chardev": "charagent", "id": "channel0",
                                   "name": "org.qemu.guest_agent.0"})]
    for index, channel in enumerate(domain.channels):
        fd = files.fds.get(f"channel{index}")
        path = channel.path or f"{files.run_dir}/channel-{channel.name}.sock"
        # a socket the daemon bound (a confined QEMU may not create files in a user's
        # folder) is inherited; else QEMU makes it at the path
        where = f"fd={fd}" if fd is not None else f"path={qemu_escape(path)}"
        argv += [
            "-chardev", f"socket,id=charchannel{index + 1},{where},server=on,wait=off",
            "-device", _json({"driver": "virtserialport", "bus": "virtio-serial0.0",
                              "nr": index + 2, "chardev": f"charchannel{index + 1}",
                              "id": f"channel{index + 1}", "name": channel.name}),
        ]
    return argv


def vnc_option(domain: Domain) -> str:
    """The ``-vnc`` value: a fixed display, or the first free one from 5900 when auto."""
    graphics = domain.graphics
    host = f"[{graphics.listen}]" if ":" in graphics.listen else graphics.listen
    value = f"{host}:0,to=99" if graphics.port == "auto" else f"{host}:{int(graphics.port) - 5900}"
    if graphics.password:
        value += ",password=on"
    return value


#: spec video model -> QEMU device (the primary, VGA-compatible variant of each)
VIDEO_DRIVERS = {"vga": "VGA", "virtio": "virtio-vga", "bochs": "bochs-display",
                 "qxl": "qxl-vga", "cirrus": "cirrus-vga"}


def _sound(domain: Domain) -> list[str]:
    """Sound cards on QEMU's ``none`` audio back end (a server plays nothing)."""
    if not domain.sound:
        return []
    argv = ["-audiodev", "none,id=audio0"]
    for index, card in enumerate(domain.sound):
        card_id = f"sound{index}"
        if card.model in ("ich9", "hda"):
            controller = "ich9-intel-hda" if card.model == "ich9" else "intel-hda"
            argv += ["-device", _json({"driver": controller, "id": card_id}),
                     "-device", _json({"driver": "hda-duplex", "id": f"{card_id}-codec0",
                                       "bus": f"{card_id}.0", "audiodev": "audio0"})]
        else:
            argv += ["-device", _json({"driver": card.model.upper(), "id": card_id,
                                       "audiodev": "audio0"})]
    return argv


#: libvirt's accessmode -> QEMU's 9p security_model
_SECURITY_MODELS = {"passthrough": "passthrough", "mapped": "mapped-xattr", "squash": "none"}


def _filesystems(domain: Domain, files: LaunchFiles) -> list[str]:
    """Shared folders: vhost-user-fs (virtiofs) or a 9p device per folder."""
    argv: list[str] = []
    for index, fs in enumerate(domain.filesystems):
        if fs.driver == "virtiofs":  # the daemon starts virtiofsd on this socket
            socket_path = qemu_escape(f"{files.run_dir}/fs{index}.sock")
            argv += ["-chardev", f"socket,id=charfs{index},path={socket_path}",
                     "-device", _json({"driver": "vhost-user-fs-pci", "id": f"fs{index}",
                                       "chardev": f"charfs{index}", "tag": fs.target})]
            continue
        fsdev = (f"local,id=fsdev{index},path={qemu_escape(fs.source)},"
                 f"security_model={_SECURITY_MODELS[fs.accessmode]}")
        if fs.readonly:
            fsdev += ",readonly=on"
        argv += ["-fsdev", fsdev,
                 "-device", _json({"driver": "virtio-9p-pci", "id": f"fs{index}",
                                   "fsdev": f"fsdev{index}", "mount_tag": fs.target})]
    return argv


def _parallels(domain: Domain) -> list[str]:
    """Parallel ports writing to host files."""
    argv: list[str] = []
    for index, port in enumerate(domain.parallels):
        argv += ["-chardev", f"file,id=charparallel{index},path={qemu_escape(port.path)}",
                 "-device", _json({"driver": "isa-parallel", "chardev": f"charparallel{index}",
                                   "id": f"parallel{index}"})]
    return argv


def _display(domain: Domain) -> list[str]:
    argv = ["-display", "none"]
    if domain.graphics.type == "vnc":
        argv += ["-vnc", vnc_option(domain)]
        if domain.graphics.keymap:
            argv += ["-k", domain.graphics.keymap]
        argv += ["-device", _json({"driver": VIDEO_DRIVERS[domain.video], "id": "video0"})]
        argv += ["-device", _json({"driver": "qemu-xhci", "id": "usb"})]
        argv += ["-device", _json({"driver": "usb-tablet", "id": "input0", "bus": "usb.0"})]
    return argv


def _misc_devices(domain: Domain) -> list[str]:
    argv: list[str] = []
    pci = domain.machine is not Machine.MICROVM
    if domain.rng is not None:
        argv += ["-object", _json({"qom-type": "rng-random", "id": "objrng0",
                                   "filename": domain.rng.backend})]
        argv += ["-device", _json({"driver": "virtio-rng-pci" if pci else "virtio-rng-device",
                                   "rng": "objrng0", "id": "rng0"})]
    if domain.balloon:
        argv += ["-device", _json({"driver": "virtio-balloon-pci" if pci
                                   else "virtio-balloon-device", "id": "balloon0"})]
    if domain.watchdog is not None:
        if domain.watchdog.model == "i6300esb":
            argv += ["-device", _json({"driver": "i6300esb", "id": "watchdog0"})]
        else:
            argv += ["-global", "ICH9-LPC.noreboot=off"]
    if pci:
        argv += ["-device", _json({"driver": "pvpanic", "id": "panic0"})]
    return argv


def _actions(domain: Domain) -> list[str]:
    actions = ["panic=pause"]
    if domain.on_reboot is LifecycleAction.DESTROY:
        actions.append("reboot=shutdown")
    if domain.watchdog is not None:
        actions.append(f"watchdog={domain.watchdog.action}")
    return ["-action", ",".join(actions)]
