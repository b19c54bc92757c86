"""--copy-storage-all (runtime/storagecopy.py, service/migrations.copy_plan, the CLI's
--disk-path): which QMP commands the source sends and in which order, what each
failure undoes, and that the destination only ever removes images it created."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from virtkit.api.migration_routes import MigrateBody
from virtkit.api.requests import IncomingBody, validate_body
from virtkit.cli.migrate import disk_paths
from virtkit.errors import Conflict, InvalidSpec, QemuError
from virtkit.model.load import dump_domain, load_domain
from virtkit.qemu.qmp import QmpCommands
from virtkit.runtime import migration, storagecopy
from virtkit.service.migrations import _options as options_of
from virtkit.service.migrations import copy_plan


def _options(fields: dict[str, Any]) -> migration.Options:
    """The options of a migrate request body, parsed as the route parses it."""
    body = validate_body({"destination": {"socket": "/run/x.sock"}, **fields}, MigrateBody)
    return options_of(body)


class CopyMonitor(QmpCommands):
    """One virtio disk (device disk0, node disk0); mirrors get READY after a few
    polls; query-migrate follows a script of statuses."""

    def __init__(self, statuses: list[str], *, mirror_fails: bool = False) -> None:
        self.statuses = statuses
        self.sent: list[tuple[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.mirror_fails = mirror_fails

    async def execute(self, command: str, arguments: Any = None, **_: Any) -> Any:
        self.sent.append((command, arguments))
        if command == "query-block":
            return [{"qdev": "/machine/peripheral/disk0/virtio-backend",
                     "inserted": {"node-name": "disk0", "file": "/d/a.qcow2", "drv": "qcow2",
                                  "image": {"filename": "/d/a.qcow2",
                                            "virtual-size": 2**26}}}]
        if command == "blockdev-mirror":
            self.jobs[arguments["job-id"]] = {"id": arguments["job-id"], "status": "running",
                                              "current-progress": 0, "total-progress": 10}
        if command == "query-jobs":
            for job in self.jobs.values():
                if job["status"] == "running":
                    job.update({"status": "concluded", "error": "nbd gone"}
                               if self.mirror_fails else
                               {"status": "ready", "current-progress": 10})
            return list(self.jobs.values())
        if command == "block-job-cancel":
            self.jobs[arguments["device"]]["status"] = "concluded"
        if command == "job-dismiss":
            del self.jobs[arguments["id"]]
        if command == "query-migrate":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {"status": status}
        if command == "query-status":
            return {"status": "running"}
        if command == "migrate_cancel":
            self.statuses = ["cancelled"]
        if command == "query-named-block-nodes":
            return []
        return {}

    def expect(self, event: str) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def commands(self) -> list[str]:
        return [name for name, _ in self.sent if not name.startswith("query-")]


class CopyDestination:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.calls: list[str] = []

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        self.calls.append("incoming")
        return {"id": "u1", "uri": "tcp:192.0.2.2:4444",
                "nbd": {"host": "192.0.2.2", "port": 10809, "exports": ["disk0"]}}

    async def finish(self, migration_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("finish")
        return {"state": "running"}

    async def abort(self, migration_id: str) -> None:
        self.calls.append("abort")

    async def status(self, migration_id: str) -> dict[str, Any]:
        return {"incoming": True}


def _migrate(monitor: CopyMonitor, dest: CopyDestination,
             job: migration.Job | None = None) -> dict[str, Any]:
    options = migration.Options(copy_disks=[("disk0", "/e/a.qcow2")], bandwidth_mib=2)
    return asyncio.run(migration.migrate_out(monitor, dest, {}, options, job))  # type: ignore[arg-type]


def test_mirrors_reach_ready_before_the_stream_and_end_at_switch_over() -> None:
    monitor = CopyMonitor(["active", "pre-switchover", "completed"])
    dest = CopyDestination()
    result = _migrate(monitor, dest)
    assert dest.calls == ["incoming", "finish"]
    assert dest.bodies[0]["copy_storage"] == {"disks": [
        {"device": "disk0", "path": "/e/a.qcow2", "format": "qcow2", "size": 2**26}]}
    commands = monitor.commands()
    assert commands.index("blockdev-mirror") < commands.index("migrate")
    # the mirror ends (a READY cancel keeps the copy in sync) before the switch-over
    assert commands.index("block-job-cancel") < commands.index("migrate-continue")
    assert commands.index("blockdev-del") < commands.index("migrate-continue")
    add = dict(monitor.sent)["blockdev-add"]
    assert add["server"] == {"type": "inet", "host": "192.0.2.2", "port": "10809"}
    mirror = dict(monitor.sent)["blockdev-mirror"]
    assert (mirror["device"], mirror["sync"], mirror["speed"]) == ("disk0", "full", 2 * 2**20)
    assert ("block-job-cancel", {"device": "vkmig-disk0"}) in monitor.sent
    assert result["copied_disks"] == ["disk0"]


def test_a_failed_mirror_cancels_everything_and_never_starts_the_stream() -> None:
    monitor = CopyMonitor(["active"], mirror_fails=True)
    dest = CopyDestination()
    with pytest.raises(QemuError, match="copying disk disk0 failed: nbd gone"):
        _migrate(monitor, dest)
    assert "migrate" not in monitor.commands()
    assert dest.calls == ["incoming", "abort"]
    assert ("blockdev-del", {"node-name": "vkmig-nbd-disk0"}) in monitor.sent


def test_domjobabort_during_the_copy() -> None:
    monitor = CopyMonitor(["active"])
    job = migration.Job()
    job.aborted.set()
    dest = CopyDestination()
    with pytest.raises(Conflict, match="cancelled"):
        _migrate(monitor, dest, job)
    assert "migrate" not in monitor.commands() and dest.calls[-1] == "abort"
    assert ("block-job-cancel", {"device": "vkmig-disk0", "force": True}) \
        in monitor.sent


def _spec(**disk: Any) -> Any:
    return load_domain({"name": "m", "memory": 64, "vcpus": 1, "disks": [
        {"path": "/d/a.qcow2", "format": "qcow2", **disk},
        {"path": "/d/cd.iso", "device": "cdrom", "readonly": True}]})


def test_copy_plan_maps_paths_in_both_specs_and_skips_read_only_media() -> None:
    live = _spec()
    definition = dump_domain(live)
    copies, moved, stored = copy_plan(live, definition, {"/d/a.qcow2": "/e/a.qcow2"})
    assert copies == [("disk0", "/e/a.qcow2")]
    assert [d.path for d in moved.disks] == ["/e/a.qcow2", "/d/cd.iso"]
    assert [d["path"] for d in stored["disks"]] == ["/e/a.qcow2", "/d/cd.iso"]
    assert live.disks[0].path == "/d/a.qcow2"  # the source's own spec is not changed
    assert copy_plan(live, definition, {})[0] == [("disk0", "/d/a.qcow2")]
    with pytest.raises(InvalidSpec, match="not a copied disk"):
        copy_plan(live, definition, {"/d/cd.iso": "/e/cd.iso"})


def test_a_pool_volume_disk_becomes_a_path_disk_there() -> None:
    live = _spec(pool="default", volume="a.qcow2")
    definition = {**dump_domain(live), "disks": [
        {"pool": "default", "volume": "a.qcow2"}]}
    _copies, moved, stored = copy_plan(live, definition, {"/d/a.qcow2": "/e/a.qcow2"})
    assert (moved.disks[0].pool, moved.disks[0].path) == (None, "/e/a.qcow2")
    assert stored["disks"][0] == {"pool": None, "volume": None, "path": "/e/a.qcow2"}


def test_disk_path_arguments() -> None:
    assert disk_paths(["/a=/b", "/c=/d"]) == {"/a": "/b", "/c": "/d"}
    for bad in (["/a"], ["a=/b"], ["/a=b"], ["/a=/b", "/a=/c"]):
        with pytest.raises(InvalidSpec):
            disk_paths(bad)
    with pytest.raises(InvalidSpec, match="copy-storage-all"):
        _options({"disk_paths": {"/a": "/b"}})


def test_the_destination_never_overwrites_and_removes_only_its_own(tmp_path: Path) -> None:
    existing = tmp_path / "there.qcow2"
    existing.write_bytes(b"keep")
    new = tmp_path / "new.qcow2"
    with pytest.raises(Conflict, match="already exists"):
        storagecopy.create_images([
            {"path": str(new), "format": "qcow2", "size": 2**20},
            {"path": str(existing), "format": "qcow2", "size": 2**20}])
    assert existing.read_bytes() == b"keep" and not new.exists()  # the first one went again
    with pytest.raises(InvalidSpec, match="folder"):
        storagecopy.create_images([{"path": str(tmp_path / "no" / "x"), "format": "raw",
                                    "size": 2**20}])
    with pytest.raises(InvalidSpec, match="vmdk"):
        storagecopy.create_images([{"path": str(new), "format": "vmdk", "size": 2**20}])
    [image] = storagecopy.create_images([{"path": str(new), "format": "raw", "size": 2**20}])
    assert new.stat().st_size == 2**20
    other = tmp_path / "other"
    other.write_bytes(b"someone else's")
    other.replace(new)  # replaced meanwhile: not ours any more
    image.remove()
    assert new.read_bytes() == b"someone else's"


def test_copy_storage_inc_mirrors_only_the_top_of_a_chain() -> None:
    class Chain(CopyMonitor):
        async def execute(self, command: str, arguments: Any = None, **kw: Any) -> Any:
            reply = await super().execute(command, arguments, **kw)
            if command == "query-block":
                reply[0]["inserted"]["image"]["backing-image"] = {
                    "filename": "/b/base.qcow2", "format": "qcow2"}
            return reply
    monitor = Chain(["pre-switchover", "completed"])
    dest = CopyDestination()
    options = migration.Options(copy_disks=[("disk0", "/e/a.qcow2")], copy_incremental=True)
    asyncio.run(migration.migrate_out(monitor, dest, {}, options))  # type: ignore[arg-type]
    assert dest.bodies[0]["copy_storage"]["disks"][0]["backing"] == {
        "path": "/b/base.qcow2", "format": "qcow2"}
    assert dict(monitor.sent)["blockdev-mirror"]["sync"] == "top"
    with pytest.raises(InvalidSpec, match="exclude each other"):
        _options({"copy_storage_all": True, "copy_storage_inc": True})


def test_an_incremental_copy_needs_the_backing_image_there(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match=r"backing image .* does not exist"):
        storagecopy.create_images([{"path": str(tmp_path / "t.qcow2"), "format": "qcow2",
                                    "size": 2**20,
                                    "backing": {"path": str(tmp_path / "nobase")}}])
    assert not (tmp_path / "t.qcow2").exists()


def _parse(*argv: str) -> Any:
    import argparse

    from virtkit.cli import migrate

    parser = argparse.ArgumentParser()
    migrate.register(parser.add_subparsers())
    return parser.parse_args(["migrate", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (("--offline", "--live"), "exclude each other"),
    (("--disk-path", "/a=/b"), "--copy-storage-all"),
    (("--offline", "--postcopy"), "live migration"),
    (("--copy-storage-all", "--disk-path", "a=/b"), "absolute paths"),
])
def test_cli_refuses_contradictory_flags_before_asking_anyone(argv: tuple[str, ...],
                                                              message: str) -> None:
    from virtkit.cli.migrate import cmd_migrate

    args = _parse("vm", "/run/other/virtkitd.sock", *argv)
    with pytest.raises(InvalidSpec, match=message):
        cmd_migrate(None, args)  # type: ignore[arg-type]  # no daemon is reached


def test_cli_sends_the_new_flags() -> None:
    from virtkit.cli.migrate import cmd_migrate

    class Recorder:
        body: dict[str, Any] = {}

        def domain_path(self, name: str, suffix: str) -> str:
            return f"/v1/domains/{name}{suffix}"

        def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            Recorder.body = body
            return {"domain": "vm", "offline": True, "copied_disks": ["disk0"]}

    args = _parse("vm", "/run/other/virtkitd.sock", "--offline", "--copy-storage-all",
                  "--disk-path", "/a=/b")
    args.json = False
    assert cmd_migrate(Recorder(), args) == 0  # type: ignore[arg-type]
    body = Recorder.body
    assert (body["offline"], body["live"], body["copy_storage_all"]) == (True, False, True)
    assert body["disk_paths"] == {"/a": "/b"} and body["postcopy"] is False


def test_the_destination_creates_only_files_the_spec_names() -> None:
    from virtkit.service.incoming import copy_request, image_list

    spec = dump_domain(_spec())
    good = {"device": "disk0", "path": "/d/a.qcow2", "format": "qcow2", "size": 2**20}

    def request(**fields: Any) -> Any:  # parsed as the route parses it
        return validate_body({"spec": spec, "address": "192.0.2.2", **fields}, IncomingBody)

    assert image_list(copy_request(request(copy_storage={"disks": [good]}))) == [good]
    assert copy_request(request()) == []
    for bad in ({**good, "path": "/etc/passwd"}, {**good, "device": "disk1"},
                {**good, "format": "raw"}):
        with pytest.raises(InvalidSpec, match="not a writable disk of the spec"):
            copy_request(request(copy_storage={"disks": [bad]}))
    with pytest.raises(InvalidSpec):
        copy_request(request(copy_storage={"disks": []}))
