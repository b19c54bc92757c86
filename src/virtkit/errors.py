"""The one error hierarchy of virtkit.

Every failure a user can see is a :class:`VirtkitError`.  Each carries a
one-line ``message`` naming the problem and, where there is one, a ``fix``
telling the user what to do.  The API maps ``http_status`` onto responses and
the CLI prints ``message`` (and ``fix``) as one clear line.
"""

from __future__ import annotations

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class VirtkitError(Exception):
    """Root of every error virtkit raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, fix: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details = details

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message} (fix: {self.fix})"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the API sends for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fix:
            body["fix"] = self.fix
        if self.details:
            body["details"] = self.details
        return body


class NotFound(VirtkitError):
    """An object (domain, pool, network ...) does not exist."""

    code = "not-found"
    http_status = 404


class Conflict(VirtkitError):
    """The request clashes with existing state (a duplicate name, a busy resource)."""

    code = "conflict"
    http_status = 409


class StaleVersion(Conflict):
    """An edit was based on an older version of the object than the stored one."""

    code = "stale-version"


class InvalidSpec(VirtkitError):
    """A spec or an argument is invalid; ``field`` names the offending field."""

    code = "invalid"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None,
                 **details: Any) -> None:
        if field:
            details["field"] = field
        super().__init__(message, fix=fix, **details)
        self.field = field


class StateError(VirtkitError):
    """A lifecycle request is not allowed in the object's current state."""

    code = "state"
    http_status = 409

    def __init__(self, message: str, *, current: str | None = None,
                 requested: str | None = None, fix: str | None = None) -> None:
        details: dict[str, Any] = {}
        if current:
            details["current"] = current
        if requested:
            details["requested"] = requested
        super().__init__(message, fix=fix, **details)
        self.current = current
        self.requested = requested


class HostError(VirtkitError):
    """The host lacks something virtkit needs (a binary, a device, permissions)."""

    code = "host"
    http_status = 503


class QemuError(VirtkitError):
    """QEMU failed: it did not start, or a QMP command returned an error."""

    code = "qemu"
    http_status = 500


class QmpCommandError(QemuError):
    """QEMU answered a QMP command with an error (qemu.qmp's ExecuteError, typed).

    ``sent`` is the message sent, ``received`` QEMU's reply, ``error_class`` QEMU's
    class (``GenericError``, ``DeviceNotFound`` ...) and ``description`` its text."""

    def __init__(self, message: str, *, command: str, arguments: dict[str, Any],
                 error_class: str, description: str, received: dict[str, Any]) -> None:
        super().__init__(message, command=command, arguments=arguments,
                         error_class=error_class)
        self.command = command
        self.sent: dict[str, Any] = {"execute": command, "arguments": arguments}
        self.received = received
        self.error_class = error_class
        self.description = description


class GuestAgentError(VirtkitError):
    """The QEMU guest agent inside a VM answered a command with an error."""

    code = "guest-agent"
    http_status = 502


class AgentUnavailable(GuestAgentError):
    """No guest agent is listening in the VM, or it did not answer in time."""

    code = "guest-agent-unavailable"
    http_status = 503


class TimeoutExpired(VirtkitError):
    """An operation did not finish within its time limit."""

    code = "timeout"
    http_status = 504


class DaemonUnreachable(VirtkitError):
    """The CLI could not reach virtkitd."""

    code = "unreachable"
    http_status = 503


class Unsupported(VirtkitError):
    """This host or connection cannot do what was asked; the caller may fall back."""

    code = "unsupported"
    http_status = 501


class UnsupportedForClient(Unsupported):
    """What this request's client says of itself does not hold (a descriptor named by
    a process that is not the socket's peer): a 400, still with code ``unsupported`` so
    the client falls back (streams)."""

    http_status = 400


class Unauthorized(VirtkitError):
    """A request over the network carried no valid API token."""

    code = "unauthorized"
    http_status = 401


class Forbidden(VirtkitError):
    """The request is understood but not allowed over this connection."""

    code = "forbidden"
    http_status = 403
