"""What the device service (service/devices.py) and the PCI host device changes of
service/tuning.py answer.  ``live``/``config``: where the change was applied (virsh's
--live/--config, decided when neither was given); ``pending``: the guest has not
released an unplugged device yet (it goes when the guest lets go)."""

from __future__ import annotations

from virtkit.service.models.base import Result


class DiskAttached(Result):
    name: str
    target: str | None
    path: str | None
    live: bool
    config: bool


class DiskDetached(Result):
    name: str
    target: str
    live: bool
    config: bool
    pending: bool


class MediaChanged(Result):
    """change-media: ``path`` None = ejected."""

    name: str
    target: str
    path: str | None
    live: bool
    config: bool


class InterfaceAttached(Result):
    name: str
    mac: str | None
    live: bool
    config: bool


class InterfaceDetached(Result):
    name: str
    mac: str
    live: bool
    config: bool
    pending: bool


class VcpusSet(Result):
    name: str
    vcpus: int
    maximum: bool
    live: bool
    config: bool
    pending: bool


class MemorySet(Result):
    """setmem / setmaxmem."""

    name: str
    memory_mib: int
    maximum: bool
    live: bool
    config: bool


class MemoryAttached(Result):
    """Memory hot-add: the domain's memory afterwards."""

    name: str
    memory_mib: int
    live: bool
    config: bool


class HostdevChanged(Result):
    """attach-device / detach-device of a PCI host device."""

    name: str
    address: str
    live: bool
    config: bool


#: what attach-device / detach-device answers, by the device's kind
DeviceChanged = (DiskAttached | DiskDetached | InterfaceAttached | InterfaceDetached
                 | MemoryAttached | HostdevChanged)
