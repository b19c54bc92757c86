"""The systemd units in contrib/ (virtkitd.service, virtkit-guests.service): systemd's
own verifier accepts them, the guests unit is ordered so that at host shutdown it stops
before the daemon, the network and remote storage, and the commands they run exist
(``virtkitd --on-host-shutdown``, READY=1 for Type=notify)."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from virtkit.api import daemon

REPO = Path(__file__).resolve().parents[2]
UNITS = ("virtkitd.service", "virtkit-guests.service")


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "contrib" / name)
    return parser


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/setup.sh test installs 'systemd'"
    bin_dir = Path(sys.executable).parent  # where the venv has virtkit and virtkitd
    for name in UNITS:
        text = (REPO / "contrib" / name).read_text()
        text = text.replace("/usr/local/bin/", f"{bin_dir}/")  # setup.sh links them there
        (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in UNITS)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "virtkit" not in result.stderr, result.stderr  # no warning about our units


def test_the_guests_unit_stops_first_at_host_shutdown() -> None:
    guests, virtkitd = _unit("virtkit-guests.service"), _unit("virtkitd.service")
    after = guests["Unit"]["After"].split()
    # stop order is the reverse of start order: ordered after these, it stops before them
    for unit in ("virtkitd.service", "network-online.target", "remote-fs.target"):
        assert unit in after
    service = guests["Service"]
    assert service["Type"] == "oneshot" and service["RemainAfterExit"] == "yes"
    assert service["ExecStop"].split()[-1] == "--on-host-shutdown"
    assert service["TimeoutStopSec"] == "0"  # SHUTDOWN_TIMEOUT decides, not systemd
    assert "VIRTKIT_NO_AUTOSTART=1" in service["Environment"]  # never a second daemon
    assert virtkitd["Service"]["KillMode"] == "process"  # guests outlive a daemon restart
    assert virtkitd["Service"]["Type"] == "notify"
    for parser in (guests, virtkitd):
        assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_on_host_shutdown_runs_the_cli_command(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    ran: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        ran.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(SystemExit):
        daemon.main(["--root", str(tmp_path), "--on-host-shutdown"])
    assert ran == [[sys.executable, "-m", "virtkit.cli.main", "--root", str(tmp_path),
                    "host", "shutdown-guests"]]


def test_ready_is_sent_to_notify_socket(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    assert not daemon.sd_notify("READY=1")  # no $NOTIFY_SOCKET: nothing to tell
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert daemon.sd_notify("READY=1")
        assert listener.recv(64) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ  # QEMUs started later do not inherit it
