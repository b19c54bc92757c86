"""The typed QMP facade: one method per QMP command virtkit sends.

Only ``virtkit.qemu`` spells a QMP command name (tests/unit/test_qmp_names.py scans
every other module's string literals against the names this module and
``agent.py`` pass to ``self.execute``); the rest of the
project calls these methods and reads the typed results below.

To use a new command: add one method to :class:`QmpCommands` that calls
``self.execute("the-command", {...})`` (its name is the command with ``-`` as ``_``),
and, if the caller reads the reply, a ``TypedDict`` for the fields it reads.  The
literal test picks the name up from this module by itself.

:class:`~virtkit.qemu.monitor.Monitor` implements :meth:`QmpCommands.execute` over
the socket; unit tests subclass :class:`QmpCommands` with a scripted ``execute``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

DEFAULT_TIMEOUT = 30.0


# -- typed results (only the fields virtkit reads; QEMU may send more) ---------------

class StatusInfo(TypedDict):
    """query-status: QEMU's run state (``running``, ``paused``, ``inmigrate`` ...)."""
    status: str
    running: NotRequired[bool]


# QEMU's keys use '-', which TypedDict's class syntax cannot spell: the functional form.
MigrationStatus = TypedDict("MigrationStatus", {
    "status": str, "ram": dict[str, Any], "disk": dict[str, Any], "downtime": int,
    "expected-downtime": int, "total-time": int, "setup-time": int,
    "error-desc": str, "socket-address": list[dict[str, Any]]}, total=False)

JobInfo = TypedDict("JobInfo", {
    "id": str, "type": str, "status": str, "current-progress": int,
    "total-progress": int, "error": NotRequired[str]})

BlockInfo = TypedDict("BlockInfo", {  # noqa: UP013
    "device": str, "qdev": NotRequired[str], "tray_open": NotRequired[bool],
    "inserted": NotRequired[dict[str, Any]]})

CpuInfo = TypedDict("CpuInfo", {
    "cpu-index": int, "thread-id": int, "qom-path": str, "props": dict[str, Any]})

HotpluggableCpu = TypedDict("HotpluggableCpu", {
    "type": str, "vcpus-count": int, "props": dict[str, Any], "qom-path": NotRequired[str]})


class VncInfo(TypedDict, total=False):
    enabled: bool
    host: str
    service: str


AddedFd = TypedDict("AddedFd", {"fdset-id": int, "fd": int})

