"""The ``virtkit`` command line against a real daemon: virsh names, tables, errors, edit."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.cli.edit import ERROR_START

pytestmark = pytest.mark.qemu


def _write_spec(daemon: DaemonHandle, tmp_path: Path, name: str, **extra: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(daemon.spec(name, **extra)))
    return path


def test_define_list_dominfo_start_destroy(daemon: DaemonHandle, tmp_path: Path) -> None:
    spec = _write_spec(daemon, tmp_path, "cli1", graphics="vnc")
    assert "Domain 'cli1' defined" in daemon.cli("define", str(spec)).stdout
    table = daemon.cli("list", "--all").stdout.splitlines()
    assert table[0].split() == ["Id", "Name", "State"]
    assert table[2].split() == ["-", "cli1", "shut", "off"]  # virsh's words
    assert daemon.cli("list").stdout.splitlines()[2:] == [""]  # only running ones by default
    assert "started" in daemon.cli("start", "cli1").stdout
    rows = json.loads(daemon.cli("list", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("cli1", "running")]
    info = daemon.cli("dominfo", "cli1").stdout
    assert "State:" in info and "running" in info and "Accelerator:" in info
    assert daemon.cli("domstate", "cli1").stdout.strip() == "running"
    assert daemon.cli("vncdisplay", "cli1").stdout.strip().startswith("127.0.0.1:")
    assert "destroyed" in daemon.cli("destroy", "cli1").stdout
    assert daemon.cli("domstate", "cli1", "--reason").stdout.strip() == "shut off (destroyed)"
    assert "undefined" in daemon.cli("undefine", "cli1").stdout
    assert daemon.cli("list", "--all", "--name").stdout == "\n"


def test_errors_are_one_line_with_a_fix_and_nonzero_exit(daemon: DaemonHandle,
                                                          tmp_path: Path) -> None:
    result = daemon.cli("start", "nosuch", check=False)
    assert result.returncode == 1
    assert result.stderr == "error: failed to get domain 'nosuch'\n"  # virsh's line
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmemory: 0\n")
    result = daemon.cli("define", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid domain spec: memory:")
    assert len(result.stderr.strip().splitlines()) == 1
    result = daemon.cli("define", str(tmp_path / "missing.yaml"), check=False)
    assert result.returncode == 1 and "cannot read" in result.stderr


def _editor(tmp_path: Path, body: str) -> dict[str, str]:
    script = tmp_path / "editor.py"
    script.write_text(f"import sys, pathlib\n{body}\n")
    return {"EDITOR": f"{sys.executable} {script}"}


def _two_round_editor(tmp_path: Path, first: str, second: str) -> tuple[dict[str, str], Path]:
    """An $EDITOR that runs the code ``first`` on its first call and ``second`` after
    (each sees ``p``, the file, and ``text``, its content); the file it keeps the
    rounds in ("1", then "12")."""
    rounds = tmp_path / "rounds"
    indent = lambda code: "".join(f"    {line}\n" for line in code.splitlines())  # noqa: E731
    env = _editor(tmp_path, f"""
p = pathlib.Path(sys.argv[1]); rounds = pathlib.Path({str(rounds)!r})
text = p.read_text()
if not rounds.exists():
    rounds.write_text("1")
{indent(first)}else:
    rounds.write_text(rounds.read_text() + "2")
{indent(second)}""")
    return env, rounds


def test_edit_applies_a_valid_change(daemon: DaemonHandle, tmp_path: Path) -> None:
    daemon.define("ed1")
    env = _editor(tmp_path, "p = pathlib.Path(sys.argv[1])\n"
                            "p.write_text(p.read_text().replace('current: 256', 'current: 320'))")
    result = daemon.cli("edit", "ed1", env=env)
    assert "edited (version 2)" in result.stdout
    assert daemon.info("ed1")["memory_mib"] == 320


def test_invalid_edit_is_shown_again_and_nothing_changes(daemon: DaemonHandle,
                                                         tmp_path: Path) -> None:
    daemon.define("ed2")
    seen = tmp_path / "seen.txt"
    env = _editor(tmp_path, f"""
p = pathlib.Path(sys.argv[1]); seen = pathlib.Path({str(seen)!r})
text = p.read_text()
if not seen.exists():
    p.write_text(text.replace('current: 256', 'current: 0'))
