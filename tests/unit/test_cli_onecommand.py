"""A CLI call builds only its own command's parser (cli/onecommand.py): the table of
which module registers which command stays in step with the full tree, the one-command
parser reads every command line as the full one does, and ``start`` imports only what
it needs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from virtkit.cli import main
from virtkit.cli.onecommand import COMMANDS, command_word


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


FULL = _commands(main.build_parser())
#: the CLI in-process (not named run: the installed-programs scan reads run([...]) as a
#: program)
_cli = main.run


def test_the_table_names_every_command_of_the_full_tree() -> None:
    missing = sorted(set(FULL) - set(COMMANDS))
    assert not missing, f"add {missing} to cli/onecommand.py's _OWNERS"
    assert not sorted(set(COMMANDS) - set(FULL))


@pytest.mark.parametrize("name", sorted(FULL))
def test_the_one_command_parser_is_the_full_trees(name: str) -> None:
    parser = main.build_parser(only=name)
    alone = _commands(parser)
    assert list(alone) == [name], "the table names the wrong module for " + name
    assert alone[name].format_help() == FULL[name].format_help()
    assert alone[name]._defaults == FULL[name]._defaults


@pytest.mark.parametrize(("argv", "word"), [
    (["start", "vm"], "start"),
    (["--root", "/tmp/x", "-r", "list", "--all"], "list"),
    (["--connect=qemu:///system", "dominfo", "vm"], "dominfo"),
    (["-c", "virtkit:///system", "host", "check"], "host"),
    (["--help"], None), (["--version"], None), ([], None),
    (["--conn", "x", "start", "vm"], None),  # an abbreviation only argparse expands
    (["no-such-command"], None),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert command_word(argv, main.GLOBAL_OPTIONS) == word


def test_an_unknown_command_still_gets_the_full_trees_answer(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli(["strat", "vm"])
    assert "unknown command: 'strat' (did you mean: start" in capsys.readouterr().err


def test_a_usage_error_names_the_command_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli(["start"])
    assert "error: command 'start' requires <domain> option" in capsys.readouterr().err


def test_virtkit_start_imports_only_the_domain_commands() -> None:
    code = ("import sys, json\n"
            "from virtkit.cli import main\n"
            "main.build_parser(only=main.command_word(['start', 'vm'], main.GLOBAL_OPTIONS))"
            ".parse_args(['start', 'vm'])\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    modules = set(json.loads(out.stdout.splitlines()[-1]))
    cli = {name for name in modules if name.startswith("virtkit.cli.")}
    assert cli <= {"virtkit.cli.main", "virtkit.cli.client", "virtkit.cli.transport",
                   "virtkit.cli.render", "virtkit.cli.usage", "virtkit.cli.onecommand",
                   "virtkit.cli.domains", "virtkit.cli.objects", "virtkit.cli.commands"}, cli
    assert not modules & {"pydantic", "yaml", "aiohttp", "asyncio", "http.client", "typing",
                          "virtkit.model", "datetime", "subprocess"}


def test_version_is_argparses_answer_without_the_tree(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["--version"])
    full = capsys.readouterr().out
    assert _cli(["--version"]) == 0
    assert capsys.readouterr().out == full
