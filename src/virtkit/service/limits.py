"""virsh schedinfo, memtune, blkiotune and blkdeviotune: resource limits of a domain.

``--live`` changes the running QEMU (its cgroup files, QEMU's I/O throttle;
runtime/cgtune.py); ``--config`` the stored spec (``cputune`` shares/period/quota,
``memtune``, ``blkiotune``, a disk's ``iotune``; libvirt XML's <cputune>, <memtune>,
<blkiotune>, <iotune>), applied at every start; neither: live when running, config
when not (service/tuning.py's rule, as virsh).  Without values each shows them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, TypeAlias

from pydantic import ValidationError

from virtkit.errors import InvalidSpec, NotFound, VirtkitError
from virtkit.model.load import dump_domain, load_domain
from virtkit.model.tuning import IOTUNE_KEYS, UNLIMITED_KIB, IoTune
from virtkit.runtime import cgtune
from virtkit.runtime.launcher import Running
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.tuning import (
    BlkDevIoTune,
    BlkioDeviceChange,
    BlkioTuneValues,
    MemTuneValues,
    SchedInfo,
)
from virtkit.service.tuning import _scope
from virtkit.store.db import DomainRow, Store

SCHED_KEYS = {"cpu_shares": "shares", "vcpu_period": "period", "vcpu_quota": "quota"}
MEM_KEYS = ("hard_limit", "soft_limit", "swap_hard_limit")

#: what one of these commands shows, by the spec part it changes
Limits = SchedInfo | MemTuneValues | BlkioTuneValues
_SHOWN: dict[str, type[SchedInfo] | type[MemTuneValues] | type[BlkioTuneValues]] = {
    "cputune": SchedInfo, "memtune": MemTuneValues, "blkiotune": BlkioTuneValues}
#: one host block device's blkiotune values, by the spec's names
#: (model/tuning.py's BlkioDevice as JSON: path, weight, read_bytes_sec ...)
DeviceValues: TypeAlias = dict[str, Any]


class LimitsService:
    """Resource limits through the cgroup and QEMU's throttle."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._life = lifecycle

    def _domain(self, ref: str) -> tuple[DomainRow, Running | None]:
        row = self._store.get_domain(ref)
        return row, self._life.vm(row.uuid, row.name).running

    def _save(self, row: DomainRow, spec: SpecDocument) -> None:
        domain = load_domain(spec)  # the model's validation (ranges, swap >= hard)
        self._store.update_domain(row.uuid, row.name, dump_domain(domain), row.version)

    @staticmethod
    def _group(running: Running) -> Any:
        return running.confinement.cgroup if running.confinement else None

    def _live_values(self, running: Running, name: str, what: str) -> cgtune.Values:
        return cgtune.read(cgtune.require_cgroup(self._group(running), name, what))

    # -- schedinfo, memtune, blkiotune ----------------------------------------------

    def schedinfo(self, ref: str, values: dict[str, int], *, live: bool = False,
                  config: bool = False) -> SchedInfo:
        unknown = set(values) - set(SCHED_KEYS)
        if unknown:
            raise InvalidSpec(f"schedinfo: unknown parameter {sorted(unknown)[0]!r}",
                              fix="use cpu_shares, vcpu_period or vcpu_quota")
        changes = {SCHED_KEYS[key]: value for key, value in values.items()}
        shown = self._tune(ref, "cputune", changes, live, config, "scheduler parameters")
        assert isinstance(shown, SchedInfo)
        return shown

    def memtune(self, ref: str, values: dict[str, int], *, live: bool = False,
                config: bool = False) -> MemTuneValues:
        shown = self._tune(ref, "memtune", values, live, config, "memory limits")
        assert isinstance(shown, MemTuneValues)
        return shown

    def blkiotune(self, ref: str, values: dict[str, int], *, live: bool = False,
                  config: bool = False, devices: list[BlkioDeviceChange] | None = None
                  ) -> BlkioTuneValues:
        """The cgroup's block I/O weight, and per host device weights and throttles
        (``devices``: a value left out is kept, 0 removes it, as virsh's --device-*
        options)."""
        unknown = set(values) - {"weight"}
        if unknown:
            raise InvalidSpec(f"blkiotune: unknown parameter {sorted(unknown)[0]!r}",
                              fix="use weight, or the device options")
        if not devices:
            shown = self._tune(ref, "blkiotune", values, live, config, "block I/O limits")
            assert isinstance(shown, BlkioTuneValues)
            return shown
        row = self._store.get_domain(ref)
        given = [device.model_dump(exclude_none=True) for device in devices]
        merged = {d["path"]: dict(d) for d in
                  (row.spec.get("blkiotune") or {}).get("devices") or []}
        for device in given:
            merged.setdefault(device["path"], {"path": device["path"]}).update(device)
        changes = {**values, "devices": list(merged.values())}
        shown = self._tune(ref, "blkiotune", changes, live, config, "block I/O limits",
                           live_changes={**values, "devices": given})
        assert isinstance(shown, BlkioTuneValues)
        return shown

    def set_limits(self, kind: str, ref: str, values: dict[str, int], *,
                   live: bool = False, config: bool = False,
                   devices: list[BlkioDeviceChange] | None = None) -> Limits:
        """schedinfo, memtune or blkiotune by name (``values`` empty: show them);
        per device values are blkiotune's alone."""
        if kind == "blkiotune":
            return self.blkiotune(ref, values, live=live, config=config, devices=devices)
        if devices:
            raise InvalidSpec(f"{kind} takes no devices", field="devices",
                              fix="per device values are blkiotune's")
        if kind == "schedinfo":
            return self.schedinfo(ref, values, live=live, config=config)
        if kind == "memtune":
            return self.memtune(ref, values, live=live, config=config)
        raise NotFound(f"unknown limits '{kind}'", fix="use schedinfo, memtune or blkiotune")

    def _tune(self, ref: str, part: str, changes: SpecDocument, live: bool, config: bool,
              what: str, live_changes: SpecDocument | None = None) -> Limits:
        row, running = self._domain(ref)
        if not changes:
            shown_live = running is not None and not config
            return self._show(row, running if shown_live else None, part)
        live, config = _scope(live, config, running is not None, row.name, f"set {what}")
        spec = dict(row.spec)
        merged = {**(spec.get(part) or {}), **changes}
        load_domain({**spec, part: merged})  # validates the values before any write
        if live:
            assert running is not None
            sched = mem = blkio = {}
            if part == "cputune":
                sched = dict(changes)
                if "quota" in changes and "period" not in changes:
                    sched["period"] = self._live_values(running, row.name, what)["vcpu_period"]
            elif part == "memtune":
                mem = dict(changes)
                if "swap_hard_limit" in mem and "hard_limit" not in mem:  # v2 needs both
                    mem["hard_limit"] = self._live_values(running, row.name, what)["hard_limit"]
            else:
                blkio = live_changes if live_changes is not None else changes
            cgtune.apply(self._group(running), row.name, sched, mem, blkio)
        if config:
            self._save(row, {**spec, part: merged})
        return self._show(self._store.get_domain(row.uuid), running if live else None, part)

    def _show(self, row: DomainRow, running: Running | None, part: str) -> Limits:
        domain = load_domain(row.spec)
        if running is not None:
            values = self._live_values(running, row.name, "the limits")
            if part == "cputune":
                shown = {k: values[k] for k in SCHED_KEYS}
            elif part == "memtune":
                shown = {k: values[k] for k in MEM_KEYS}
            else:
                shown = {"weight": values["weight"],
                         **_device_lists(values["devices"], domain.blkiotune.devices)}
        elif part == "cputune":
            tune = domain.cputune
            shown = {"cpu_shares": tune.shares or 1024, "vcpu_period": tune.period or 100000,
                     "vcpu_quota": tune.quota or -1}
        elif part == "memtune":
            shown = {k: getattr(domain.memtune, k) or UNLIMITED_KIB for k in MEM_KEYS}
        else:
            shown = {"weight": domain.blkiotune.weight,
                     **_device_lists({d.path: d.model_dump() for d in domain.blkiotune.devices},
                                     [])}
        return _SHOWN[part](name=row.name, live=running is not None, **shown)

    # -- blkdeviotune -----------------------------------------------------------------

    async def blkdeviotune(self, ref: str, disk: str, values: dict[str, int], *,
                           live: bool = False, config: bool = False) -> BlkDevIoTune:
        """Show or set one disk's I/O throttle (QMP block_set_io_throttle, <iotune>)."""
        row, running = self._domain(ref)
        unknown = set(values) - set(IOTUNE_KEYS)
        if unknown:
            raise InvalidSpec(f"blkdeviotune: unknown parameter {sorted(unknown)[0]!r}",
                              fix=f"use {', '.join(IOTUNE_KEYS)}")
        stored = load_domain(row.spec)
        current = running.live if running is not None and running.live is not None else stored
        try:
            index, device = cgtune.disk_device(current, disk)
        except KeyError:
            raise NotFound(f"domain '{row.name}' has no disk '{disk}'",
                           fix=f"virtkit domblklist {row.name} names them") from None
        if not values:
            if running is not None and not config:
                shown = await cgtune.query_io_throttle(running.monitor, device) or {}
            else:
                tune = stored.disks[index].iotune if index < len(stored.disks) else None
                shown = {k: int(getattr(tune, k) or 0) for k in IOTUNE_KEYS}
            return BlkDevIoTune(name=row.name, disk=disk, live=running is not None
                                and not config, **shown)
        live, config = _scope(live, config, running is not None, row.name,
                              "throttle disk I/O")
        if live:
            assert running is not None
            now = await cgtune.query_io_throttle(running.monitor, device)
            await cgtune.set_io_throttle(running.monitor, device, _merge(now, values))
        if config:
            try:
                config_index, _ = cgtune.disk_device(stored, disk)
            except KeyError:
                raise NotFound(f"disk '{disk}' is not in the stored definition of "
                               f"'{row.name}' (hot-plugged only)", fix="use --live") from None
            base = stored.disks[config_index].iotune
            spec = dump_domain(stored)
            spec["disks"][config_index]["iotune"] = _merge(
                base.model_dump() if base else None, values).model_dump()
            self._save(row, spec)
        return await self.blkdeviotune(row.uuid, disk, {}, config=not live)


