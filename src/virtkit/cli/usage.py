"""Command-line usage errors the way virsh reports them: ``error: ...`` on stderr and
exit status 1 (argparse's default is its own wording and status 2)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

_REQUIRED = re.compile(r"the following arguments are required: ([^,\s]+)")
_CHOICE = re.compile(r"argument COMMAND: invalid choice: '([^']*)'")


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def usage_message(parser: argparse.ArgumentParser, message: str) -> str:
    """virsh's wording for an argparse complaint: ``command 'dominfo' requires <domain>
    option``; ``unknown command: 'x'`` with what it may have meant."""
    command = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog
    found = _REQUIRED.search(message)
    if found:
        return f"command '{command}' requires <{found.group(1).strip('-')}> option"
    found = _CHOICE.search(message)
    if found:
        word = found.group(1)
        close = difflib.get_close_matches(word, _commands(parser), n=3, cutoff=0.6)
        hint = f" (did you mean: {', '.join(close)}?)" if close else \
            " (see 'virtkit --help')"
        return f"unknown command: '{word}'{hint}"
    return message


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace
               ) -> argparse.ArgumentParser:
    """The (sub-)sub-command parser that ``args`` were parsed by."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest or "", None)
            if isinstance(chosen, str) and chosen in action.choices:
                return _innermost(action.choices[chosen], args)
    return parser


def unexpected_message(command: str, extras: Sequence[str]) -> str:
    """virsh's words for what a command does not take: ``command 'dominfo' doesn't
    support option --nosuch``, ``unexpected data 'x'``."""
    word = extras[0]
    if word.startswith("-") and word != "-":
        return f"command '{command}' doesn't support option {word.split('=', 1)[0]}"
    return f"unexpected data '{word}'"


class VirshParser(argparse.ArgumentParser):
    """An ArgumentParser (and, by inheritance, each subcommand's) whose errors are
    virsh's: the subcommand's usage, then ``error: ...``; exit status 1."""

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: Any = None) -> argparse.Namespace:
        """As argparse's, but words no command takes are reported against that
        command (its usage, virsh's message), not the top-level parser."""
        parsed: argparse.Namespace
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            inner = _innermost(self, parsed)
            command = inner.prog.split(" ", 1)[1] if " " in inner.prog else inner.prog
            inner.print_usage(sys.stderr)
            sys.stderr.write(f"error: {unexpected_message(command, extras)}\n")
            sys.exit(1)
        return parsed

    def error(self, message: str) -> NoReturn:
        text = usage_message(self, message)
        if not text.startswith("unknown command"):
            self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {text}\n")
        sys.exit(1)
