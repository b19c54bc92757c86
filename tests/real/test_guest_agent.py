"""The guest agent against a real Debian guest running qemu-guest-agent.

The shared Debian guest (tests/real/debianguest.py: debootstrap image with
qemu-guest-agent, booted once by direct kernel boot under TCG) serves every test of
the module but the last.  The tiny guest, which runs no agent, shows the clear error
a guest without one gives.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle
from tests.real.debianguest import DebianVm

pytestmark = pytest.mark.qemu


# The tests share one running Debian guest (tests/real/debianguest.py): these names
# keep the tests' own words for it.
@pytest.fixture
def module_daemon(debian_vm: DebianVm) -> DaemonHandle:
    """The shared Debian guest's daemon."""
    return debian_vm.daemon


@pytest.fixture
def agent_vm(debian_vm: DebianVm) -> str:
    """The running shared Debian guest whose agent answers; its name."""
    return debian_vm.name


def test_ping_and_guestinfo(module_daemon: DaemonHandle, agent_vm: str) -> None:
    assert "answered in" in module_daemon.cli("guest", "ping", agent_vm).stdout
    info = json.loads(module_daemon.cli("guestinfo", agent_vm, "--json").stdout)
    assert info["os"]["id"] == "debian"
    assert info["hostname"] == "debian-cloud"
    assert "guest-exec" in info["commands"]
    assert any(fs["mountpoint"] == "/" for fs in info["filesystems"])
    assert module_daemon.cli("domhostname", agent_vm).stdout.strip() == "debian-cloud"


def test_exec_returns_output_and_exit_code(module_daemon: DaemonHandle, agent_vm: str) -> None:
    done = module_daemon.cli("guest", "exec", agent_vm, "--", "/bin/uname", "-s")
    assert done.stdout == "Linux\n"
    failed = module_daemon.cli("guest", "exec", agent_vm, "--", "/bin/sh", "-c",
                               "echo oops >&2; exit 7", check=False)
    assert failed.returncode == 7 and failed.stderr == "oops\n"
    piped = module_daemon.cli("guest", "exec", agent_vm, "--stdin", "--", "/usr/bin/wc", "-c",
                              input_text="12345")
    assert piped.stdout.strip() == "5"
    missing = module_daemon.cli("guest", "exec", agent_vm, "--", "/no/such/program",
                                check=False)
    assert missing.returncode != 0 and "guest agent" in missing.stderr


def test_file_write_then_read_round_trips(module_daemon: DaemonHandle, agent_vm: str) -> None:
    payload = bytes(range(256)) * 700  # binary, larger than one agent message
    written = subprocess.run(
        [*module_daemon.cli_argv("guest", "write", agent_vm, "/root/blob")], input=payload,
        env=module_daemon.env, capture_output=True, timeout=60, check=True)
    assert b"179200 bytes" in written.stderr
    read = subprocess.run([*module_daemon.cli_argv("guest", "cat", agent_vm, "/root/blob")],
                          env=module_daemon.env, capture_output=True, timeout=60, check=True)
    assert read.stdout == payload
    digest = module_daemon.cli("guest", "exec", agent_vm, "--", "/usr/bin/md5sum", "/root/blob")
    import hashlib
    assert digest.stdout.split()[0] == hashlib.md5(payload).hexdigest()


def test_fsfreeze_thaw_and_fstrim(module_daemon: DaemonHandle, agent_vm: str) -> None:
    assert module_daemon.cli("domfsfreeze-status", agent_vm).stdout.strip() == "thawed"
    assert "Froze 1 filesystem" in module_daemon.cli("domfsfreeze", agent_vm).stdout
    assert module_daemon.cli("domfsfreeze-status", agent_vm).stdout.strip() == "frozen"
    assert "Thawed 1 filesystem" in module_daemon.cli("domfsthaw", agent_vm).stdout
    assert module_daemon.cli("domfsfreeze-status", agent_vm).stdout.strip() == "thawed"
    trimmed = json.loads(module_daemon.cli("domfstrim", agent_vm, "--json").stdout)
    assert any(path["path"] == "/" for path in trimmed["paths"])


def test_set_user_password_changes_shadow(module_daemon: DaemonHandle, agent_vm: str) -> None:
    def shadow_hash() -> str:
        line = module_daemon.cli("guest", "exec", agent_vm, "--", "/usr/bin/getent",
                                 "shadow", "root").stdout
        return line.split(":")[1]

    before = shadow_hash()
    module_daemon.cli("set-user-password", agent_vm, "root", "s3cret-pass")
    after = shadow_hash()
    assert after != before and after.startswith("$")


