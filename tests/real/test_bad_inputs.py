"""Bad input gets a clear error naming the field and the fix, and nothing is left behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle
from virtkit.cli.client import ApiError

pytestmark = pytest.mark.qemu


def _refused(daemon: DaemonHandle, method: str, path: str, body: dict[str, Any] | None,
             status: int) -> ApiError:
    with pytest.raises(ApiError) as excinfo:
        daemon.client.request(method, path, body)
    assert excinfo.value.http_status == status, excinfo.value.message
    return excinfo.value


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"name": "a/b"}, "name", "contains '/'"),
    ({"name": "bad\nname"}, "name", "control character"),
    ({"memory": 0}, "memory", "at least 1 MiB"),
    ({"memory": "100T"}, "memory", "more than the host's"),
    ({"vcpus": {"current": 4, "max": 2}}, "vcpus", "above max"),
    ({"boot": {"kernel": "/nonexistent/vmlinuz"}}, "boot.kernel", "does not exist"),
    ({"vcpus": 100000}, "vcpus", "above the limit"),
    ({"disks": [{"path": "/nonexistent/disk.qcow2"}]}, "disks[0].path", "does not exist"),
    ({"disks": [{"path": "/etc/hostname", "bus": "usb"}]}, "disks[0].bus", "must be"),
    ({"machine": "pc-q99"}, "machine", "must be"),
    ({"nics": [{"restrict": False}]}, "nics[0]", "unrestricted"),
    ({"colour": "blue"}, "colour", "unknown field"),
])
def test_invalid_specs_are_refused_and_nothing_is_defined(
        daemon: DaemonHandle, overrides: dict[str, Any], field: str, words: str) -> None:
    spec = {**daemon.spec("bad"), **overrides}
    error = _refused(daemon, "POST", "/v1/domains", {"spec": spec}, 400)
    assert field in error.message and words in error.message
    assert daemon.client.get("/v1/domains") == []


def test_duplicate_name_is_refused_and_the_original_is_kept(daemon: DaemonHandle) -> None:
    first = daemon.define("dup")
    other = daemon.spec("dup", uuid="00000000-0000-4000-8000-000000000001", memory=300)
    error = _refused(daemon, "POST", "/v1/domains", {"spec": other}, 409)
    assert "already exists" in error.message
    kept = daemon.info("dup")
    assert (kept["uuid"], kept["memory_mib"]) == (first["uuid"], 256)


def test_starting_a_running_domain_names_both_states(daemon: DaemonHandle) -> None:
    daemon.define("twice")
    daemon.client.post(daemon.client.domain_path("twice", "/start"))
    error = _refused(daemon, "POST", daemon.client.domain_path("twice", "/start"), {}, 409)
    assert "cannot start domain 'twice': it is running" in error.message
    assert error.details == {"current": "running", "requested": "start"}
    assert len(daemon.qemu_pids()) == 1


def test_stale_edit_is_refused_not_applied(daemon: DaemonHandle) -> None:
    created = daemon.define("edited")
    version = created["version"]
    first = daemon.spec("edited", memory=300)
    daemon.client.request("PUT", daemon.client.domain_path("edited"),
                          {"spec": first, "version": version})
    stale = daemon.spec("edited", memory=999)
    error = _refused(daemon, "PUT", daemon.client.domain_path("edited"),
                     {"spec": stale, "version": version}, 409)
    assert "changed since you read it" in error.message
    info = daemon.info("edited")
    assert (info["memory_mib"], info["version"]) == (300, version + 1)


@pytest.mark.parametrize(("overrides", "stderr_words"), [
    ({"cpu": "no-such-cpu-model"}, "no-such-cpu-model"),
    ({"disks": [{"path": "DISK", "format": "qcow2"}]}, "qcow2"),
])
def test_qemu_that_fails_to_start_leaves_nothing(daemon: DaemonHandle, tmp_path: Path,
                                                 overrides: dict[str, Any],
                                                 stderr_words: str) -> None:
    disk = tmp_path / "not-qcow2.img"
    disk.write_bytes(b"\0" * 1024 * 1024)
    for entry in overrides.get("disks", []):
        entry["path"] = str(disk)
    info = daemon.define("broken", **overrides)
    error = _refused(daemon, "POST", daemon.client.domain_path("broken", "/start"), {}, 500)
    assert "QEMU failed to start domain 'broken'" in error.message
    assert stderr_words in error.details.get("stderr", "")
    after = daemon.info("broken")
    assert (after["state"], after["pid"]) == ("shutoff", None)
    assert daemon.qemu_pids() == []
    assert not (daemon.root / "run" / info["uuid"]).exists()
    assert disk.stat().st_size == 1024 * 1024  # the disk is untouched


def test_undefine_of_running_domain_is_refused(daemon: DaemonHandle) -> None:
    daemon.define("busy")
    daemon.client.post(daemon.client.domain_path("busy", "/start"))
    error = _refused(daemon, "DELETE", daemon.client.domain_path("busy"), None, 409)
    assert "stop it first" in (error.fix or "")
    assert daemon.state("busy") == "running"


def test_unknown_domain_and_bad_body(daemon: DaemonHandle) -> None:
    error = _refused(daemon, "POST", daemon.client.domain_path("ghost", "/start"), {}, 404)
    assert "domain 'ghost' not found" in error.message
    with pytest.raises(ApiError) as excinfo:
        daemon.client.request("PUT", daemon.client.domain_path("ghost"), {"spec": {}})
    assert excinfo.value.http_status in (400, 404)


def test_save_to_existing_file_is_refused_and_vm_keeps_running(daemon: DaemonHandle,
                                                               tmp_path: Path) -> None:
    daemon.define("saver")
    daemon.client.post(daemon.client.domain_path("saver", "/start"))
    existing = tmp_path / "taken.save"
    existing.write_text("precious")
    error = _refused(daemon, "POST", daemon.client.domain_path("saver", "/save"),
                     {"path": str(existing)}, 409)
    assert "already exists" in error.message
    assert existing.read_text() == "precious"
    assert daemon.state("saver") == "running"
    assert os.path.exists(f"/proc/{daemon.info('saver')['pid']}")
