"""The spine end to end against real QEMU (TCG) and the tiny Debian-built guest."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.cli.client import ApiError
from virtkit.images.tinyguest import BOOT_MARKER

pytestmark = pytest.mark.qemu


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]


def test_boot_marker_then_acpi_shutdown(daemon: DaemonHandle) -> None:
    daemon.define("vm1")
    info = daemon.client.post(daemon.client.domain_path("vm1", "/start"))
    assert info["state"] == "running"
    assert info["accelerator"] == "tcg"
    pid = info["pid"]
    daemon.wait_booted("vm1")
    result = daemon.client.post(daemon.client.domain_path("vm1", "/shutdown"),
                                {"wait": True, "timeout": 60})
    assert result["state"] == "shutoff"
    info = daemon.info("vm1")
    assert (info["state"], info["reason"], info["pid"]) == ("shutoff", "shutdown", None)
    assert not _pid_alive(pid)
    assert "VIRTKIT-GUEST-POWEROFF" in daemon.console_log("vm1")


def test_destroy_suspend_resume_and_console(daemon: DaemonHandle) -> None:
    daemon.define("vm2")
    pid = daemon.client.post(daemon.client.domain_path("vm2", "/start"))["pid"]
    daemon.wait_booted("vm2")
    assert daemon.client.post(daemon.client.domain_path("vm2", "/suspend"))["state"] == "paused"
    with pytest.raises(ApiError) as excinfo:
        daemon.client.post(daemon.client.domain_path("vm2", "/suspend"))
    assert excinfo.value.http_status == 409 and "paused" in excinfo.value.message
    assert daemon.client.post(daemon.client.domain_path("vm2", "/resume"))["state"] == "running"
    output = daemon.console_run("vm2", "echo hello-$((40+2))", "hello-42")
    assert "hello-42" in output
    daemon.client.post(daemon.client.domain_path("vm2", "/destroy"))
    info = daemon.info("vm2")
    assert (info["state"], info["reason"]) == ("shutoff", "destroyed")
    assert not _pid_alive(pid)


def test_save_and_restore_keep_guest_memory(daemon: DaemonHandle, tmp_path) -> None:
    daemon.define("vm3")
    daemon.client.post(daemon.client.domain_path("vm3", "/start"))
    daemon.wait_booted("vm3")
    daemon.console_run("vm3", "echo kept-$((6*7)) > /tmp/mark; echo wr''itten", "written")
    save_file = tmp_path / "vm3.save"
    result = daemon.client.post(daemon.client.domain_path("vm3", "/save"),
                                {"path": str(save_file)})
    assert result["state"] == "shutoff"
    assert save_file.stat().st_size > 1_000_000
    assert daemon.info("vm3")["reason"] == "saved"
    restored = daemon.client.post("/v1/domains/restore", {"path": str(save_file)})
    assert restored["state"] == "running"
    output = daemon.console_run("vm3", "cat /tmp/mark", "kept-42")
    assert "kept-42" in output
    assert daemon.console_log("vm3").count(BOOT_MARKER) == 1  # restored, not rebooted


def test_reboot_restarts_the_guest_inside_the_same_qemu(daemon: DaemonHandle) -> None:
    """As libvirt's reboot: the guest powers off, QEMU (paused by set-action) resets
    it and it boots again in the same process; a changed definition instead boots in
    a new QEMU, and the answer says so."""
    daemon.define("vm4")
    first_pid = daemon.client.post(daemon.client.domain_path("vm4", "/start"))["pid"]
    daemon.wait_booted("vm4")
    answer = daemon.client.post(daemon.client.domain_path("vm4", "/reboot"),
                                {"wait": True, "timeout": 120})
    assert "note" not in answer
    daemon.wait_booted("vm4", count=2)
    info = daemon.wait_state("vm4", "running")
    assert (info["pid"], info["reason"]) == (first_pid, "rebooted")
    # a guest power-off after that ends QEMU again (the reboot's set-action was undone)
    spec = daemon.info("vm4")["spec"]
    daemon.client.request("PUT", daemon.client.domain_path("vm4"), {
        "spec": {**spec, "memory": {**spec["memory"], "current": 320}},
        "version": daemon.info("vm4")["version"]})
    result = daemon.cli("reboot", "vm4")
    assert "reboots into a new QEMU process" in result.stdout
    info = wait_for(lambda: (i := daemon.info("vm4"))["state"] == "running"
                    and i["pid"] not in (None, first_pid) and i, 120, "a new QEMU")
    assert info["memory_mib"] == 320
    daemon.wait_booted("vm4", count=3)


def test_kill9_of_qemu_marks_crashed_and_on_crash_restart(daemon: DaemonHandle) -> None:
    daemon.define("crashy", on_crash="restart")
    daemon.define("fragile")
    crashy_pid = daemon.client.post(daemon.client.domain_path("crashy", "/start"))["pid"]
    fragile_pid = daemon.client.post(daemon.client.domain_path("fragile", "/start"))["pid"]
    os.kill(fragile_pid, signal.SIGKILL)
    info = daemon.wait_state("fragile", "crashed", timeout=30)
    assert "signal 9" in info["reason"]
    events = daemon.client.get("/v1/domains")  # the list agrees
    assert {e["name"]: e["state"] for e in events}["fragile"] == "crashed"
    os.kill(crashy_pid, signal.SIGKILL)
    info = wait_for(lambda: (i := daemon.info("crashy"))["pid"] not in (None, crashy_pid)
                    and i["state"] == "running" and i, 30, "crashy to be restarted")
    assert info["pid"] != crashy_pid
    daemon.wait_booted("crashy")  # the restarted QEMU boots the guest
    # a crashed domain can be started again
    assert daemon.client.post(daemon.client.domain_path("fragile", "/start"))["state"] == "running"


def test_daemon_kill9_with_three_running_vms(daemon: DaemonHandle) -> None:
    names = ["a1", "a2", "a3"]
    pids = {}
    for name in names:
        daemon.define(name)
        pids[name] = daemon.client.post(daemon.client.domain_path(name, "/start"))["pid"]
    for name in names:
        daemon.wait_booted(name)
    daemon.kill9()
    for pid in pids.values():
        assert _pid_alive(pid), "a VM died with the daemon"
    daemon.restart()
    listing = {row["name"]: row for row in daemon.client.get("/v1/domains")}
    for name in names:
        assert listing[name]["state"] == "running"
        assert listing[name]["pid"] == pids[name]
    for name in names:
        result = daemon.client.post(daemon.client.domain_path(name, "/shutdown"),
                                    {"wait": True, "timeout": 60})
        assert result["state"] == "shutoff"
        assert not _pid_alive(pids[name])


def test_reattach_never_adopts_a_stranger(daemon: DaemonHandle) -> None:
    """A recorded pid that now belongs to another process is not adopted."""
    daemon.define("ghost")
    pid = daemon.client.post(daemon.client.domain_path("ghost", "/start"))["pid"]
    daemon.kill9()
    os.kill(pid, signal.SIGKILL)  # QEMU gone while the daemon is down
    wait_for(lambda: not _pid_alive(pid), 5, "QEMU to exit")
    daemon.restart()
    info = daemon.info("ghost")
    assert (info["state"], info["pid"]) == ("shutoff", None)
    assert "daemon was down" in info["reason"]


def test_autostart_domain_starts_with_the_daemon(daemon: DaemonHandle) -> None:
    daemon.define("auto", autostart=True)
    daemon.define("manual")
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(10)
    daemon.restart()
    assert daemon.wait_state("auto", "running")["pid"]
    assert daemon.state("manual") == "shutoff"


def test_event_stream_reports_each_change_in_order(daemon: DaemonHandle) -> None:
    from virtkit.cli.wsclient import OP_TEXT, WebSocket

    ws = WebSocket.open(daemon.root / "virtkitd.sock", "/v1/events")
    try:
        daemon.define("evt")
        daemon.client.post(daemon.client.domain_path("evt", "/start"))
        daemon.client.post(daemon.client.domain_path("evt", "/suspend"))
        daemon.client.post(daemon.client.domain_path("evt", "/resume"))
        daemon.client.post(daemon.client.domain_path("evt", "/destroy"))
        daemon.client.request("DELETE", daemon.client.domain_path("evt"))
        seen = []
        ws.sock.settimeout(10)
        while len(seen) < 6:
            opcode, payload = ws.receive()
            assert opcode == OP_TEXT
            event = json.loads(payload)
            if event.get("domain") == "evt":
                seen.append((event["type"], event["state"]))
    finally:
        ws.close()
    assert seen == [("defined", "shutoff"), ("started", "running"), ("paused", "paused"),
                    ("resumed", "running"), ("stopped", "shutoff"), ("undefined", "shutoff")]
    replayed = WebSocket.open(daemon.root / "virtkitd.sock", "/v1/events?since=0")
    try:
        replayed.sock.settimeout(2.0)
        types: list[str] = []
        while len(types) < len(seen):
            event = json.loads(replayed.receive()[1])
            if event.get("domain") == "evt":
                types.append(event["type"])
    finally:
        replayed.close()
    assert types == [kind for kind, _state in seen]
