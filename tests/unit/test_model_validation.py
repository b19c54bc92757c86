"""Table-driven tests of the domain spec: short forms, valid specs, one clear error per bad input.

Every bad input must give one :class:`InvalidSpec` whose ``field`` is the field path
(``disks[0].bus``) and whose one-line message names that path and says what is wrong.
``test_every_model_field_is_exercised`` fails when a field is added to the model
without a valid case here that sets it.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from virtkit.errors import InvalidSpec
from virtkit.model.domain import (
    AioMode,
    BootDevice,
    CacheMode,
    DiskBus,
    DiskDevice,
    Domain,
    Firmware,
    LifecycleAction,
    Machine,
)
from virtkit.model.load import load_domain
from virtkit.model.units import format_mib, parse_mib

BASE: dict[str, Any] = {"name": "vm", "memory": 512}
UUID = "6f1c6f9c-2b1e-4c8e-9a51-0c0f3f7e2a10"

# -- valid specs ----------------------------------------------------------------------------
# (id, spec, check); spec is merged over BASE unless it is a str (YAML text, used as is).

FULL_Q35: dict[str, Any] = {
    "name": "web-01",
    "uuid": UUID.upper(),
    "title": "Web server",
    "description": "serves the intranet",
    "metadata": {"http://libosinfo.org/xmlns/libvirt/domain/1.0":
                 '<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/'
                 'domain/1.0"><libosinfo:os id="http://debian.org/debian/12"/>'
                 '</libosinfo:libosinfo>'},
    "memory": {"current": "1G", "max": "2G"},
    "vcpus": {"current": 2, "max": 4, "sockets": 1, "cores": 2, "threads": 2},
    "cpu": {"model": "max", "features": ["+avx2", "-svm"]},
    "machine": "q35",
    "firmware": "uefi",
    "accelerator": "tcg",
    "boot": {"order": ["cdrom", "hd"], "menu": True, "kernel": "/boot/vmlinuz",
             "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0"},
    "disks": [
        {"path": "/var/lib/virtkit/web.qcow2", "format": "qcow2", "device": "disk",
         "bus": "virtio", "cache": "none", "aio": "native", "readonly": False,
         "serial": "web-root.1", "target": "vda"},
        {"path": "/srv/iso/debian.iso", "format": "raw", "device": "cdrom", "bus": "sata"},
    ],
    "nics": [{"type": "user", "restrict": True, "model": "e1000", "mac": "52:54:00:AB:CD:EF"}],
    "graphics": {"type": "vnc", "listen": "0.0.0.0", "port": 5901, "password": "secret",
                 "keymap": "en-us"},
    "serials": [{"log": False}, {"log": True}],
    "guest_agent": False,
    "watchdog": {"model": "itco", "action": "poweroff"},
    "rng": {"backend": "/dev/random"},
    "balloon": False,
    "on_poweroff": "restart",
    "on_reboot": "destroy",
    "on_crash": "preserve",
    "autostart": True,
}


def _check_minimal(d: Domain) -> None:
    assert d.name == "vm"
    assert d.memory.current == 512 and d.memory.max is None
    assert (d.vcpus.current, d.vcpus.maximum) == (1, 1)
    assert d.cpu.model == "auto" and d.cpu.features == []
    assert d.machine is Machine.Q35 and d.firmware is Firmware.BIOS
    assert d.graphics.type == "none"
    assert len(d.serials) == 1 and d.serials[0].log is True
    assert d.rng is not None and d.rng.backend == "/dev/urandom"
    assert d.watchdog is None
    assert d.boot.order == [BootDevice.HD] and d.boot.kernel is None
    assert d.disks == [] and d.nics == []
    assert d.on_poweroff is LifecycleAction.DESTROY and d.on_reboot is LifecycleAction.RESTART
    assert len(d.uuid) == 36


def _check_full(d: Domain) -> None:
    assert d.uuid == UUID  # normalised to lower case
    assert (d.title, d.description) == ("Web server", "serves the intranet")
    assert (d.memory.current, d.memory.max) == (1024, 2048)
    assert (d.vcpus.current, d.vcpus.maximum) == (2, 4)
    assert (d.vcpus.sockets, d.vcpus.cores, d.vcpus.threads) == (1, 2, 2)
    assert d.cpu.features == ["+avx2", "-svm"]
    assert d.firmware is Firmware.UEFI and d.accelerator == "tcg"
    assert d.boot.order == [BootDevice.CDROM, BootDevice.HD] and d.boot.menu is True
    assert d.boot.cmdline == "console=ttyS0"
    root, iso = d.disks
    assert root.cache is CacheMode.NONE and root.aio is AioMode.NATIVE
    assert root.effective_bus is DiskBus.VIRTIO and root.serial == "web-root.1"
    assert iso.device is DiskDevice.CDROM and iso.readonly is True
    assert d.nics[0].mac == "52:54:00:ab:cd:ef"  # normalised to lower case
    assert d.graphics.port == 5901 and d.graphics.password == "secret"
    assert [s.log for s in d.serials] == [False, True]
    assert d.watchdog is not None and d.watchdog.model == "itco"
    assert d.rng is not None and d.rng.backend == "/dev/random"
    assert (d.guest_agent, d.balloon, d.autostart) == (False, False, True)
    assert d.on_poweroff is LifecycleAction.RESTART
    assert d.on_reboot is LifecycleAction.DESTROY
    assert d.on_crash is LifecycleAction.PRESERVE


VALID: list[tuple[str, dict[str, Any] | str, Any]] = [
    ("tuning", {"memory": 1024, "vcpus": 2,
                "cputune": {"vcpupin": {1: "0-1"}, "emulatorpin": "0"},
                "numa": [{"cpus": "0", "memory": "512M"}, {"cpus": "1", "memory": 512}],
                "numatune": {"nodeset": "0", "mode": "interleave"},
                "memory_backing": {"hugepages": True, "page_size_kib": 2048},
                "hostdevs": [{"address": "03:00.0", "managed": False}]},
     lambda d: d.hostdevs[0].address == "0000:03:00.0" and d.numa[0].memory == 512),
    ("limits", {"cputune": {"shares": 2048, "period": 100000, "quota": -1},
                "memtune": {"hard_limit": 1048576, "soft_limit": 524288,
                            "swap_hard_limit": 9007199254740991},
                "blkiotune": {"weight": 500, "devices": [
                    {"path": "/dev/sda", "weight": 200, "read_bytes_sec": 1000,
                     "write_bytes_sec": 2000, "read_iops_sec": 10, "write_iops_sec": 0},
                    {"path": "/dev/sdb", "weight": 0}]},  # all unset: dropped
                "disks": [{"path": "/a.raw", "iotune": {"total_bytes_sec": 0,
                                                        "total_iops_sec": 100}},
                          {"path": "/b.raw", "iotune": {
                              "read_bytes_sec": 1, "write_bytes_sec": 2,
                              "read_iops_sec": 3, "write_iops_sec": 4}}]},
     # -1 and virsh's "unlimited" KiB are no limit; 0 is an unlimited throttle
     lambda d: d.cputune.quota is None and d.memtune.swap_hard_limit is None
     and d.disks[0].iotune.total_bytes_sec is None and d.disks[1].iotune.write_iops_sec == 4),
    ("minimal", {}, _check_minimal),
    ("transient", {"transient": True}, lambda d: d.transient and not d.autostart),
    ("anti-affinity", {"anti_affinity": "web-tier"}, lambda d: d.anti_affinity == "web-tier"),
    ("ha", {"ha": True}, lambda d: d.ha and not d.autostart),
    ("parallel", {"parallels": [{"path": "/var/log/lpt.log"}]},
     lambda d: d.parallels[0].path == "/var/log/lpt.log"),
    ("channels", {"channels": [{"name": "org.libguestfs.channel.0"},
                               {"name": "x", "path": "/run/x.sock"}]},
     lambda d: [c.name for c in d.channels] == ["org.libguestfs.channel.0", "x"]),
    ("serial-log-file", {"serials": [{"log_path": "/var/log/vm.log"}]},
     lambda d: d.serials[0].log_path == "/var/log/vm.log"),
    ("no-acpi", {"acpi": False, "machine": "pc"}, lambda d: d.acpi is False),
    ("cpuset", {"vcpus": {"current": 2, "cpuset": "0-3,^2"}},
     lambda d: d.vcpus.cpuset == "0-3,^2"),
    ("shared-folder", {"filesystems": [{"source": "/srv/share", "target": "share",
                                        "accessmode": "mapped", "readonly": True,
                                        "driver": "9p"}]},
     lambda d: d.filesystems[0].target == "share" and d.filesystems[0].readonly),
    ("sound-and-video", {"graphics": "vnc", "video": "qxl", "sound": [{"model": "ac97"}, {}]},
     lambda d: d.video == "qxl" and [c.model for c in d.sound] == ["ac97", "ich9"]),
    ("memory-int-mib", {"memory": 512}, lambda d: d.memory.current == 512),
    ("memory-1G", {"memory": "1G"}, lambda d: d.memory.current == 1024),
    ("memory-512M", {"memory": "512M"}, lambda d: d.memory.current == 512),
    ("memory-1.5G", {"memory": "1.5G"}, lambda d: d.memory.current == 1536),
    ("memory-GiB", {"memory": "2GiB"}, lambda d: d.memory.current == 2048),
    ("memory-object", {"memory": {"current": 512, "max": "1G"}},
     lambda d: (d.memory.current, d.memory.max) == (512, 1024)),
    ("vcpus-int", {"vcpus": 2}, lambda d: (d.vcpus.current, d.vcpus.maximum) == (2, 2)),
    ("vcpus-object", {"vcpus": {"current": 1, "max": 4}},
     lambda d: (d.vcpus.current, d.vcpus.maximum) == (1, 4)),
    ("vcpus-topology-cores-only", {"vcpus": {"current": 4, "cores": 4}},
     lambda d: d.vcpus.cores == 4),
    ("graphics-vnc", {"graphics": "vnc"},
     lambda d: (d.graphics.type, d.graphics.listen, d.graphics.port) == ("vnc", "127.0.0.1",
                                                                         "auto")),
    ("graphics-none", {"graphics": "none"}, lambda d: d.graphics.type == "none"),
    ("cpu-named-model", {"cpu": "qemu64"}, lambda d: d.cpu.model == "qemu64"),
    ("watchdog-true", {"watchdog": True},
     lambda d: d.watchdog is not None and (d.watchdog.model, d.watchdog.action)
     == ("i6300esb", "reset")),
    ("watchdog-false", {"watchdog": False}, lambda d: d.watchdog is None),
    ("rng-null", {"rng": None}, lambda d: d.rng is None),
    ("rng-true", {"rng": True}, lambda d: d.rng is not None),
    ("cdrom-empty-forced-readonly", {"disks": [{"device": "cdrom", "readonly": False}]},
     lambda d: d.disks[0].readonly and d.disks[0].effective_bus is DiskBus.SATA),
    ("pc-ide-cdrom", {"machine": "pc", "disks": [{"device": "cdrom", "bus": "ide"}]},
     lambda d: d.disks[0].effective_bus is DiskBus.IDE),
    ("microvm", {"machine": "microvm", "boot": {"kernel": "/k", "cmdline": "console=ttyS0"},
                 "disks": [{"path": "/d.img"}]},
     lambda d: d.machine is Machine.MICROVM and d.disks[0].effective_bus is DiskBus.VIRTIO),
    ("disk-by-volume", {"disks": [{"pool": "default", "volume": "vm.qcow2"}]},
     lambda d: (d.disks[0].pool, d.disks[0].volume, d.disks[0].path)
     == ("default", "vm.qcow2", None)),
    ("nic-network", {"nics": [{"network": "default", "model": "e1000", "link": "down"}]},
     lambda d: (d.nics[0].type, d.nics[0].network, d.nics[0].link) == ("network", "default",
                                                                       "down")),
    ("nic-bridge", {"nics": [{"bridge": "br0"}]},
     lambda d: (d.nics[0].type, d.nics[0].bridge) == ("bridge", "br0")),
    ("nic-defaults", {"nics": [{}]},
     lambda d: (d.nics[0].type, d.nics[0].restrict, d.nics[0].model) == ("user", True,
                                                                         "virtio")),
    ("full-q35", FULL_Q35, _check_full),
    ("yaml-text", "name: vm\nmemory: 1G\nvcpus: 2\ngraphics: vnc\n",
     lambda d: (d.memory.current, d.vcpus.current, d.graphics.type) == (1024, 2, "vnc")),
    ("json-text", '{"name": "vm", "memory": "512M", "cpu": "qemu64"}',
     lambda d: (d.memory.current, d.cpu.model) == (512, "qemu64")),
]


def _spec(spec: dict[str, Any] | str) -> dict[str, Any] | str:
    return spec if isinstance(spec, str) else {**BASE, **spec}


@pytest.mark.parametrize(("spec", "check"), [pytest.param(s, c, id=i) for i, s, c in VALID])
def test_valid_spec(spec: dict[str, Any] | str, check: Any) -> None:
    domain = load_domain(_spec(spec))
    assert isinstance(domain, Domain)
    assert check(domain) is not False


def test_uuid_is_kept_and_default_uuids_differ() -> None:
    assert load_domain({**BASE, "uuid": UUID}).uuid == UUID
    assert load_domain(BASE).uuid != load_domain(BASE).uuid


# -- bad specs ------------------------------------------------------------------------------

def bad(case_id: str, overrides: dict[str, Any], field: str, fragment: str) -> Any:
    return pytest.param(overrides, field, fragment, id=case_id)


DELETE = object()

BAD = [
    bad("shares-range", {"cputune": {"shares": 1}}, "cputune.shares", "out of range"),
    bad("period-range", {"cputune": {"period": 999}}, "cputune.period", "out of range"),
    bad("quota-range", {"cputune": {"quota": 5}}, "cputune.quota", "out of range"),
    bad("swap-below-hard", {"memtune": {"hard_limit": 2048, "swap_hard_limit": 1024}},
        "memtune", "at least hard_limit"),
    bad("blkio-weight", {"blkiotune": {"weight": 5000}}, "blkiotune.weight", "10-1000"),
    bad("blkio-device-weight", {"blkiotune": {"devices": [{"path": "/dev/sda",
                                                           "weight": 1}]}},
        "blkiotune.devices[0].weight", "10-1000"),
    bad("blkio-device-path", {"blkiotune": {"devices": [{"path": "/etc/passwd"}]}},
        "blkiotune.devices[0].path", "under /dev"),
    bad("blkio-device-twice", {"blkiotune": {"devices": [{"path": "/dev/sda"},
                                                         {"path": "/dev/sda"}]}},
        "blkiotune.devices", "twice"),
    bad("iotune-total-and-read", {"disks": [{"path": "/a", "iotune": {
        "total_bytes_sec": 1, "read_bytes_sec": 1}}]}, "disks[0].iotune",
        "cannot be combined"),
    bad("vcpupin-beyond-max", {"vcpus": 2, "cputune": {"vcpupin": {2: "0"}}},
        "cputune.vcpupin", "vCPU 2 does not exist"),
    bad("vcpupin-bad-list", {"cputune": {"vcpupin": {0: "0-"}}}, "cputune.vcpupin",
        "cannot read"),
    bad("numa-cells-miss-a-vcpu", {"vcpus": 2, "numa": [{"cpus": "0", "memory": 512}]},
        "numa", "every vCPU must be in exactly one cell"),
    bad("numa-cells-overlap", {"vcpus": 2, "numa": [{"cpus": "0-1", "memory": 256},
                                                    {"cpus": "1", "memory": 256}]},
        "numa[1].cpus", "are in two cells"),
    bad("numa-memory-sum", {"numa": [{"cpus": "0", "memory": 256}]}, "numa",
        "make them add up"),
    bad("hugepage-size-odd", {"memory_backing": {"hugepages": True, "page_size_kib": 4}},
        "memory_backing.page_size_kib", "2048"),
    bad("hugepage-multiple", {"memory": 1000, "memory_backing": {"hugepages": True,
                                                                 "page_size_kib": 1048576}},
        "memory_backing.page_size_kib", "multiple of the 1024 MiB"),
    bad("hostdev-address", {"hostdevs": [{"address": "pci_0000_01"}]}, "hostdevs[0].address",
        "must look like 0000:01:00.0"),
    bad("numatune-nodeset", {"numatune": {"nodeset": "x"}}, "numatune.nodeset",
        "cannot read"),
    bad("name-slash", {"name": "a/b"}, "name", "contains '/'"),
    bad("name-empty", {"name": ""}, "name", "must not be empty"),
    bad("name-blank", {"name": "   "}, "name", "must not be empty"),
    bad("name-newline", {"name": "a\nb"}, "name", "control character"),
    bad("name-leading-spaces", {"name": "  vm"}, "name", "leading or trailing spaces"),
    bad("name-200-chars", {"name": "x" * 200}, "name", "the limit is 128"),
    bad("name-missing", {"name": DELETE}, "name", "is required"),
    bad("name-not-string", {"name": 5}, "name", "valid string"),
    bad("memory-0", {"memory": 0}, "memory", "at least 1 MiB"),
    bad("memory-negative", {"memory": -5}, "memory", "at least 1 MiB"),
    bad("memory-12X", {"memory": "12X"}, "memory.current", "cannot read size '12X'"),
    bad("memory-fraction-of-mib", {"memory": "1.5K"}, "memory.current", "whole number of MiB"),
    bad("memory-max-below-current", {"memory": {"current": "2G", "max": "1G"}}, "memory",
        "max memory 1024 MiB is below current memory 2048 MiB"),
    bad("vcpus-0", {"vcpus": 0}, "vcpus", "at least 1"),
    bad("vcpus-above-limit", {"vcpus": 1000}, "vcpus", "above the limit of 288"),
    bad("vcpus-current-above-max", {"vcpus": {"current": 4, "max": 2}}, "vcpus",
        "current 4 is above max 2"),
    bad("vcpus-topology-mismatch", {"vcpus": {"current": 4, "sockets": 1, "cores": 2,
                                              "threads": 1}},
        "vcpus", "sockets*cores*threads = 2 does not match max vcpus 4"),
    bad("vcpus-topology-zero", {"vcpus": {"current": 1, "cores": 0}}, "vcpus", "at least 1"),
    bad("machine-unknown", {"machine": "virt"}, "machine", "'q35', 'pc' or 'microvm'"),
    bad("disk-bus-unknown", {"disks": [{"path": "/d.img", "bus": "usb"}]}, "disks[0].bus",
        "'virtio', 'sata', 'scsi' or 'ide'"),
    bad("disk-path-relative", {"disks": [{"path": "d.img"}]}, "disks[0].path",
        "must be absolute"),
    bad("disk-path-newline", {"disks": [{"path": "/d\n.img"}]}, "disks[0].path",
        "control character"),
    bad("disk-without-path", {"disks": [{"format": "raw"}]}, "disks[0]", "needs a path"),
    bad("disk-second-bad", {"disks": [{"path": "/a"}, {"path": "/b", "format": "iso"}]},
        "disks[1].format", "'raw'"),
    bad("disk-pool-without-volume", {"disks": [{"pool": "default"}]}, "disks[0]",
        "pool and volume go together"),
    bad("disk-serial-bad", {"disks": [{"path": "/a", "serial": "has space"}]},
        "disks[0].serial", "1-20 characters"),
    bad("disk-aio-native-writeback", {"disks": [{"path": "/a", "aio": "native",
                                                 "cache": "writeback"}]},
        "disks[0]", "aio=native needs cache=none"),
    bad("cdrom-on-virtio", {"disks": [{"device": "cdrom", "bus": "virtio"}]}, "disks[0]",
        "cannot sit on the virtio bus"),
    bad("q35-ide-bus", {"disks": [{"path": "/d.img", "bus": "ide"}]}, "disks[0].bus",
        "q35 has no IDE controller"),
    bad("microvm-uefi", {"machine": "microvm", "firmware": "uefi", "boot": {"kernel": "/k"}},
        "firmware", "microvm boots without firmware"),
    bad("microvm-sata-disk", {"machine": "microvm", "boot": {"kernel": "/k"},
                              "disks": [{"path": "/d.img", "bus": "sata"}]},
        "disks[0].bus", "microvm has only virtio disks"),
    bad("microvm-vnc", {"machine": "microvm", "boot": {"kernel": "/k"}, "graphics": "vnc"},
        "graphics", "microvm has no display"),
    bad("microvm-no-kernel", {"machine": "microvm"}, "boot.kernel",
        "microvm has no firmware to boot disks"),
    bad("initrd-without-kernel", {"boot": {"initrd": "/boot/initrd.img"}}, "boot",
        "need boot.kernel"),
    bad("kernel-relative", {"boot": {"kernel": "vmlinuz"}}, "boot",
        "boot.kernel must be an absolute path"),
    bad("boot-order-twice", {"boot": {"order": ["hd", "hd"]}}, "boot", "lists a device twice"),
    bad("vnc-password-9-chars", {"graphics": {"type": "vnc", "password": "123456789"}},
        "graphics.password", "1 to 8 characters"),
    bad("vnc-port-80", {"graphics": {"type": "vnc", "port": 80}}, "graphics.port",
        "between 5900 and 65535"),
    bad("vnc-listen-bad", {"graphics": {"type": "vnc", "listen": "a b"}}, "graphics.listen",
        "not an IP address"),
    bad("unknown-top-level-field", {"colour": "red"}, "colour", "unknown field"),
    bad("unknown-nested-field", {"disks": [{"path": "/a", "size": 10}]}, "disks[0].size",
        "unknown field"),
    bad("uuid-invalid", {"uuid": "not-a-uuid"}, "uuid", "is not a UUID"),
    bad("on-poweroff-preserve", {"on_poweroff": "preserve"}, "on_poweroff",
        "destroy or restart"),
    bad("on-reboot-preserve", {"on_reboot": "preserve"}, "on_reboot", "restart or destroy"),
    bad("nic-unrestricted", {"nics": [{"restrict": False}]}, "nics[0]",
        "unrestricted user-mode NIC"),
    bad("nic-multicast-mac", {"nics": [{"mac": "01:00:5e:00:00:01"}]}, "nics[0].mac",
        "multicast"),
    bad("nic-mac-syntax", {"nics": [{"mac": "52-54-00-12-34-56"}]}, "nics[0].mac",
        "must look like 52:54:00:12:34:56"),
    bad("nic-type-bridge-without-name", {"nics": [{"type": "bridge"}]}, "nics[0]",
        "needs bridge: NAME"),
    bad("nic-type-unknown", {"nics": [{"type": "macvtap"}]}, "nics[0].type", "'user'"),
    bad("nic-network-empty", {"nics": [{"type": "network"}]}, "nics[0]", "needs network"),
    bad("nic-user-with-network", {"nics": [{"type": "user", "network": "default"}]},
        "nics[0]", "takes no network"),
    bad("nic-bridge-name", {"nics": [{"bridge": "a-very-long-bridge-name"}]},
        "nics[0].bridge", "interface name"),
    bad("cpu-feature-syntax", {"cpu": {"features": ["avx2"]}}, "cpu.features",
        "must look like '+avx2'"),
    bad("cpu-model-characters", {"cpu": "qemu64,+avx"}, "cpu.model", "characters"),
    bad("rng-backend", {"rng": {"backend": "/dev/zero"}}, "rng.backend", "/dev/urandom"),
    bad("too-many-serials", {"serials": [{}] * 5}, "serials", "at most 4 serial ports"),
    bad("cpuset-syntax", {"vcpus": {"cpuset": "0-a"}}, "vcpus.cpuset", "cannot read '0-a'"),
    bad("cpuset-empty", {"vcpus": {"cpuset": "1,^1"}}, "vcpus.cpuset", "names no CPU"),
    bad("filesystem-tag", {"filesystems": [{"source": "/srv", "target": "a b"}]},
        "filesystems[0].target", "mount tag"),
    bad("filesystem-same-tag", {"filesystems": [{"source": "/a", "target": "t"},
                                                {"source": "/b", "target": "t"}]},
        "filesystems", "share one mount tag"),
    bad("sound-model", {"sound": [{"model": "sb16"}]}, "sound[0].model", "'ich9'"),
    bad("video-model", {"video": "vmvga"}, "video", "'vga'"),
    bad("no-acpi-on-q35", {"acpi": False}, "acpi", "always has ACPI"),
    bad("too-many-parallels", {"parallels": [{"path": "/a"}] * 4}, "parallels", "at most 3"),
    bad("channel-agent-name", {"channels": [{"name": "org.qemu.guest_agent.0"}]},
        "channels[0].name", "guest_agent: true"),
    bad("channel-twice", {"channels": [{"name": "a"}, {"name": "a"}]}, "channels",
        "share one name"),
    bad("serial-log-path-relative", {"serials": [{"log_path": "vm.log"}]},
        "serials[0].log_path", "absolute file path"),
    bad("virtiofs-read-only", {"filesystems": [{"source": "/a", "target": "t",
                                                "driver": "virtiofs", "readonly": True}]},
        "filesystems[0]", "use driver: 9p"),
]


@pytest.mark.parametrize(("overrides", "field", "fragment"), BAD)
def test_bad_spec(overrides: dict[str, Any], field: str, fragment: str) -> None:
    spec = {**BASE, **overrides}
    spec = {k: v for k, v in spec.items() if v is not DELETE}
    with pytest.raises(InvalidSpec) as info:
        load_domain(spec)
    exc = info.value
    assert exc.field == field, exc.message
    assert exc.message.startswith(f"invalid domain spec: {field}: "), exc.message
    assert fragment in exc.message
    assert "\n" not in exc.message  # one line, even when the input had a newline
    assert exc.details["field"] == field
    assert exc.http_status == 400


def test_unrestricted_nic_is_refused_on_assignment_too() -> None:
    domain = load_domain({**BASE, "nics": [{}]})
    with pytest.raises(ValueError, match="unrestricted user-mode NIC"):
        domain.nics[0].restrict = False


def test_refused_assignment_leaves_the_spec_unchanged() -> None:
    domain = load_domain({**BASE, "nics": [{}]})
    with pytest.raises(ValueError, match="unrestricted user-mode NIC"):
        domain.nics[0].restrict = False
    assert domain.nics[0].restrict is True


def test_microvm_cdrom_error_names_the_effective_bus() -> None:
    with pytest.raises(InvalidSpec) as info:
        load_domain({**BASE, "machine": "microvm", "boot": {"kernel": "/k"},
                     "disks": [{"device": "cdrom"}]})
    assert "None" not in info.value.message
    assert "sata" in info.value.message


def test_several_problems_are_counted() -> None:
    with pytest.raises(InvalidSpec) as info:
        load_domain({"name": "a/b", "memory": 0, "machine": "virt"})
    assert "(and 2 more problems)" in info.value.message
    assert len(info.value.details["problems"]) == 3


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: [unclosed", "not valid YAML or JSON at line"),
    ("- a\n- b\n", "expected a mapping"),
    ("just a string", "expected a mapping"),
])
def test_unreadable_text(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=fragment):
        load_domain(text)


# -- every model field is exercised by a valid case ------------------------------------------

def _spec_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (through Optional, list, Annotated ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found += _spec_models(arg)
    return found


def _model_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, info in model.model_fields.items():
        path = prefix + name
        paths.add(path)
        for sub in _spec_models(info.annotation):
            paths |= _model_paths(sub, path + ".")
    return paths


def _set_paths(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, value in data.items():
        path = prefix + name
        paths.add(path)
        info = model.model_fields.get(name)
        subs = _spec_models(info.annotation) if info else []
        if not subs:
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                paths |= _set_paths(subs[0], item, path + ".")
    return paths


def test_every_model_field_is_exercised() -> None:
    covered: set[str] = set()
    for _id, spec, _check in VALID:
        data = yaml.safe_load(spec) if isinstance(spec, str) else {**BASE, **spec}
        covered |= _set_paths(Domain, data)
    required = _model_paths(Domain)
    assert "disks.bus" in required and "memory.max" in required  # the walk reaches nested specs
    missing = sorted(required - covered)
    assert not missing, f"model fields no valid case sets (add them to VALID): {missing}"


# -- units ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "mib"), [
    (512, 512), (0, 0), ("512", 512), ("512M", 512), ("512m", 512), ("512MiB", 512),
    ("512MB", 512), ("1G", 1024), ("1.5G", 1536), ("1.25g", 1280), ("0.5G", 512),
    (" 2 G ", 2048), ("2GiB", 2048), ("2048K", 2), ("1T", 1024 * 1024), ("1TiB", 1024 * 1024),
])
def test_parse_mib(value: int | str, mib: int) -> None:
    assert parse_mib(value, field="memory") == mib


@pytest.mark.parametrize("value", ["12X", "", "-5", "1e3", "G", "1.5K", "1Gi", "one", True])
def test_parse_mib_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^disks\[0\]\.size: "):
        parse_mib(value, field="disks[0].size")


@pytest.mark.parametrize("value", ["512B", "512b", "512iB"])
def test_parse_mib_byte_suffix_is_not_mib(value: str) -> None:
    with pytest.raises(ValueError, match=r"^memory: cannot read size"):
        parse_mib(value, field="memory")


@pytest.mark.parametrize(("mib", "text"), [
    (0, "0 MiB"), (1, "1 MiB"), (512, "512 MiB"), (1023, "1023 MiB"), (1024, "1 GiB"),
    (1536, "1.5 GiB"), (2048, "2 GiB"), (3072, "3 GiB"), (1024 * 1024, "1024 GiB"),
])
def test_format_mib(mib: int, text: str) -> None:
    assert format_mib(mib) == text


@pytest.mark.parametrize("mib", [1, 512, 1024, 1536, 2048, 2560, 4096])
def test_format_then_parse_round_trips(mib: int) -> None:
    assert parse_mib(format_mib(mib).replace(" ", ""), field="x") == mib
