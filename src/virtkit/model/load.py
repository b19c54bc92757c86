"""Turn user input (YAML/JSON text or dicts) into validated specs.

Pydantic's errors are rewritten into one :class:`InvalidSpec` whose message
names the field path (``disks[0].bus``) and says what is wrong, so the CLI can
print a single clear line.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from virtkit.errors import InvalidSpec
from virtkit.model.domain import Domain


def field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location tuple as ``disks[0].bus``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-", "union[", "json-or-python")):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "spec"


def invalid_spec_from(error: ValidationError, *, kind: str = "domain") -> InvalidSpec:
    """Summarise a pydantic ValidationError as one InvalidSpec naming the first bad field."""
    problems = []
    for item in error.errors():
        path = field_path(tuple(item["loc"]))
        sub = getattr(item.get("ctx", {}).get("error"), "field", None)
        if sub:
            path = sub if path == "spec" else f"{path}.{sub}"
        message = str(item["msg"]).removeprefix("Value error, ")
        message = message.replace("Input should be", "must be")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling (see docs/spec.md)"
        elif item["type"] == "missing":
            message = "is required"
        problems.append((path, message))
    path, message = problems[0]
    text = f"invalid {kind} spec: {path}: {message}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return InvalidSpec(text, field=path, problems=[f"{p}: {m}" for p, m in problems])


#: how deep a spec's YAML/JSON may nest (a real spec nests fewer than 10 levels)
MAX_NESTING = 64


def nesting_bound(text: str) -> int:
    """An upper bound of how deep YAML/JSON ``text`` nests, found without parsing it:
    flow brackets, and block levels (each needs an indentation of its own).  Brackets
    inside strings count too, which only makes the bound larger."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    indents = {len(line) - len(line.lstrip(" -")) for line in text.splitlines() if line.strip()}
    return max(deepest, len(indents))


def parse_text(text: str, *, source: str = "spec") -> dict[str, Any]:
    """Read YAML or JSON (JSON is YAML) into a mapping, with a clear error if it is not one.
    Text nesting deeper than :data:`MAX_NESTING` is refused before the parser sees it
    (PyYAML would spend seconds and recursion on it)."""
    if nesting_bound(text) > MAX_NESTING:
        raise InvalidSpec(f"{source}: nests more than {MAX_NESTING} levels deep",
                          fix="send the spec as a plain mapping of fields")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec(f"{source}: not valid YAML or JSON{where}: {exc}") from None
    except RecursionError:
        raise InvalidSpec(f"{source}: nests too deeply to be read") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: expected a mapping of fields (name: ..., memory: ...)")
    return data


def load_domain(data: dict[str, Any] | str) -> Domain:
    """Validate a domain spec given as a mapping or as YAML/JSON text."""
    if isinstance(data, str):
        data = parse_text(data)
    try:
        return Domain.model_validate(data)
    except ValidationError as exc:
        raise invalid_spec_from(exc) from None


def dump_domain(domain: Domain) -> dict[str, Any]:
    """The canonical JSON-able form of a domain (what the store and the API hold)."""
    data: dict[str, Any] = json.loads(domain.model_dump_json())
    return data


def domain_to_yaml(domain: Domain, *, secrets: bool = True) -> str:
    """A YAML rendering for humans (``virtkit edit``, ``dumpspec``); without
    ``secrets``, passwords are left out (:func:`without_secrets`)."""
    data = dump_domain(domain)
    return yaml.safe_dump(data if secrets else without_secrets(data), sort_keys=False,
                          default_flow_style=False)


#: the fields of a spec that hold secrets (the VNC/SPICE password): never answered on
#: the read-only socket, elsewhere only when asked for (virsh dumpxml --security-info)
SECRET_FIELDS = frozenset({"password", "passwd"})


def without_secrets(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec (any depth) without its secret fields; libvirt likewise leaves
    the ``passwd`` attribute out of XML that is not asked for with secrets."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()
                    if key not in SECRET_FIELDS}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value
    result: dict[str, Any] = strip(spec)
    return result


def domain_without_secrets(domain: Domain) -> Domain:
    """``domain`` with its secrets (the graphics password) removed."""
    if domain.graphics.password is None:
        return domain
    return domain.model_copy(update={
        "graphics": domain.graphics.model_copy(update={"password": None})})
