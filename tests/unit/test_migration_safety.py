"""Live migration's safety rules (docs/migration.md): the keepalive that stops a
migration whose destination is gone, a finish that never reached the destination
versus one that got no answer, the source's paused/'migrating' state before the
destination can run the VM, and definitions that name the files the VM uses."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_migration import FakeDestination, FakeMonitor
from virtkit.errors import NotFound, QemuError
from virtkit.model.load import dump_domain, load_domain
from virtkit.runtime import migration
from virtkit.service.copyplan import align_disks
from virtkit.service.migration_journal import Journal
from virtkit.service.peer import Peer


class GoneDestination(FakeDestination):
    """A destination whose daemon stops answering after the incoming call."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def status(self, migration_id: str) -> dict[str, Any]:
        self.calls.append("status")
        raise self.error


def _run(monitor: FakeMonitor, dest: FakeDestination, **hooks: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        return await migration.migrate_out(monitor, dest, {},  # type: ignore[arg-type]
                                           migration.Options(), None,
                                           migration.Hooks(**hooks))
    return asyncio.run(go())


@pytest.mark.parametrize("error", [
    migration.RequestNotDelivered("connection refused"),
    NotFound("no incoming migration u1"),
])
def test_a_lost_destination_stops_the_stream_and_the_vm_runs_on(
        monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    monkeypatch.setattr(migration, "KEEPALIVE_INTERVAL", 0.01)
    monitor = FakeMonitor(["active"], run_status="running")
    dest = GoneDestination(error)
    with pytest.raises(migration.DestinationLost, match="runs on here"):
        _run(monitor, dest)
    assert "migrate_cancel" in monitor.commands() and "migrate-continue" not in \
        monitor.commands()
    assert dest.calls[-1] == "abort" and "finish" not in dest.calls


def test_unanswered_keepalives_stop_it_after_a_few_misses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migration, "KEEPALIVE_INTERVAL", 0.01)
    dest = GoneDestination(migration.DaemonUnreachable("timed out"))
    with pytest.raises(migration.DestinationLost, match="did not answer 3 keepalives"):
        _run(FakeMonitor(["active"]), dest)
    assert dest.calls.count("status") == migration.KEEPALIVE_MISSES


def test_the_source_says_paused_before_it_asks_the_destination_to_run() -> None:
    order: list[str] = []

    class Recording(FakeDestination):
        async def finish(self, migration_id: str, body: dict[str, Any]) -> dict[str, Any]:
            order.append("finish")
            return await super().finish(migration_id, body)

    monitor = FakeMonitor(["active", "pre-switchover", "completed"])
    result = _run(monitor, Recording(), stopped=lambda: order.append(
        f"stopped after {monitor.commands()[-1]}"), finishing=lambda: order.append("journal"))
    assert order == ["stopped after migrate", "journal", "finish"]
    assert result["downtime_ms"] >= result["qemu_downtime_ms"]


def test_a_finish_that_never_arrived_resumes_the_source() -> None:
    monitor = FakeMonitor(["pre-switchover", "completed"], run_status="paused")
    dest = FakeDestination(finish_error=migration.RequestNotDelivered("refused"))
    with pytest.raises(migration.RequestNotDelivered):
        _run(monitor, dest)
    assert monitor.commands()[-1] == "cont"


def test_the_peer_tells_never_delivered_from_no_answer(tmp_path: Path) -> None:
    """A refused connection cannot have delivered finish; a connection that closes
    without an answer may have (the destination may run the VM)."""
    async def go() -> None:
        nobody = tmp_path / "nobody.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(nobody))  # bound, never listening: connection refused
        peer = Peer({"socket": str(nobody)})
        with pytest.raises(migration.RequestNotDelivered):
            await peer.finish("u1", {})
        with pytest.raises(migration.RequestNotDelivered):
            await peer.status("u1")
        await peer.close()
        listener.close()

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)  # the request arrived ...
            writer.close()          # ... and no answer comes
        server = await asyncio.start_unix_server(swallow, path=str(tmp_path / "mute.sock"))
        peer = Peer({"socket": str(tmp_path / "mute.sock")})
        with pytest.raises(migration.MigrationOutcomeUnknown, match="may be running"):
            await peer.finish("u1", {})
        await peer.close()
        server.close()
    asyncio.run(go())


