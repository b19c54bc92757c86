"""Resource limits of a running QEMU: its cgroup's CPU, memory and block I/O files
(virsh schedinfo, memtune, blkiotune) and QEMU's per-disk I/O throttle (blkdeviotune).

The spec's values (``cputune`` shares/period/quota, ``memtune``, ``blkiotune``) are
written into the QEMU's own cgroup (host/cgroups.py) at start, before ``cont``, and
whenever changed ``--live``.  Both cgroup layouts, as libvirt maps them:

=================  ==================================  =================================
virsh              cgroup v2                           cgroup v1
=================  ==================================  =================================
cpu_shares         cpu.weight (1 + (s-2)*9999/262142)  cpu.shares
vcpu_period/quota  cpu.max ("QUOTA PERIOD", max)       cpu.cfs_period_us / cfs_quota_us
hard_limit         memory.max                          memory.limit_in_bytes
soft_limit         memory.high                         memory.soft_limit_in_bytes
swap_hard_limit    memory.swap.max (swap - hard)       memory.memsw.limit_in_bytes
blkio weight       io.bfq.weight or io.weight          blkio.bfq.weight or blkio.weight
device weight      io.bfq.weight / io.weight "M:m W"   blkio.(bfq.)weight_device "M:m W"
device bytes/s     io.max "M:m rbps=N wbps=N"          blkio.throttle.read/write_bps_device
device IOPS        io.max "M:m riops=N wiops=N"        blkio.throttle.read/write_iops_device
=================  ==================================  =================================

A device is named by its path in the spec (``/dev/sda``) and by ``MAJ:MIN`` in the
cgroup files (:func:`block_device_number`, at every write); 0 removes a device's value.

A value the host has no file for (no swap accounting, no blkio/io controller, a
QEMU without a cgroup) is refused naming what is missing -- never silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias

from virtkit.errors import HostError, InvalidSpec
from virtkit.host.cgroups import Cgroup
from virtkit.model.domain import Domain
from virtkit.model.tuning import IOTUNE_KEYS, UNLIMITED_KIB, IoTune
from virtkit.qemu.argv import disk_slots
from virtkit.qemu.monitor import Monitor

#: QEMU's block_set_io_throttle arguments for the spec's iotune keys
QMP_THROTTLE = {"total_bytes_sec": "bps", "read_bytes_sec": "bps_rd",
                "write_bytes_sec": "bps_wr", "total_iops_sec": "iops",
                "read_iops_sec": "iops_rd", "write_iops_sec": "iops_wr"}


def shares_to_weight(shares: int) -> int:
    """libvirt's cpu_shares (2-262144) to cgroup v2 cpu.weight (1-10000)."""
    return 1 + (shares - 2) * 9999 // 262142


def weight_to_shares(weight: int) -> int:
    return 2 + (weight - 1) * 262142 // 9999


def cgroup_writes(version: str, sched: dict[str, Any], mem: dict[str, Any],
                  blkio: dict[str, Any], have: set[str]) -> list[tuple[str, str, str]]:
    """(controller folder key, file, value) to write for the values given (None: leave
    it), pure.  ``have``: the file names present (``controller/file`` on v1) to choose
    between alternatives (io.bfq.weight or io.weight)."""
    writes: list[tuple[str, str, str]] = []
    v2 = version == "v2"
    if sched.get("shares") is not None:
        writes.append(("", "cpu.weight", str(shares_to_weight(sched["shares"]))) if v2
                      else ("cpu", "cpu.shares", str(sched["shares"])))
    if sched.get("period") is not None or sched.get("quota") is not None:
        period = sched.get("period") or 100000
        quota = sched.get("quota")
        if v2:
            writes.append(("", "cpu.max", f"{'max' if quota in (None, -1) else quota} "
                                          f"{period}"))
        else:
            if sched.get("period") is not None:
                writes.append(("cpu", "cpu.cfs_period_us", str(period)))
            if quota is not None:
                writes.append(("cpu", "cpu.cfs_quota_us", str(quota)))

    def limit(kib: int | None) -> str:
        return ("max" if v2 else "-1") if kib in (None, UNLIMITED_KIB) else str(kib * 1024)

    if mem.get("hard_limit") is not None:
        writes.append(("", "memory.max", limit(mem["hard_limit"])) if v2
                      else ("memory", "memory.limit_in_bytes", limit(mem["hard_limit"])))
    if mem.get("soft_limit") is not None:
        writes.append(("", "memory.high", limit(mem["soft_limit"])) if v2
                      else ("memory", "memory.soft_limit_in_bytes", limit(mem["soft_limit"])))
    if mem.get("swap_hard_limit") is not None:
        if v2:
            hard = mem.get("hard_limit")
            swap = mem["swap_hard_limit"] - (hard if hard and hard != UNLIMITED_KIB else 0)
            writes.append(("", "memory.swap.max", str(max(swap, 0) * 1024)))
        else:
            writes.append(("memory", "memory.memsw.limit_in_bytes",
                           limit(mem["swap_hard_limit"])))
    if blkio.get("weight") is not None:
        key, prefix = ("", "io") if v2 else ("blkio", "blkio")
        bfq = f"{prefix}.bfq.weight"
        name = bfq if (bfq if v2 else f"blkio/{bfq}") in have else f"{prefix}.weight"
        writes.append((key, name, (f"default {blkio['weight']}" if name == "io.weight"
                                   else str(blkio["weight"]))))
    for device in blkio.get("devices") or []:
        writes += _device_writes(v2, device, have)
    return writes


