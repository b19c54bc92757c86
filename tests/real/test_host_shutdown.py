"""The host shutdown path of contrib/virtkit-guests.service on real QEMU: its ExecStop
(``virtkitd --on-host-shutdown``, the same as ``virtkit host shutdown-guests``) applies
the host guests policy through the running daemon and waits, one line per guest; then
the daemon is stopped and started again as the units would at reboot.  Every guest
comes back with its memory (managedsave: a marker in the tiny guest's RAM-backed /tmp,
and no second boot) or was cleanly powered off and boots afresh (shutdown)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.images.tinyguest import BOOT_MARKER

pytestmark = pytest.mark.qemu


def _write_marker(daemon: DaemonHandle, name: str) -> None:
    # the tty echoes the command: expect what only the shell's arithmetic prints
    daemon.console_run(name, f"echo {name}-$((6*7)) > /tmp/mark; echo wr''itten", "written")


def _marker(daemon: DaemonHandle, name: str) -> bool:
    out = daemon.console_run(name, "cat /tmp/mark 2>/dev/null || echo no-''mark; echo do''ne",
                             "done")
    return f"{name}-42" in out


def _stop_and_start_daemon(daemon: DaemonHandle) -> None:
    """What systemd does to virtkitd.service after virtkit-guests' ExecStop, then at boot."""
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(300) == 0
    daemon.restart()


def test_on_host_shutdown_managedsaves_and_the_next_start_resumes(daemon: DaemonHandle
                                                                  ) -> None:
    daemon.cli("host", "guests", "--on-shutdown", "managedsave")
    for name in ("g1", "g2"):
        daemon.define(name, memory=128)
        daemon.cli("start", name)
    for name in ("g1", "g2"):
        daemon.wait_booted(name)
        _write_marker(daemon, name)

    # the unit's ExecStop, against the running daemon
    done = subprocess.run([sys.executable, "-m", "virtkit.api.daemon", "--root",
                           str(daemon.root), "--on-host-shutdown"], env=daemon.env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("g1", "g2"):
        assert f"{name}: saving its memory (managedsave)" in lines, lines
        assert f"{name}: saved (managedsave): the next start resumes it" in lines, lines
    assert lines[-1] == "2 guest(s) handled (managedsave)", lines
    assert daemon.process.poll() is None  # the daemon still serves
    for name in ("g1", "g2"):
        assert daemon.state(name) == "shutoff" and daemon.info(name)["managed_save"]
    wait_for(lambda: not daemon.qemu_pids(), 30, "the saved guests' QEMUs to be gone")

    _stop_and_start_daemon(daemon)
    for name in ("g1", "g2"):
        info = daemon.wait_state(name, "running", timeout=120)
        assert info["managed_save"] is False
        assert _marker(daemon, name), f"{name} lost its memory"
        assert daemon.console_log(name).count(BOOT_MARKER) == 1  # resumed, not booted
    assert daemon.cli("host", "guests", "--json").stdout.count('"pending": []') == 1


def test_host_shutdown_guests_powers_off_and_boot_starts_afresh(daemon: DaemonHandle
                                                                ) -> None:
    daemon.cli("host", "guests", "--on-shutdown", "shutdown", "--shutdown-timeout", "120")
    uuid = daemon.define("hs", memory=128)["uuid"]
    daemon.cli("start", "hs")
    daemon.wait_booted("hs")
    out = daemon.cli("host", "shutdown-guests", timeout=300).stdout.splitlines()
    assert out == ["hs: shutting down (up to 120s)", "hs: shut down",
                   "1 guest(s) handled (shutdown)"], out
    assert daemon.state("hs") == "shutoff"
    assert not (daemon.root / "save" / f"{uuid}.save").exists()  # a clean power-off
    again = daemon.cli("host", "shutdown-guests").stdout
    assert again.startswith("no guest is running"), again

    _stop_and_start_daemon(daemon)
    daemon.wait_state("hs", "running", timeout=120)
    daemon.wait_booted("hs", count=2)  # ON_BOOT=start: a fresh boot
