"""The storage, block job and migration services' typed answers (service/models/) carry
exactly what the dictionaries they replaced carried, and the OpenAPI document describes
the routes' answers with the same classes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.test_migration import FakeDestination, FakeMonitor, _options, _run
from virtkit.api.openapi import openapi_document
from virtkit.api.openapi_results_store import store_result_types
from virtkit.service.models import storage
from virtkit.service.models.blockjobs import BlockJob, BlockResized
from virtkit.service.models.migrations import (
    IncomingStarted,
    IncomingStatus,
    JobInfo,
    MigrationResult,
)
from virtkit.storage.base import VolumeInfo as BackendVolume


def test_pool_info_answers_the_keys_of_its_state() -> None:
    fields: dict[str, Any] = {
        "name": "p", "uuid": "u", "state": "inactive", "type": "dir", "target": "/srv/p",
        "autostart": False, "source_devices": [], "shared": False, "source_host": None,
        "source_path": None, "source_hosts": [], "source_name": None, "auth_username": None,
        "capacity": None, "allocation": None, "available": None}
    inactive = storage.PoolInfo(**fields)
    assert inactive.wire() == fields  # no "volumes" while inactive, nulls kept
    active = inactive.model_copy(update={"capacity": 10, "allocation": 2, "available": 8,
                                         "volumes": 3})
    assert active.wire() == {**fields, "capacity": 10, "allocation": 2, "available": 8,
                             "volumes": 3}
    defined = active.model_copy(update={"warnings": ["dropped <permissions>"]})
    assert defined.wire()["warnings"] == ["dropped <permissions>"]
    assert active.state == "inactive"  # callers read attributes (a result is no dict)


def test_volume_info_is_the_backend_volume_plus_pool_and_users() -> None:
    backend = BackendVolume("a.qcow2", "/srv/p/a.qcow2", "qcow2", 2**30, 196608)
    volume = storage.VolumeInfo(**backend.to_dict(), pool="p", used_by=["vm"])
    assert volume.wire() == {**backend.to_dict(), "pool": "p", "used_by": ["vm"]}
    uploaded = volume.model_copy(update={"uploaded": 512})
    assert uploaded.wire() == {**volume.wire(), "uploaded": 512}


@pytest.mark.parametrize("report", [
    # blockcommit: started, completed (images left or deleted), active ready/pivoted
    {"name": "vm", "disk": "vda", "job": "commit", "base": "/b.qcow2", "top": "/t.qcow2",
     "status": "completed", "unused": ["/t.qcow2"]},
    {"name": "vm", "disk": "vda", "job": "active-commit", "base": "/b.qcow2",
     "top": "/t.qcow2", "status": "pivoted", "deleted": ["/t.qcow2"]},
    # blockpull, blockcopy, blockjob --info / --abort, and no job at all
    {"name": "vm", "disk": "vda", "job": "stream", "top": "/t.qcow2", "status": "started"},
    {"name": "vm", "disk": "vda", "job": "mirror", "dest": "/c.qcow2", "format": "qcow2",
     "status": "ready"},
    {"name": "vm", "disk": "vda", "job": "mirror", "status": "running", "cur": 5, "end": 9,
     "bandwidth": 0},
    {"name": "vm", "disk": "vda", "job": "commit", "status": "aborted"},
    {"name": "vm", "disk": "vda", "job": None},
])
def test_block_job_answers_what_the_runtime_reports(report: dict[str, Any]) -> None:
    assert BlockJob.model_validate(report).wire() == report


def test_block_results_refuse_a_field_they_do_not_describe() -> None:
    """A new field in the runtime's report must be added to the model (and so to the
    OpenAPI document), not slip through undescribed."""
    with pytest.raises(ValidationError):
        BlockJob.model_validate({"name": "vm", "disk": "vda", "job": None, "extra": 1})
    assert BlockResized(name="vm", disk="vda", size=2**30).wire()["size"] == 2**30


def test_migration_result_carries_the_runtime_report_precopy_and_postcopy() -> None:
    report = _run(FakeMonitor(["active", "pre-switchover", "completed"]), FakeDestination())
    result = MigrationResult(**report, domain="vm", source="shut off")
    assert result.wire() == {**report, "domain": "vm", "source": "shut off"}
    postcopy = _run(FakeMonitor(["active", "pre-switchover", "postcopy-active",
                                 "completed"]), FakeDestination(),
                    _options({"postcopy": True}))
    assert postcopy["postcopy"] is True
    wire = MigrationResult(**postcopy, domain="vm", source="shut off").wire()
    assert wire == {**postcopy, "domain": "vm", "source": "shut off"}


def test_job_info_keeps_nulls_it_was_given_and_nothing_else() -> None:
    assert JobInfo(domain="vm", type="none").wire() == {"domain": "vm", "type": "none"}
    info = JobInfo(domain="vm", type="unbounded", data_total=None, dirty_rate=7)
    assert info.wire() == {"domain": "vm", "type": "unbounded", "data_total": None,
                           "dirty_rate": 7}


def test_incoming_answers_keep_their_shape() -> None:
    live = IncomingStarted(id="u", domain="vm", uri="tcp:[::1]:4000",
                           nbd={"host": "::1", "port": 10809, "exports": ["disk0"]})
    assert live.wire() == {"id": "u", "domain": "vm", "uri": "tcp:[::1]:4000",
                           "nbd": {"host": "::1", "port": 10809, "exports": ["disk0"]}}
    offline = IncomingStarted(id="u", domain="vm", nbd=None)
    assert offline.wire() == {"id": "u", "domain": "vm", "nbd": None}
    assert IncomingStatus(id="u", incoming=True, offline=True).wire() == {
        "id": "u", "incoming": True, "offline": True}


def test_the_document_describes_the_answers_with_the_same_classes() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    for (method, path), kind in store_result_types().items():
        answer = doc["paths"][path][method]["responses"]["200"]["content"][
            "application/json"]["schema"]
        name = getattr(kind, "__name__", None)
        if name is not None and hasattr(kind, "model_fields"):
            assert answer == {"$ref": f"#/components/schemas/{name}"}, (method, path)
            assert set(schemas[name]["properties"]) == set(kind.model_fields)
        else:  # a list of results
            assert answer["type"] == "array", (method, path)


def test_the_managedsave_and_limits_routes_are_documented_with_their_models() -> None:
    paths = openapi_document()["paths"]
    limits = paths["/v1/domains/{ref}/limits/{kind}"]
    kind = next(p for p in limits["post"]["parameters"] if p["name"] == "kind")
    assert kind["schema"]["enum"] == ["schedinfo", "memtune", "blkiotune"]
    body = limits["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"values", "devices", "live", "config"} <= set(body["properties"])
    assert [p["name"] for p in limits["get"]["parameters"]] == ["ref", "kind", "config"]
    iotune = paths["/v1/domains/{ref}/disks/{disk}/iotune"]
    assert [p["name"] for p in iotune["get"]["parameters"]] == ["ref", "disk", "config"]
    managed = paths["/v1/domains/{ref}/managedsave"]["post"]["requestBody"]
    assert {"resume", "bypass_cache"} <= set(
        managed["content"]["application/json"]["schema"]["properties"])
    define = paths["/v1/domains/{ref}/managedsave/xml"]["put"]["requestBody"]
    assert "xml" in define["content"]["application/json"]["schema"]["required"]
    guests = paths["/v1/host/guests"]["put"]["requestBody"]["content"]["application/json"]
    assert {"on_shutdown", "shutdown_timeout", "on_boot"} <= set(
        guests["schema"]["properties"])
    assert "post" in paths["/v1/host/guests/shutdown"]
