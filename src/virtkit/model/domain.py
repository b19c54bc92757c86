"""The domain (virtual machine) spec: what the user wants, validated, with no I/O.

A :class:`Domain` is the desired configuration of one VM, as stored in the
database and as written in YAML/JSON spec files.  It says nothing about
whether the VM runs; that is the runtime record's job.  Validation here is
limited to what can be decided from the spec alone (ranges, consistency,
names); checks against the host (does the kernel file exist, is there enough
memory) happen in the service layer.

Sizes accept MiB integers or strings such as ``"512M"``/``"2G"``; devices and
sub-objects accept short forms (``vcpus: 2``, ``graphics: vnc``) so that a
minimal spec is a few lines long.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from virtkit.model.cpulist import parse_cpulist
from virtkit.model.naming import find_bad_text, is_grandfathered, naming_problem
from virtkit.model.netdisk import check_network_path, is_network_path
from virtkit.model.tuning import (
    BlkioTune,
    CpuTune,
    HostDev,
    IoTune,
    MemoryBacking,
    MemTune,
    NumaCell,
    NumaTune,
    check_tuning,
)
from virtkit.model.units import parse_mib

MAX_VCPUS = 288
MAX_NAME_LENGTH = 128
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _to_mib(value: Any, info: Any = None) -> Any:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        return parse_mib(value, field="size")
    return value


MiB = Annotated[int, BeforeValidator(_to_mib)]


class SpecProblem(ValueError):
    """A validation problem that knows which field (relative to the model) it is about."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Spec(BaseModel):
    """Base of every spec object: unknown fields are errors, values are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic keeps a value an after-model-validator refused (pydantic#7105): undo it
        missing = object()
        old = self.__dict__.get(name, missing)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            if old is not missing:
                self.__dict__[name] = old
            raise


class Accelerator(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Machine(StrEnum):
    Q35 = "q35"
    PC = "pc"
    MICROVM = "microvm"


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    SATA = "sata"
    SCSI = "scsi"
    IDE = "ide"


class DiskDevice(StrEnum):
    DISK = "disk"
    CDROM = "cdrom"


class CacheMode(StrEnum):
    NONE = "none"
    WRITEBACK = "writeback"
    WRITETHROUGH = "writethrough"
    DIRECTSYNC = "directsync"
    UNSAFE = "unsafe"


class AioMode(StrEnum):
    THREADS = "threads"
    NATIVE = "native"
    IO_URING = "io_uring"


class LifecycleAction(StrEnum):
    """What happens when the guest powers off, reboots or crashes (libvirt's on_* elements)."""

    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"


class BootDevice(StrEnum):
    HD = "hd"
    CDROM = "cdrom"
    NETWORK = "network"


class Memory(Spec):
    """Guest RAM in MiB: ``current`` at boot, ``max`` the ceiling for hot-add."""

    current: MiB = Field(description="RAM at boot, in MiB")
    max: MiB | None = Field(default=None, description="maximum RAM for hot-add, in MiB")

    @model_validator(mode="after")
    def _check(self) -> Memory:
        if self.current <= 0:
            raise ValueError("memory must be at least 1 MiB; write e.g. memory: 512")
        if self.max is not None and self.max < self.current:
            raise ValueError(
                f"max memory {self.max} MiB is below current memory {self.current} MiB; "
                "raise max or lower current"
            )
        return self


class Vcpus(Spec):
    """Virtual CPUs: how many at boot, the hot-plug ceiling, and the topology."""

    current: int = 1
    max: int | None = None
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    cpuset: str | None = Field(default=None, description="host CPUs QEMU's threads may run "
                               "on, e.g. '0-3,6' (libvirt's <vcpu cpuset=>)")

    @field_validator("cpuset")
    @classmethod
    def _cpuset(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cpuset(value)
        return value

    @property
    def maximum(self) -> int:
        return self.max if self.max is not None else self.current

    @model_validator(mode="after")
    def _check(self) -> Vcpus:
        if self.current < 1:
            raise ValueError("vcpus must be at least 1")
        if self.maximum > MAX_VCPUS:
            raise ValueError(f"vcpus {self.maximum} is above the limit of {MAX_VCPUS}")
        if self.current > self.maximum:
            raise ValueError(
                f"vcpus current {self.current} is above max {self.maximum}; "
                "raise vcpus.max or lower vcpus.current"
            )
        topology = (self.sockets, self.cores, self.threads)
        if any(part is not None for part in topology):
            if any(part is not None and part < 1 for part in topology):
                raise ValueError("sockets, cores and threads must each be at least 1")
            product = (self.sockets or 1) * (self.cores or 1) * (self.threads or 1)
            if product != self.maximum:
                raise ValueError(
                    f"topology sockets*cores*threads = {product} does not match "
                    f"max vcpus {self.maximum}; make them equal"
                )
        return self


class Cpu(Spec):
    """CPU model: ``auto`` picks ``host`` under KVM and ``max`` under TCG; ``host``
    (host-passthrough) also runs as ``max`` where the accelerator is TCG."""

    model: str = "auto"
    features: list[str] = Field(default_factory=list, description="'+feat' or '-feat'")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"CPU model {value!r} has characters QEMU does not accept")
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value: list[str]) -> list[str]:
        for feature in value:
            if not re.fullmatch(r"[+-][A-Za-z0-9_.\-]+", feature):
                raise ValueError(f"CPU feature {feature!r} must look like '+avx2' or '-svm'")
        return value


