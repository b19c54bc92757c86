"""``virtkit console``: the serial console in the terminal, Ctrl-] to leave."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import tty
from collections.abc import Iterator
from urllib.parse import quote

from virtkit.cli.client import Client
from virtkit.cli.wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, WebSocket

ESCAPE = b"\x1d"  # Ctrl-]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal in raw mode (when it is one) and always restore it."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(client: Client, domain: str, *, force: bool = False, port: int = 0) -> int:
    """Proxy stdin/stdout to the domain's serial console until Ctrl-] or the VM stops."""
    path = f"/v1/domains/{quote(domain, safe='')}/console?port={port}"
    if force:
        path += "&force=1"
    ws: WebSocket = client.websocket(path)
    print(f"Connected to domain '{domain}'\nEscape character is ^] (Ctrl + ])",
          file=sys.stderr, flush=True)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    reason = ""
    with raw_terminal(stdin):
        try:
            reason = _pump(ws, stdin, stdout)
        finally:
            ws.close()
    print(f"\r\n{reason or 'Disconnected'}", file=sys.stderr)
    return 0


def _pump(ws: WebSocket, stdin: int, stdout: int) -> str:
    stdin_open = True
    while True:
        readable = [ws.sock] + ([stdin] if stdin_open else [])
        ready = [ws.sock] if ws.pending() else select.select(readable, [], [])[0]
        if ws.sock in ready:
            opcode, payload = ws.receive()
            if opcode == OP_CLOSE:
                return payload[2:].decode(errors="replace") or "console closed"
            if opcode in (OP_BINARY, OP_TEXT):
                os.write(stdout, payload)
        if stdin in ready:
            data = os.read(stdin, 4096)
            if not data:
                stdin_open = False
                continue
            if ESCAPE in data:
                before = data.split(ESCAPE, 1)[0]
                if before:
                    ws.send(before)
                return ""
            ws.send(data)