seen.write_text(text)  # second round: leave the file unchanged = give up
""")
    result = daemon.cli("edit", "ed2", env=env, check=False)
    assert result.returncode == 1
    assert "memory" in result.stderr and "nothing was changed" in result.stderr
    shown = seen.read_text().splitlines()
    assert shown[0] == ERROR_START and shown[1].startswith("# invalid domain spec: memory")
    info = daemon.info("ed2")
    assert (info["memory_mib"], info["version"]) == (256, 1)


def test_an_edit_with_a_yaml_syntax_error_can_be_fixed(daemon: DaemonHandle,
                                                       tmp_path: Path) -> None:
    """The parser's message spans lines; all of it is commented and taken out again, so
    fixing the typo (and nothing else) is accepted on the second round."""
    daemon.define("ed3")
    env, rounds = _two_round_editor(
        tmp_path, "p.write_text(text.replace('current: 256', 'current: [320'))",
        "p.write_text(text.replace('current: [320', 'current: 320'))")
    result = daemon.cli("edit", "ed3", env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert rounds.read_text() == "12" and "edited (version 2)" in result.stdout
    assert daemon.info("ed3")["memory_mib"] == 320


def test_console_typing_and_escape(daemon: DaemonHandle) -> None:
    daemon.define("con")
    daemon.cli("start", "con")
    daemon.wait_booted("con")
    time.sleep(1.0)  # let the shell print its prompt
    process = subprocess.Popen([sys.executable, "-m", "virtkit.cli.main", "console", "con"],
                               env=daemon.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"echo typed-$((20+3))\n")
        process.stdin.flush()
        output = b""
        deadline = time.monotonic() + 30
        while b"typed-23" not in output and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.5)[0]:
                output += os.read(process.stdout.fileno(), 4096)
        assert b"typed-23" in output
        process.stdin.write(b"\x1d")  # Ctrl-]
        process.stdin.flush()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # the console is free again after the client left
    daemon.console_run("con", "echo again-$((6*7))", "again-42")


def test_autostart_flag_and_completion(daemon: DaemonHandle) -> None:
    daemon.define("auto1")
    assert "marked as autostarted" in daemon.cli("autostart", "auto1").stdout
    assert daemon.info("auto1")["autostart"] is True
    assert "unmarked" in daemon.cli("autostart", "auto1", "--disable").stdout
    script = daemon.cli("completion", "bash").stdout
    assert "complete -F _virtkit virtkit" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for command in ("list", "start", "shutdown", "dominfo", "console", "edit", "host"):
        assert f"{command})" in script


def test_host_check_reports_the_accelerator_last(daemon: DaemonHandle) -> None:
    result = daemon.cli("host", "check", "--json", check=False)
    report = json.loads(result.stdout)
    checks = report["checks"]
    assert checks[-1]["name"] == "accelerator"
    # a machine-readable verdict: WARN is no failure (virt-host-validate's rule)
    assert report["accelerator"] in ("kvm", "tcg") and report["accelerator_reason"]
    assert report["verdict"] in ("PASS", "WARN", "FAIL")
    assert result.returncode == (1 if report["verdict"] == "FAIL" else 0)
    assert {c["name"] for c in checks} >= {"/dev/kvm", "qemu-system-x86_64", "qemu-img",
                                            "daemon"}
    text = daemon.cli("host", "check", check=False).stdout
    assert "accelerator" in text.splitlines()[-1] or "fix:" in text.splitlines()[-1]


def test_cli_starts_a_per_user_daemon_when_none_runs() -> None:
    root = Path(tempfile.mkdtemp(prefix="vk-auto-", dir="/tmp"))
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    env.pop("VIRTKIT_NO_AUTOSTART", None)
    try:
        result = subprocess.run([sys.executable, "-m", "virtkit.cli.main", "list", "--all"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "started virtkitd (pid" in result.stderr
        again = subprocess.run([sys.executable, "-m", "virtkit.cli.main", "list"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.stderr == ""  # the second call finds the running daemon
    finally:
        pidfile = root / "virtkitd.pid"
        if pidfile.exists() and pidfile.read_text().strip():
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            time.sleep(0.5)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_create_runs_a_transient_domain_that_is_gone_when_it_stops(daemon: DaemonHandle,
                                                                   tmp_path: Path) -> None:
    spec = _write_spec(daemon, tmp_path, "temp1")
    assert "Domain 'temp1' created" in daemon.cli("create", str(spec)).stdout
    assert daemon.state("temp1") == "running"
    daemon.wait_booted("temp1")
    daemon.cli("destroy", "temp1")
    wait_for(lambda: "temp1" not in daemon.cli("list", "--all", "--name").stdout, 10,
             "the transient domain to be undefined")
    # A defined domain of that name is not replaced by create, and is left as it was.
    daemon.define("kept")
    result = daemon.cli("create", str(_write_spec(daemon, tmp_path, "kept")), check=False)
    assert result.returncode == 1 and "domain 'kept' already exists" in result.stderr
    assert daemon.state("kept") == "shutoff"
    # A transient domain that cannot start is not left defined.
    bad = _write_spec(daemon, tmp_path, "temp2", disks=[{"path": "/nonexistent.qcow2"}])
    assert daemon.cli("create", str(bad), check=False).returncode == 1
    assert "temp2" not in daemon.cli("list", "--all", "--name").stdout


def test_event_timeout_and_kind_filter_as_virsh(daemon: DaemonHandle) -> None:
    """virsh event --loop --timeout N --event lifecycle: only lifecycle events, each
    naming its own object, then 'event loop timed out' and exit 0."""
    daemon.define("evx")
    daemon.cli("vol-create-as", "default", "evx.qcow2", "16M")
    result = daemon.cli("event", "--since", "0", "--loop", "--timeout", "3", "--event",
                        "lifecycle", check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "event 'defined' for domain 'evx': shutoff" in result.stdout
    assert "volume" not in result.stdout and "None" not in result.stdout
    assert "event loop timed out" in result.stderr
    every = daemon.cli("event", "--since", "0", "--loop", "--timeout", "3", timeout=60)
    assert "event 'volume-created' for volume 'default/evx.qcow2'" in every.stdout


def test_edit_xml_as_virsh_edit(daemon: DaemonHandle, tmp_path: Path) -> None:
    """edit --xml: the libvirt XML in the editor; a broken XML is shown again with the
    error in one XML comment, and fixing it defines the change."""
    daemon.define("edx")
    env, rounds = _two_round_editor(
        tmp_path, 'p.write_text(text.replace("</domain>", ""))',
        'assert text.startswith("<!-- virtkit"), text[:80]\n'
        'p.write_text(text.rstrip() + "\\n</domain>\\n")\n'
        'p.write_text(p.read_text().replace("262144", "327680"))')
    result = daemon.cli("edit", "--xml", "edx", env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert rounds.read_text() == "12" and "XML edited" in result.stdout
    assert daemon.info("edx")["memory_mib"] == 320
