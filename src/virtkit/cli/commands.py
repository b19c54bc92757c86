"""One way to declare a CLI command: every ``register()`` adds its subcommands through
:func:`add_command`, so the help text, the ``domain`` argument and ``--json`` read the
same everywhere."""

from __future__ import annotations

import argparse

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def add_command(sub: Any, name: str, func: Any, text: str, *positional: str,
                domain: bool = False, json_flag: bool = False,
                parent: Any = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (to ``parent``'s subparsers if given, else ``sub``) that
    runs ``func``: a ``domain`` argument first if asked, then ``positional`` ones, and
    ``--json`` when ``json_flag``."""
    parser: argparse.ArgumentParser = (parent if parent is not None else sub).add_parser(
        name, help=text, description=text)
    if domain:
        parser.add_argument("domain", help="domain name or UUID")
    for argument in positional:
        parser.add_argument(argument)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=func)
    return parser