class Boot(Spec):
    """Boot order, menu, and direct kernel boot (kernel, initrd, cmdline)."""

    order: list[BootDevice] = Field(default_factory=lambda: [BootDevice.HD])
    menu: bool = False
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Boot:
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("boot.initrd and boot.cmdline need boot.kernel; add a kernel path")
        if len(set(self.order)) != len(self.order):
            raise ValueError("boot.order lists a device twice")
        for name in ("kernel", "initrd"):
            path = getattr(self, name)
            if path is not None and not path.startswith("/"):
                raise ValueError(f"boot.{name} must be an absolute path, got {path!r}")
            if path is not None and _CONTROL_CHARS.search(path):
                raise SpecProblem(f"boot.{name} contains a control character (newline, tab "
                                  "...)", name)
        if self.cmdline is not None and _CONTROL_CHARS.search(self.cmdline):
            raise SpecProblem("boot.cmdline contains a control character (newline, tab ...); "
                              "the kernel command line is one line", "cmdline")
        return self


class Disk(Spec):
    """A disk or CD-ROM drive backed by a host file or block device."""

    path: str | None = Field(default=None, description="absolute host path; empty CD-ROM if None")
    pool: str | None = Field(default=None, description="storage pool of the volume")
    volume: str | None = Field(default=None, description="volume name inside pool")
    format: Literal["raw", "qcow2", "vmdk", "vdi", "vhdx", "qed"] | None = None
    device: DiskDevice = DiskDevice.DISK
    bus: DiskBus | None = None
    cache: CacheMode = CacheMode.WRITEBACK
    aio: AioMode = AioMode.THREADS
    readonly: bool = False
    serial: str | None = None
    target: str | None = Field(default=None, description="guest name hint: vda, sda, hda ...")
    iotune: IoTune | None = Field(default=None, description="I/O throttle (blkdeviotune)")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if is_network_path(value):  # an image QEMU opens on an NFS server or Ceph (netdisk.py)
            return check_network_path(value)
        if not value.startswith("/"):
            raise ValueError(f"disk path must be absolute, got {value!r}")
        if _CONTROL_CHARS.search(value):
            raise ValueError("disk path contains a control character (newline, tab ...)")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9]{1,15}", value):
            raise ValueError(f"disk target {value!r} must be a device name such as vda, sdb "
                             "or hdc (lower-case letters and digits)")
        return value

    @field_validator("serial")
    @classmethod
    def _serial(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.+\-]{1,20}", value):
            raise ValueError("disk serial must be 1-20 characters of A-Z a-z 0-9 _ . + -")
        return value

    @model_validator(mode="after")
    def _check(self) -> Disk:
        if (self.pool is None) != (self.volume is None):
            raise ValueError("pool and volume go together: give both, or a path")
        if self.device is DiskDevice.DISK and self.path is None and self.volume is None:
            raise ValueError("a disk needs a path, or a pool and volume (only a cdrom may be "
                             "empty)")
        if self.device is DiskDevice.CDROM:
            self.__dict__["readonly"] = True
            if self.bus is DiskBus.VIRTIO:
                raise ValueError("a cdrom cannot sit on the virtio bus; use sata, scsi or ide")
        if self.aio is AioMode.NATIVE and self.cache not in (CacheMode.NONE, CacheMode.DIRECTSYNC):
            raise ValueError("aio=native needs cache=none or cache=directsync")
        return self

    @property
    def effective_bus(self) -> DiskBus:
        if self.bus is not None:
            return self.bus
        return DiskBus.SATA if self.device is DiskDevice.CDROM else DiskBus.VIRTIO


