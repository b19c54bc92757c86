"""The guest agent client against a fake qemu-guest-agent on a unix socket.

The fake behaves as the real agent does: commands arrive as JSON lines, a raw 0xFF
resets its parser, ``guest-sync-delimited`` is answered with 0xFF before the JSON,
``guest-shutdown`` answers only on failure.  The real-agent path is covered by
tests/real/test_guest_agent.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import AgentUnavailable, GuestAgentError
from virtkit.qemu import agent as agent_module
from virtkit.qemu.agent import GuestAgent
from virtkit.unixsock import bind_unix

Handler = Callable[[dict[str, Any]], Any]


class FakeAgent:
    """``handlers[command](arguments)`` -> return value; raise to answer an error;
    ``silent`` makes the agent read and never answer (no agent in the guest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {"guest-ping": lambda _a: {}}
        self.silent = False
        self.stale: bytes = b""
        self.received: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=bind_unix(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            text = line.strip(b"\xff \n")
            if not text or self.silent:
                continue
            request = json.loads(text)
            command = request["execute"]
            self.received.append(command)
            if command == "guest-sync-delimited":
                writer.write(self.stale + b"\xff" + json.dumps(
                    {"return": request["arguments"]["id"]}).encode() + b"\n")
                self.stale = b""
            else:
                writer.write(self._answer(command, request.get("arguments", {})))
            await writer.drain()

    def _answer(self, command: str, arguments: dict[str, Any]) -> bytes:
        try:
            value = self.handlers[command](arguments)
        except KeyError:
            return json.dumps({"error": {"class": "CommandNotFound",
                                         "desc": f"The command {command} has not been found"}
                               }).encode() + b"\n"
        except RuntimeError as exc:
            return json.dumps({"error": {"class": "GenericError", "desc": str(exc)}}
                              ).encode() + b"\n"
        if value is None:  # guest-shutdown: no answer on success
            return b""
        return json.dumps({"return": value}).encode() + b"\n"


def run(coroutine_factory: Callable[[FakeAgent, GuestAgent], Any], tmp_path: Path) -> Any:
    async def main() -> Any:
        fake = FakeAgent(tmp_path / "agent.sock")
        await fake.start()
        client = GuestAgent(fake.path, "vm")
        try:
            return await coroutine_factory(fake, client)
        finally:
            await client.close()
            await fake.stop()
    return asyncio.run(main())


def test_commands_are_synced_and_answered(tmp_path: Path) -> None:
    async def scenario(fake: FakeAgent, client: GuestAgent) -> Any:
        fake.handlers["guest-get-host-name"] = lambda _a: {"host-name": "box"}
        first = await client.execute("guest-ping")
        second = await client.execute("guest-get-host-name")
        return first, second, fake.received

    first, second, received = run(scenario, tmp_path)
    assert first == {} and second == {"host-name": "box"}
    assert received == ["guest-sync-delimited", "guest-ping",
                        "guest-sync-delimited", "guest-get-host-name"]


def test_a_stale_reply_before_the_sync_is_discarded(tmp_path: Path) -> None:
    async def scenario(fake: FakeAgent, client: GuestAgent) -> Any:
        fake.stale = b'{"return": {"late": "answer of an earlier, timed-out command"}}\n'
        fake.handlers["guest-info"] = lambda _a: {"version": "7.2"}
        return await client.execute("guest-info")

    assert run(scenario, tmp_path) == {"version": "7.2"}


def test_agent_errors_name_the_command(tmp_path: Path) -> None:
    async def scenario(_fake: FakeAgent, client: GuestAgent) -> Any:
        with pytest.raises(GuestAgentError) as caught:
            await client.execute("guest-frobnicate")
        return caught.value

    error = run(scenario, tmp_path)
    assert not isinstance(error, AgentUnavailable)
    assert "refused guest-frobnicate" in error.message
    assert error.details["error_class"] == "CommandNotFound"


def test_a_silent_guest_fails_fast_not_hangs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "SYNC_TIMEOUT", 0.3)

    async def scenario(fake: FakeAgent, client: GuestAgent) -> float:
        fake.silent = True
        began = time.monotonic()
        with pytest.raises(AgentUnavailable) as caught:
            await client.execute("guest-ping")
        assert "did not answer" in caught.value.message
        assert "qemu-guest-agent" in (caught.value.fix or "")
        return time.monotonic() - began

    assert run(scenario, tmp_path) < 2.0


def test_shutdown_succeeds_silently_and_fails_loudly(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "NO_REPLY_GRACE", 0.3)

    async def scenario(fake: FakeAgent, client: GuestAgent) -> Any:
        fake.handlers["guest-shutdown"] = lambda _a: None
        assert await client.execute("guest-shutdown", {"mode": "powerdown"}) is None

        def fail(_a: dict[str, Any]) -> Any:
            raise RuntimeError("child process has failed to shutdown")

        fake.handlers["guest-shutdown"] = fail
        with pytest.raises(GuestAgentError) as caught:
            await client.execute("guest-shutdown", {"mode": "powerdown"})
        return caught.value.message

    assert "failed to shutdown" in run(scenario, tmp_path)


def test_no_socket_is_a_clear_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        client = GuestAgent(tmp_path / "missing.sock", "vm")
        with pytest.raises(AgentUnavailable) as caught:
            await client.execute("guest-ping")
        assert "cannot be reached" in caught.value.message

    asyncio.run(main())
