"""Real virsh 9 output recorded by scripts/record-virsh-output.sh (tests/data/virsh/), and
the parsers a script written against virsh would use on it: ``Key: value`` documents,
column tables read by the header's column positions, domstats' ``key=value`` blocks,
``virsh help``'s command list.  The output tests run virtkit's commands through the same
parsers and compare the *form*: field and column names in virsh's order, and the shape
of each value (:func:`shape`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "virsh"


@dataclass(frozen=True)
class Recording:
    command: str  # virsh's arguments, as run
    status: int  # its exit status
    version: str  # the header's first line: virsh, libvirt and QEMU versions
    text: str  # stdout (.out) or stderr (.err), verbatim


def recording(name: str, stream: str = "out") -> Recording:
    """``tests/data/virsh/NAME.out`` (or ``.err``): the header, then the output."""
    lines = (DATA / f"{name}.{stream}").read_text().splitlines(keepends=True)
    header = [line for line in lines[:3] if line.startswith("# ")]
    assert len(header) == 3, f"{name}.{stream}: no recording header"
    command = header[1].removeprefix("# $ virsh ").strip()
    status = int(header[2].removeprefix("# exit ").strip())
    return Recording(command, status, header[0][2:].strip(), "".join(lines[3:]))


def keyvalues(text: str) -> list[tuple[str, str]]:
    """``Key:   value`` lines (dominfo, nodeinfo, net-info, vcpuinfo ...), as a script
    splits them: at the first colon, both sides stripped; other lines are skipped."""
    pairs = []
    for line in text.splitlines():
        if ":" in line and not line.startswith(" "):
            key, value = line.split(":", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """A virsh table: the header's column names, and each row's cells cut at the
    header's column positions (so an empty cell stays in its column)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header, rule, *rows = lines
    assert set(rule) == {"-"}, f"no header rule under {header!r}"
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", header)]
    columns = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    cells = [[row[a:b].strip() if b else row[a:].strip()
              for a, b in zip(starts, [*starts[1:], None], strict=True)] for row in rows]
    return columns, cells


def domstats(text: str) -> dict[str, list[tuple[str, str]]]:
    """``Domain: 'x'`` blocks of ``  key=value`` lines."""
    blocks: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        found = re.fullmatch(r"Domain: '(.*)'", line)
        if found:
            current = blocks.setdefault(found.group(1), [])
        elif line.strip():
            key, _, value = line.strip().partition("=")
            current.append((key, value))
    return blocks


def help_commands(text: str) -> dict[str, list[str]]:
    """``virsh help``: each group (`` Domain Management (help keyword 'domain'):``) and
    its commands, in order."""
    groups: dict[str, list[str]] = {}
    group: list[str] = []
    for line in text.splitlines():
        head = re.match(r" (\S.*) \(help keyword '([^']+)'\):$", line)
        if head:
            group = groups.setdefault(head.group(1), [])
        elif line.startswith("    ") and line.strip():
            group.append(line.split()[0])
    return groups


UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
MAC = re.compile(r"\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b")
PATH = re.compile(r"(?<![\w.])/[\w./+-]+")
UNIT = re.compile(r"\b(?:bytes|KiB|MiB|GiB|TiB)\b")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def shape(value: str) -> str:
    """What a value looks like, not what it is: UUIDs, MACs, paths, numbers and size
    units become placeholders, words stay (``2.3s`` -> ``N.Ns``... ``yes`` stays ``yes``,
    so ``True`` for ``yes`` is a different shape)."""
    value = UUID.sub("<uuid>", value)
    value = MAC.sub("<mac>", value)
    value = PATH.sub("<path>", value)
    value = UNIT.sub("<unit>", value)
    return NUMBER.sub("<n>", value)