#: a device throttle's file under cgroup v1, and its io.max key under v2
V1_THROTTLE = {"read_bytes_sec": "blkio.throttle.read_bps_device",
               "write_bytes_sec": "blkio.throttle.write_bps_device",
               "read_iops_sec": "blkio.throttle.read_iops_device",
               "write_iops_sec": "blkio.throttle.write_iops_device"}
V2_THROTTLE = {"read_bytes_sec": "rbps", "write_bytes_sec": "wbps",
               "read_iops_sec": "riops", "write_iops_sec": "wiops"}


def _device_writes(v2: bool, device: dict[str, Any], have: set[str]
                   ) -> list[tuple[str, str, str]]:
    """The writes of one device (``{"dev": "8:0", "weight": 500, "read_bytes_sec": 0,
    ...}``; None: leave it, 0: remove it)."""
    dev = device["dev"]
    writes: list[tuple[str, str, str]] = []
    weight = device.get("weight")
    if weight is not None:
        if v2:
            name = "io.bfq.weight" if "io.bfq.weight" in have else "io.weight"
            writes.append(("", name, f"{dev} {weight or 'default'}"))
        else:
            name = "blkio.bfq.weight_device" if "blkio/blkio.bfq.weight_device" in have \
                else "blkio.weight_device"
            writes.append(("blkio", name, f"{dev} {weight}"))
    throttles = {k: device[k] for k in V1_THROTTLE if device.get(k) is not None}
    if v2 and throttles:
        limits = " ".join(f"{V2_THROTTLE[k]}={v or 'max'}" for k, v in throttles.items())
        writes.append(("", "io.max", f"{dev} {limits}"))
    elif throttles:
        writes += [("blkio", V1_THROTTLE[k], f"{dev} {v}") for k, v in throttles.items()]
    return writes


def device_path(dev: str, sys_root: str = "/sys") -> str:
    """The /dev path of block device ``MAJ:MIN`` (sysfs names it: /sys/dev/block/MAJ:MIN
    links to .../block/vda), else /dev/block/MAJ:MIN as udev would link it."""
    if dev.startswith("/"):
        return dev
    name = os.path.basename(os.path.realpath(f"{sys_root}/dev/block/{dev}"))
    node = f"/dev/{name}"
    with contextlib.suppress(OSError):
        if name != dev and stat.S_ISBLK(os.stat(node).st_mode):
            return node
    return f"/dev/block/{dev}"


