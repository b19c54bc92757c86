"""Request models of the domain routes in api/app.py (api/requests.py has the rules);
a module of their own so that the OpenAPI document (api/openapi.py) can take its
schemas from them without importing the app."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from virtkit.api.requests import Body, Count, DefineBody, Flag, Query


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("must be a number of seconds since 1970") from None
    return value


class DomainDefineBody(DefineBody):
    new_disks: list[dict[str, Any]] | None = None


class UpdateBody(Body):
    spec: dict[str, Any] | None = None
    yaml: str | None = None
    version: int


class RestoreBody(Body):
    path: str
    paused: bool = False


class StartBody(Body):
    paused: bool = False
    force_boot: bool = False  # discard a managed save image and boot afresh


class ShutdownBody(Body):
    timeout: Annotated[float, Field(ge=0)] | None = None
    wait: bool = False
    mode: str = "acpi"


class PathBody(Body):
    path: str


class LinkBody(Body):
    state: Literal["up", "down"]



class AuditQuery(Query):
    since: Annotated[float, BeforeValidator(_seconds)] | None = None
    limit: Annotated[Count, Field(ge=1)] = 1000


class UndefineQuery(Query):
    nvram: Flag = False
    snapshots_metadata: Flag = False
    remove_all_storage: Flag = False
    managed_save: Flag = False


class ConsoleLogQuery(Query):
    port: Count = 0
    tail: Count = 0


class ConsoleQuery(Query):
    port: Count = 0
    force: Flag = False


class EventsQuery(Query):
    since: Count | None = None


