"""Logical pools: an LVM volume group whose logical volumes are raw disks.

Like libvirt's ``logical`` pool: build = pvcreate each source device + vgcreate;
volumes are LVs at ``/dev/VG/LV`` holding raw data.  Every LVM command goes through
:meth:`LogicalPool._lvm`, which adds ``--config`` when one is given and reads the
JSON reports (``--reportformat json``), never the human tables.

Hosts without device-mapper (this project's CI kernel) cannot activate LVs; the
metadata operations still work with ``global {activation=0}``.  That setting is
only for such test hosts: see :func:`lvm_config_from_env`.  Operations that need
the data of an LV (wipe, clone, import) then refuse with a HostError before
changing anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound, VirtkitError
from virtkit.model.pool import Pool
from virtkit.storage import qemuimg
from virtkit.storage.base import PoolCapacity, Progress, VolumeInfo, checked_volume_name

#: the environment variable that switches LV activation off (test hosts only).
METADATA_ONLY_ENV = "VIRTKIT_TEST_LVM_METADATA_ONLY"
ACTIVATION_OFF = "global {activation=0}"
PARTIAL_SUFFIX = ".partial"
_ACTIVATION_OFF_RE = re.compile(r"\bactivation\s*=\s*0\b")


def lvm_config_from_env() -> str | None:
    """``global {activation=0}`` when ``VIRTKIT_TEST_LVM_METADATA_ONLY=1``, else None.

    It exists for hosts without device-mapper (kernels built without it, some
    containers), where LVM can write metadata but cannot activate LVs: the test
    suite runs logical pools in that metadata-only mode.  It is never a default; a
    real host runs LVM normally (None).  This is the one place virtkit reads it.
    """
    if os.environ.get(METADATA_ONLY_ENV) == "1":
        return ACTIVATION_OFF
    return None


def device_mapper_available() -> bool:
    """Whether the kernel has device-mapper, i.e. LVs can be activated here.

    ``/dev/mapper/control`` is no proof (installing lvm2 creates the node even when
    the kernel lacks the driver); the kernel's list of misc devices is.
    """
    try:
        return "device-mapper" in Path("/proc/misc").read_text()
    except OSError:
        return False


def lvm_binary() -> str:
    """The ``lvm`` multi-call binary, or a HostError saying how to install it."""
    binary = shutil.which("lvm") or next(
        (p for p in ("/usr/sbin/lvm", "/sbin/lvm") if os.access(p, os.X_OK)), None)
    if not binary:
        raise HostError("LVM tools are not installed (no 'lvm' binary)",
                        fix="apt-get install lvm2")
    return binary


def _lvm_error(command: str, stderr: str) -> VirtkitError:
    """A VirtkitError from a failed LVM command: its first line that is not a warning."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("WARNING:")]
    line = (useful or lines or ["unknown error"])[0]
    message = f"lvm {command} failed: {line}"
    if "not found" in stderr or "Failed to find" in stderr:
        return NotFound(message, fix="check the volume group and volume names (vgs, lvs)")
    if "already exists" in stderr:
        return Conflict(message, fix="choose another name")
    if "in use" in stderr:
        return Conflict(message, fix="stop whatever uses the volume (a VM, a mount) first")
    if "insufficient free space" in stderr or "Insufficient free space" in stderr:
        return HostError(message, fix="free space in the volume group, add a physical "
                                      "volume (vgextend) or ask for less")
    return HostError(message)


