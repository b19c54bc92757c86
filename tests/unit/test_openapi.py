"""The published OpenAPI document covers exactly the routes the daemon serves."""

from __future__ import annotations

from typing import Any

from virtkit.api.app import ROUTE_TABLES
from virtkit.api.auth import routes as auth_routes
from virtkit.api.openapi import OPERATIONS, openapi_document
from virtkit.api.webui import routes as web_routes

#: the web console's static files: pages, not API operations
STATIC = {("get", "/"), ("get", "/favicon.ico"), ("get", "/ui/{path:.+}")}



def _served() -> set[tuple[str, str]]:
    served = set()
    tables = [table for table, _needs in ROUTE_TABLES]
    for route in [route for table in tables for route in table] + [*auth_routes, *web_routes]:
        path = getattr(route, "path", "")
        method = getattr(route, "method", "").lower()
        if "{action:" in path:
            for action in path.split("{action:")[1].rstrip("}").split("|"):
                served.add((method, path.split("{action:")[0] + action))
        else:
            served.add((method, path))
    return served - STATIC


def test_every_served_route_is_documented_and_vice_versa() -> None:
    documented = {(method, path) for method, path, _summary, _body in OPERATIONS}
    assert _served() == documented


def test_document_is_openapi_31_with_the_domain_schema() -> None:
    doc: dict[str, Any] = openapi_document()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert {"Domain", "Error", "Disk", "Memory", "Vcpus"} <= set(schemas)
    assert set(schemas["Domain"]["required"]) == {"name", "memory"}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for ops in doc["paths"].values():
        for op in ops.values():
            for ref in _refs(op):
                assert ref.split("/")[-1] in schemas, ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
