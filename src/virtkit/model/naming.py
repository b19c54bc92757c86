"""The one naming rule and the one text rule, for every object kind and request.

Names (domains, pools, networks, snapshots) are never UUID-shaped and never start
with ``-``:

* a UUID-shaped name could be mistaken for another object's UUID.  References are
  resolved as a UUID only when they are UUID-shaped, so such a name would shadow or
  take over the object that really has that UUID;
* a name starting with ``-`` reads as an option to every command line tool
  (``virtkit dominfo -x``), virsh's and ours alike.

Text (every string a request carries: names, titles, descriptions, paths, XML) must
be valid Unicode: no lone surrogates (``"\\udc80"`` is valid JSON but cannot be
encoded as UTF-8, so it can be neither stored nor answered) and no NUL (it ends C
strings early: in QEMU's argv, in file names, in SQLite's text functions).

Pure functions; no I/O.
"""

from __future__ import annotations

import re
from typing import Any

#: 8-4-4-4-12 hex digits, any case, with or without braces/dashes as Python's UUID()
#: reads them (32 hex digits, or the canonical dashed form, optionally urn:uuid:)
_UUID_SHAPED = re.compile(
    r"(?:urn:uuid:)?\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?",
    re.IGNORECASE)
_SURROGATE_OR_NUL = re.compile("[\x00\ud800-\udfff]")


def is_uuid_shaped(text: str) -> bool:
    """True when ``text`` reads as a UUID (what a reference is resolved as a UUID for)."""
    return bool(_UUID_SHAPED.fullmatch(text.strip()))


def naming_problem(value: str) -> str | None:
    """What the naming rule refuses in ``value``, or None when it is a good name."""
    if is_uuid_shaped(value):
        return (f"name {value!r} is shaped like a UUID; names never are, so that a "
                "reference can never mean two objects")
    if value.startswith("-"):
        return f"name {value!r} starts with '-', which command lines read as an option"
    return None


#: (name, uuid) of objects a store from before the rule holds under a name the rule
#: refuses; registered at daemon start-up (service/recovery.py check_names), so that
#: those objects -- and only they -- still load, and can be renamed
_GRANDFATHERED: set[tuple[str, str]] = set()


def grandfather(name: str, uuid: str) -> None:
    """Let the stored object ``uuid`` keep the rule-breaking ``name`` it already has."""
    _GRANDFATHERED.add((name, uuid.lower()))


def is_grandfathered(name: str, uuid: str) -> bool:
    return (name, uuid.lower()) in _GRANDFATHERED


def text_problem(value: str) -> str | None:
    """What the text rule refuses in ``value`` (a lone surrogate, NUL), or None."""
    match = _SURROGATE_OR_NUL.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "contains a NUL character"
    return (f"is not valid Unicode: a lone surrogate \\u{ord(match.group()):04x} at "
            f"character {match.start()}")


def find_bad_text(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first string in ``data`` (keys included) that breaks the text rule, as
    ``(field path, problem)``; None when all are good.  Iterative: any nesting depth."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                return where or "body", problem
        elif isinstance(value, dict):
            for key, item in value.items():
                sub = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and (problem := text_problem(key)):
                    return sub, f"field name {problem}"
                stack.append((item, sub))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
    return None
