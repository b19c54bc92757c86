"""Only ``virtkit.qemu`` spells a QMP (or guest-agent) command name (issue 19).

The command table is the facade itself: every literal name ``qemu/qmp.py`` and
``qemu/agent.py`` pass to ``self.execute``.  Every other module is parsed and its
string literals compared with that table, as test_layers.py does for imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import virtkit
from virtkit.qemu.agent import AgentCommands
from virtkit.qemu.qmp import QmpCommands

SRC = Path(virtkit.__file__).resolve().parent
FACADES = (SRC / "qemu" / "qmp.py", SRC / "qemu" / "agent.py")

#: command names that are also ordinary words of the product (a CLI verb, a state, a
#: dict key): a literal equal to one of these is allowed, but not as the command of a
#: call (``x.execute("stop")``), which the second test checks for every name.
ORDINARY_WORDS = frozenset({"migrate", "stop", "cont", "quit", "balloon", "screendump",
                            "transaction", "send-key", "snapshot-delete"})


def _sent_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "execute" and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            names.add(node.args[0].value)
    return names


#: a QMP/agent command name (lower case, ``-``/``_``); SQL's ``execute("SELECT …")`` is not
COMMAND_SHAPE = re.compile(r"[a-z][a-z0-9_-]*")
COMMANDS = frozenset().union(*(_sent_names(p) for p in FACADES))
OUTSIDE = sorted(p for p in SRC.rglob("*.py") if SRC / "qemu" not in p.parents)


def _literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant in ``path`` (docstrings too; f-string parts included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_the_table_comes_from_the_facades() -> None:
    assert {"query-migrate", "blockdev-add", "device_add", "migrate-set-capabilities",
            "guest-exec", "guest-fsfreeze-freeze"} <= COMMANDS
    assert len(COMMANDS) > 80
    for facade in (QmpCommands, AgentCommands):  # one method per command, named after it
        methods = {name for name in vars(facade) if not name.startswith("_")}
        assert "execute" in methods and len(methods) > 25


def test_the_scan_finds_a_spelled_command(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('async def f(m):\n    await m.execute("query-migrate")\n')
    assert (2, "query-migrate") in _literals(module)


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(SRC)))
def test_no_command_name_outside_qemu(path: Path) -> None:
    spelled = [f"{path.relative_to(SRC)}:{line} spells {value!r}"
               for line, value in _literals(path)
               if value in COMMANDS and value not in ORDINARY_WORDS]
    assert spelled == [], "call the typed method of virtkit.qemu.qmp/agent instead"


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(SRC)))
def test_no_literal_execute_outside_qemu(path: Path) -> None:
    """``x.execute("…")`` with any literal name (a new command too) belongs in qemu/."""
    sent = {name for name in _sent_names(path) if COMMAND_SHAPE.fullmatch(name)}  # not SQL
    assert sent == set(), f"{path.relative_to(SRC)} sends {sorted(sent)}: add a method " \
                          "to virtkit/qemu/qmp.py (or agent.py) and call it"