def test_guest_vcpus_offline_and_online(module_daemon: DaemonHandle, agent_vm: str) -> None:
    shown = json.loads(module_daemon.cli("guestvcpus", agent_vm, "--json").stdout)
    assert [row["online"] for row in shown] == [True, True]
    module_daemon.cli("guestvcpus", agent_vm, "--count", "1")
    online = module_daemon.cli("guest", "cat", agent_vm, "/sys/devices/system/cpu/online")
    assert online.stdout.strip() == "0"
    module_daemon.cli("setvcpus", agent_vm, "2", "--guest")
    online = module_daemon.cli("guest", "cat", agent_vm, "/sys/devices/system/cpu/online")
    assert online.stdout.strip() == "0-1"
    too_many = module_daemon.cli("guestvcpus", agent_vm, "--count", "9", check=False)
    assert too_many.returncode != 0 and "has 2 vCPUs" in too_many.stderr


def test_domtime_and_agent_interfaces(module_daemon: DaemonHandle, agent_vm: str) -> None:
    clock = json.loads(module_daemon.cli("domtime", agent_vm, "--now", "--json").stdout)
    assert abs(clock["time"] - time.time()) < 30
    rows = json.loads(module_daemon.cli("domifaddr", agent_vm, "--source", "agent",
                                        "--json").stdout)
    assert any(row["name"] == "lo" and {"type": "ipv4", "ip": "127.0.0.1", "prefix": 8}
               in row["addresses"] for row in rows)
    raw = module_daemon.cli("qemu-agent-command", agent_vm, '{"execute": "guest-ping"}')
    assert json.loads(raw.stdout) == {"return": {}}
    refused = module_daemon.cli("qemu-agent-command", agent_vm, '{"execute": "quit"}',
                                check=False)
    assert refused.returncode != 0 and "not a guest agent command" in refused.stderr


def test_disk_only_snapshot_freezes_the_guest_unasked(module_daemon: DaemonHandle,
                                                       agent_vm: str) -> None:
    """With a connected agent a disk-only snapshot is file-system consistent by itself."""
    made = module_daemon.client.post(module_daemon.client.domain_path(agent_vm, "/snapshots"),
                                     {"name": "auto", "disk_only": True})
    assert made["quiesced"] is True and made["memory"] is False
    assert module_daemon.cli("domfsfreeze-status", agent_vm).stdout.strip() == "thawed"
    module_daemon.cli("snapshot-delete", agent_vm, "auto")


def test_clone_of_a_running_guest_freezes_it_for_the_copy(
        module_daemon: DaemonHandle, agent_vm: str, tmp_path: Path) -> None:
    copy = tmp_path / "deb-copy.qcow2"
    module_daemon.cli("clone", "-o", agent_vm, "-n", "deb-copy", "-f", str(copy), "--force",
                      timeout=300)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(copy)],
                                     capture_output=True, check=True).stdout)
    assert "backing-filename" not in info  # a full, standalone copy
    assert module_daemon.cli("domfsfreeze-status", agent_vm).stdout.strip() == "thawed"
    assert module_daemon.state(agent_vm) == "running"
    events = module_daemon.client.get("/v1/domains/deb-copy")
    assert events["disks"][0]["path"] == str(copy)
    module_daemon.cli("undefine", "deb-copy")


@pytest.mark.changes_debian_guest(powers_off=True)
def test_agent_shutdown_powers_the_guest_off(module_daemon: DaemonHandle, agent_vm: str) -> None:
    """Among the last users of the shared guest: the agent's shutdown ends it."""
    module_daemon.cli("shutdown", agent_vm, "--mode", "agent", "--wait", "--timeout", "120")
    assert module_daemon.state(agent_vm) == "shutoff"
    stopped = module_daemon.cli("guest", "ping", agent_vm, check=False)
    assert stopped.returncode != 0 and "not running" in stopped.stderr


def test_a_guest_without_agent_fails_fast_and_clearly(daemon: DaemonHandle) -> None:
    daemon.define("tiny")
    daemon.client.post(daemon.client.domain_path("tiny", "/start"))
    daemon.wait_booted("tiny")
    began = time.monotonic()
    result = daemon.cli("guest", "exec", "tiny", "--", "/bin/true", check=False)
    assert result.returncode != 0
    assert "qemu-guest-agent" in result.stderr
    assert time.monotonic() - began < 15
    result = daemon.cli("shutdown", "tiny", "--mode", "agent", check=False)
    assert result.returncode != 0 and "guest agent" in result.stderr
    assert daemon.state("tiny") == "running"
    daemon.cli("destroy", "tiny")
    no_channel = daemon.define("bare", guest_agent=False)
    assert no_channel["name"] == "bare"
    daemon.client.post(daemon.client.domain_path("bare", "/start"))
    result = daemon.cli("guest", "ping", "bare", check=False)
    assert "no guest agent channel" in result.stderr
