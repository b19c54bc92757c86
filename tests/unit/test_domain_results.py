"""The typed boundary of the domain services (service/models/domains.py and the other
models of issue 19's item 4): the answers keep the JSON keys, order and nulls of the
dictionaries they replaced, the OpenAPI document describes them, and the choices the
domain handlers used to make live in service/domainpolicy.py (item 5)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from virtkit.api.common import dumps
from virtkit.api.openapi import openapi_document
from virtkit.errors import InvalidSpec, Unsupported
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps
from virtkit.model.load import load_domain
from virtkit.paths import StatePaths
from virtkit.runtime.events import EventBus
from virtkit.runtime.lifecycle import Lifecycle
from virtkit.service import domainpolicy
from virtkit.service.domains import DomainService
from virtkit.service.models.base import Result
from virtkit.service.models.domains import DomainInfo, DomainSummary, Undefined
from virtkit.service.models.hostguests import GuestsPolicy
from virtkit.service.models.tuning import BlkDevIoTune, PinTable, VcpuPin
from virtkit.store.db import Store

UUID = "3c9d2e1f-8a7b-4c6d-9e0f-1a2b3c4d5e6f"

#: dominfo's keys, in the order the dictionary had them (the CLI's --json shows it)
INFO_KEYS = ["name", "uuid", "state", "reason", "vcpus", "memory_mib", "autostart", "pid",
             "id", "title", "managed_save", "description", "version", "spec",
             "max_memory_mib", "max_vcpus", "machine", "accelerator", "started",
             "installing", "vnc", "disks", "console_log", "security", "persistent",
             "cpu_time"]


@pytest.fixture
def domains(tmp_path: Path) -> DomainService:
    store = Store(tmp_path / "db")
    specs: dict[str, Domain] = {}

    def spec_for(uuid: str) -> Domain:
        return specs.get(uuid) or load_domain(store.get_domain(uuid).spec)

    life = Lifecycle(store, EventBus(store), StatePaths(tmp_path / "root"),
                     lambda _d: (HostCaps(accel="tcg"), "qemu"), spec_for)
    return DomainService(store, life, EventBus(store), host_memory_mib=4096)


def _wire(value: Any) -> Any:
    return json.loads(dumps(value))


def test_define_answers_dominfo_typed_with_the_same_keys(domains: DomainService) -> None:
    info = domains.define({"name": "vm", "uuid": UUID, "memory": 64})
    assert isinstance(info, DomainInfo)
    wire = _wire(info)
    assert list(wire) == INFO_KEYS
    assert wire["pid"] is None and wire["vnc"] is None and wire["security"] is None
    assert wire["state"] == "shutoff" and wire["disks"] == [] and wire["cpu_time"] is None
    assert "host" not in wire and "warnings" not in wire  # only some answers carry them


def test_summaries_and_their_extra_fields(domains: DomainService) -> None:
    domains.define({"name": "vm", "uuid": UUID, "memory": 64})
    (row,) = domains.list_domains()
    assert isinstance(row, DomainSummary)
    assert list(_wire(row)) == INFO_KEYS[:11]
    row.path = "/tmp/vm.save"  # what save and managedsave add, last
    assert list(_wire(row))[-1] == "path"
    assert domains.list_domains(include_inactive=False) == []


def test_undefine_never_sends_its_intent(domains: DomainService) -> None:
    domains.define({"name": "vm", "uuid": UUID, "memory": 64})
    gone = asyncio.run(domains.undefine("vm", storage_of=lambda _uuid: [["pool", "vol"]]))
    assert isinstance(gone, Undefined) and gone.volumes == [["pool", "vol"]]
    assert gone.intent is not None
    assert _wire(gone) == {"name": "vm", "uuid": UUID}


def test_dominfo_names_the_host_only_in_a_cluster(domains: DomainService) -> None:
    domains.define({"name": "vm", "uuid": UUID, "memory": 64})
    assert "host" not in _wire(domainpolicy.info(domains, None, "vm"))

    class InCluster:
        host_name = "node-a"

    info = domainpolicy.info(domains, InCluster(), "vm")  # type: ignore[arg-type]
    assert list(_wire(info)) == [*INFO_KEYS, "host"] and info.host == "node-a"


def test_a_cluster_list_outside_a_cluster_is_this_hosts_list(domains: DomainService) -> None:
    domains.define({"name": "vm", "uuid": UUID, "memory": 64})
    rows = asyncio.run(domainpolicy.list_domains(domains, None, include_inactive=True,
                                                 cluster_wide=True))
    assert [row.name for row in rows if isinstance(row, DomainSummary)] == ["vm"]


def test_new_disks_are_never_silently_ignored(domains: DomainService) -> None:
    with pytest.raises(Unsupported, match="new_disks"):
        asyncio.run(domainpolicy.define(domains, None, spec={"name": "vm", "memory": 64},
                                        new_disks=[{"pool": "p", "volume": "v"}]))
    xml = "<domain type='qemu'><name>vm</name><memory unit='MiB'>64</memory></domain>"
    with pytest.raises(InvalidSpec) as refused:  # the XML path used to drop them
        asyncio.run(domainpolicy.define(domains, None, xml=xml,
                                        new_disks=[{"pool": "p", "volume": "v"}]))
    assert refused.value.field == "new_disks"
    with pytest.raises(Unsupported, match="remove_all_storage"):
        asyncio.run(domainpolicy.undefine(domains, None, "vm", remove_all_storage=True))


def test_optional_fields_are_left_out_until_set() -> None:
    config = VcpuPin(vcpu=0, affinity="0-3")
    assert _wire(config) == {"vcpu": 0, "affinity": "0-3"}  # vcpupin --config: no thread
    live = VcpuPin(vcpu=0, thread_id=42, affinity="1")
    assert list(_wire(live)) == ["vcpu", "thread_id", "affinity"]
    table = PinTable(name="vm", live=True, vcpus=[live], emulator=None)
    assert _wire(table) == {"name": "vm", "live": True, "vcpus": [
        {"vcpu": 0, "thread_id": 42, "affinity": "1"}], "emulator": None}
    # blkdeviotune of a disk QEMU does not know: the values are absent, not null
    assert _wire(BlkDevIoTune(name="vm", disk="vdb", live=True)) == {
        "name": "vm", "disk": "vdb", "live": True}


def test_results_no_longer_answer_indexing() -> None:
    """Callers read attributes; the dictionary shim (Result.__getitem__) is gone."""
    policy = GuestsPolicy(on_shutdown="ignore", shutdown_timeout=300, on_boot="start")
    assert not hasattr(Result, "__getitem__")
    with pytest.raises(TypeError):
        policy["on_boot"]  # type: ignore[index]


def test_openapi_describes_the_domain_answers() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]

    def answer(method: str, path: str) -> Any:
        return document["paths"][path][method]["responses"]["200"]["content"][
            "application/json"]["schema"]

    assert answer("get", "/v1/domains/{ref}") == {"$ref": "#/components/schemas/DomainInfo"}
    assert set(INFO_KEYS) <= set(schemas["DomainInfo"]["properties"])
    assert answer("post", "/v1/domains/{ref}/destroy") == {
        "$ref": "#/components/schemas/DomainSummary"}
    assert answer("get", "/v1/domains/{ref}/disks")["items"] == {
        "$ref": "#/components/schemas/DiskInfo"}
    assert "intent" not in schemas["Undefined"]["properties"]
    # a result's name never hides a spec model's (model/tuning.py has MemTune, BlkioTune)
    assert "hard_limit" in schemas["MemTune"]["properties"]
    assert "name" not in schemas["MemTune"]["properties"]