class QmpCommands:
    """The QMP commands virtkit uses; subclasses supply :meth:`execute`."""

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        raise NotImplementedError

    # -- run state -------------------------------------------------------------------
    async def query_status(self, *, timeout: float = DEFAULT_TIMEOUT) -> StatusInfo:
        result: StatusInfo = await self.execute("query-status", timeout=timeout)
        return result

    async def runstate(self) -> str:
        """query-status' ``status`` alone."""
        return str((await self.query_status())["status"])

    async def cont(self) -> None:
        await self.execute("cont")

    async def stop(self) -> None:
        await self.execute("stop")

    async def system_powerdown(self) -> None:
        await self.execute("system_powerdown")

    async def system_reset(self) -> None:
        await self.execute("system_reset")

    async def set_action(self, *, shutdown: str) -> None:
        """What a guest power-off does: ``poweroff`` (QEMU exits) or ``pause``."""
        await self.execute("set-action", {"shutdown": shutdown})

    async def quit(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.execute("quit", timeout=timeout)

    # -- file descriptors ------------------------------------------------------------
    async def getfd(self, fdname: str) -> None:
        await self.execute("getfd", {"fdname": fdname})

    async def closefd(self, fdname: str) -> None:
        await self.execute("closefd", {"fdname": fdname})

    async def add_fd(self, opaque: str) -> AddedFd:
        result: AddedFd = await self.execute("add-fd", {"opaque": opaque})
        return result

    async def remove_fd(self, fdset_id: int) -> None:
        await self.execute("remove-fd", {"fdset-id": fdset_id})

    # -- devices ---------------------------------------------------------------------
    async def device_add(self, device: dict[str, Any]) -> None:
        """``device`` is device_add's arguments: ``driver``, ``id`` and properties."""
        await self.execute("device_add", device)

    async def device_del(self, device_id: str) -> None:
        await self.execute("device_del", {"id": device_id})

    async def netdev_add(self, netdev: dict[str, Any]) -> None:
        await self.execute("netdev_add", netdev)

    async def netdev_del(self, netdev_id: str) -> None:
        await self.execute("netdev_del", {"id": netdev_id})

    async def object_add(self, obj: dict[str, Any]) -> None:
        await self.execute("object-add", obj)

    async def object_del(self, object_id: str) -> None:
        await self.execute("object-del", {"id": object_id})

    async def set_link(self, name: str, up: bool) -> None:
        await self.execute("set_link", {"name": name, "up": up})

    async def query_pci(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("query-pci")
        return result

    async def query_hotpluggable_cpus(self) -> list[HotpluggableCpu]:
        result: list[HotpluggableCpu] = await self.execute("query-hotpluggable-cpus")
        return result

    async def query_memory_devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("query-memory-devices")
        return result

    async def query_cpus_fast(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[CpuInfo]:
        result: list[CpuInfo] = await self.execute("query-cpus-fast", timeout=timeout)
        return result

    async def balloon(self, value: int) -> None:
        """Set the balloon target to ``value`` bytes."""
        await self.execute("balloon", {"value": value})

    async def query_balloon(self, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        result: dict[str, Any] = await self.execute("query-balloon", timeout=timeout)
        return result

    async def qom_get(self, path: str, prop: str, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        return await self.execute("qom-get", {"path": path, "property": prop},
                                  timeout=timeout)

    async def qom_set(self, path: str, prop: str, value: Any, *,
                      timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.execute("qom-set", {"path": path, "property": prop, "value": value},
                           timeout=timeout)

    # -- display and input -----------------------------------------------------------
    async def set_password(self, protocol: str, password: str) -> None:
        await self.execute("set_password", {"protocol": protocol, "password": password})

    async def query_vnc(self) -> VncInfo:
        result: VncInfo = await self.execute("query-vnc")
        return result

    async def screendump(self, arguments: dict[str, Any]) -> None:
        """``arguments``: ``filename`` and optionally ``device``, ``head``, ``format``."""
        await self.execute("screendump", arguments)

    async def send_key(self, arguments: dict[str, Any]) -> None:
        await self.execute("send-key", arguments)

    # -- block devices ---------------------------------------------------------------
    async def blockdev_add(self, options: dict[str, Any]) -> None:
        """``options`` is a BlockdevOptions object (``node-name``, ``driver`` ...)."""
        await self.execute("blockdev-add", options)

    async def blockdev_del(self, node_name: str) -> None:
        await self.execute("blockdev-del", {"node-name": node_name})

    async def query_block(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[BlockInfo]:
        result: list[BlockInfo] = await self.execute("query-block", timeout=timeout)
        return result

    async def query_named_block_nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("query-named-block-nodes",
                                                          {"flat": True})
        return result

    async def query_blockstats(self, *, timeout: float = DEFAULT_TIMEOUT
                               ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("query-blockstats",
                                                          timeout=timeout)
        return result

    async def blockdev_open_tray(self, device_id: str, *, force: bool = False) -> None:
        await self.execute("blockdev-open-tray", {"id": device_id, "force": force})

    async def blockdev_close_tray(self, device_id: str) -> None:
        await self.execute("blockdev-close-tray", {"id": device_id})

    async def blockdev_remove_medium(self, device_id: str) -> None:
        await self.execute("blockdev-remove-medium", {"id": device_id})

    async def blockdev_insert_medium(self, device_id: str, node_name: str) -> None:
        await self.execute("blockdev-insert-medium", {"id": device_id,
                                                      "node-name": node_name})

    async def blockdev_mirror(self, arguments: dict[str, Any]) -> None:
        await self.execute("blockdev-mirror", arguments)

    async def block_commit(self, arguments: dict[str, Any]) -> None:
        await self.execute("block-commit", arguments)

    async def blockdev_reopen(self, options: list[dict[str, Any]]) -> None:
        """Reopen nodes with new options (e.g. ``auto-read-only``)."""
        await self.execute("blockdev-reopen", {"options": options})

    async def block_set_io_throttle(self, arguments: dict[str, Any]) -> None:
        """Throttle one disk (``id``: its QOM path; every limit given, 0 = none)."""
        await self.execute("block_set_io_throttle", arguments)

    async def block_stream(self, arguments: dict[str, Any]) -> None:
        await self.execute("block-stream", arguments)

    async def block_job_set_speed(self, device: str, speed: int) -> None:
        await self.execute("block-job-set-speed", {"device": device, "speed": speed})

    async def block_resize(self, node_name: str, size: int) -> None:
        await self.execute("block_resize", {"node-name": node_name, "size": size})

    async def transaction(self, actions: list[dict[str, Any]]) -> None:
        await self.execute("transaction", {"actions": actions})

    async def nbd_server_start(self, addr: dict[str, Any]) -> None:
        await self.execute("nbd-server-start", {"addr": addr})

    async def nbd_server_stop(self) -> None:
        await self.execute("nbd-server-stop")

    async def block_export_add(self, arguments: dict[str, Any]) -> None:
        await self.execute("block-export-add", arguments)

    async def block_export_del(self, export_id: str, *, mode: str | None = None) -> None:
        arguments: dict[str, Any] = {"id": export_id}
        if mode is not None:
            arguments["mode"] = mode
        await self.execute("block-export-del", arguments)

    # -- jobs ------------------------------------------------------------------------
    async def query_jobs(self) -> list[JobInfo]:
        result: list[JobInfo] = await self.execute("query-jobs")
        return result

    async def job_complete(self, job_id: str) -> None:
        await self.execute("job-complete", {"id": job_id})

    async def job_dismiss(self, job_id: str) -> None:
        await self.execute("job-dismiss", {"id": job_id})

    async def job_cancel(self, job_id: str) -> None:
        await self.execute("job-cancel", {"id": job_id})

    async def block_job_cancel(self, device: str, *, force: bool | None = None) -> None:
        arguments: dict[str, Any] = {"device": device}
        if force is not None:
            arguments["force"] = force
        await self.execute("block-job-cancel", arguments)

    # -- snapshots -------------------------------------------------------------------
    async def snapshot_save(self, job_id: str, tag: str, vmstate: str,
                            devices: list[str]) -> None:
        await self.execute("snapshot-save", {"job-id": job_id, "tag": tag,
                                             "vmstate": vmstate, "devices": devices})

    async def snapshot_load(self, job_id: str, tag: str, vmstate: str,
                            devices: list[str]) -> None:
        await self.execute("snapshot-load", {"job-id": job_id, "tag": tag,
                                             "vmstate": vmstate, "devices": devices})

    async def snapshot_delete(self, job_id: str, tag: str, devices: list[str]) -> None:
        await self.execute("snapshot-delete", {"job-id": job_id, "tag": tag,
                                               "devices": devices})

    # -- migration -------------------------------------------------------------------
    async def query_migrate(self) -> MigrationStatus:
        result: MigrationStatus = await self.execute("query-migrate")
        return result

    async def migrate_set_capabilities(self, capabilities: dict[str, bool]) -> None:
        await self.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": state} for name, state in capabilities.items()]})

    async def migrate_set_parameters(self, parameters: dict[str, Any]) -> None:
        await self.execute("migrate-set-parameters", parameters)

    async def migrate(self, uri: str) -> None:
        await self.execute("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        await self.execute("migrate-incoming", {"uri": uri})

    async def migrate_cancel(self) -> None:
        await self.execute("migrate_cancel")

    async def migrate_continue(self, state: str) -> None:
        await self.execute("migrate-continue", {"state": state})

    async def migrate_start_postcopy(self) -> None:
        await self.execute("migrate-start-postcopy")
