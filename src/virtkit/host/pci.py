"""Host PCI devices: listing (nodedev-list), VFIO passthrough checks, driver binding.

Everything is read from sysfs (``/sys/bus/pci/devices/<address>``): vendor and
device ids, class, the bound driver, the IOMMU group and SR-IOV virtual
functions.  Names come from ``/usr/share/misc/pci.ids`` when it is installed.
Every function takes ``sys_root`` so the logic is tested on a fake tree.

Passthrough of a device needs an IOMMU (``/sys/kernel/iommu_groups`` not
empty), and every device in its IOMMU group must be bound to ``vfio-pci`` or to no
driver (the group is the unit of isolation).  A ``managed`` device is bound to
vfio-pci at start (through ``driver_override``) and given back to its original
driver at stop.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import HostError, InvalidSpec

SYS = Path("/sys")
PCI_IDS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))
VFIO = "vfio-pci"


@dataclass
class PciDevice:
    """One host PCI function."""

    address: str
    vendor_id: str
    device_id: str
    class_id: str
    driver: str | None
    iommu_group: int | None
    vendor: str | None = None
    product: str | None = None
    numa_node: int | None = None
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    virtfns: list[str] = field(default_factory=list)
    physfn: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return Path(path.readlink()).name if path.is_symlink() else None
    except OSError:
        return None


@functools.lru_cache(maxsize=2)
def _pci_ids(path: Path | None) -> dict[str, Any]:
    """pci.ids as {vendor: (name, {device: name})} (first file found)."""
    candidates = [path] if path is not None else list(PCI_IDS)
    for candidate in candidates:
        try:
            text = candidate.read_text(errors="replace")
        except OSError:
            continue
        vendors: dict[str, Any] = {}
        current: dict[str, str] | None = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("C "):
                break  # the device class section follows the vendors
            if not line.startswith("\t"):
                vendor, _, name = line.partition("  ")
                current = {}
                vendors[vendor.lower()] = (name.strip(), current)
            elif not line.startswith("\t\t") and current is not None:
                device, _, name = line.strip().partition("  ")
                current[device.lower()] = name.strip()
        return vendors
    return {}


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def read_device(address: str, sys_root: Path = SYS, pci_ids: Path | None = None, *,
                field_name: str = "hostdevs") -> PciDevice:
    """One device's facts; NotFound-style InvalidSpec when it does not exist."""
    folder = sys_root / "bus" / "pci" / "devices" / address
    if not folder.is_dir():
        raise InvalidSpec(f"host PCI device {address} does not exist (nothing at {folder})",
                          field=field_name, fix="see 'virtkit nodedev-list --cap pci' for "
                                                "the host's devices")
    vendor = (_read(folder / "vendor") or "0x0000")[2:].lower()
    device = (_read(folder / "device") or "0x0000")[2:].lower()
    names = _pci_ids(pci_ids).get(vendor)
    group = _link_name(folder / "iommu_group")
    node = _int(_read(folder / "numa_node"))
    return PciDevice(
        address=address, vendor_id=vendor, device_id=device,
        class_id=(_read(folder / "class") or "0x000000")[2:],
        driver=_link_name(folder / "driver"), iommu_group=_int(group),
        vendor=names[0] if names else None, product=names[1].get(device) if names else None,
        numa_node=node if node is not None and node >= 0 else None,
        sriov_totalvfs=_int(_read(folder / "sriov_totalvfs")),
        sriov_numvfs=_int(_read(folder / "sriov_numvfs")),
        virtfns=sorted(name for name in (_link_name(p) for p in folder.glob("virtfn*")) if name),
        physfn=_link_name(folder / "physfn"))


def list_devices(sys_root: Path = SYS, pci_ids: Path | None = None) -> list[PciDevice]:
    """Every PCI function of the host, by address."""
    base = sys_root / "bus" / "pci" / "devices"
    return [read_device(path.name, sys_root, pci_ids) for path in sorted(base.iterdir())] \
        if base.is_dir() else []


def iommu_enabled(sys_root: Path = SYS) -> bool:
    groups = sys_root / "kernel" / "iommu_groups"
    return groups.is_dir() and any(groups.iterdir())


def group_members(group: int, sys_root: Path = SYS) -> list[str]:
    folder = sys_root / "kernel" / "iommu_groups" / str(group) / "devices"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def check_passthrough(address: str, *, managed: bool, sys_root: Path = SYS,
                      field_name: str = "hostdevs") -> PciDevice:
    """Refuse (InvalidSpec/HostError naming the fix) unless ``address`` can go to a guest."""
    device = read_device(address, sys_root, field_name=field_name)
    if not iommu_enabled(sys_root):
        raise HostError(
            f"cannot pass {address} through: this host has no IOMMU (nothing under "
            f"{sys_root / 'kernel' / 'iommu_groups'})",
            fix="enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (Intel) "
                "or amd_iommu=on, or remove the host device")
    if device.iommu_group is None:
        raise HostError(f"host PCI device {address} is in no IOMMU group",
                        fix="check the IOMMU is enabled for it (dmesg | grep -i iommu)")
    for member in group_members(device.iommu_group, sys_root):
        driver = _link_name(sys_root / "bus" / "pci" / "devices" / member / "driver")
        if member == address and managed:
            continue
        if driver not in (None, VFIO, "pcieport"):
            what = "it" if member == address else f"{member}, in the same IOMMU group " \
                f"{device.iommu_group},"
            raise InvalidSpec(
                f"cannot pass {address} through: {what} is bound to the host driver "
                f"{driver}", field=field_name,
                fix=f"unbind it (echo {member} > /sys/bus/pci/devices/{member}/driver/unbind) "
                    + ("or bind it to vfio-pci" if member != address else
                       "or set managed: true so virtkit binds it to vfio-pci"))
    return device


def bind_vfio(address: str, sys_root: Path = SYS) -> str | None:
    """Bind ``address`` to vfio-pci; return the driver it had (to give it back later)."""
    folder = sys_root / "bus" / "pci" / "devices" / address
    original = _link_name(folder / "driver")
    if original == VFIO:
        return None
    try:
        if original is not None:
            (folder / "driver" / "unbind").write_text(address)
        (folder / "driver_override").write_text(VFIO)
        (sys_root / "bus" / "pci" / "drivers_probe").write_text(address)
    except OSError as exc:
        raise HostError(f"cannot bind {address} to vfio-pci: {exc.strerror}",
                        fix="load the module (modprobe vfio-pci) and run virtkitd as root") \
            from None
    if _link_name(folder / "driver") != VFIO:
        raise HostError(f"{address} did not bind to vfio-pci", fix="modprobe vfio-pci")
    return original


def restore_driver(address: str, original: str | None, sys_root: Path = SYS) -> None:
    """Give ``address`` back to ``original`` (clear the override, unbind, probe)."""
    folder = sys_root / "bus" / "pci" / "devices" / address
    with contextlib.suppress(OSError):
        (folder / "driver_override").write_text("\n")
        if _link_name(folder / "driver") == VFIO:
            (folder / "driver" / "unbind").write_text(address)
        if original is not None:
            (sys_root / "bus" / "pci" / "drivers_probe").write_text(address)