class Graphics(Spec):
    """The graphical console: VNC (on localhost by default) or none."""

    type: Literal["vnc", "none"] = "vnc"
    listen: str = "127.0.0.1"
    port: int | Literal["auto"] = "auto"
    password: str | None = None
    keymap: str | None = None

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 5900 <= value <= 65535:
            raise ValueError(f"VNC port {value} must be 'auto' or between 5900 and 65535")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z.:\-]+", value):
            raise ValueError(f"VNC listen address {value!r} is not an IP address or host name")
        return value

    @field_validator("keymap")
    @classmethod
    def _keymap(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", value):
            raise ValueError(f"VNC keymap {value!r} must be a keymap name such as en-us or "
                             "de-ch")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value) <= 8:
            raise ValueError("VNC passwords are 1 to 8 characters (a limit of the VNC protocol)")
        return value


def _check_host_path(value: str | None, what: str, kind: str) -> None:
    """A host path a device names must be absolute, without control characters."""
    if value is not None and (not value.startswith("/") or _CONTROL_CHARS.search(value)):
        raise ValueError(f"{what} {value!r} must be an absolute {kind} path without control "
                         "characters")


class Serial(Spec):
    """A serial port: logged to a file and attachable with ``virtkit console``.

    ``log_path`` writes the log to a file of your choice instead of the domain's log
    folder (libvirt's ``<log file=>``, virt-install's ``--serial file,path=``)."""

    log: bool = True
    log_path: str | None = None

    @field_validator("log_path")
    @classmethod
    def _log_path(cls, value: str | None) -> str | None:
        _check_host_path(value, "serial log_path", "file")
        return value

    @model_validator(mode="after")
    def _check(self) -> Serial:
        if self.log_path is not None and not self.log:
            raise ValueError("log_path needs log: true")
        return self


class Parallel(Spec):
    """A parallel port (LPT) whose output goes to a host file: what a guest prints."""

    path: str = Field(description="host file the port writes to")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _check_host_path(value, "parallel port path", "file")
        return value


class Channel(Spec):
    """A named virtio-serial port (libvirt's ``<channel type='unix'>``): the guest sees
    ``/dev/virtio-ports/NAME``, the host a unix socket at ``path`` (QEMU listens there;
    default: ``channel-NAME.sock`` in the domain's run folder)."""

    name: str = Field(description="port name, e.g. org.libguestfs.channel.0")
    path: str | None = Field(default=None, description="host socket path")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", value):
            raise ValueError(f"channel name {value!r} must be 1-64 letters, digits, '_', '.' "
                             "or '-'")
        if value == "org.qemu.guest_agent.0":
            raise ValueError("the guest agent channel is guest_agent: true")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        _check_host_path(value, "channel path", "socket")
        return value


class Filesystem(Spec):
    """A host folder shared with the guest over virtio-9p (``mount -t 9p -o trans=virtio
    TAG /mnt`` in the guest; libvirt's ``<filesystem type='mount'>``).

    ``accessmode`` as libvirt names it: ``passthrough`` (files carry the guest's owners
    and modes on the host), ``mapped`` (owners and modes kept in extended attributes, the
    host files stay the daemon's) or ``squash`` (passthrough, ownership errors ignored).

    ``driver``: ``virtiofs`` (faster, POSIX semantics; a virtiofsd per share, guest
    memory shared with it; ``mount -t virtiofs TAG /mnt``) or ``9p``.  ``auto`` becomes
    virtiofs when the host has virtiofsd and the share is writable with passthrough
    access, else 9p, when the domain is defined.
    """

    source: str = Field(description="absolute host folder")
    target: str = Field(description="mount tag the guest mounts")
    accessmode: Literal["passthrough", "mapped", "squash"] = "passthrough"
    readonly: bool = False
    driver: Literal["auto", "9p", "virtiofs"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> Filesystem:
        if self.driver == "virtiofs" and (self.readonly or self.accessmode != "passthrough"):
            raise ValueError("virtiofs shares are writable with passthrough access (virtiofsd "
                             "has no read-only or mapped mode); use driver: 9p")
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        _check_host_path(value, "filesystem source", "folder")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,31}", value):
            raise ValueError(f"filesystem target {value!r} must be a mount tag of 1-31 "
                             "letters, digits, '_', '.' or '-'")
        return value


