"""What the guest agent service (service/guest.py) answers.

What the guest sends is the guest's to choose: a field filled from an agent answer is
a ``JsonValue`` (any JSON, passed on as the guest sent it), so an odd guest never
turns an answer into an error; what virtkit computes itself is typed.
"""

from __future__ import annotations

from pydantic import JsonValue

from virtkit.service.models.base import Result


class AgentPing(Result):
    name: str
    ok: bool
    #: the round trip, in milliseconds
    ms: float


class GuestInfo(Result):
    """guestinfo: the agent, and what the guest told of itself (``None``: the agent
    lacks that command or may not run it).  The parts are the agent's own answers."""

    name: str
    agent_version: JsonValue
    commands: list[JsonValue]
    os: JsonValue
    hostname: JsonValue
    users: JsonValue
    timezone: JsonValue
    filesystems: JsonValue


class GuestAddress(Result):
    type: JsonValue
    ip: JsonValue
    prefix: JsonValue


class GuestInterface(Result):
    """domifaddr --source agent: one interface as the guest sees it."""

    name: JsonValue
    mac: JsonValue
    addresses: list[GuestAddress]


class Frozen(Result):
    name: str
    frozen: JsonValue


class Thawed(Result):
    name: str
    thawed: JsonValue


class FreezeStatus(Result):
    name: str
    #: "frozen" or "thawed"
    status: JsonValue


class Trimmed(Result):
    name: str
    #: the agent's answer per file system
    paths: JsonValue


class ExecResult(Result):
    """A program run in the guest: its exit, and its output (decoded, invalid bytes
    replaced)."""

    pid: JsonValue
    exitcode: JsonValue
    signal: JsonValue
    stdout: str
    stderr: str
    truncated: bool


class FileWritten(Result):
    name: str
    path: str
    bytes: int


class PasswordSet(Result):
    name: str
    user: str


class GuestVcpu(Result):
    id: JsonValue
    online: JsonValue
    can_offline: JsonValue


class GuestVcpusSet(Result):
    name: str
    online: int
    changed: JsonValue


class GuestTime(Result):
    """domtime: the guest's clock (epoch seconds) and its distance from the host's."""

    name: str
    time: float
    offset: float
