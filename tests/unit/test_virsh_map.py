"""docs/cli.md's map of virsh's commands: one row for every command real virsh 9 lists in
``virsh help`` (tests/data/virsh/help.out), each naming virtkit commands that exist in
the CLI parser, or ``—`` with a reason; and the recordings themselves parse with the
parsers the output tests use."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tests.virshdata import DATA, domstats, help_commands, keyvalues, recording, table
from virtkit.cli.main import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
ROW = re.compile(r"^\| `([^`]+)` \| (.*?) \|(.*?)\|$")


def _map_rows() -> dict[str, tuple[str, str]]:
    text = DOCS.read_text()
    section = text.split("## virsh's commands in virtkit", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        found = ROW.match(line)
        if found:
            assert found.group(1) not in rows, f"{found.group(1)} mapped twice"
            rows[found.group(1)] = (found.group(2).strip(), found.group(3).strip())
    return rows


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _exists(words: list[str]) -> bool:
    """``virtkit WORDS...``: a command (and sub-command, ``host numa``) with those
    options (``--json``, ``-c``) in the parser."""
    parser = build_parser()
    if words[0].startswith("-"):  # a global option, e.g. -c URI, --help
        return words[0] in parser._option_string_actions
    commands = _subparsers(parser)
    if words[0] not in commands:
        return False
    parser = commands[words[0]]
    rest = words[1:]
    if rest and not rest[0].startswith("-") and _subparsers(parser):
        if rest[0] not in _subparsers(parser):
            return False
        parser, rest = _subparsers(parser)[rest[0]], rest[1:]
    return all(word in parser._option_string_actions for word in rest
               if word.startswith("-"))


def test_every_virsh_command_is_mapped() -> None:
    virsh = [c for commands in help_commands(recording("help").text).values() for c in commands]
    assert len(virsh) > 250  # the whole of virsh 9's help, all groups
    rows = _map_rows()
    assert [c for c in virsh if c not in rows] == []
    assert [c for c in rows if c not in virsh] == []  # nothing virsh does not have


def test_every_virtkit_command_in_the_map_exists() -> None:
    for virsh, (virtkit, note) in _map_rows().items():
        if virtkit == "—":
            assert note, f"{virsh}: '—' needs the reason"
            continue
        named = re.findall(r"`([^`]+)`", virtkit)
        assert named, f"{virsh}: name the virtkit command in backquotes"
        for command in named:
            assert _exists(command.split()), f"{virsh} -> virtkit {command}: no such command"


def test_same_named_commands_are_mapped_to_themselves() -> None:
    ours = _subparsers(build_parser())
    for virsh, (virtkit, _) in _map_rows().items():
        if virsh in ours:
            assert virtkit == f"`{virsh}`", virsh


def test_the_recordings_parse() -> None:
    for path in sorted(DATA.glob("*.out")) + sorted(DATA.glob("*.err")):
        record = recording(path.stem, path.suffix[1:])
        assert record.version.startswith("virsh 9."), path.name
        assert record.status in (0, 1), path.name
    assert [k for k, _ in keyvalues(recording("nodeinfo").text)] == [
        "CPU model", "CPU(s)", "CPU frequency", "CPU socket(s)", "Core(s) per socket",
        "Thread(s) per core", "NUMA cell(s)", "Memory size"]
    columns, rows = table(recording("snapshot-list-parent").text)
    assert columns == ["Name", "Creation Time", "State", "Parent"]
    assert rows[0][3] == "" and rows[1][3] == "s1"  # an empty cell keeps its column
    assert set(domstats(recording("domstats-state").text)) == {"rec", "rec-off"}