class Sound(Spec):
    """A sound card.  A server has no speakers: its output goes to QEMU's ``none`` audio
    back end, but the guest sees and drives the card (installers and desktops expect one).
    ``ich9`` and ``hda`` are Intel HD Audio controllers with a duplex codec."""

    model: Literal["ich9", "hda", "ac97", "es1370"] = "ich9"


#: the display adapter shown over VNC
VideoModel = Literal["vga", "virtio", "bochs", "qxl", "cirrus"]


class Watchdog(Spec):
    model: Literal["i6300esb", "itco"] = "i6300esb"
    action: Literal["reset", "shutdown", "poweroff", "pause", "none", "inject-nmi"] = "reset"


class Rng(Spec):
    backend: str = "/dev/urandom"

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in ("/dev/urandom", "/dev/random", "/dev/hwrng"):
            raise ValueError("rng backend must be /dev/urandom, /dev/random or /dev/hwrng")
        return value


class Nic(Spec):
    """A network card on a virtual network, a host bridge, or restricted user mode.

    ``type`` follows from the other fields when left out: ``network: default``
    means a NIC on that virtual network, ``bridge: br0`` one on a host bridge,
    neither a restricted user-mode NIC (which reaches no network at all).
    """

    type: Literal["user", "network", "bridge"] = "user"
    network: str | None = None
    bridge: str | None = None
    restrict: bool = True
    model: Literal["virtio", "e1000", "rtl8139"] = "virtio"
    mac: str | None = None
    link: Literal["up", "down"] = "up"

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            if data.get("network"):
                return {**data, "type": "network"}
            if data.get("bridge"):
                return {**data, "type": "bridge"}
        return data

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", value):
            raise ValueError(f"bridge name {value!r} is not a Linux interface name "
                             "(1-15 characters of letters, digits, '_', '.', '-')")
        return value

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", value):
            raise ValueError(f"MAC address {value!r} must look like 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError(f"MAC address {value!r} is a multicast address; use 52:54:00:...")
        return value.lower()

    @model_validator(mode="after")
    def _check(self) -> Nic:
        if self.type == "network" and not self.network:
            raise ValueError("a network NIC needs network: NAME (see 'virtkit net-list')")
        if self.type == "bridge" and not self.bridge:
            raise ValueError("a bridge NIC needs bridge: NAME (a host bridge such as br0)")
        if self.type == "user":
            if self.network or self.bridge:
                raise ValueError("a user-mode NIC takes no network or bridge")
            if not self.restrict:
                raise ValueError(
                    "an unrestricted user-mode NIC would let the guest reach any network; "
                    "use restrict: true, or put the NIC on a virtual network (network: default)"
                )
        return self


def _short_vcpus(value: Any) -> Any:
    return {"current": value} if isinstance(value, int) and not isinstance(value, bool) else value


def _short_memory(value: Any) -> Any:
    if isinstance(value, int | str) and not isinstance(value, bool):
        return {"current": value}
    return value


def _short_graphics(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


def _short_cpu(value: Any) -> Any:
    return {"model": value} if isinstance(value, str) else value


def _short_device(value: Any) -> Any:
    if value is True:
        return {}
    if value is False:
        return None
    return value


class NamedSpec(Spec):
    """A top-level object: a name (libvirt's rules) and a UUID (generated if left out)."""

    name: str
    uuid: str = Field(default_factory=lambda: str(uuidlib.uuid4()))

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        # the text rule (model/naming.py) for every string of the spec, at any depth
        bad = find_bad_text(data) if isinstance(data, dict) else None
        if bad is not None:
            raise SpecProblem(f"{bad[0]} {bad[1]}", bad[0])
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuidlib.UUID(value))
        except ValueError:
            raise ValueError(f"uuid {value!r} is not a UUID (e.g. {uuidlib.uuid4()})") from None

    @model_validator(mode="after")
    def _naming_rule(self) -> NamedSpec:
        # the naming rule (model/naming.py); an object a store from before the rule
        # holds keeps its name (only that object: the same name and uuid)
        problem = naming_problem(self.name)
        if problem and not is_grandfathered(self.name, self.uuid):
            raise SpecProblem(f"{problem}; choose another name", "name")
        return self


class Domain(NamedSpec):
    """The full desired configuration of one virtual machine."""

    title: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(
        default_factory=dict, description="other programs' XML metadata (libosinfo's OS "
        "id, virsh metadata): namespace URI -> one element, as dumpxml writes it")
    memory: Annotated[Memory, BeforeValidator(_short_memory)]
    vcpus: Annotated[Vcpus, BeforeValidator(_short_vcpus)] = Field(default_factory=Vcpus)
    cpu: Annotated[Cpu, BeforeValidator(_short_cpu)] = Field(default_factory=Cpu)
    machine: Machine = Machine.Q35
    firmware: Firmware = Firmware.BIOS
    accelerator: Accelerator = Accelerator.AUTO
    boot: Boot = Field(default_factory=Boot)
    disks: list[Disk] = Field(default_factory=list)
    nics: list[Nic] = Field(default_factory=list)
    graphics: Annotated[Graphics, BeforeValidator(_short_graphics)] = Field(
        default_factory=lambda: Graphics(type="none")
    )
    serials: list[Serial] = Field(default_factory=lambda: [Serial()])
    guest_agent: bool = True
    watchdog: Annotated[Watchdog | None, BeforeValidator(_short_device)] = None
    video: VideoModel = Field(default="vga", description="display adapter (with VNC only)")
    sound: list[Sound] = Field(default_factory=list)
    filesystems: list[Filesystem] = Field(default_factory=list)
    channels: list[Channel] = Field(default_factory=list)
    parallels: list[Parallel] = Field(default_factory=list)
    rng: Annotated[Rng | None, BeforeValidator(_short_device)] = Field(default_factory=Rng)
    balloon: bool = True
    on_poweroff: LifecycleAction = LifecycleAction.DESTROY
    on_reboot: LifecycleAction = LifecycleAction.RESTART
    on_crash: LifecycleAction = LifecycleAction.DESTROY
    autostart: bool = False
    ha: bool = Field(default=False, description="in a cluster: fenced when this host loses "
                     "its lease, restarted elsewhere (docs/cluster.md)")
    transient: bool = Field(default=False, description="undefined when it stops (virsh "
                            "create, virt-install --transient)")
    anti_affinity: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$",
        description="a cluster's anti-affinity group: placement puts no two VMs of one "
        "group on the same host")
    acpi: bool = Field(default=True, description="ACPI tables; without them the guest cannot "
                       "be shut down with the power button, only destroyed")
    cputune: CpuTune = Field(default_factory=CpuTune)
    memtune: MemTune = Field(default_factory=MemTune)
    blkiotune: BlkioTune = Field(default_factory=BlkioTune)
    numa: list[NumaCell] = Field(default_factory=list, description="guest NUMA cells")
    numatune: NumaTune | None = None
    memory_backing: MemoryBacking = Field(default_factory=MemoryBacking)
    hostdevs: list[HostDev] = Field(default_factory=list, description="PCI passthrough (VFIO)")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 metadata namespaces")
        for uri, text in value.items():
            if not uri or len(uri) > 1024 or uri.strip() != uri:
                raise ValueError(f"metadata namespace {uri[:60]!r} is not a URI")
            if len(text) > 64 * 1024 or not text.lstrip().startswith("<"):
                raise ValueError(f"metadata of {uri[:60]!r} must be one XML element "
                                 "of at most 64 KiB")
        return value

    @field_validator("on_poweroff")
    @classmethod
    def _on_poweroff(cls, value: LifecycleAction) -> LifecycleAction:
        if value is LifecycleAction.PRESERVE:
            raise ValueError("on_poweroff must be destroy or restart")
        return value

    @field_validator("on_reboot")
    @classmethod
    def _on_reboot(cls, value: LifecycleAction) -> LifecycleAction:
        if value is LifecycleAction.PRESERVE:
            raise ValueError("on_reboot must be restart or destroy")
        return value

    @model_validator(mode="after")
    def _check(self) -> Domain:
        if self.machine is Machine.MICROVM:
            self._check_microvm()
        if not self.acpi and self.machine is not Machine.PC:
            raise SpecProblem(f"a {self.machine.value} machine always has ACPI in QEMU; "
                              "use machine: pc for a guest without ACPI", "acpi")
        if self.machine is Machine.Q35:
            for index, disk in enumerate(self.disks):
                if disk.effective_bus is DiskBus.IDE:
                    raise SpecProblem(
                        f"q35 has no IDE controller ({disk.path or 'cdrom'}); use bus: sata",
                        f"disks[{index}].bus",
                    )
        itco = self.watchdog is not None and self.watchdog.model == "itco"
        if itco and self.machine is not Machine.Q35:
            raise SpecProblem("the itco watchdog is built into q35 only; use i6300esb",
                              "watchdog.model")
        if sum(1 for d in self.disks if d.effective_bus is DiskBus.IDE) > 4:
            raise SpecProblem("the IDE controller takes at most 4 drives; use sata or virtio",
                              "disks")
        names = [channel.name for channel in self.channels]
        if len(names) != len(set(names)):
            raise SpecProblem("two channels share one name; give each its own", "channels")
        tags = [fs.target for fs in self.filesystems]
        if len(tags) != len(set(tags)):
            raise SpecProblem("two filesystems share one mount tag; give each its own target",
                              "filesystems")
        if len(self.parallels) > 3:
            raise SpecProblem("at most 3 parallel ports are supported", "parallels")
        if self.parallels and self.machine is Machine.MICROVM:
            raise SpecProblem("microvm has no parallel port", "parallels")
        if len(self.serials) > 4:
            raise SpecProblem("at most 4 serial ports are supported", "serials")
        for field, message in check_tuning(
                vcpus_max=self.vcpus.maximum, memory_mib=self.memory.current,
                machine=self.machine.value, cputune=self.cputune, numa=self.numa,
                hostdevs=self.hostdevs, backing=self.memory_backing):
            raise SpecProblem(message, field)
        return self

    def _check_microvm(self) -> None:
        if self.firmware is Firmware.UEFI:
            raise SpecProblem("microvm boots without firmware; use firmware: bios or machine: q35",
                              "firmware")
        for index, disk in enumerate(self.disks):
            if disk.effective_bus is not DiskBus.VIRTIO:
                raise SpecProblem(
                    f"microvm has only virtio disks; {disk.path or 'an empty cdrom'} asks for "
                    f"{disk.effective_bus.value}", f"disks[{index}].bus")
        if self.graphics.type != "none":
            raise SpecProblem("microvm has no display; use graphics: none", "graphics")
        if self.watchdog is not None:
            raise SpecProblem("microvm has no watchdog device; remove watchdog", "watchdog")
        if self.sound:
            raise SpecProblem("microvm has no PCI bus for a sound card; remove sound", "sound")
        if self.filesystems:
            raise SpecProblem("shared folders need PCI; use machine: q35", "filesystems")
        if self.memory.max is not None:
            raise SpecProblem("memory hot-add (memory.max) is not available on microvm",
                              "memory.max")
        if self.boot.kernel is None:
            raise SpecProblem("microvm has no firmware to boot disks; set boot.kernel",
                              "boot.kernel")


def parse_cpuset(text: str) -> set[int]:
    """'0-3,6,^2' -> {0, 1, 3, 6}: libvirt's cpuset syntax (see model/cpulist.py)."""
    return parse_cpulist(text)


def validate_name(value: str) -> str:
    """Apply libvirt's domain name rules (plus a length cap) and return the name."""
    if not value or not value.strip():
        raise ValueError("name must not be empty")
    if value in (".", ".."):
        # a URL path segment of "." or ".." is removed by clients before it is sent:
        # such a domain could never be addressed as /v1/domains/{name}
        raise ValueError(f"name {value!r} is not allowed: '.' and '..' are path tricks")
    if "/" in value:
        raise ValueError(f"name {value!r} contains '/', which libvirt and virtkit forbid")
    if "{" in value or "}" in value:
        # the API's URL routes ({ref} in aiohttp) match no segment with braces in it
        raise ValueError(f"name {value!r} contains '{{' or '}}', which the API cannot address")
    if _CONTROL_CHARS.search(value):
        raise ValueError("name contains a control character (newline, tab ...)")
    if value != value.strip():
        raise ValueError(f"name {value!r} has leading or trailing spaces")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"name is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    return value