def block_device_number(path: str) -> str:
    """``MAJ:MIN`` of a host block device (what the cgroup files name)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidSpec(f"blkiotune device {path}: {exc.strerror}", field="devices",
                          fix="name a block device of this host, e.g. /dev/sda") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidSpec(f"blkiotune device {path} is not a block device",
                          field="devices", fix="name a block device of this host "
                          "(lsblk lists them), not a file or partition image")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _files(group: Cgroup) -> set[str]:
    found: set[str] = set()
    for key, folder in group.dirs.items():
        try:
            names = [p.name for p in folder.iterdir()]
        except OSError:
            continue
        found |= {name if group.version == "v2" else f"{key}/{name}" for name in names}
    return found


def _folder(group: Cgroup, key: str) -> Path | None:
    if group.version == "v2":
        return group.dirs.get("")
    return group.dirs.get(key)


def require_cgroup(group: Cgroup | None, name: str, what: str) -> Cgroup:
    if group is None:
        raise HostError(f"cannot set {what} of domain '{name}': its QEMU has no cgroup "
                        "(the daemon runs unconfined, or with --no-cgroup where none could "
                        "be made)", fix="run virtkitd as root where /sys/fs/cgroup is "
                        "writable; 'virtkit host check' shows the cgroup state")
    return group


def apply(group: Cgroup | None, name: str, sched: dict[str, Any], mem: dict[str, Any],
          blkio: dict[str, Any]) -> list[str]:
    """Write the values into the QEMU's cgroup; the files written.  A value whose file
    this host lacks raises HostError naming it (before anything is written)."""
    wanted = {k: v for part in (sched, mem, blkio) for k, v in part.items()
              if v is not None and v != []}
    if not wanted:
        return []
    group = require_cgroup(group, name, ", ".join(sorted(wanted)))
    have = _files(group)
    if blkio.get("devices"):
        blkio = {**blkio, "devices": [{**d, "dev": block_device_number(d["path"])}
                                      for d in blkio["devices"]]}
    writes = cgroup_writes(group.version, sched, mem, blkio, have)
    missing = []
    for key, file, _value in writes:
        folder = _folder(group, key)
        shown = file if group.version == "v2" else f"{key}/{file}"
        if folder is None or shown not in have:
            missing.append(shown)
    if missing:
        raise HostError(f"cannot set limits of domain '{name}': this host's cgroup "
                        f"{group.version} has no {', '.join(dict.fromkeys(missing))} "
                        f"({_why_missing(group, missing)})",
                        fix="leave that value unset, or enable it on the host")
    written = []
    for key, file, value in writes:
        folder = _folder(group, key)
        assert folder is not None
        try:
            (folder / file).write_text(value)
        except OSError as exc:
            raise HostError(f"cannot write {value!r} to {folder / file}: {exc.strerror}",
                            fix="check the value against the host's limits") from exc
        written.append(str(folder / file))
    return written


def _why_missing(group: Cgroup, missing: list[str]) -> str:
    """What the host lacks for the files ``missing``, as exactly as it can tell."""
    reasons = []
    if group.version == "v1" and any(m.startswith("blkio/") for m in missing) \
            and "blkio" not in group.dirs:
        reasons.append("the blkio controller is not mounted (no /sys/fs/cgroup/blkio), so "
                       "the QEMU's group has none")
    elif any("weight" in m for m in missing):
        reasons.append("I/O weights need the BFQ (or, before Linux 5.0, CFQ) I/O "
                       "scheduler; the kernel has none loaded or the disks use another "
                       "(cat /sys/block/*/queue/scheduler; modprobe bfq and select it)")
    if any("memsw" in m or "swap" in m for m in missing):
        reasons.append("the kernel has no swap accounting (swapaccount=1)")
    if not reasons:
        reasons.append("the controller is not mounted or not enabled for the QEMU's group")
    return "; ".join(reasons)


#: a cgroup's current values by virsh's names (cpu_shares, hard_limit, weight ...;
#: ``devices``: per block device, by MAJ:MIN); None where a file is absent
Values: TypeAlias = dict[str, Any]


def read(group: Cgroup | None) -> Values:
    """The current values, by virsh's names (None where the file is absent)."""
    if group is None:
        return {}

    def get(key: str, file: str) -> str | None:
        folder = _folder(group, key)
        try:
            return (folder / file).read_text().strip() if folder else None
        except OSError:
            return None

    def kib(text: str | None) -> int | None:
        if text is None:
            return None
        if text == "max" or int(text) >= 2**62 or int(text) < 0:  # v1: PAGE_COUNTER_MAX
            return UNLIMITED_KIB
        return int(text) // 1024

    if group.version == "v2":
        weight, cpumax = get("", "cpu.weight"), get("", "cpu.max")
        quota, _, period = (cpumax or "max 100000").partition(" ")
        io = get("", "io.bfq.weight") or get("", "io.weight")
        io_devices = _v2_devices(io, get("", "io.max"))
        io = next((line for line in (io or "").splitlines() if line.startswith("default")),
                  io)
        return {"devices": io_devices,
                "cpu_shares": weight_to_shares(int(weight)) if weight else None,
                "vcpu_period": int(period), "vcpu_quota": -1 if quota == "max" else int(quota),
                "hard_limit": kib(get("", "memory.max")),
                "soft_limit": kib(get("", "memory.high")),
                "swap_hard_limit": kib(get("", "memory.swap.max")),
                "weight": int(io.split()[-1]) if io else None}
    shares, cfs_period, cfs_quota = (get("cpu", "cpu.shares"), get("cpu", "cpu.cfs_period_us"),
                                     get("cpu", "cpu.cfs_quota_us"))
    io = get("blkio", "blkio.bfq.weight") or get("blkio", "blkio.weight")
    devices: dict[str, dict[str, int]] = {}
    for key, file in (("weight", "blkio.bfq.weight_device"), ("weight", "blkio.weight_device"),
                      *V1_THROTTLE.items()):
        for line in (get("blkio", file) or "").splitlines():
            dev, _, value = line.partition(" ")
            if value.strip().isdecimal() and int(value) > 0:
                devices.setdefault(dev, {})[key] = int(value)
    return {"devices": devices, "cpu_shares": int(shares) if shares else None,
            "vcpu_period": int(cfs_period) if cfs_period else None,
            "vcpu_quota": int(cfs_quota) if cfs_quota else None,
            "hard_limit": kib(get("memory", "memory.limit_in_bytes")),
            "soft_limit": kib(get("memory", "memory.soft_limit_in_bytes")),
            "swap_hard_limit": kib(get("memory", "memory.memsw.limit_in_bytes")),
            "weight": int(io.split()[-1]) if io else None}


