"""virsh managedsave and the host guests policy (libvirt-guests) on real QEMU.

The guest's memory state is proven by a marker written to the tiny guest's
RAM-backed root (/tmp in its initramfs): it survives only if the memory is restored,
and the boot marker is not printed again."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.images.tinyguest import BOOT_MARKER

pytestmark = pytest.mark.qemu


def _write_marker(daemon: DaemonHandle, name: str) -> None:
    # the tty echoes the command: expect what only the shell's arithmetic prints
    daemon.console_run(name, "echo marker-$((6*7)) > /tmp/mark; echo wr''itten", "written")


def _marker_survived(daemon: DaemonHandle, name: str) -> bool:
    out = daemon.console_run(name, "cat /tmp/mark 2>/dev/null || echo no-''mark; echo do''ne",
                             "done")
    return "marker-42" in out


def _boots(daemon: DaemonHandle, name: str) -> int:
    return daemon.console_log(name).count(BOOT_MARKER)


def test_managedsave_start_resumes_memory_and_the_image_is_shown(daemon: DaemonHandle) -> None:
    daemon.define("ms", memory=128)
    daemon.cli("start", "ms")
    daemon.wait_booted("ms")
    _write_marker(daemon, "ms")

    out = daemon.cli("managedsave", "ms", "--verbose").stdout
    assert "Domain 'ms' state saved by libvirt" in out
    assert daemon.state("ms") == "shutoff"
    assert daemon.info("ms")["managed_save"] is True
    lines = daemon.cli("dominfo", "ms").stdout.splitlines()
    assert [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Managed save:")] == ["yes"], lines
    listed = daemon.cli("list", "--all", "--managed-save").stdout
    assert any(line.split()[1:] == ["ms", "saved"] for line in listed.splitlines()
               if len(line.split()) == 3), listed
    # virsh's --name output: one name a line, then an empty line
    assert daemon.cli("list", "--all", "--with-managed-save", "--name").stdout == "ms\n\n"
    assert daemon.cli("list", "--all", "--without-managed-save", "--name").stdout == "\n"
    xml = daemon.cli("managedsave-dumpxml", "ms").stdout
    assert "<name>ms</name>" in xml

    refused = daemon.cli("undefine", "ms", check=False)
    assert refused.returncode == 1 and "managed save" in refused.stderr, refused.stderr

    daemon.cli("start", "ms")
    daemon.wait_state("ms", "running")
    assert _marker_survived(daemon, "ms")
    assert _boots(daemon, "ms") == 1  # resumed, not booted
    assert daemon.info("ms")["managed_save"] is False  # the image is gone once restored
    assert not list((daemon.root / "save").iterdir())


def test_managedsave_paused_force_boot_remove_and_undefine(daemon: DaemonHandle) -> None:
    daemon.define("mp", memory=128)
    daemon.cli("start", "mp")
    daemon.wait_booted("mp")
    _write_marker(daemon, "mp")
    daemon.cli("managedsave", "mp", "--paused", "--bypass-cache")
    daemon.cli("start", "mp")
    daemon.wait_state("mp", "paused")  # --paused: restored with the vCPUs stopped
    daemon.cli("resume", "mp")
    assert _marker_survived(daemon, "mp")

    daemon.cli("managedsave", "mp")
    daemon.cli("start", "mp", "--force-boot")  # the image is discarded: a fresh boot
    daemon.wait_booted("mp", count=2)
    assert not _marker_survived(daemon, "mp")
    assert daemon.info("mp")["managed_save"] is False

    daemon.cli("managedsave", "mp")
    assert daemon.cli("managedsave-remove", "mp").stdout == \
        "Removed managedsave image for domain 'mp'\n"
    assert daemon.info("mp")["managed_save"] is False
    again = daemon.cli("managedsave-remove", "mp", check=False)
    assert again.returncode == 1 and "no managed save image" in again.stderr

    daemon.cli("start", "mp")
    daemon.wait_booted("mp", count=3)
    daemon.cli("managedsave", "mp")
    daemon.cli("undefine", "mp", "--managed-save")
    assert not list((daemon.root / "save").iterdir())


def _stop_daemon(daemon: DaemonHandle) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(300)


def test_host_policy_managedsave_at_stop_and_start_at_boot(daemon: DaemonHandle
                                                           ) -> None:
    shown = json.loads(daemon.cli("host", "guests", "--json").stdout)
    assert shown["on_shutdown"] == "ignore" and shown["on_boot"] == "start"
    daemon.cli("host", "guests", "--on-shutdown", "suspend", "--shutdown-timeout", "60")
    assert "ON_SHUTDOWN=managedsave" in (daemon.root / "guests.conf").read_text()
    uuid = daemon.define("hg", memory=128)["uuid"]
    daemon.define("off", memory=128)  # not running: left alone, not started at boot
    daemon.cli("start", "hg")
    daemon.wait_booted("hg")
    _write_marker(daemon, "hg")
    pids = daemon.qemu_pids()
    assert len(pids) == 1

    _stop_daemon(daemon)
    assert (daemon.root / "save" / f"{uuid}.save").exists()
    wait_for(lambda: not daemon.qemu_pids(), 30, "the saved guest's QEMU to be gone")
    assert json.loads((daemon.root / "guests-at-shutdown.json").read_text()) == ["hg"]

    daemon.restart()
    info = daemon.wait_state("hg", "running", timeout=120)
    assert info["managed_save"] is False
    assert _marker_survived(daemon, "hg")
    assert _boots(daemon, "hg") == 1
    assert daemon.state("off") == "shutoff"
    status = json.loads(daemon.cli("host", "guests", "--json").stdout)
    assert status["pending"] == [] and status["on_shutdown"] == "managedsave"


def test_host_policy_ignore_keeps_guests_and_on_boot_ignore(daemon: DaemonHandle
                                                            ) -> None:
    daemon.define("hk", memory=128)
    daemon.cli("start", "hk")
    daemon.wait_booted("hk")
    pid = daemon.info("hk")["pid"]
    _stop_daemon(daemon)  # ON_SHUTDOWN=ignore (default): the guest keeps running
    daemon.restart()
    assert daemon.info("hk")["pid"] == pid and daemon.state("hk") == "running"

    daemon.cli("host", "guests", "--on-shutdown", "managedsave", "--on-boot", "ignore")
    _stop_daemon(daemon)
    daemon.restart()
    assert daemon.state("hk") == "shutoff"  # ON_BOOT=ignore: saved, not started
    assert daemon.info("hk")["managed_save"] is True
    bad = subprocess.run(daemon.cli_argv("host", "guests", "--shutdown-timeout", "0"),
                         env=daemon.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "shutdown_timeout" in bad.stderr, bad.stderr


def test_host_policy_shutdown_powers_guests_off_and_boot_starts_them(daemon: DaemonHandle
                                                                      ) -> None:
    daemon.cli("host", "guests", "--on-shutdown", "shutdown", "--shutdown-timeout", "120")
    uuid = daemon.define("hs", memory=128)["uuid"]
    daemon.cli("start", "hs")
    daemon.wait_booted("hs")
    _stop_daemon(daemon)  # ACPI power-off of every running guest, waited for
    assert not daemon.qemu_pids()
    assert not (daemon.root / "save" / f"{uuid}.save").exists()
    daemon.restart()
    daemon.wait_state("hs", "running", timeout=120)
    daemon.wait_booted("hs", count=2)  # a fresh boot after the clean power-off
