"""CLI rendering (tables, key/value blocks, host-check lines) and the generated bash completion."""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import subprocess

import pytest

from virtkit.cli import render
from virtkit.cli.completion import bash_completion
from virtkit.cli.main import build_parser

ESC = "\x1b"


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def _columns(line: str, starts: list[int]) -> list[str]:
    bounds = [*starts, len(line) + 1]
    return [line[a:b].strip() for a, b in itertools.pairwise(bounds)]


# -- table ------------------------------------------------------------------------------------

def test_table_is_aligned_plain_text() -> None:
    out = io.StringIO()
    render.table(["Id", "Name", "State"],
                 [[1, "web", "running"], [None, "database-server", "shut off"], [12, "x", ""]],
                 stream=out, colour_column=2)
    assert out.getvalue() == (
        " Id   Name              State\n"
        "----------------------------------\n"
        " 1    web               running\n"
        " -    database-server   shut off\n"
        " 12   x\n"
    )
    assert ESC not in out.getvalue()


def test_table_columns_start_where_their_headers_start() -> None:
    headers = ["Name", "State", "Memory", "Autostart"]
    rows = [["a-rather-long-domain-name", "in shutdown", "1.5 GiB", "yes"],
            ["b", "running", None, "no"], ["c", "crashed", "512 MiB", "-"]]
    out = io.StringIO()
    render.table(headers, rows, stream=out)
    head, rule, *body = out.getvalue().splitlines()
    starts = [head.index(h) for h in headers]
    assert starts == sorted(starts) and starts[0] == 1
    for line, row in zip(body, rows, strict=True):
        assert _columns(line, starts) == [("-" if c is None else c) for c in row]
        for start in starts[1:]:
            assert line[start - 3:start] == "   "  # three spaces between columns
    assert set(rule) == {"-"} and len(rule) >= len(max(body, key=len))
    assert all(line == line.rstrip() for line in (head, *body))


def test_table_without_rows() -> None:
    out = io.StringIO()
    render.table(["Id", "Name"], [], stream=out)
    assert out.getvalue() == " Id   Name\n" + "-" * 12 + "\n"


def test_table_colours_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = TtyStream()
    render.table(["Name", "State"], [["web", "running"], ["db", "crashed"]], stream=tty,
                 colour_column=1)
    text = tty.getvalue()
    assert "\x1b[1m" in text and "\x1b[32mrunning\x1b[0m" in text
    assert "\x1b[31mcrashed\x1b[0m" in text
    monkeypatch.setenv("NO_COLOR", "1")
    tty = TtyStream()
    render.table(["Name", "State"], [["web", "running"]], stream=tty, colour_column=1)
    assert ESC not in tty.getvalue()


def test_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="longer than"):
        render.table(["Id", "Name"], [[1, "web", "extra"]], stream=io.StringIO())


# -- keyvalues / status_lines --------------------------------------------------------------------

def test_keyvalues_aligns_values() -> None:
    out = io.StringIO()
    render.keyvalues([("Name", "web"), ("Id", None), ("Max memory", "1048576 KiB"),
                      ("CPU(s)", 2)], stream=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        "Name:        web",
        "Id:          -",
        "Max memory:  1048576 KiB",
        "CPU(s):      2",
    ]
    assert len({line.index(value) for line, value in
                zip(lines, ["web", "-", "1048576", "2"], strict=True)}) == 1


def test_keyvalues_empty() -> None:
    out = io.StringIO()
    render.keyvalues([], stream=out)
    assert out.getvalue() == ""


def test_status_lines_show_fixes_for_warn_and_fail_only() -> None:
    checks = [
        {"name": "hardware virt", "status": "PASS", "detail": "CPU has vmx", "fix": "ignored"},
        {"name": "/dev/kvm", "status": "WARN", "detail": "cannot open", "fix": "join group kvm"},
        {"name": "qemu", "status": "FAIL", "detail": "not found", "fix": "apt install qemu"},
        {"name": "KSM", "status": "WARN", "detail": "off", "fix": None},
        {"name": "daemon", "status": "FAIL", "detail": "unreachable"},
    ]
    out = io.StringIO()
    render.status_lines(checks, stream=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        "hardware virt  PASS  CPU has vmx",
        "/dev/kvm       WARN  cannot open",
        "                     fix: join group kvm",
        "qemu           FAIL  not found",
        "                     fix: apt install qemu",
        "KSM            WARN  off",
        "daemon         FAIL  unreachable",
    ]
    assert "ignored" not in out.getvalue()
    assert ESC not in out.getvalue()
    # the fix sits under the detail column
    assert lines[2].index("fix:") == lines[1].index("cannot open")


