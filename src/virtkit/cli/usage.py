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
    from typing import NoReturn

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


class VirshParser(argparse.ArgumentParser):
    """An ArgumentParser (and, by inheritance, each subcommand's) whose errors are
    virsh's: the subcommand's usage, then ``error: ...``; exit status 1."""

    def error(self, message: str) -> NoReturn:
        text = usage_message(self, message)
        if not text.startswith("unknown command"):
            self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {text}\n")
        sys.exit(1)
