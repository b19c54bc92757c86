"""The response schemas of the OpenAPI document, from the service's result models.

A route whose service method returns a typed result (service/models/) is listed here
once; api/openapi.py turns the type into the ``200`` answer's schema, so the document
and the JSON on the wire come from the same class.
"""

from __future__ import annotations

from typing import Any

from virtkit.api.openapi_domain_results import domain_result_types
from virtkit.api.openapi_results_store import store_result_types
from virtkit.service.models import guest, host, networks, snapshots, stats, tokens

_DOM, _NET, _GUEST = "/v1/domains/{ref}", "/v1/networks/{net}", "/v1/domains/{ref}/guest"


def result_types() -> dict[tuple[str, str], Any]:
    """(method, path) -> the type its ``200``/``201`` answer carries."""
    net_changes = {("post", "/v1/networks"), ("get", _NET), ("post", _NET + "/start"),
                   ("post", _NET + "/destroy"), ("put", _NET + "/autostart"),
                   ("post", _NET + "/update"), ("post", _NET + "/forwards")}
    snapshot = _DOM + "/snapshots"
    return {
        ("get", "/v1/networks"): list[networks.NetworkInfo],
        **{key: networks.NetworkInfo for key in net_changes},
        ("delete", _NET): networks.NetworkRemoved,
        ("get", _NET + "/leases"): list[networks.Lease],
        ("get", snapshot): list[snapshots.SnapshotInfo],
        ("post", snapshot): snapshots.SnapshotInfo,
        ("get", snapshot + "/current"): snapshots.SnapshotInfo,
        ("get", snapshot + "/{name}"): snapshots.SnapshotInfo,
        ("post", snapshot + "/{name}/revert"): snapshots.SnapshotInfo,
        ("delete", snapshot + "/{name}"): snapshots.SnapshotsDeleted,
        ("get", "/v1/domstats"): list[stats.DomainStats],
        ("get", "/v1/host/capacity"): stats.Capacity,
        ("get", _DOM + "/vcpus"): stats.VcpuInfo,
        ("get", "/v1/host"): host.HostInfo,
        ("get", "/v1/host/check"): list[host.HostCheck],
        ("get", "/v1/tokens"): list[tokens.TokenInfo],
        ("post", "/v1/tokens"): tokens.TokenInfo,
        ("delete", "/v1/tokens/{name}"): tokens.TokenInfo,
        ("get", _GUEST + "/ping"): guest.AgentPing,
        ("get", _GUEST + "/info"): guest.GuestInfo,
        ("get", _GUEST + "/interfaces"): list[guest.GuestInterface],
        ("get", _GUEST + "/fsfreeze"): guest.FreezeStatus,
        ("post", _GUEST + "/fsfreeze"): guest.Frozen,
        ("post", _GUEST + "/fsthaw"): guest.Thawed,
        ("post", _GUEST + "/fstrim"): guest.Trimmed,
        ("post", _GUEST + "/exec"): guest.ExecResult,
        ("put", _GUEST + "/file"): guest.FileWritten,
        ("post", _GUEST + "/user-password"): guest.PasswordSet,
        ("get", _GUEST + "/vcpus"): list[guest.GuestVcpu],
        ("put", _GUEST + "/vcpus"): guest.GuestVcpusSet,
        ("get", _GUEST + "/time"): guest.GuestTime,
        ("put", _GUEST + "/time"): guest.GuestTime,
        **store_result_types(),
        **domain_result_types(),
    }


def result_schemas() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """The answer schema of each route of :func:`result_types`, and the definitions
    they refer to (``#/components/schemas/...``)."""
    from pydantic import TypeAdapter

    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    defs: dict[str, Any] = {}
    for key, kind in result_types().items():
        schema = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}",
                                               mode="serialization")
        defs.update(schema.pop("$defs", {}))
        if "title" in schema and "properties" in schema:  # a model: a $ref to it
            name = schema["title"]
            defs[name] = schema
            schema = {"$ref": f"#/components/schemas/{name}"}
        schemas[key] = schema
    return schemas, defs