# -- bash completion -----------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.fixture(scope="module")
def script() -> str:
    return bash_completion(build_parser(install_options=True))


def test_completion_names_every_subcommand(script: str) -> None:
    commands = _subcommands(build_parser())
    assert {"list", "start", "destroy", "host", "completion", "event"} <= set(commands)
    for name, sub in commands.items():
        assert f"        {name}) opts=" in script, name
        for flag in (o for a in sub._actions for o in a.option_strings if o.startswith("--")):
            case_line = next(line for line in script.splitlines()
                             if line.startswith(f"        {name}) "))
            assert flag in case_line, (name, flag)
    top = next(line for line in script.splitlines() if "--root --version --help" in line)
    for name in commands:
        assert f" {name} " in top or f'"{name} ' in top, name
    assert "complete -F _virtkit virtkit" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_completion_is_valid_bash(script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                            timeout=10, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("words", "expected", "unexpected"), [
    (["virtkit", "st"], {"start"}, {"list", "--root"}),
    (["virtkit", "--"], {"--root", "--version", "--help"}, {"start"}),
    (["virtkit", "start", "--p"], {"--paused"}, {"--all"}),
    (["virtkit", "list", "--"], {"--all", "--inactive", "--name", "--uuid", "--json"}, set()),
    (["virtkit", "host", "ch"], {"check"}, set()),
])
def test_completion_completes(script: str, words: list[str], expected: set[str],
                              unexpected: set[str]) -> None:
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               "_virtkit\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile"], input=program,
                            capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    offered = set(result.stdout.split())
    assert expected <= offered, offered
    assert not unexpected & offered, offered


def test_virsh_named_domain_argument_becomes_the_positional() -> None:
    from virtkit.cli.main import _domain_option_to_positional as convert

    assert convert(["snapshot-list", "--domain", "vm", "--tree"]) == \
        ["snapshot-list", "vm", "--tree"]
    assert convert(["dominfo", "--domain=vm"]) == ["dominfo", "vm"]
    assert convert(["guest", "exec", "--domain", "vm", "--", "/bin/x", "--domain", "y"]) == \
        ["guest", "exec", "vm", "--", "/bin/x", "--domain", "y"]
    assert convert(["list", "--all"]) == ["list", "--all"]


@pytest.mark.parametrize(("event", "line"), [
    ({"type": "started", "domain": "web", "uuid": "u", "state": "running", "reason": "booted"},
     "event 'started' for domain 'web': running (booted)"),
    ({"type": "volume-created", "pool": "default", "volume": "a.qcow2"},
     "event 'volume-created' for volume 'default/a.qcow2'"),
    ({"type": "pool-started", "pool": "default", "uuid": "u"},
     "event 'pool-started' for pool 'default'"),
    ({"type": "net-stopped", "network": "lan", "uuid": "u"},
     "event 'net-stopped' for network 'lan'"),
    ({"type": "snapshot-created", "domain": "web", "state": "shutoff",
      "reason": "snapshot s1", "snapshot": "s1"},
     "event 'snapshot-created' for domain 'web': shutoff (snapshot s1)"),
    ({"type": "error", "network": "lan\x1b[2J", "reason": "dnsmasq died"},
     "event 'error' for network 'lan\\x1b[2J' (dnsmasq died)"),
])
def test_every_event_kind_names_its_own_object(event: dict[str, str], line: str) -> None:
    assert render.describe_event(event) == line
    assert "None" not in render.describe_event(event)


def test_vcpuinfo_affinity_is_virshs_map() -> None:
    from virtkit.cli.stats import affinity_map

    assert affinity_map("0-1", 4) == "yy--"
    assert affinity_map("1,3", 4) == "-y-y"
    assert affinity_map("0-3", 2) == "yy"
