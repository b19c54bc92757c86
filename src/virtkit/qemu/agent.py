"""A client of the QEMU guest agent (qemu-guest-agent inside the VM).

The agent speaks QMP-like JSON over the ``org.qemu.guest_agent.0`` virtio-serial
port; QEMU exposes the host end as a unix socket the daemon bound itself.  There
is no greeting and no request id, and the agent may have been restarted, or may
not run at all, while the socket stays connected.  So every command is preceded
by ``guest-sync-delimited``: a raw ``0xFF`` resets the agent's parser, the agent
answers with ``0xFF`` followed by the random id we sent, and anything read before
that (a late reply to a command that timed out earlier) is discarded.  Every wait
has a timeout: a guest without an agent gives :class:`AgentUnavailable` quickly,
never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path
from typing import Any

from virtkit.errors import AgentUnavailable, GuestAgentError
from virtkit.unixsock import connect_unix

#: seconds the agent gets to answer the sync handshake (it answers in milliseconds)
SYNC_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 10.0
#: commands the agent never answers when they succeed (the guest goes away); it
#: does answer their failure, so we listen NO_REPLY_GRACE seconds for an error
NO_REPLY = {"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram",
            "guest-suspend-hybrid"}
NO_REPLY_GRACE = 3.0
_MAX_LINE = 64 * 2**20


class AgentCommands:
    """The guest-agent commands virtkit uses, one typed method each (as qemu/qmp.py for
    QMP; add a new one here the same way).  Subclasses supply :meth:`execute`."""

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        raise NotImplementedError

    async def ping(self) -> None:
        await self.execute("guest-ping")

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.execute("guest-info")
        return result

    async def osinfo(self) -> Any:
        return await self.execute("guest-get-osinfo")

    async def host_name(self) -> Any:
        return await self.execute("guest-get-host-name")

    async def users(self) -> Any:
        return await self.execute("guest-get-users")

    async def timezone(self) -> Any:
        return await self.execute("guest-get-timezone")

    async def fsinfo(self) -> Any:
        return await self.execute("guest-get-fsinfo")

    async def network_interfaces(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("guest-network-get-interfaces")
        return result

    async def fsfreeze_freeze(self, mountpoints: list[str] | None = None, *,
                              timeout: float = 60) -> int:
        """Freeze all file systems (or ``mountpoints``); how many were frozen."""
        if mountpoints:
            count = await self.execute("guest-fsfreeze-freeze-list",
                                       {"mountpoints": mountpoints}, timeout=timeout)
        else:
            count = await self.execute("guest-fsfreeze-freeze", timeout=timeout)
        return int(count or 0)

    async def fsfreeze_thaw(self, *, timeout: float = 60) -> int:
        return int(await self.execute("guest-fsfreeze-thaw", timeout=timeout) or 0)

    async def fsfreeze_status(self) -> str:
        return str(await self.execute("guest-fsfreeze-status"))

    async def fstrim(self, minimum: int | None = None, *, timeout: float = 300
                     ) -> dict[str, Any] | None:
        arguments = {"minimum": minimum} if minimum else None
        result: dict[str, Any] | None = await self.execute("guest-fstrim", arguments,
                                                            timeout=timeout)
        return result

    async def exec(self, arguments: dict[str, Any]) -> int:
        """guest-exec (``path``, ``arg``, ``env``, ``input-data``, ``capture-output``);
        the guest pid."""
        return int((await self.execute("guest-exec", arguments))["pid"])

    async def exec_status(self, pid: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.execute("guest-exec-status", {"pid": pid})
        return result

    async def file_open(self, path: str, mode: str) -> int:
        return int(await self.execute("guest-file-open", {"path": path, "mode": mode}))

    async def file_read(self, handle: int, count: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.execute("guest-file-read",
                                                    {"handle": handle, "count": count})
        return result

    async def file_write(self, handle: int, buf_b64: str) -> None:
        await self.execute("guest-file-write", {"handle": handle, "buf-b64": buf_b64})

    async def file_flush(self, handle: int) -> None:
        await self.execute("guest-file-flush", {"handle": handle})

    async def file_close(self, handle: int) -> None:
        await self.execute("guest-file-close", {"handle": handle})

    async def set_user_password(self, username: str, password_b64: str,
                                crypted: bool) -> None:
        await self.execute("guest-set-user-password", {
            "username": username, "crypted": crypted, "password": password_b64})

    async def get_vcpus(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.execute("guest-get-vcpus")
        return result

    async def set_vcpus(self, vcpus: list[dict[str, Any]]) -> int:
        return int(await self.execute("guest-set-vcpus", {"vcpus": vcpus}))

    async def get_time(self) -> int:
        return int(await self.execute("guest-get-time"))

    async def set_time(self, nanoseconds: int | None) -> None:
        arguments = {"time": nanoseconds} if nanoseconds is not None else None
        await self.execute("guest-set-time", arguments)

    async def shutdown(self, mode: str) -> None:
        """guest-shutdown (``powerdown``, ``reboot``, ``halt``); no reply on success."""
        await self.execute("guest-shutdown", {"mode": mode})


class GuestAgent(AgentCommands):
    """One connection to a VM's guest agent socket; commands run one at a time."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    def _unavailable(self, why: str) -> AgentUnavailable:
        return AgentUnavailable(
            f"the guest agent of '{self.name}' {why}",
            fix="install and start qemu-guest-agent in the guest "
                "(Debian/Ubuntu: apt install qemu-guest-agent; it starts when the port appears)")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None \
                and not self._writer.is_closing() and not self._reader.at_eof():
            return self._reader, self._writer
        await self.close()
        try:
            sock = await asyncio.to_thread(connect_unix, self.path, timeout=2.0)
        except OSError as exc:
            raise self._unavailable(f"cannot be reached ({exc.strerror or exc})") from None
        sock.setblocking(False)
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=sock, limit=_MAX_LINE)
        return self._reader, self._writer

    async def _read_message(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        while True:
            line = await reader.readline()
            if not line:
                raise self._unavailable("closed its channel")
            text = line.strip(b"\xff \r\n\t")
            if not text:
                continue
            try:
                message = json.loads(text)
            except ValueError:
                continue  # noise from an interrupted earlier exchange
            if isinstance(message, dict):
                return message

    async def _sync(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reset the agent's parser and drop stale replies (guest-sync-delimited)."""
        token = random.randint(1, 2**31 - 1)  # noqa: S311 - a guest-sync nonce, not a secret
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        writer.write(b"\xff" + json.dumps(request).encode() + b"\n")
        await writer.drain()

        async def until_token() -> None:
            while True:
                await reader.readuntil(b"\xff")
                message = await self._read_message(reader)
                if message.get("return") == token:
                    return

        try:
            await asyncio.wait_for(until_token(), SYNC_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError):
            await self.close()
            raise self._unavailable(f"did not answer within {SYNC_TIMEOUT:g}s "
                                    "(it is not running in the guest, or the guest is "
                                    "busy or paused)") from None

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run one agent command and return its ``return`` value.

        Commands in :data:`NO_REPLY` return ``None`` once sent.  The agent's own
        errors (an unknown command, a failed freeze ...) raise
        :class:`GuestAgentError` with the agent's description.
        """
        async with self._lock:
            try:
                reader, writer = await self._connect()
                await self._sync(reader, writer)
                request: dict[str, Any] = {"execute": command}
                if arguments:
                    request["arguments"] = arguments
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                if command in NO_REPLY:
                    reply = await self._failure_of(reader)
                    if reply is None:
                        return None
                else:
                    reply = await asyncio.wait_for(self._read_message(reader), timeout)
            except TimeoutError:
                await self.close()
                raise self._unavailable(f"did not answer {command} within {timeout:g}s"
                                        ) from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                await self.close()
                raise self._unavailable(f"connection failed during {command}: {exc!r}"
                                        ) from None
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise GuestAgentError(
                f"the guest agent of '{self.name}' refused {command}: "
                f"{error.get('desc', reply['error'])}",
                command=command, error_class=error.get("class"))
        return reply.get("return")

    async def _failure_of(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        """The error reply of a NO_REPLY command, or None: silence (or the channel
        closing as the guest goes down) means it is being carried out."""
        try:
            return await asyncio.wait_for(self._read_message(reader), NO_REPLY_GRACE)
        except (TimeoutError, AgentUnavailable):
            await self.close()
            return None

    async def close(self) -> None:
        """Drop the connection (the next command reconnects)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