#: virsh blkiotune's names of the per-device lists, by the spec's key
DEVICE_FIELDS = {"weight": "device_weight", "read_iops_sec": "device_read_iops_sec",
                 "write_iops_sec": "device_write_iops_sec",
                 "read_bytes_sec": "device_read_bytes_sec",
                 "write_bytes_sec": "device_write_bytes_sec"}


def _device_lists(devices: dict[str, DeviceValues], known: list[Any]) -> dict[str, str]:
    """virsh's ``device_weight: /dev/sda,500,/dev/sdb,300`` values; ``devices`` by path,
    or by MAJ:MIN as the cgroup files name them (shown as the spec's path for that
    device, else /dev/block/MAJ:MIN)."""
    paths: dict[str, str] = {}
    for device in known:
        with contextlib.suppress(VirtkitError):
            paths[cgtune.block_device_number(device.path)] = device.path
    out = {}
    for key, name in DEVICE_FIELDS.items():
        items = [f"{paths.get(dev) or cgtune.device_path(dev)},{values[key]}"
                 for dev, values in sorted(devices.items()) if values.get(key)]
        out[name] = ",".join(items)
    return out


def _merge(old: Mapping[str, int | None] | None, values: dict[str, int]) -> IoTune:
    """As libvirt: setting any bytes (or IOPS) limit replaces that whole group (the others
    of it become unlimited unless given); the group not named keeps its values."""
    merged = dict(old or {})
    for kind in ("bytes", "iops"):
        group = [key for key in IOTUNE_KEYS if key.endswith(f"_{kind}_sec")]
        if any(key in values for key in group):
            merged.update({key: values.get(key, 0) for key in group})
    try:
        return IoTune(**merged)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise InvalidSpec(f"blkdeviotune: {message}", field="iotune") from None