def _v2_devices(weights: str | None, io_max: str | None) -> dict[str, dict[str, int]]:
    """{MAJ:MIN: values} from io.weight's and io.max's device lines."""
    devices: dict[str, dict[str, int]] = {}
    for line in (weights or "").splitlines():
        dev, _, value = line.partition(" ")
        if ":" in dev and value.strip().isdecimal():
            devices.setdefault(dev, {})["weight"] = int(value)
    names = {v: k for k, v in V2_THROTTLE.items()}
    for line in (io_max or "").splitlines():
        dev, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in names and value.isdecimal():
                devices.setdefault(dev, {})[names[key]] = int(value)
    return devices


def spec_values(domain: Domain) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(sched, mem, blkio) of the spec, for :func:`apply` at start."""
    tune = domain.cputune
    return ({"shares": tune.shares, "period": tune.period, "quota": tune.quota},
            domain.memtune.model_dump(), domain.blkiotune.model_dump())


# -- QEMU's I/O throttle (blkdeviotune) ---------------------------------------------------

def disk_device(domain: Domain, target: str) -> tuple[int, str]:
    """(index in disks, QEMU device id) of the disk named ``target`` (vda) or its path."""
    for slot in disk_slots(domain):
        if target in (slot.target, domain.disks[slot.index].path, slot.device_id):
            return slot.index, slot.device_id
    raise KeyError(target)


async def _block(monitor: Monitor, device_id: str) -> dict[str, Any] | None:
    """query-block's entry of the disk with QEMU device id ``device_id``; its ``qdev``
    is the QOM path (for virtio: ``/machine/peripheral/disk0/virtio-backend``, the
    device that owns the block backend, as libvirt passes it)."""
    for block in await monitor.query_block():
        qdev = str(block.get("qdev", ""))
        if qdev == device_id or qdev.startswith(f"/machine/peripheral/{device_id}/") \
                or qdev == f"/machine/peripheral/{device_id}":
            return dict(block)
    return None


async def set_io_throttle(monitor: Monitor, device_id: str, iotune: IoTune | None) -> None:
    """block_set_io_throttle for one disk (every limit given; 0 = unlimited)."""
    block = await _block(monitor, device_id)
    if block is None or not block.get("inserted"):
        raise HostError(f"disk {device_id} has no medium to throttle",
                        fix="insert one first (change-media)")
    values = iotune.model_dump() if iotune is not None else {}
    arguments: dict[str, Any] = {"id": block["qdev"]}
    arguments.update({QMP_THROTTLE[key]: int(values.get(key) or 0) for key in IOTUNE_KEYS})
    await monitor.block_set_io_throttle(arguments)


async def query_io_throttle(monitor: Monitor, device_id: str) -> dict[str, int] | None:
    """The throttle QEMU applies to ``device_id`` now, by the spec's names (query-block)."""
    block = await _block(monitor, device_id)
    if block is None:
        return None
    inserted = block.get("inserted") or {}
    return {key: int(inserted.get(QMP_THROTTLE[key], 0)) for key in IOTUNE_KEYS}


async def apply_at_start(domain: Domain, monitor: Monitor, group: Cgroup | None) -> None:
    """Before ``cont``: the cgroup limits and every disk's throttle from the spec."""
    apply(group, domain.name, *spec_values(domain))
    for slot in disk_slots(domain):
        iotune = domain.disks[slot.index].iotune
        if iotune is not None and not iotune.empty():
            await set_io_throttle(monitor, slot.device_id, iotune)
