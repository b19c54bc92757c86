"""Rendering for the CLI: aligned tables, key/value blocks, one-line errors.

Tables are drawn here rather than with rich: importing rich costs about as
much as the whole ``virtkit list`` start-up budget (0.1 s).  On a terminal,
headers are bold and states coloured; in a pipe, output is plain text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

_STATE_COLOURS = {"running": "32", "paused": "33", "in shutdown": "33", "crashed": "31",
                  "shutoff": "2", "PASS": "32", "WARN": "33", "FAIL": "31"}


def _colour_enabled(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def _paint(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          stream: TextIO | None = None, colour_column: int | None = None) -> None:
    """Print an aligned table with a header rule, virsh style."""
    out = stream or sys.stdout
    colour = _colour_enabled(out)
    cells = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    head = "   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    lines = [" " + _paint(head, "1", colour), "-" * (sum(widths) + 3 * len(widths))]
    for row in cells:
        parts = []
        for index, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            if index == colour_column:
                padded = _paint(padded, _STATE_COLOURS.get(cell, ""), colour)
            parts.append(padded)
        lines.append(" " + "   ".join(parts).rstrip())
    out.write("\n".join(lines) + "\n")


def keyvalues(pairs: Sequence[tuple[str, Any]], *, stream: TextIO | None = None) -> None:
    """Print ``Key:   value`` lines as virsh dominfo does."""
    out = stream or sys.stdout
    width = max((len(key) for key, _ in pairs), default=0) + 2
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width)} {'-' if value is None else value}\n")


def status_lines(checks: Sequence[dict[str, Any]], *, stream: TextIO | None = None) -> None:
    """Host-check style: ``name ... PASS detail`` with the fix on WARN/FAIL."""
    out = stream or sys.stdout
    colour = _colour_enabled(out)
    width = max((len(c["name"]) for c in checks), default=0)
    for check in checks:
        status = check["status"]
        painted = _paint(status.ljust(4), _STATE_COLOURS.get(status, ""), colour)
        out.write(f"{check['name'].ljust(width)}  {painted}  {check['detail']}\n")
        if status != "PASS" and check.get("fix"):
            out.write(f"{'':{width}}        fix: {check['fix']}\n")


def as_json(data: Any, *, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(data, indent=2, default=str) + "\n")


def error(message: str, fix: str | None = None, detail: str | None = None) -> None:
    colour = _colour_enabled(sys.stderr)
    line = _paint("error:", "31;1", colour) + f" {message}"
    if fix:
        line += f" (fix: {fix})"
    sys.stderr.write(line + "\n")
    if detail:
        sys.stderr.write("".join(f"  {row}\n" for row in detail.splitlines()))