def test_a_failed_switch_over_is_not_reported_as_a_lost_destination() -> None:
    monitor = FakeMonitor(["pre-switchover", "failed"])
    with pytest.raises(QemuError):
        _run(monitor, FakeDestination())


def _domain(*disks: dict[str, Any]) -> dict[str, Any]:
    return {"name": "d", "uuid": "6a1f0c3e-0000-4000-8000-00000000bb01", "memory": 64,
            "disks": list(disks)}


def test_align_disks_names_the_files_the_vm_runs_from() -> None:
    live = load_domain(_domain({"path": "/new/a.qcow2", "format": "qcow2"},
                               {"path": "/iso/x.iso", "device": "cdrom"},
                               {"path": "/shared/b.raw", "format": "raw"}))
    stale = _domain({"path": "/old/a.qcow2", "format": "qcow2"},
                    {"path": "/iso/y.iso", "device": "cdrom"},
                    {"path": "/shared/old-b.raw", "format": "raw"})
    everything = align_disks(stale, live)
    assert [d["path"] for d in everything["disks"]] == [
        "/new/a.qcow2", "/iso/y.iso", "/shared/b.raw"]  # media stay the definition's
    only_copied = align_disks(stale, live, {"disk0"})
    assert [d["path"] for d in only_copied["disks"]] == [
        "/new/a.qcow2", "/iso/y.iso", "/shared/old-b.raw"]
    same = dump_domain(live)
    assert align_disks(same, live) is same


def test_the_journal_keeps_records_across_instances(tmp_path: Path) -> None:
    Journal(tmp_path / "m").write("in", "u1", {"created": [["/a", 1, 2]]})
    (tmp_path / "m" / "in-bad.json").write_text("{")
    again = Journal(tmp_path / "m")
    assert again.entries("in") == {"u1": {"created": [["/a", 1, 2]]}}
    again.remove("in", "u1")
    assert again.entries("in") == {} and again.entries("out") == {}


class ScriptedPeer:
    """status answers (or errors) in turn; abort answers removed."""

    def __init__(self, answers: list[Any], removed: bool = True) -> None:
        self.answers, self.removed, self.aborted = answers, removed, 0

    async def status(self, uuid: str) -> dict[str, Any]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    async def abort(self, uuid: str) -> dict[str, Any]:
        self.aborted += 1
        return {"removed": self.removed}


def test_an_unanswered_finish_is_resolved_only_by_a_certain_answer() -> None:
    from virtkit.service.migrations import _resolve

    def resolve(peer: ScriptedPeer, window: float = 5.0) -> Any:
        return asyncio.run(_resolve(peer, "u1", window))  # type: ignore[arg-type]
    # its daemon restarting, then: it runs the VM (finish went through)
    runs = ScriptedPeer([migration.RequestNotDelivered("refused"),
                         {"incoming": False, "state": "running", "reason": "migrated"}])
    assert resolve(runs)["state"] == "running"
    # it still held the unfinished incoming migration: removed there, the VM stays here
    held = ScriptedPeer([{"incoming": True}])
    assert resolve(held) == "here" and held.aborted == 1
    # gone, or shut off: it may have run and stopped since; only the admin can tell
    assert resolve(ScriptedPeer([NotFound("no incoming migration")])) is None
    assert resolve(ScriptedPeer([{"incoming": False, "state": "shutoff"}])) is None
    assert resolve(ScriptedPeer([migration.RequestNotDelivered("refused")]), 0.5) is None
