"""The live migration protocol's steps and failure handling (runtime/migration.py),
with a scripted QMP monitor and destination: which commands the source sends, and
that every failure leaves the VM running here and nothing on the destination."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from virtkit.api.migration_routes import MigrateBody
from virtkit.api.requests import validate_body
from virtkit.cli.migrate import destination
from virtkit.errors import Conflict, InvalidSpec, QemuError, Unsupported, VirtkitError
from virtkit.qemu.qmp import QmpCommands
from virtkit.runtime import migration
from virtkit.service.migrations import MAX_DEADLINE, _address, _deadline
from virtkit.service.migrations import _options as options_of


def _options(fields: dict[str, Any]) -> migration.Options:
    """The options of a migrate request body, parsed as the route parses it."""
    body = validate_body({"destination": {"socket": "/run/x.sock"}, **fields}, MigrateBody)
    return options_of(body)


class FakeMonitor(QmpCommands):
    """Answers query-migrate from a script of statuses; records every command."""

    def __init__(self, statuses: list[str], *, run_status: str = "running") -> None:
        self.statuses = statuses
        self.sent: list[tuple[str, Any]] = []
        self.run_status = run_status

    async def execute(self, command: str, arguments: Any = None, **_: Any) -> Any:
        self.sent.append((command, arguments))
        if command == "query-migrate":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {"status": status, "downtime": 12, "ram": {"transferred": 99},
                    **({"error-desc": "boom"} if status == "failed" else {})}
        if command == "query-status":
            return {"status": self.run_status}
        if command == "migrate_cancel":
            self.statuses = ["cancelled"]
        if command == "migrate-start-postcopy":  # a switch that goes through
            self.statuses = ["pre-switchover", "postcopy-active", "completed"]
        return {}

    def expect(self, event: str, predicate: Any = None) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()  # never comes: polling decides

    def commands(self) -> list[str]:
        return [name for name, _ in self.sent if not name.startswith("query-")]


class FakeDestination:
    def __init__(self, finish_error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.finish_error = finish_error

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("incoming")
        return {"id": "u1", "uri": "tcp:127.0.0.1:4444"}

    async def finish(self, migration_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("finish")
        self.finish_body = body
        if self.finish_error is not None:
            raise self.finish_error
        return {"state": "running"}

    async def abort(self, migration_id: str) -> None:
        self.calls.append("abort")

    async def status(self, migration_id: str) -> dict[str, Any]:
        return {"incoming": True}


def _run(monitor: FakeMonitor, dest: FakeDestination,
         options: migration.Options | None = None) -> dict[str, Any]:
    return asyncio.run(migration.migrate_out(monitor, dest, {}, options or  # type: ignore[arg-type]
                                             migration.Options()))


def test_the_happy_path_pauses_before_switchover_then_finishes() -> None:
    monitor = FakeMonitor(["active", "pre-switchover", "device", "completed"])
    dest = FakeDestination()
    result = _run(monitor, dest, migration.Options(bandwidth_mib=8, downtime_ms=300))
    assert dest.calls == ["incoming", "finish"]
    assert monitor.commands() == ["migrate-set-capabilities", "migrate-set-parameters",
                                  "migrate", "migrate-continue"]
    caps = {c["capability"] for c in monitor.sent[0][1]["capabilities"]}
    assert caps == {"events", "return-path", "pause-before-switchover"}
    assert monitor.sent[1][1] == {"max-bandwidth": 8 * 2**20, "downtime-limit": 300}
    assert monitor.sent[2][1] == {"uri": "tcp:127.0.0.1:4444"}
    assert (result["qemu_downtime_ms"], result["transferred"]) == (12, 99)
    assert result["downtime_ms"] >= 12


def test_a_failed_stream_cancels_and_removes_the_destination() -> None:
    monitor = FakeMonitor(["active", "failed"])
    dest = FakeDestination()
    with pytest.raises(QemuError, match="boom"):
        _run(monitor, dest)
    assert dest.calls == ["incoming", "abort"]
    assert "migrate_cancel" in monitor.commands()


def test_a_source_left_stopped_by_the_failure_is_continued() -> None:
    monitor = FakeMonitor(["pre-switchover", "failed"], run_status="paused")
    with pytest.raises(QemuError):
        _run(monitor, FakeDestination())
    assert monitor.commands()[-1] == "cont"


def test_a_refused_finish_runs_the_vm_here_again() -> None:
    monitor = FakeMonitor(["pre-switchover", "completed"])
    dest = FakeDestination(finish_error=VirtkitError("its QEMU died"))
    with pytest.raises(VirtkitError, match="died"):
        _run(monitor, dest)
    assert dest.calls == ["incoming", "finish", "abort"]
    assert monitor.commands()[-1] == "cont"


def test_a_paused_guest_arrives_paused_and_is_never_resumed_here() -> None:
    paused = migration.Options(source_paused=True)
    dest = FakeDestination()
    _run(FakeMonitor(["pre-switchover", "completed"], run_status="paused"), dest, paused)
    assert dest.finish_body == {"persistent": False, "paused": True}
    # a failure while sending, and a refused finish: it stays paused here
    failed = FakeMonitor(["active", "failed"], run_status="paused")
    with pytest.raises(QemuError):
        _run(failed, FakeDestination(), migration.Options(source_paused=True))
    refused = FakeMonitor(["pre-switchover", "completed"], run_status="paused")
    with pytest.raises(VirtkitError, match="died"):
        _run(refused, FakeDestination(finish_error=VirtkitError("its QEMU died")),
             migration.Options(source_paused=True))
    assert "cont" not in failed.commands() + refused.commands()
    # --suspend: a running guest arrives paused
    dest = FakeDestination()
    _run(FakeMonitor(["pre-switchover", "completed"]), dest,
         migration.Options(suspend=True, persistent=True))
    assert dest.finish_body == {"persistent": True, "paused": True}


def test_an_unanswered_finish_touches_nothing() -> None:
    """It may run there now: neither continue nor kill the copy here."""
    monitor = FakeMonitor(["pre-switchover", "completed"])
    dest = FakeDestination(finish_error=migration.MigrationOutcomeUnknown("no answer"))
    with pytest.raises(migration.MigrationOutcomeUnknown):
        _run(monitor, dest)
    assert dest.calls == ["incoming", "finish"]
    assert "cont" not in monitor.commands() and "migrate_cancel" not in monitor.commands()


def test_a_timeout_cancels() -> None:
    monitor = FakeMonitor(["active"])
    dest = FakeDestination()
    with pytest.raises(VirtkitError, match="not done in time"):
        _run(monitor, dest, migration.Options(timeout=0.1))
    assert dest.calls == ["incoming", "abort"]


def test_destination_listens_on_the_port_qemu_picked() -> None:
    class Listening(FakeMonitor):
        async def execute(self, command: str, arguments: Any = None, **_: Any) -> Any:
            self.sent.append((command, arguments))
            if command == "query-migrate":
                return {"status": "setup", "socket-address": [
                    {"type": "inet", "host": "::1", "port": "40123"}]}
            return {}

    monitor = Listening([])
    uri = asyncio.run(migration.listen_incoming(monitor, "::1"))  # type: ignore[arg-type]
    assert uri == "tcp:[::1]:40123"
    assert monitor.sent[1] == ("migrate-incoming", {"uri": "tcp:[::1]:0"})


def test_request_checks() -> None:
    assert _address("192.0.2.1") == "192.0.2.1"
    for bad in ("host.example", "1.2.3.4:5", None, "tcp:x"):
        with pytest.raises(InvalidSpec):
            _address(bad)
    assert _options({"bandwidth": 5, "timeout": 9}).timeout == 9.0
    with pytest.raises(InvalidSpec):
        _options({"bandwidth": -1})
    with pytest.raises(InvalidSpec):
        _options({"downtime_limit": True})
    default = migration.DEFAULT_TIMEOUT + 60
    for odd in (None, True, -1, 0, float("nan"), float("inf"), "5"):
        assert _deadline(odd) == default
    assert (_deadline(2), _deadline(10**12)) == (2.0, MAX_DEADLINE)


def _cli_args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"dest_token": None, "dest_token_file": None,
                                 "dest_ca": None, **values})


def test_cli_destination_forms(tmp_path: Any) -> None:
    assert destination("/run/d/virtkitd.sock", _cli_args()) == (
        {"socket": "/run/d/virtkitd.sock"}, "127.0.0.1", None)
    assert destination("virtkit:///system", _cli_args())[0] == {
        "socket": "/var/lib/virtkit/virtkitd.sock"}
    with pytest.raises(InvalidSpec, match="source itself"):
        destination("virtkit:///", _cli_args())
    with pytest.raises(Unsupported, match="ssh forward"):  # a source daemon elsewhere
        destination("virtkit+ssh://h", _cli_args(), argparse.Namespace(remote=True))
    with pytest.raises(InvalidSpec, match="token"):
        destination("virtkit+tls://127.0.0.1", _cli_args(dest_token_file=str(tmp_path / "no")))
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    where, address, _ = destination("virtkit+tls://127.0.0.1:7000",
                                    _cli_args(dest_token="t", dest_ca=str(ca)))
    assert where == {"url": "https://127.0.0.1:7000", "token": "t", "ca": "PEM"}
    assert address == "127.0.0.1"


def test_postcopy_runs_the_destination_while_memory_still_arrives() -> None:
    monitor = FakeMonitor(["active", "pre-switchover", "postcopy-active", "completed"])
    dest = FakeDestination()
    result = _run(monitor, dest, migration.Options(postcopy=True))
    assert result["postcopy"] is True and dest.calls == ["incoming", "finish"]
    caps = dict(monitor.sent)["migrate-set-capabilities"]["capabilities"]
    assert {"capability": "postcopy-ram", "state": True} in caps
    assert "migrate_cancel" not in monitor.commands()
    # QEMU's max-postcopy-bandwidth (0: none) is only sent when asked for
    assert "max-postcopy-bandwidth" not in dict(monitor.sent)["migrate-set-parameters"]


def test_postcopy_bandwidth_caps_the_stream_after_the_switch() -> None:
    monitor = FakeMonitor(["active", "pre-switchover", "postcopy-active", "completed"])
    _run(monitor, FakeDestination(), _options({"postcopy": True, "postcopy_bandwidth": 4}))
    params = dict(monitor.sent)["migrate-set-parameters"]
    assert params["max-postcopy-bandwidth"] == 4 * 2**20
    with pytest.raises(InvalidSpec, match="--postcopy-bandwidth only applies"):
        _options({"postcopy_bandwidth": 4})
    with pytest.raises(InvalidSpec):
        _options({"postcopy": True, "postcopy_bandwidth": -4})


def test_a_postcopy_failure_after_the_switch_is_reported_and_touches_nothing() -> None:
    monitor = FakeMonitor(["pre-switchover", "postcopy-active", "failed"], run_status="paused")
    dest = FakeDestination()
    with pytest.raises(migration.PostcopyFailed, match="after the switch-over"):
        _run(monitor, dest, migration.Options(postcopy=True))
    # neither side may run the guest on: no cont here, no abort there
    assert "cont" not in monitor.commands() and dest.calls == ["incoming", "finish"]


def test_postcopy_after_precopy_switches_after_the_first_pass() -> None:
    class Passes(FakeMonitor):
        async def execute(self, command: str, arguments: Any = None, **kw: Any) -> Any:
            reply = await super().execute(command, arguments, **kw)
            if command == "query-migrate":
                reply["ram"]["dirty-sync-count"] = 2
            return reply
    monitor = Passes(["active"])
    result = _run(monitor, FakeDestination(),
                  migration.Options(postcopy=True, postcopy_after_precopy=True))
    assert result["postcopy"] is True
    commands = monitor.commands()
    assert commands.index("migrate-start-postcopy") < commands.index("migrate-continue")


def test_postcopy_after_precopy_switches_on_qemus_second_pass_event() -> None:
    """QEMU's MIGRATION_PASS event decides even when no poll sees dirty-sync-count 2
    (an idle guest's second pass is over within milliseconds)."""
    class PassEvent(FakeMonitor):
        def expect(self, event: str, predicate: Any = None) -> asyncio.Future[Any]:
            future = super().expect(event, predicate)
            message = {"event": event, "data": {"pass": 2}}
            if event == "MIGRATION_PASS" and predicate(message):
                future.set_result(message)
            return future
    monitor = PassEvent(["active"])
    result = _run(monitor, FakeDestination(),
                  migration.Options(postcopy=True, postcopy_after_precopy=True))
    assert result["postcopy"] is True and "migrate-start-postcopy" in monitor.commands()


class IncomingMonitor(QmpCommands):
    """The destination QEMU as finish_incoming sees it: (migration status, run state)
    pairs in turn, the last one repeated."""

    def __init__(self, states: list[tuple[str, str]]) -> None:
        self.states, self.sent = states, []  # type: ignore[var-annotated]

    async def execute(self, command: str, arguments: Any = None, **_: Any) -> Any:
        self.sent.append(command)
        if command == "query-migrate":
            if len(self.states) > 1 and self.sent.count("query-migrate") > 1:
                self.states.pop(0)
            return {"status": self.states[0][0]}
        if command == "query-status":
            return {"status": self.states[0][1]}
        return {}


def test_finish_incoming_waits_for_this_end_to_load_the_postcopy_switch() -> None:
    """The source sees postcopy-active once it has sent the devices' state; this end
    may still be loading it: wait, then run (refusing would lose the guest)."""
    monitor = IncomingMonitor([("active", "inmigrate"), ("postcopy-active", "inmigrate"),
                               ("postcopy-active", "paused")])
    asyncio.run(migration.finish_incoming(monitor))  # type: ignore[arg-type]
    assert monitor.sent[-1] == "cont" and monitor.sent.count("query-migrate") == 3
    kept_paused = IncomingMonitor([("completed", "paused")])
    asyncio.run(migration.finish_incoming(kept_paused, run=False))  # type: ignore[arg-type]
    assert "cont" not in kept_paused.sent


def test_finish_incoming_refuses_what_is_not_coming() -> None:
    for states in ([("none", "inmigrate")], [("failed", "inmigrate")],
                   [("completed", "running")]):
        monitor = IncomingMonitor(list(states))
        with pytest.raises(Conflict, match="not complete here"):
            asyncio.run(migration.finish_incoming(monitor))  # type: ignore[arg-type]
        assert "cont" not in monitor.sent
    stuck = IncomingMonitor([("active", "inmigrate")])
    with pytest.raises(Conflict, match="status active"):
        asyncio.run(migration.finish_incoming(stuck, settle=0.2))  # type: ignore[arg-type]
