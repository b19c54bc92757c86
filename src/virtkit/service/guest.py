"""The guest-agent command API: what qemu-guest-agent inside a VM can do for the host.

virsh spreads these over many commands (guestinfo, domifaddr --source agent,
domfsfreeze, domfsthaw, domfstrim, set-user-password, setvcpus --guest, domtime,
qemu-agent-command); virtkit adds what libvirt lacks: running a program in the
guest with its output and exit code, and reading or writing a guest file.

Every call checks first that the domain runs, that it has an agent channel and
that the guest has opened it (QEMU tells us through ``VSERPORT_CHANGE``), so a
guest without an agent gets a clear error at once instead of a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

from virtkit.errors import AgentUnavailable, Conflict, GuestAgentError, InvalidSpec, TimeoutExpired
from virtkit.model.state import Action, allows
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.runtime.qemunames import GuestAgent
from virtkit.service.models.guest import (
    AgentPing,
    ExecResult,
    FileWritten,
    FreezeStatus,
    Frozen,
    GuestAddress,
    GuestInfo,
    GuestInterface,
    GuestTime,
    GuestVcpu,
    GuestVcpusSet,
    PasswordSet,
    Thawed,
    Trimmed,
)
from virtkit.store.db import Store

#: bytes per guest-file-read/-write call (the agent's base64 messages stay small)
FILE_CHUNK = 48 * 1024
#: largest file ``file_read`` returns (larger ones: read a range, or use a shared folder)
FILE_READ_LIMIT = 32 * 2**20
EXEC_POLL = 0.05


class GuestService:
    """Commands run by the guest agent of a running domain."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._life = lifecycle

    def agent(self, ref: str) -> tuple[str, GuestAgent]:
        """The name and agent client of running domain ``ref``, or a clear error."""
        row = self._store.get_domain(ref)
        vm = self._life.vm(row.uuid, row.name)
        running = vm.running
        if running is None or not allows(Action.AGENT, vm.state):
            raise Conflict(f"domain '{row.name}' is not running (it is {vm.state.value}); "
                           "the guest agent answers only in a running guest",
                           fix=f"virtkit start {row.name}" if running is None
                           else f"virtkit resume {row.name}")
        if running.agent is None:
            raise Conflict(f"domain '{row.name}' has no guest agent channel",
                           fix="set guest_agent: true in its spec (virtkit edit) and restart it")
        if running.agent_open is False:
            raise AgentUnavailable(
                f"the guest agent of '{row.name}' is not connected (no agent has opened "
                "the org.qemu.guest_agent.0 port in the guest)",
                fix="install and start qemu-guest-agent in the guest")
        return row.name, running.agent

    async def command(self, ref: str, command: str, arguments: dict[str, Any] | None = None,
                      *, timeout: float = 10.0) -> Any:
        """One raw agent command (virsh qemu-agent-command)."""
        if not command.startswith("guest-"):
            raise InvalidSpec(f"{command!r} is not a guest agent command (they start 'guest-')",
                              field="execute", fix="see the agent's 'guest-info' for the list")
        return await self.agent(ref)[1].execute(command, arguments, timeout=timeout)

    async def ping(self, ref: str) -> AgentPing:
        name, agent = self.agent(ref)
        began = time.monotonic()
        await agent.ping()
        return AgentPing(name=name, ok=True, ms=round((time.monotonic() - began) * 1000, 1))

    async def _optional(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """A command older or restricted agents may lack: None instead of an error."""
        try:
            return await call()
        except GuestAgentError as exc:
            if isinstance(exc, AgentUnavailable):
                raise
            return None

    async def info(self, ref: str) -> GuestInfo:
        """guestinfo: the agent, OS, host name, users, time zone and file systems."""
        name, agent = self.agent(ref)
        about = await agent.info()
        osinfo = await self._optional(agent.osinfo)  # in this order, one at a time
        hostname = await self._optional(agent.host_name)
        return GuestInfo(
            name=name, agent_version=about.get("version"),
            commands=sorted(c["name"] for c in about.get("supported_commands", [])
                            if c.get("enabled")),
            os=osinfo,
            hostname=hostname.get("host-name") if isinstance(hostname, dict) else hostname,
            users=await self._optional(agent.users),
            timezone=await self._optional(agent.timezone),
            filesystems=await self._optional(agent.fsinfo))

    async def interfaces(self, ref: str) -> list[GuestInterface]:
        """domifaddr --source agent: the guest's own view of its interfaces."""
        _name, agent = self.agent(ref)
        rows = await agent.network_interfaces()
        return [GuestInterface(
            name=row.get("name"), mac=row.get("hardware-address"),
            addresses=[GuestAddress(type=a.get("ip-address-type"), ip=a.get("ip-address"),
                                    prefix=a.get("prefix"))
                       for a in row.get("ip-addresses", [])],
        ) for row in rows]

    async def fsfreeze(self, ref: str, mountpoints: list[str] | None = None) -> Frozen:
        """domfsfreeze: flush and freeze the guest's file systems (all, or these)."""
        name, agent = self.agent(ref)
        count = await agent.fsfreeze_freeze(mountpoints)
        return Frozen(name=name, frozen=count)

    async def fsthaw(self, ref: str) -> Thawed:
        name, agent = self.agent(ref)
        return Thawed(name=name, thawed=await agent.fsfreeze_thaw())

    async def fsfreeze_status(self, ref: str) -> FreezeStatus:
        name, agent = self.agent(ref)
        return FreezeStatus(name=name, status=await agent.fsfreeze_status())

    async def fstrim(self, ref: str, minimum: int | None = None) -> Trimmed:
        """domfstrim: discard unused blocks in the guest's file systems."""
        name, agent = self.agent(ref)
        result = await agent.fstrim(minimum)
        return Trimmed(name=name, paths=(result or {}).get("paths", []))

    async def exec(self, ref: str, path: str, args: list[str] | None = None, *,
                   env: list[str] | None = None, stdin: bytes | None = None,
                   timeout: float = 60.0) -> ExecResult:
        """Run ``path`` in the guest, wait, and return its exit code and output."""
        if not path:
            raise InvalidSpec("name the program to run in the guest", field="path",
                              fix="e.g. virtkit guest exec vm -- /bin/uname -a")
        _name, agent = self.agent(ref)
        arguments: dict[str, Any] = {"path": path, "arg": args or [], "capture-output": True}
        if env:
            arguments["env"] = env
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        pid = await agent.exec(arguments)
        deadline = time.monotonic() + timeout
        while True:
            status = await agent.exec_status(pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"{path} (guest pid {pid}) still runs after {timeout:g}s",
                                     fix="give a longer --timeout, or end it in the guest "
                                         f"(virtkit guest exec DOMAIN -- /bin/kill {pid})")
            await asyncio.sleep(EXEC_POLL)
        return ExecResult(
            pid=pid, exitcode=status.get("exitcode"), signal=status.get("signal"),
            stdout=base64.b64decode(status.get("out-data", "")).decode(errors="replace"),
            stderr=base64.b64decode(status.get("err-data", "")).decode(errors="replace"),
            truncated=bool(status.get("out-truncated") or status.get("err-truncated")))

    async def file_read(self, ref: str, path: str) -> bytes:
        """The content of a guest file (up to FILE_READ_LIMIT bytes)."""
        _name, agent = self.agent(ref)
        handle = await agent.file_open(path, "rb")
        data = bytearray()
        try:
            while True:
                chunk = await agent.file_read(handle, FILE_CHUNK)
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    return bytes(data)
                if len(data) > FILE_READ_LIMIT:
                    raise InvalidSpec(f"guest file {path} is larger than "
                                      f"{FILE_READ_LIMIT // 2**20} MiB",
                                      fix="copy large files through a shared folder or a disk")
        finally:
            await agent.file_close(handle)

    async def file_write(self, ref: str, path: str, data: bytes, *,
                         append: bool = False) -> FileWritten:
        """Write ``data`` to a guest file (created or truncated, or appended to)."""
        name, agent = self.agent(ref)
        handle = await agent.file_open(path, "ab" if append else "wb")
        try:
            for offset in range(0, len(data), FILE_CHUNK):
                piece = data[offset:offset + FILE_CHUNK]
                await agent.file_write(handle, base64.b64encode(piece).decode())
            await agent.file_flush(handle)
        finally:
            await agent.file_close(handle)
        return FileWritten(name=name, path=path, bytes=len(data))

    async def set_user_password(self, ref: str, user: str, password: str, *,
                                crypted: bool = False) -> PasswordSet:
        """set-user-password: the agent runs chpasswd in the guest."""
        if not user:
            raise InvalidSpec("name the guest user", field="user")
        name, agent = self.agent(ref)
        await agent.set_user_password(user, base64.b64encode(password.encode()).decode(),
                                      crypted)
        return PasswordSet(name=name, user=user)

    async def vcpus(self, ref: str) -> list[GuestVcpu]:
        """guestvcpus: the guest's logical CPUs and whether each is online."""
        _name, agent = self.agent(ref)
        rows = await agent.get_vcpus()
        return [GuestVcpu(id=row["logical-id"], online=row["online"],
                          can_offline=row.get("can-offline", False)) for row in rows]

    async def set_vcpus(self, ref: str, count: int) -> GuestVcpusSet:
        """setvcpus --guest: bring ``count`` of the guest's CPUs online, the rest offline."""
        name, agent = self.agent(ref)
        rows = await agent.get_vcpus()
        if not 1 <= count <= len(rows):
            raise InvalidSpec(f"the guest of '{name}' has {len(rows)} vCPUs; cannot have "
                              f"{count} online", field="count",
                              fix=f"give 1..{len(rows)}, or add vCPUs first (setvcpus --live)")
        wanted = []
        for position, row in enumerate(sorted(rows, key=lambda r: r["logical-id"])):
            online = position < count
            if row["online"] != online:
                if not online and not row.get("can-offline", False):
                    raise Conflict(f"the guest cannot take CPU {row['logical-id']} offline")
                wanted.append({"logical-id": row["logical-id"], "online": online})
        changed = await agent.set_vcpus(wanted) if wanted else 0
        return GuestVcpusSet(name=name, online=count, changed=changed)

    async def time(self, ref: str) -> GuestTime:
        """domtime: the guest's clock, and how far it is from the host's."""
        name, agent = self.agent(ref)
        nanoseconds = await agent.get_time()
        return GuestTime(name=name, time=nanoseconds / 1e9,
                         offset=round(nanoseconds / 1e9 - time.time(), 3))

    async def set_time(self, ref: str, *, now: bool = False,
                       seconds: float | None = None) -> GuestTime:
        """domtime --sync (from the guest's RTC), --now (the host's clock) or a time."""
        name, agent = self.agent(ref)
        if now:
            seconds = time.time()
        await agent.set_time(int(seconds * 1e9) if seconds is not None else None)
        return await self.time(name)
