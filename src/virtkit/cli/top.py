"""``virtkit top``: virt-top, a refreshing table of running domains.

Every ``-d`` seconds it asks the daemon for ``domstats`` of the running domains
and shows CPU % (from the CPU time used since the previous frame; 100 % = one
host CPU), memory, disk and network rates.  On a terminal the screen is redrawn
with ANSI escapes and keys change the sort column (``c`` CPU, ``m`` memory,
``n`` name, ``b`` block I/O, ``i`` network, ``q`` quits); ``--batch`` prints
plain tables one after another (for scripts and tests).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from virtkit.cli import render
from virtkit.cli.client import Client

SORT_KEYS = {"c": "cpu", "m": "mem", "n": "name", "b": "block", "i": "net"}
HEADERS = ["ID", "S", "%CPU", "%MEM", "TIME", "MEM(MiB)", "RD/s", "WR/s", "RX/s", "TX/s",
           "NAME"]
_STATE_LETTER = {"running": "R", "paused": "P", "in shutdown": "D", "crashed": "X"}


def _block_bytes(stats: dict[str, Any]) -> tuple[int, int]:
    disks = stats.get("block") or []
    return sum(d.get("rd_bytes", 0) for d in disks), sum(d.get("wr_bytes", 0) for d in disks)


def _net_bytes(stats: dict[str, Any]) -> tuple[int, int]:
    nics = stats.get("net") or []
    return sum(n.get("rx_bytes", 0) for n in nics), sum(n.get("tx_bytes", 0) for n in nics)


class Frames:
    """Turns successive domstats answers into rows with rates since the previous one."""

    def __init__(self, host_mib: int) -> None:
        self.host_mib = host_mib
        self._previous: dict[str, tuple[float, float, tuple[int, int], tuple[int, int]]] = {}

    def rows(self, stats: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        rows = []
        for item in stats:
            if "cpu" not in item:
                continue
            cpu_time = item["cpu"]["time"] or 0.0
            block, net = _block_bytes(item), _net_bytes(item)
            before = self._previous.get(item["uuid"])
            self._previous[item["uuid"]] = (now, cpu_time, block, net)
            if before is not None and now > before[0]:
                span = now - before[0]
                cpu = max(0.0, (cpu_time - before[1]) * 100 / span)
                rates = [max(0.0, (new - old) / span) for new, old in
                         zip((*block, *net), (*before[2], *before[3]), strict=True)]
            else:
                cpu = item["cpu"].get("percent") or 0.0
                rates = [0.0, 0.0, 0.0, 0.0]
            rss_kib = (item.get("balloon") or {}).get("rss") or 0
            rows.append({"pid": item.get("pid"), "name": item["name"],
                         "state": _STATE_LETTER.get(item["state"]["state"], "?"),
                         "cpu": cpu, "time": cpu_time, "mem": rss_kib / 1024,
                         "mem_pct": 100 * rss_kib / 1024 / self.host_mib if self.host_mib else 0,
                         "rd": rates[0], "wr": rates[1], "rx": rates[2], "tx": rates[3]})
        return rows


def sort_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    keys = {"cpu": lambda r: -r["cpu"], "mem": lambda r: -r["mem"],
            "name": lambda r: r["name"], "block": lambda r: -(r["rd"] + r["wr"]),
            "net": lambda r: -(r["rx"] + r["tx"])}
    return sorted(rows, key=keys[column])


def _rate(value: float) -> str:
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def _time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:05.2f}"


def render_frame(rows: list[dict[str, Any]], column: str, capacity: dict[str, Any],
                 now: float) -> str:
    out = io.StringIO()
    running = sum(1 for r in rows if r["state"] == "R")
    out.write(f"virtkit top {time.strftime('%H:%M:%S', time.localtime(now))} - "
              f"{len(rows)} domains, {running} running, {len(rows) - running} other; "
              f"host {capacity['host']['cpus']} CPUs, {capacity['host']['memory_mib']} MiB; "
              f"sorted by {column}\n")
    table = [[r["pid"], r["state"], f"{r['cpu']:.1f}", f"{r['mem_pct']:.1f}", _time(r["time"]),
              f"{r['mem']:.0f}", _rate(r["rd"]), _rate(r["wr"]), _rate(r["rx"]),
              _rate(r["tx"]), r["name"]] for r in sort_rows(rows, column)]
    render.table(HEADERS, table, stream=out)
    return out.getvalue()


@contextlib.contextmanager
def _raw_terminal(interactive: bool) -> Iterator[None]:
    """cbreak mode without echo (keys arrive at once); restored on exit."""
    if not interactive:
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        sys.stdout.write("\x1b[?25l")
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write("\x1b[?25h\n")
        sys.stdout.flush()


def _wait_key(delay: float, interactive: bool) -> str | None:
    """Sleep ``delay`` seconds; on a terminal return a key pressed meanwhile."""
    if not interactive:
        time.sleep(delay)
        return None
    ready, _, _ = select.select([sys.stdin], [], [], delay)
    return os.read(sys.stdin.fileno(), 1).decode(errors="ignore") if ready else None


def cmd_top(client: Client, args: argparse.Namespace) -> int:
    capacity = client.get("/v1/host/capacity")
    frames = Frames(capacity["host"]["memory_mib"])
    column = args.sort
    interactive = not args.batch and sys.stdin.isatty() and sys.stdout.isatty()
    iteration = 0
    with _raw_terminal(interactive):
        while True:
            stats = client.get("/v1/domstats?active=1")
            now = time.time()
            text = render_frame(frames.rows(stats, time.monotonic()), column, capacity, now)
            if interactive:
                # cbreak mode keeps output processing: "\n" still starts a new line
                sys.stdout.write("\x1b[H\x1b[2J" + text
                                 + "\nkeys: c cpu, m mem, n name, b block, i net, q quit")
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()
            iteration += 1
            if args.iterations is not None and iteration >= args.iterations:
                return 0
            key = _wait_key(args.delay, interactive)
            if key == "q":
                return 0
            if key in SORT_KEYS:
                column = SORT_KEYS[key]