class LogicalPool:
    """A :class:`~virtkit.storage.base.PoolBackend` over the LVM volume group ``pool.target``.

    ``lvm_config`` is passed to every command as ``--config``; None (the product
    default) runs LVM as configured on the host.
    """

    def __init__(self, pool: Pool, *, lvm_config: str | None = None) -> None:
        self.pool = pool
        self.vg = pool.target
        self.lvm_config = lvm_config
        self.activation = not (lvm_config and _ACTIVATION_OFF_RE.search(lvm_config))

    # --- running LVM ------------------------------------------------------------------

    def _lvm(self, argv: list[str], *, report: str | None = None,
             timeout: float = 120) -> list[dict[str, Any]]:
        """Run ``lvm <argv>``; with ``report`` ('vg', 'lv', 'pv') return its JSON rows.

        Sizes are asked for in bytes without suffix, so every number is an integer.
        """
        command = [lvm_binary(), argv[0]]
        if self.lvm_config:
            command += ["--config", self.lvm_config]
        if report:
            command += ["--reportformat", "json", "--units", "b", "--nosuffix"]
        command += argv[1:]
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env,
                                    stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"lvm {argv[0]} did not finish within {timeout:.0f}s",
                            fix="check the devices of the volume group respond") from exc
        if result.returncode != 0:
            raise _lvm_error(argv[0], result.stderr)
        if not report:
            return []
        return _report_rows(argv[0], result.stdout, report)

    def _quietly(self, argv: list[str]) -> None:
        """Run an undo step; its failure must not hide the error being handled."""
        with contextlib.suppress(VirtkitError):
            self._lvm(argv)

    # --- the pool ---------------------------------------------------------------------

    def build(self) -> None:
        """pvcreate every source device, then vgcreate; undone if a step fails.

        A device that holds anything (a PV, a file system, a partition table) is
        refused: building must never destroy data.
        """
        devices = self.pool.source_devices
        if not devices:
            raise InvalidSpec(f"logical pool {self.pool.name!r} has no source devices",
                              field="source_devices",
                              fix="add source devices (e.g. /dev/sdb), or define the pool "
                                  "over an existing volume group and skip build")
        if self.exists():
            raise Conflict(f"volume group {self.vg!r} already exists",
                           fix="start the pool on it without building")
        for device in devices:
            _check_blank(device)
        with contextlib.ExitStack() as undo:
            for device in devices:
                self._lvm(["pvcreate", device])
                undo.callback(self._quietly, ["pvremove", device])
            self._lvm(["vgcreate", self.vg, *devices])
            undo.pop_all()

    def exists(self) -> bool:
        try:
            self._lvm(["vgs", "-o", "vg_name", self.vg], report="vg")
        except NotFound:
            return False
        return True

    def delete(self) -> None:
        """vgremove, then pvremove its physical volumes; refuses while LVs remain."""
        volumes = self.list_volumes()
        if volumes:
            names = ", ".join(v.name for v in volumes[:5]) + (" ..." if len(volumes) > 5 else "")
            raise Conflict(f"volume group {self.vg!r} of pool {self.pool.name!r} still holds "
                           f"{len(volumes)} logical volume{'s' if len(volumes) != 1 else ''} "
                           f"({names})", fix="delete the volumes first (vol-delete)")
        pvs = [row["pv_name"] for row in
               self._lvm(["pvs", "-o", "pv_name,vg_name"], report="pv")
               if row.get("vg_name") == self.vg]
        self._lvm(["vgremove", self.vg])
        for pv in pvs:
            self._lvm(["pvremove", pv])

    def capacity(self) -> PoolCapacity:
        row = self._vg_row("vg_size,vg_free")
        size, free = int(row["vg_size"]), int(row["vg_free"])
        return PoolCapacity(capacity=size, allocation=size - free, available=free)

    def _vg_row(self, fields: str) -> dict[str, Any]:
        try:
            rows = self._lvm(["vgs", "-o", fields, self.vg], report="vg")
        except NotFound:
            raise self._missing() from None
        return rows[0]

    def _missing(self) -> NotFound:
        return NotFound(f"volume group {self.vg!r} of pool {self.pool.name!r} does not exist",
                        fix=f"virtkit pool-build {self.pool.name}")

    # --- looking at volumes -----------------------------------------------------------

    def list_volumes(self) -> list[VolumeInfo]:
        """The LVs of the group (raw, fully allocated); ``.NAME.partial`` temps hidden."""
        try:
            rows = self._lvm(["lvs", "-o", "lv_name,lv_size,lv_path", self.vg], report="lv")
        except NotFound:
            raise self._missing() from None
        volumes = [VolumeInfo(name=row["lv_name"],
                              path=row.get("lv_path") or self._device(row["lv_name"]),
                              format="raw", capacity=int(row["lv_size"]),
                              allocation=int(row["lv_size"]))
                   for row in rows if not row["lv_name"].startswith(".")]
        return sorted(volumes, key=lambda v: v.name)

    def volume(self, name: str) -> VolumeInfo:
        checked_volume_name(name)
        for volume in self.list_volumes():
            if volume.name == name:
                return volume
        raise NotFound(f"volume {name!r} not found in pool {self.pool.name!r}",
                       fix=f"virtkit vol-list {self.pool.name}")

    def volume_path(self, name: str) -> str:
        """``/dev/VG/NAME`` (the node exists only while the LV is active)."""
        return self._device(checked_volume_name(name))

    def _device(self, lv: str) -> str:
        return f"/dev/{self.vg}/{lv}"

    def _extent_size(self) -> int:
        return int(self._vg_row("vg_extent_size")["vg_extent_size"])

    def _round(self, capacity: int) -> int:
        """``capacity`` rounded up to whole extents, as LVM would allocate it."""
        if capacity <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
        extent = self._extent_size()
        return -(-capacity // extent) * extent

    # --- writing volumes --------------------------------------------------------------

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo:
        """lvcreate a raw LV of ``capacity`` (rounded up to extents; always allocated,
        so ``prealloc`` changes nothing)."""
        _check_raw(fmt)
        if backing is not None:
            raise InvalidSpec("logical volumes cannot have a backing volume", field="backing",
                              fix="make a full clone, or use a dir pool for qcow2 overlays")
        self._refuse_existing(name)
        self._lvcreate(name, self._round(capacity))
        return self.volume(name)

    def _refuse_existing(self, name: str) -> None:
        checked_volume_name(name)
        if any(v.name == name for v in self.list_volumes()):
            raise Conflict(f"volume {name!r} already exists in pool {self.pool.name!r}",
                           fix="choose another name or delete the volume first")

    def _lvcreate(self, lv: str, size: int) -> None:
        # -Z/-W zero the start and wipe old signatures (a file system left on the
        # extents must not show up in the new disk); both need the LV active.
        wipe = ["-Zy", "-Wy", "--yes"] if self.activation else ["-Zn", "-Wn"]
        self._lvm(["lvcreate", "-L", f"{size}b", "-n", lv, *wipe, self.vg])

    def delete_volume(self, name: str) -> None:
        info = self.volume(name)
        self._refuse_in_use(info)
        self._lvm(["lvremove", "-y", f"{self.vg}/{name}"])

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo:
        """lvresize to ``capacity`` rounded up to extents; a shrink must be asked for."""
        info = self.volume(name)
        size = self._round(capacity)
        if size < info.capacity and not shrink:
            raise InvalidSpec(
                f"shrinking volume {name!r} from {info.capacity} to {size} bytes would "
                "discard the data beyond the new end", field="capacity",
                fix="pass shrink (vol-resize --shrink) if the guest no longer uses that space")
        if size == info.capacity:
            return info
        self._refuse_in_use(info)
        self._lvm(["lvresize", "-L", f"{size}b", *(["--yes"] if shrink else []),
                   f"{self.vg}/{name}"])
        return self.volume(name)

    def wipe_volume(self, name: str) -> None:
        """Overwrite the whole LV with zeros (needs the LV active)."""
        info = self.volume(name)
        self._require_device(info.name)
        self._refuse_in_use(info)
        qemuimg.write_zeros(info.path, info.capacity)

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo:
        """A full copy of LV ``source`` into a new LV (qemu-img convert; needs activation)."""
        if linked:
            raise InvalidSpec("logical pools have no linked clones (they need qcow2 overlays)",
                              field="linked", fix="make a full clone, or use a dir pool")
        _check_raw(fmt or "raw")
        src = self.volume(source)
        self._require_device(src.name)
        return self._fill(name, src.capacity, src.path, "raw", progress)

    def import_volume(self, name: str, source_path: str, fmt: str, *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Convert an image (vmdk, qcow2 ...) onto a new LV sized to its virtual size."""
        _check_raw(fmt)
        source = qemuimg.local_source(source_path)
        src_fmt = source_fmt or qemuimg.detect_format(source)
        size = int(qemuimg.image_info(source, fmt=src_fmt)["virtual-size"])
        return self._fill(name, size, source, src_fmt, progress)

    def _fill(self, name: str, size: int, source: str, source_fmt: str,
              progress: Progress | None) -> VolumeInfo:
        """lvcreate hidden ``.NAME.partial``, convert ``source`` onto it, lvrename it.

        The LV is removed again on any failure, so an interrupted copy never shows
        up as a volume; one left by a killed process is reported, not reused.
        """
        self._refuse_existing(name)
        if not self.activation:
            raise HostError(f"cannot write volume {name!r}: LVM activation is switched off "
                            "(metadata-only mode), so logical volumes have no device nodes",
                            fix=f"unset {METADATA_ONLY_ENV} on a host with device-mapper")
        temp = f".{name}{PARTIAL_SUFFIX}"
        try:
            self._lvcreate(temp, self._round(size))
        except Conflict:
            raise Conflict(f"an interrupted or running copy into volume {name!r} left "
                           f"{self.vg}/{temp}", fix=f"lvremove {self.vg}/{temp} if no "
                           "operation is running") from None
        try:
            self._require_device(temp)
            qemuimg.convert(source, source_fmt, self._device(temp), "raw",
                            progress=progress, create_target=False)
            self._lvm(["lvrename", self.vg, temp, name])
        except BaseException:
            self._quietly(["lvremove", "-y", f"{self.vg}/{temp}"])
            raise
        return self.volume(name)

    def _require_device(self, lv: str) -> None:
        path = self._device(lv)
        if os.path.exists(path):
            return
        if not self.activation or not device_mapper_available():
            fix = ("this host cannot activate logical volumes (no device-mapper in the "
                   "kernel, or activation switched off); use a host with device-mapper")
        else:
            fix = f"activate it: lvchange -ay {self.vg}/{lv}"
        raise HostError(f"logical volume {self.vg}/{lv} has no device node {path}: "
                        "it is not active", fix=fix)

    def _refuse_in_use(self, info: VolumeInfo) -> None:
        """Conflict when a running QEMU holds the LV (its image lock on the node)."""
        if os.path.exists(info.path) and qemuimg.image_locks(info.path).in_use:
            raise Conflict(f"volume {info.name!r} of pool {self.pool.name!r} is in use by a "
                           "running VM", fix="shut the VM down or detach the disk first")


def _report_rows(command: str, stdout: str, kind: str) -> list[dict[str, Any]]:
    """The rows of an LVM JSON report: {"report": [{"vg": [...]}]}."""
    try:
        data = json.loads(stdout)
        rows: list[dict[str, Any]] = []
        for section in data.get("report", []):
            rows += section.get(kind, [])
        return rows
    except (json.JSONDecodeError, AttributeError) as exc:
        raise HostError(f"lvm {command} printed no JSON report: {stdout[:200]!r}") from exc


def _check_raw(fmt: str) -> None:
    if fmt != "raw":
        raise InvalidSpec(f"a {fmt} volume on a logical volume is not supported: logical "
                          "pools hold raw volumes", field="format",
                          fix="use format raw, or a dir pool for qcow2 volumes")


def _check_blank(device: str) -> None:
    """Refuse a device that is missing, not a block device, or holds any signature."""
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise NotFound(f"source device {device} does not exist",
                       fix="check the device path (lsblk)") from None
    if not stat.S_ISBLK(mode):
        raise InvalidSpec(f"source device {device} is not a block device",
                          field="source_devices", fix="give a disk or partition (lsblk)")
    blkid = shutil.which("blkid") or "/sbin/blkid"
    result = subprocess.run([blkid, "-p", "-o", "export", device], capture_output=True,
                            text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    if result.returncode == 2:  # nothing found: a blank device
        return
    if result.returncode != 0:
        raise HostError(f"cannot probe {device} for existing data: "
                        f"{result.stderr.strip() or result.returncode}")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    what = found.get("TYPE") or (f"a {found['PTTYPE']} partition table"
                                 if "PTTYPE" in found else "data")
    what = "an LVM physical volume" if what == "LVM2_member" else what
    raise Conflict(f"source device {device} already holds {what}; building the pool would "
                   "destroy it", fix=f"if that data is no longer needed, erase it with "
                   f"'wipefs -a {device}', then build again")
