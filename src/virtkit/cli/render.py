"""Rendering for the CLI: aligned tables, key/value blocks, one-line errors.

Tables are drawn here rather than with rich: importing rich costs about as
much as the whole ``virtkit list`` start-up budget (0.1 s).  On a terminal,
headers are bold and states coloured; in a pipe, output is plain text.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Sequence

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

#: what never reaches a terminal raw from the daemon: C0 controls (ESC starts terminal
#: commands), DEL, C1 controls (0x9b is a one-byte CSI), and the Unicode bidi and line
#: controls that reorder or break what is shown (U+202E turns 'gpj.exe' into 'exe.jpg')
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ufeff]")
#: the same, but letting through the newlines, tabs and carriage returns of our own
#: multi-line output and ESC of our own colours (for the terminal stream backstop)
_UNSAFE_IN_STREAM = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f"
                               "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                               "\u2066-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: Any) -> str:
    """``value`` as text fit for a terminal: every control and bidi character shown as
    an escape (``\\x1b``, ``\\u202e``).  The one function the CLI prints daemon data
    through (tables, key/value blocks, check lines, errors); JSON output stays JSON."""
    return _UNSAFE.sub(_escape, str(value))


class _SafeTerminal(io.TextIOBase):
    """A terminal stream that escapes control and bidi characters (except newline, tab,
    carriage return and ESC, which the CLI's own output uses) in everything written:
    the backstop for messages that name daemon objects outside :func:`safe`."""

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(_UNSAFE_IN_STREAM.sub(_escape, text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def buffer(self) -> Any:  # binary output (console logs, guest files) is not text
        return self.raw.buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.raw.encoding


def protect_terminals() -> None:
    """Route sys.stdout/sys.stderr through :class:`_SafeTerminal` when they are
    terminals (a pipe or file gets the bytes as they are: dumpxml > file stays exact)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _SafeTerminal) and stream.isatty():
            setattr(sys, name, _SafeTerminal(stream))

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
    cells = [[("-" if cell is None else safe(cell)) for cell in row] for row in rows]
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


def keyvalues(pairs: Sequence[tuple[str, Any]], *, stream: TextIO | None = None,
              width: int | None = None) -> None:
    """Print ``Key:   value`` lines as virsh dominfo does; ``width=15`` is virsh's
    ``%-15s %s`` (net-info, pool-info, vol-info), else the longest key decides."""
    out = stream or sys.stdout
    width = width or max((len(key) for key, _ in pairs), default=0) + 2
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width)} {'-' if value is None else safe(value)}\n")


def status_lines(checks: Sequence[dict[str, Any]], *, stream: TextIO | None = None) -> None:
    """Host-check style: ``name ... PASS detail`` with the fix on WARN/FAIL."""
    out = stream or sys.stdout
    colour = _colour_enabled(out)
    width = max((len(c["name"]) for c in checks), default=0)
    for check in checks:
        status = check["status"]
        painted = _paint(status.ljust(4), _STATE_COLOURS.get(status, ""), colour)
        out.write(f"{safe(check['name']).ljust(width)}  {painted}  {safe(check['detail'])}\n")
        if status != "PASS" and check.get("fix"):
            out.write(f"{'':{width}}        fix: {safe(check['fix'])}\n")


def as_json(data: Any, *, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(data, indent=2, default=str) + "\n")


def error(message: str, fix: str | None = None, detail: str | None = None) -> None:
    colour = _colour_enabled(sys.stderr)
    line = _paint("error:", "31;1", colour) + f" {safe(message)}"
    if fix:
        line += f" (fix: {safe(fix)})"
    sys.stderr.write(line + "\n")
    if detail:
        sys.stderr.write("".join(f"  {safe(row)}\n" for row in detail.splitlines()))


def describe_event(event: dict[str, Any]) -> str:
    """One line for an event, naming its own object (virsh event's shape): a domain's
    state change, a snapshot, a network, a pool or a volume, with the reason if any."""
    kind = event.get("type", "?")
    if event.get("volume") is not None:
        subject = f"volume '{safe(event.get('pool'))}/{safe(event['volume'])}'"
    elif event.get("domain") is not None:
        subject = f"domain '{safe(event['domain'])}'"
    elif event.get("network") is not None:
        subject = f"network '{safe(event['network'])}'"
    elif event.get("pool") is not None:
        subject = f"pool '{safe(event['pool'])}'"
    else:
        subject = f"object '{safe(event.get('uuid', '?'))}'"
    line = f"event '{safe(kind)}' for {subject}"
    if event.get("state"):
        line += f": {safe(event['state'])}"
    if event.get("reason"):
        line += f" ({safe(event['reason'])})"
    return line

