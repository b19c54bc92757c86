"""Strict typed requests: every route's JSON body and query string is one model here.

The rules (docs/api.md "Strict requests"):

* a body is parsed by a :class:`Body` model, ``strict=True, extra="forbid"``: a
  string is never a boolean or a number (``{"enabled": "false"}`` is a 400, not
  ``True``), and an unknown field is a 400 naming it (``"prealloc_typo"`` is not
  silently ignored);
* a query string is parsed by a :class:`Query` model the same way, with one flag
  parser for the whole API (:data:`Flag`: true/false, 1/0, yes/no, nothing else)
  and one whole-number parser (:data:`Count`);
* all text is valid Unicode without NUL (checked for the whole body at once by
  :func:`virtkit.api.common.json_body`, with the field's path).

The published OpenAPI document takes its request schemas from these models
(:func:`body_schema`), so it cannot drift from what the daemon accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from virtkit.api.common import json_body
from virtkit.errors import InvalidSpec
from virtkit.service.models.migrations import IncomingRequest, OfflineIncomingRequest

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


def parse_flag(value: Any) -> Any:
    """The API's one query flag reader: true/false, 1/0, yes/no (any case)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"must be true or false (also 1/0, yes/no), got {value[:40]!r}")
    return value


def _count(value: Any) -> Any:
    if isinstance(value, str):
        if not (value.isascii() and value.isdecimal()) or len(value) > 18:
            raise ValueError(f"must be a whole number, got {value[:40]!r}")
        return int(value)
    return value


#: a query flag (``?all=no``)
Flag = Annotated[bool, BeforeValidator(parse_flag)]
#: a non-negative whole number in a query string (``?tail=4096``)
Count = Annotated[int, BeforeValidator(_count), Field(ge=0)]


class Body(BaseModel):
    """Base of every request body: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", defer_build=True)


class Query(BaseModel):
    """Base of every query string: strict types, unknown parameters refused."""

    model_config = ConfigDict(strict=True, extra="forbid", defer_build=True)


class NoQuery(Query):
    """A route that takes no query parameter."""


B = TypeVar("B", bound=BaseModel)


#: what pydantic puts in an error's location besides field names (union members ...)
_TYPE_TAGS = frozenset({"str", "int", "bool", "float", "bytes", "none"})
_TAG_PREFIXES = ("function-", "constrained-", "union[", "tagged-union[", "list[", "dict[",
                 "literal[", "nullable[", "json-or-python[")


def _problem(item: Any, *, query: bool, model: type[BaseModel]) -> tuple[str, str]:
    path = ""
    for part in item["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part) not in _TYPE_TAGS and not str(part).startswith(_TAG_PREFIXES):
            path += f".{part}" if path else str(part)
    path = path or "body"
    kind = item["type"]
    if kind == "extra_forbidden":
        what = "query parameter" if query else "field"
        if len(item["loc"]) > 1:
            return path, f"unknown {what}"
        known = ", ".join(model.model_fields) or "none"
        return path, f"unknown {what}; the {what}s of this request are: {known}"
    if kind == "missing":
        return path, "is required"
    if kind == "bool_type":
        return path, "must be true or false (a JSON boolean, not a string or number)"
    if kind in ("int_type", "float_type"):
        return path, "must be a number (a JSON number, not a string)"
    if kind == "string_type":
        return path, "must be a string"
    message = str(item["msg"]).removeprefix("Value error, ")
    return path, message.replace("Input should be", "must be")


def _refusal(error: ValidationError, *, query: bool, model: type[BaseModel]) -> InvalidSpec:
    problems = [_problem(item, query=query, model=model) for item in error.errors()]
    path, message = problems[0]
    prefix = "?" if query else ""
    text = f"invalid request: {prefix}{path}: {message}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return InvalidSpec(text, field=path, problems=[f"{p}: {m}" for p, m in problems])


def validate_body(data: dict[str, Any], model: type[B]) -> B:
    """``data`` (a decoded JSON object) as ``model``, or one InvalidSpec naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _refusal(exc, query=False, model=model) from None


async def body_of(request: web.Request, model: type[B]) -> B:
    """The request's JSON body (``{}`` when there is none) parsed by ``model``."""
    return validate_body(await json_body(request), model)


def query_of(request: web.Request, model: type[B]) -> B:
    """The request's query string parsed by ``model``; a parameter given twice is a
    list for list fields and refused for the others."""
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        field = model.model_fields.get(key)
        is_list = field is not None and getattr(field.annotation, "__origin__", None) is list
        if is_list:
            data[key] = values
        elif len(values) > 1:
            raise InvalidSpec(f"invalid request: ?{key} is given {len(values)} times; give "
                              "it once", field=key)
        else:
            data[key] = values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _refusal(exc, query=True, model=model) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a request body model, for the OpenAPI document."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


# -- models shared by several route modules ------------------------------------------------

class ListQuery(Query):
    """``?all=`` of the list routes: include inactive objects (default yes)."""

    all: Flag = True


class DomainListQuery(ListQuery):
    """``GET /v1/domains``: ``?cluster=1`` adds every cluster host's VMs, each row
    naming its ``host`` (outside a cluster it changes nothing)."""

    cluster: Flag = False


class AutostartBody(Body):
    enabled: bool = True


class ForceQuery(Query):
    force: Flag = False


class XmlQuery(Query):
    """Routes answering a spec, its YAML or XML: ``security_info`` adds secrets (VNC
    passwords), never on the read-only socket."""

    security_info: Flag = False


class EmptyBody(Body):
    """A route that takes no body (an empty object, or none)."""


class DefineBody(Body):
    """A define: a spec object, its YAML text, or libvirt XML (``force``: drop what
    virtkit cannot honour, with warnings)."""

    spec: dict[str, Any] | None = None
    yaml: str | None = None
    xml: str | None = None
    force: bool = False




async def define_body(request: web.Request) -> tuple[DefineBody, dict[str, Any] | str | None]:
    """A pool or network define: ``{"spec"|"yaml"|"xml": ...}``; a body with none of
    them is the spec itself (the older form), checked by the spec's own model."""
    data = await json_body(request)
    if not {"spec", "yaml", "xml"} & set(data):
        return DefineBody(), data
    body = validate_body(data, DefineBody)
    return body, body.yaml if body.yaml is not None else body.spec


# -- daemon-to-daemon migration bodies (the source daemon's peer client sends these) --------
# The service's own input models (service/models/migrations.py): the body the route
# parses is what the service takes.

IncomingBody = IncomingRequest
OfflineIncomingBody = OfflineIncomingRequest
