"""The typed service boundary (service/models/): results answer the same JSON as the
dictionaries they replaced, and the OpenAPI document describes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from virtkit.api.common import dumps
from virtkit.api.openapi import openapi_document
from virtkit.model.network import Network
from virtkit.network import dnsmasq
from virtkit.network.backend import NetworkStatus
from virtkit.runtime.events import EventBus
from virtkit.service import tokens
from virtkit.service.models.base import Result
from virtkit.service.models.networks import NetworkInfo
from virtkit.service.models.stats import DomainStats, StateReason
from virtkit.service.networks import NetworkService
from virtkit.store.db import Store


class StubBackend:
    """A network backend that touches nothing of the host."""

    def complete(self, net: Network, **_kw: Any) -> Network:
        return net.model_copy(update={"bridge": net.bridge or "vkbr9"})

    def start(self, net: Network, state_dir: Path, **_kw: Any) -> dict[str, Any]:
        return {}

    def status(self, net: Network, state_dir: Path, **_kw: Any) -> NetworkStatus:
        return NetworkStatus(mode=net.mode.value, bridge=net.bridge, bridge_present=True,
                             bridge_up=True, dnsmasq_pid=42)

    def leases(self, net: Network, state_dir: Path) -> list[dnsmasq.Lease]:
        return [dnsmasq.Lease(1700000000, "52:54:00:00:00:01", "10.9.0.5", "guest", None)]


@pytest.fixture
def networks(tmp_path: Path) -> NetworkService:
    store = Store(tmp_path / "db.sqlite")
    return NetworkService(store, EventBus(store), tmp_path / "net",
                          backend=StubBackend())  # type: ignore[arg-type]


def _wire(value: Any) -> Any:
    return json.loads(dumps(value))


def test_an_unset_field_is_left_out_and_a_none_one_is_sent() -> None:
    stats = DomainStats(name="vm", uuid="u")
    assert _wire(stats) == {"name": "vm", "uuid": "u"}
    stats.state = StateReason(state="shutoff", reason=None)
    assert _wire([stats]) == [{"name": "vm", "uuid": "u",
                               "state": {"state": "shutoff", "reason": None}}]


def test_network_info_answers_the_keys_it_did_as_a_dict(networks: NetworkService) -> None:
    info = networks.define({"name": "lab", "mode": "nat", "subnet": "10.9.0.0/24"})
    assert isinstance(info, NetworkInfo)
    wire = _wire(info)
    assert set(wire) == {"name", "uuid", "state", "mode", "bridge", "subnet", "gateway",
                         "autostart", "version", "spec", "dhcp_range"}  # no status: inactive
    assert wire["gateway"] == "10.9.0.1" and wire["dhcp_range"][0] == "10.9.0.2"
    started = _wire(networks.start("lab"))
    assert started["state"] == "active"
    assert started["status"] == {
        "mode": "nat", "bridge": "vkbr9", "bridge_present": True, "bridge_up": True,
        "address_present": None, "dnsmasq_alive": None, "dnsmasq_pid": 42,
        "rules_present": None, "problems": [], "healthy": True, "active": True}
    assert _wire(networks.leases("lab")) == [
        {"expiry": 1700000000, "mac": "52:54:00:00:00:01", "ip": "10.9.0.5",
         "hostname": "guest", "client_id": None}]
    assert networks.leases("lab")[0].ip == "10.9.0.5"  # service/domains.py reads it so


def test_token_results_never_carry_the_secret_but_at_create(tmp_path: Path) -> None:
    service = tokens.TokenService(Store(tmp_path / "db.sqlite"))
    created = _wire(service.create("ci"))
    assert set(created) == {"name", "id", "created", "expires", "last_used", "revoked",
                            "status", "token"}
    listed = _wire(service.list())
    assert set(listed[0]) == set(created) - {"token"}
    assert created["token"] not in json.dumps(listed)


def test_every_result_route_documents_its_answer_from_the_model() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    leases = doc["paths"]["/v1/networks/{net}/leases"]["get"]["responses"]["200"]
    item = leases["content"]["application/json"]["schema"]["items"]["$ref"]
    assert item == "#/components/schemas/Lease"
    assert set(schemas["Lease"]["properties"]) == {"expiry", "mac", "ip", "hostname",
                                                   "client_id"}
    info = doc["paths"]["/v1/networks/{net}"]["get"]["responses"]["200"]
    assert info["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NetworkInfo"}
    assert issubclass(NetworkInfo, Result)
