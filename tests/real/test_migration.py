"""Live migration between two daemons (issue 8, docs/migration.md).

First step: both daemons run on this host in the SAME network namespace, each with
its own state root, and QEMU's migration stream goes over tcp:127.0.0.1; the
guest's files are then naturally shared.  The issue's two namespaces joined by a
veth pair are the next step.  Guests are idle (TCG's dirty tracking is not
trusted for guests that write memory during a migration, see docs/migration.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import (
    DaemonHandle,
    cleanup,
    cleanup_networks,
    free_port,
    running_daemon,
    start_daemon,
    wait_for,
)
from virtkit.cli.client import ApiError, Client
from virtkit.errors import VirtkitError
from virtkit.images.tinyguest import TinyGuest
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu


@pytest.fixture
def pair(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, DaemonHandle]]:
    with running_daemon(tiny_guest) as source, running_daemon(tiny_guest) as destination:
        yield source, destination


@pytest.fixture
def postcopy_pair(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, DaemonHandle]]:
    """A destination whose QEMU may use userfaultfd: post-copy needs it, and a confined
    QEMU may not while vm.unprivileged_userfaultfd=0 (this machine's default)."""
    with running_daemon(tiny_guest) as source, \
            running_daemon(tiny_guest, ("--no-confine",)) as destination:
        yield source, destination


SOURCE_IP, DESTINATION_IP = "198.51.100.1", "198.51.100.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns_pair(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, DaemonHandle]]:
    """Two "hosts": a daemon in each of two network namespaces joined by a veth pair.
    The daemons reach each other over unix sockets (not namespaced); QEMU's stream
    crosses the veth pair."""
    tag = secrets.token_hex(3)
    spaces = (f"vkm-{tag}-a", f"vkm-{tag}-b")
    handles: list[DaemonHandle] = []
    try:
        for ns in spaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"vkm{tag}a", "netns", spaces[0], "type", "veth", "peer", "name",
            f"vkm{tag}b", "netns", spaces[1])
        for ns, dev, ip in ((spaces[0], f"vkm{tag}a", SOURCE_IP),
                            (spaces[1], f"vkm{tag}b", DESTINATION_IP)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        for ns in spaces:
            root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
            try:
                process = start_daemon(root, ns)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            handles.append(DaemonHandle(root, process, Client(state_paths(root), timeout=180),
                                        tiny_guest, netns=ns))
        yield handles[0], handles[1]
    finally:
        for handle in handles:
            cleanup_networks(handle)
            cleanup(handle)
        for ns in spaces:
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _migrate(source: DaemonHandle, destination: DaemonHandle, name: str,
             address: str = "127.0.0.1", **options: Any) -> dict[str, Any]:
    body = {"destination": {"socket": str(destination.root / "virtkitd.sock")},
            "address": address, **options}
    result: dict[str, Any] = source.client.post(source.client.domain_path(name, "/migrate"),
                                                body)
    return result


def _booted(handle: DaemonHandle, name: str, **overrides: Any) -> None:
    handle.define(name, **overrides)
    handle.client.post(handle.client.domain_path(name, "/start"))
    handle.wait_booted(name)
    assert "m-41" in handle.console_run(name, "echo m-$((40+1))", "m-41")


def _names(handle: DaemonHandle) -> list[str]:
    return [d["name"] for d in handle.client.get("/v1/domains")]


def test_idle_guest_moves_and_keeps_running(pair: tuple[DaemonHandle, DaemonHandle],
                                            tmp_path: Path) -> None:
    source, destination = pair
    disk = tmp_path / "shared.raw"  # on a path both daemons see: shared storage
    disk.write_bytes(b"VKDATA-1234")
    os.truncate(disk, 8 * 2**20)
    _booted(source, "mig1", disks=[{"path": str(disk), "format": "raw"}])
    source.console_run("mig1", "echo before > /tmp/mark; head -c 11 /dev/vda; echo",
                       "VKDATA-1234")
    result = _migrate(source, destination, "mig1", persistent=True, undefine_source=True)
    assert result["destination"]["state"] == "running"
    assert result["source"] == "undefined"
    assert result["uri"].startswith("tcp:127.0.0.1:")
    info = destination.info("mig1")
    assert (info["state"], info["reason"]) == ("running", "migrated")
    # the same guest, not a new boot: what it wrote to its RAM-backed /tmp is there
    assert "before" in destination.console_run("mig1", "cat /tmp/mark", "before")
    assert source.qemu_pids() == []
    assert "mig1" not in _names(source)
    # the destination QEMU drives the disk now: a write from the guest lands in the file
    destination.console_run("mig1", "echo VKDEST | dd of=/dev/vda bs=512 seek=8 "
                            "conv=fsync oflag=direct 2>/dev/null; echo wr''ote", "wrote")
    # --persistent: the definition stays when the VM stops there
    destination.client.post(destination.client.domain_path("mig1", "/destroy"))
    assert destination.state("mig1") == "shutoff"
    data = disk.read_bytes()
    assert data.startswith(b"VKDATA-1234") and data[4096:4103] == b"VKDEST\n"


def test_without_persistent_the_destination_copy_is_transient(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = pair
    _booted(source, "mig2")
    done = source.cli("migrate", "--live", "--verbose", "--bandwidth", "16", "mig2",
                      str(destination.root / "virtkitd.sock"))
    assert "mig2 runs on the destination" in done.stdout
    assert "Migration: [100 %]" in done.stderr and "TCG" in done.stderr
    assert source.qemu_pids() == []
    assert source.info("mig2")["state"] == "shutoff"
    assert source.info("mig2")["reason"] == "migrated"
    assert "ok-3" in destination.console_run("mig2", "echo ok-$((1+2))", "ok-3")
    destination.client.post(destination.client.domain_path("mig2", "/destroy"))
    wait_for(lambda: "mig2" not in _names(destination), 10, "the transient copy to go")


def test_a_paused_guest_moves_paused_and_suspend_leaves_a_running_one_paused(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """virsh's behaviour: a paused domain is migrated paused (never resumed by the
    migration on either side), and --suspend leaves a running one paused there."""
    source, destination = pair
    _booted(source, "mig18")
    source.console_run("mig18", "echo held > /tmp/mark; echo ok-$((9+9))", "ok-18")
    source.cli("suspend", "mig18")
    refused = source.cli("migrate", "--live", "--postcopy", "mig18",
                         str(destination.root / "virtkitd.sock"), check=False)
    assert refused.returncode != 0 and "paused" in refused.stderr, refused.stderr
    assert "mig18" not in _names(destination) and source.state("mig18") == "paused"
    done = source.cli("migrate", "--live", "mig18", str(destination.root / "virtkitd.sock"))
    assert "mig18 is paused on the destination" in done.stdout
    info = destination.info("mig18")
    assert (info["state"], info["reason"]) == ("paused", "migrated")
    assert source.qemu_pids() == []
    destination.cli("resume", "mig18")
    assert "held" in destination.console_run("mig18", "cat /tmp/mark", "held")
    # back again, running, with --suspend: it arrives paused
    done = destination.cli("migrate", "--live", "--suspend", "--json", "mig18",
                           str(source.root / "virtkitd.sock"))
    assert json.loads(done.stdout)["destination"]["state"] == "paused"
    assert source.state("mig18") == "paused" and destination.qemu_pids() == []
    source.cli("resume", "mig18")
    assert "held" in source.console_run("mig18", "cat /tmp/mark", "held")
    # it came back into its own shut-off definition here, which stays defined
    source.client.post(source.client.domain_path("mig18", "/destroy"))
    assert source.state("mig18") == "shutoff"


def test_a_refusing_destination_leaves_the_vm_running_here(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = pair
    _booted(source, "mig3")
    destination.define("mig3")  # a different domain of that name exists there
    before = destination.info("mig3")
    with pytest.raises(ApiError) as excinfo:
        _migrate(source, destination, "mig3")
    assert excinfo.value.http_status == 409
    assert "already defined on the destination" in excinfo.value.message
    assert source.info("mig3")["state"] == "running"
    assert "ok-5" in source.console_run("mig3", "echo ok-$((2+3))", "ok-5")
    assert destination.qemu_pids() == []
    assert destination.info("mig3")["uuid"] == before["uuid"]


def test_killing_the_destination_qemu_mid_way_keeps_the_vm_here(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = pair
    _booted(source, "mig4")
    outcome: dict[str, Any] = {}
    thread = _in_background(source, destination, "mig4", outcome)
    try:
        pids = wait_for(destination.qemu_pids, 60, "the incoming QEMU")
        wait_for(lambda: _job(source, "mig4").get("status") == "active", 30,
                 "the stream to start")
        os.kill(pids[0], signal.SIGKILL)
    finally:
        thread.join(120)
    assert "error" in outcome, outcome
    assert source.info("mig4")["state"] == "running"
    assert "ok-9" in source.console_run("mig4", "echo ok-$((4+5))", "ok-9")
    wait_for(lambda: "mig4" not in _names(destination), 10, "the destination to clean up")
    assert destination.qemu_pids() == []



def _job(handle: DaemonHandle, name: str) -> dict[str, Any]:
    result: dict[str, Any] = handle.client.get(handle.client.domain_path(name, "/job"))
    return result


def _in_background(source: DaemonHandle, destination: DaemonHandle, name: str,
                   outcome: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:  # 1 MiB/s: slow enough to act before switch-over
            outcome["result"] = _migrate(source, destination, name, bandwidth=1)
        except VirtkitError as exc:  # ApiError, or the connection broke
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_domjobinfo_and_domjobabort(pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = pair
    _booted(source, "mig7")
    assert "Job type:               None" in source.cli("domjobinfo", "mig7").stdout
    outcome: dict[str, Any] = {}
    thread = _in_background(source, destination, "mig7", outcome)
    try:
        wait_for(lambda: _job(source, "mig7").get("status") == "active", 60, "the job")
        shown = source.cli("domjobinfo", "mig7").stdout
        assert "Job type:               Unbounded" in shown and "Data processed:" in shown
        source.cli("domjobabort", "mig7")
    finally:
        thread.join(120)
    assert "error" in outcome and "cancelled" in outcome["error"].message, outcome
    assert source.info("mig7")["state"] == "running"
    assert "ok-8" in source.console_run("mig7", "echo ok-$((4+4))", "ok-8")
    wait_for(lambda: "mig7" not in _names(destination), 10, "the destination to clean up")
    assert destination.qemu_pids() == []
    assert source.cli("domjobabort", "mig7", check=False).returncode != 0


def test_between_two_network_namespaces(netns_pair: tuple[DaemonHandle, DaemonHandle]
                                        ) -> None:
    """The issue's two hosts on one machine: the stream crosses a veth pair."""
    source, destination = netns_pair
    _booted(source, "mig5")
    source.console_run("mig5", "echo far > /tmp/mark; echo ok-$((3+3))", "ok-6")
    result = _migrate(source, destination, "mig5", address=DESTINATION_IP,
                      undefine_source=True, persistent=True)
    assert result["uri"].startswith(f"tcp:{DESTINATION_IP}:")
    assert "far" in destination.console_run("mig5", "cat /tmp/mark", "far")
    assert source.qemu_pids() == [] and "mig5" not in _names(source)
    # a listening address that is not the destination's: QEMU cannot bind, nothing stays
    _booted(source, "mig6")
    with pytest.raises(ApiError):
        _migrate(source, destination, "mig6", address=SOURCE_IP)
    assert source.info("mig6")["state"] == "running"
    assert "mig6" not in _names(destination)
    assert len(destination.qemu_pids()) == 1  # mig5's


def _incoming(handle: DaemonHandle, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = handle.client.post("/v1/migrations/incoming", {
        "spec": spec, "address": "127.0.0.1", **extra})
    return result


@pytest.mark.parametrize(("change", "message"), [
    ({"machine_type": "pc-q35-1.0"}, "machine type pc-q35-1.0 is not available"),
    ({"accelerator": "kvm"}, "the source runs the VM with kvm"),
    ({"spec_nics": [{"type": "network", "network": "nonet"}]}, "'nonet' is not defined"),
    ({"address": "203.0.113.9"}, "Cannot assign requested address"),
])
def test_the_destination_refuses_and_keeps_nothing(daemon: DaemonHandle, change: dict[str, Any],
                                                   message: str) -> None:
    spec = {**daemon.spec("inc"), "uuid": "6a1f0c3e-0000-4000-8000-00000000aa01"}
    if "spec_nics" in change:
        spec["nics"] = change.pop("spec_nics")
    with pytest.raises(ApiError) as excinfo:
        _incoming(daemon, spec, **change)
    error = excinfo.value
    assert message in f"{error} {error.details}", f"{error} {error.details}"
    assert "inc" not in _names(daemon)
    assert daemon.qemu_pids() == []


def test_an_incoming_migration_nobody_finishes_expires(daemon: DaemonHandle) -> None:
    answer = _incoming(daemon, daemon.spec("orphan"), deadline=2)
    assert daemon.info("orphan")["reason"] == "migrating in"
    assert len(daemon.qemu_pids()) == 1
    wait_for(lambda: "orphan" not in _names(daemon), 15, "the orphan to expire")
    assert daemon.qemu_pids() == []
    # the source asking again afterwards is fine
    assert daemon.client.request("DELETE", f"/v1/migrations/{answer['id']}")["removed"] is False


def test_an_incoming_migration_into_a_shut_off_definition_keeps_it(
        daemon: DaemonHandle) -> None:
    """libvirt's ping-pong case: the destination already defines the domain (same
    UUID and name, shut off); the incoming migration uses that slot, and a cancelled
    or expired one leaves the definition as it was."""
    daemon.define("pingpong")
    before = daemon.info("pingpong")
    spec = {**daemon.spec("pingpong"), "uuid": before["uuid"]}
    answer = _incoming(daemon, spec)
    assert answer["id"] == before["uuid"]
    assert daemon.info("pingpong")["reason"] == "migrating in"
    assert daemon.client.request("DELETE", f"/v1/migrations/{answer['id']}")["removed"]
    # asked again (the source may): nothing more to remove, the definition stays
    again = daemon.client.request("DELETE", f"/v1/migrations/{answer['id']}")
    assert again["removed"] is False
    after = daemon.info("pingpong")
    assert (after["state"], after["version"]) == ("shutoff", before["version"])
    assert daemon.qemu_pids() == []
    _incoming(daemon, spec, deadline=2)
    wait_for(daemon.qemu_pids, 15, "the incoming QEMU")
    wait_for(lambda: daemon.info("pingpong")["state"] == "shutoff", 15,
             "the incoming migration to expire")
    assert daemon.qemu_pids() == [] and "pingpong" in _names(daemon)
    # a different domain of that name (another UUID) is still refused
    with pytest.raises(ApiError, match="already defined on the destination"):
        _incoming(daemon, {**spec, "uuid": "6a1f0c3e-0000-4000-8000-00000000aa02"})


def test_an_offline_migration_updates_the_definition_already_here(
        daemon: DaemonHandle) -> None:
    """--offline onto a host that defines the same domain (UUID and name) replaces
    that definition, as libvirt's does; a different domain of the name is refused."""
    daemon.define("offpp")
    before = daemon.info("offpp")
    spec = {**daemon.spec("offpp"), "uuid": before["uuid"], "memory": 320}
    with pytest.raises(ApiError, match="already defined on the destination"):
        daemon.client.post("/v1/migrations/offline", {
            "spec": {**spec, "uuid": "6a1f0c3e-0000-4000-8000-00000000aa03"},
            "address": "127.0.0.1"})
    answer = daemon.client.post("/v1/migrations/offline", {"spec": spec,
                                                           "address": "127.0.0.1"})
    assert daemon.info("offpp")["memory_mib"] == 256  # nothing changes before finish
    daemon.client.post(f"/v1/migrations/{answer['id']}/finish", {"persistent": True})
    after = daemon.info("offpp")
    assert (after["uuid"], after["memory_mib"], after["state"]) == (before["uuid"], 320,
                                                                     "shutoff")
    assert after["version"] > before["version"]


def test_a_source_daemon_crash_mid_way_cancels_on_restart(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """QEMU migrates on without its daemon; the restarted daemon cancels what nobody
    drives any more, the guest runs on here, the destination's QEMU ends with the
    broken stream and its definition goes."""
    source, destination = pair
    _booted(source, "mig8")
    outcome: dict[str, Any] = {}
    thread = _in_background(source, destination, "mig8", outcome)
    try:
        wait_for(lambda: _job(source, "mig8").get("status") == "active", 60, "the job")
        source.kill9()
    finally:
        thread.join(120)
    assert "error" in outcome, outcome
    source.restart()
    info = source.info("mig8")
    assert (info["state"], info["reason"]) == ("running", "reattached"), info
    assert "ok-7" in source.console_run("mig8", "echo ok-$((3+4))", "ok-7")
    wait_for(lambda: "mig8" not in _names(destination), 30, "the destination to clean up")
    assert destination.qemu_pids() == []


def test_to_a_tls_destination_by_the_cli(pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """The source daemon reaches the destination's TLS listener with the API token and
    CA the CLI read (--dest-token-file, --dest-ca)."""
    source, destination = pair
    destination.cli("tls", "setup", "--hostname", "127.0.0.1")
    token_file = destination.root / "migration-token"
    destination.cli("token", "create", "--name", "migration", "--output", str(token_file))
    destination.process.send_signal(signal.SIGTERM)
    destination.process.wait(10)
    port = free_port()
    # over TLS the source is a remote caller: it may name pool volumes, and the files
    # of folders the destination's administrator allowed (the guest's kernel here)
    destination.process = start_daemon(destination.root, extra=(
        "--listen-tls", f"127.0.0.1:{port}",
        "--allow-path", str(destination.guest.kernel.parent)))
    _booted(source, "mig9")
    uri = f"virtkit+tls://127.0.0.1:{port}"
    ca = str(destination.root / "tls" / "ca.pem")
    refused = source.cli("migrate", "--live", "mig9", uri, "--dest-ca", ca,
                         "--dest-token", "not-a-token", check=False)
    assert refused.returncode != 0 and "destination" in refused.stderr
    assert source.state("mig9") == "running" and "mig9" not in _names(destination)
    done = source.cli("migrate", "--live", "--persistent", "--undefinesource", "mig9", uri,
                      "--dest-ca", ca, "--dest-token-file", str(token_file), "--json")
    assert json.loads(done.stdout)["uri"].startswith("tcp:127.0.0.1:")
    assert "ok-4" in destination.console_run("mig9", "echo ok-$((2+2))", "ok-4")
    assert source.qemu_pids() == [] and "mig9" not in _names(source)


def test_to_an_ssh_destination_by_the_cli(pair: tuple[DaemonHandle, DaemonHandle],
                                          sshd: tuple[int, Path]) -> None:
    """virsh's ``migrate --live vm qemu+ssh://host2/system``: the CLI forwards the
    destination daemon's socket over ssh (a private sshd, key login) for the source
    daemon, and ends the forward when done."""
    source, destination = pair
    port, keys = sshd
    query = f"?keyfile={keys}/client_key&known_hosts={keys}/known_hosts"
    uri = f"virtkit+ssh://root@127.0.0.1:{port}{destination.root}/virtkitd.sock{query}"
    _booted(source, "mig14")
    refused = source.cli("migrate", "--live", "mig14",
                         f"virtkit+ssh://root@127.0.0.1:{port}/nonexistent.sock{query}",
                         check=False)
    assert refused.returncode != 0 and "virtkitd" in refused.stderr, refused.stderr
    assert source.state("mig14") == "running"
    source.cli("migrate", "--live", "--persistent", "--undefinesource", "mig14", uri)
    assert "ok-6" in destination.console_run("mig14", "echo ok-$((3+3))", "ok-6")
    assert source.qemu_pids() == [] and "mig14" not in _names(source)
    assert destination.info("mig14")["spec"]["transient"] is False
    forwards = subprocess.run(["pgrep", "-f", f"{keys}/client_key"], capture_output=True,
                              text=True).stdout.split()
    assert forwards == []  # the CLI's ssh forward ended with the command


def test_a_network_the_destination_lacks(netns_pair: tuple[DaemonHandle, DaemonHandle]
                                         ) -> None:
    """The VM's NIC is on a network only the source defines: the destination refuses
    before starting anything and the VM stays, its network link untouched."""
    source, destination = netns_pair
    source.cli("net-define-as", "lab", "--mode", "isolated", "--subnet", "10.66.0.0/24")
    source.cli("net-start", "lab")
    _booted(source, "mig10", nics=[{"type": "network", "network": "lab"}])
    with pytest.raises(ApiError) as excinfo:
        _migrate(source, destination, "mig10", address=DESTINATION_IP)
    assert "network 'lab' is not defined" in excinfo.value.message
    assert source.info("mig10")["state"] == "running"
    assert "ok-10" in source.console_run("mig10", "echo ok-$((5+5))", "ok-10")
    assert "mig10" not in _names(destination) and destination.qemu_pids() == []


# -- --copy-storage-all ---------------------------------------------------------------

def _local_disk(folder: Path) -> Path:
    """A 64 MiB qcow2 image whose first 8 MiB hold random data (a known checksum)."""
    folder.mkdir()
    raw = folder / "seed.raw"
    with raw.open("wb") as out:
        out.write(os.urandom(8 * 2**20))
    os.truncate(raw, 64 * 2**20)
    disk = folder / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
                   check=True, capture_output=True)
    raw.unlink()
    return disk


def _guest_md5(handle: DaemonHandle, name: str) -> str:
    out = handle.console_run(name, "head -c 16777216 /dev/vda | md5sum; echo su''m-done",
                             "sum-done")
    return next(word for line in out.splitlines() for word in line.split()
                if len(word) == 32 and all(c in "0123456789abcdef" for c in word))


def test_copy_storage_all_between_two_hosts(netns_pair: tuple[DaemonHandle, DaemonHandle],
                                            tmp_path: Path) -> None:
    """A local qcow2 disk is mirrored to an image the destination creates at another
    path (--disk-path), then the RAM follows; the data is identical on both sides."""
    source, destination = netns_pair
    disk = _local_disk(tmp_path / "source-host")
    (tmp_path / "destination-host").mkdir()
    copy = tmp_path / "destination-host" / "disk.qcow2"
    _booted(source, "mig11", disks=[{"path": str(disk), "format": "qcow2"}])
    # the guest writes too, so the copy holds what it wrote while running here
    source.console_run("mig11", "echo VKGUEST | dd of=/dev/vda bs=512 seek=20480 "
                       "conv=fsync oflag=direct 2>/dev/null; echo wr''ote", "wrote")
    before = _guest_md5(source, "mig11")
    result = _migrate(source, destination, "mig11", address=DESTINATION_IP,
                      copy_storage_all=True, persistent=True, undefine_source=True,
                      disk_paths={str(disk): str(copy)})
    assert result["copied_disks"] and result["source"] == "undefined"
    assert source.qemu_pids() == [] and "mig11" not in _names(source)
    assert disk.is_file()  # virsh leaves the source's disk in place
    assert _guest_md5(destination, "mig11") == before
    assert destination.client.get(destination.client.domain_path("mig11"))["spec"][
        "disks"][0]["path"] == str(copy)
    destination.client.post(destination.client.domain_path("mig11", "/destroy"))
    compared = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                               str(disk), str(copy)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_copy_storage_refusals_leave_everything_in_place(
        pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    """Same path on one host (the file exists there) is refused without touching it;
    an abort during the disk copy leaves the VM here and removes the new image."""
    source, destination = pair
    disk = _local_disk(tmp_path / "src")
    _booted(source, "mig12", disks=[{"path": str(disk), "format": "qcow2"}])
    stamp = disk.stat()
    with pytest.raises(ApiError) as excinfo:
        _migrate(source, destination, "mig12", copy_storage_all=True)
    assert "already exists on the destination" in excinfo.value.message
    assert disk.stat().st_ino == stamp.st_ino
    assert source.info("mig12")["state"] == "running"
    # domjobabort while the disk is being mirrored (1 MiB/s keeps it in that phase)
    (tmp_path / "dst").mkdir()
    copy = tmp_path / "dst" / "disk.qcow2"
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _migrate(source, destination, "mig12", copy_storage_all=True,
                                         disk_paths={str(disk): str(copy)}, bandwidth=1)
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: _job(source, "mig12").get("phase") == "copying disks", 60,
                 "the disk copy")
        assert copy.exists() and len(destination.qemu_pids()) == 1
        assert _job(source, "mig12")["disk_total"] > 0
        shown = source.cli("domjobinfo", "mig12").stdout
        assert "Phase:                  copying disks" in shown and "File total:" in shown
        source.cli("domjobabort", "mig12")
    finally:
        thread.join(120)
    assert "error" in outcome and "cancelled" in outcome["error"].message, outcome
    assert source.info("mig12")["state"] == "running"
    assert "ok-12" in source.console_run("mig12", "echo ok-$((6+6))", "ok-12")
    wait_for(lambda: "mig12" not in _names(destination), 10, "the destination to clean up")
    assert destination.qemu_pids() == [] and not copy.exists()
    assert disk.is_file()


def test_copy_storage_inc_copies_only_the_top_image(pair: tuple[DaemonHandle, DaemonHandle],
                                                    tmp_path: Path) -> None:
    """The backing image is on both hosts (here: the same file); only the overlay's
    data crosses, into an overlay the destination makes on that backing image."""
    source, destination = pair
    base = _local_disk(tmp_path / "base")
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(top)], check=True)
    copy = tmp_path / "copy" / "top.qcow2"
    copy.parent.mkdir()
    _booted(source, "mig13", disks=[{"path": str(top), "format": "qcow2"}])
    source.console_run("mig13", "echo VKTOP | dd of=/dev/vda bs=512 seek=30000 "
                       "conv=fsync oflag=direct 2>/dev/null; echo wr''ote", "wrote")
    before = _guest_md5(source, "mig13")
    done = source.cli("migrate", "--live", "--copy-storage-inc", "--verbose", "mig13",
                      str(destination.root / "virtkitd.sock"), "--disk-path",
                      f"{top}={copy}")
    assert "mig13 runs on the destination" in done.stdout, done.stderr
    assert _guest_md5(destination, "mig13") == before
    destination.client.post(destination.client.domain_path("mig13", "/destroy"))
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(copy)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["backing-filename"] == str(base)
    assert info["actual-size"] < 4 * 2**20  # the overlay's writes, not the base's 8 MiB
    compared = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                               str(top), str(copy)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr


# -- --offline ------------------------------------------------------------------------

def test_offline_moves_the_definition_and_the_disks(
        netns_pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    """A shut-off domain: its definition (made persistent there) and, with
    --copy-storage-all, its disk (served by qemu-nbd there) cross; nothing runs."""
    source, destination = netns_pair
    disk = _local_disk(tmp_path / "source-host")
    (tmp_path / "destination-host").mkdir()
    copy = tmp_path / "destination-host" / "disk.qcow2"
    source.define("mig14", disks=[{"path": str(disk), "format": "qcow2"}])
    done = source.cli("migrate", "--offline", "--copy-storage-all", "--undefinesource",
                      "--verbose", "mig14", str(destination.root / "virtkitd.sock"),
                      "--listen-address", DESTINATION_IP, "--disk-path", f"{disk}={copy}")
    assert "mig14 is defined on the destination (1 disk(s) copied)" in done.stdout, done
    assert "mig14" not in _names(source) and disk.is_file()
    info = destination.info("mig14")
    assert info["state"] == "shutoff" and destination.qemu_pids() == []
    assert destination.client.get(destination.client.domain_path("mig14"))["spec"][
        "disks"][0]["path"] == str(copy)
    compared = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                               str(disk), str(copy)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # it starts there from the copy; a running domain offline: only its definition
    destination.client.post(destination.client.domain_path("mig14", "/start"))
    destination.wait_booted("mig14")
    back = destination.cli("migrate", "--offline", "--copy-storage-all", "mig14",
                           str(source.root / "virtkitd.sock"), check=False)
    assert back.returncode != 0 and "shut it down first" in back.stderr
    assert "mig14" not in _names(source)
    moved = destination.cli("migrate", "--offline", "mig14", str(source.root / "virtkitd.sock"))
    assert "mig14 is defined on the destination" in moved.stdout
    assert source.info("mig14")["state"] == "shutoff"
    assert not source.client.get(source.client.domain_path("mig14"))["spec"].get("transient")
    assert destination.state("mig14") == "running"  # not stopped by an offline migration
    refused = source.cli("migrate", "--offline", "--live", "mig14",
                         str(destination.root / "virtkitd.sock"), check=False)
    assert refused.returncode != 0 and "exclude each other" in refused.stderr


# -- --postcopy -----------------------------------------------------------------------

def test_a_confined_destination_refuses_postcopy_when_userfaultfd_is_privileged(
        pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = pair
    if Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() != "0":
        pytest.skip("this host lets unprivileged processes use userfaultfd")
    _booted(source, "mig17")
    refused = source.cli("migrate", "--live", "--postcopy", "mig17",
                         str(destination.root / "virtkitd.sock"), check=False)
    assert refused.returncode != 0 and "unprivileged_userfaultfd" in refused.stderr
    assert source.state("mig17") == "running" and "mig17" not in _names(destination)
    assert destination.qemu_pids() == []


def test_postcopy_after_precopy(postcopy_pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    """The switch to post-copy after the first pass: the guest runs there (its RAM
    state intact), the source has no QEMU."""
    source, destination = postcopy_pair
    _booted(source, "mig15")
    # a guest that keeps writing ~8 MiB/s of memory (in its RAM root file system):
    # with 16 MiB/s and a 1 ms downtime limit precopy can never converge, so the
    # switch after the first pass always happens; an idle guest's second pass may be
    # over and converged within milliseconds
    source.console_run("mig15", "echo post > /tmp/mark; (while :; do yes vk | head -c 4194304"
                       " > /tmp/dirty; sleep 0.5; done) >/dev/null 2>&1 & echo ok-$((7+8))",
                       "ok-15")
    done = source.cli("migrate", "--live", "--postcopy", "--postcopy-after-precopy", "--json",
                      "--bandwidth", "16", "--downtime-limit", "1",
                      "mig15", str(destination.root / "virtkitd.sock"))
    assert json.loads(done.stdout).get("postcopy") is True, done.stdout
    assert "post" in destination.console_run("mig15", "cat /tmp/mark", "post")
    assert source.qemu_pids() == []


def test_migrate_postcopy_switches_a_slow_migration(
        postcopy_pair: tuple[DaemonHandle, DaemonHandle]) -> None:
    source, destination = postcopy_pair
    _booted(source, "mig16")
    refused = source.cli("migrate-postcopy", "mig16", check=False)
    assert refused.returncode != 0 and "no migration running" in refused.stderr
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:  # 2 MiB/s: the precopy of 256 MiB would take minutes; 4 MiB/s after the
            # switch keeps post-copy running long enough for domjobabort to meet it
            outcome["result"] = _migrate(source, destination, "mig16", bandwidth=2,
                                         postcopy=True, postcopy_bandwidth=4)
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: _job(source, "mig16").get("status") == "active", 60, "the job")
        source.cli("migrate-postcopy", "mig16")
        wait_for(lambda: "post" in str(_job(source, "mig16").get("phase")), 30,
                 "the switch to post-copy")
        refused = source.cli("domjobabort", "mig16", check=False)
        assert refused.returncode != 0 and "post-copy" in refused.stderr
    finally:
        thread.join(300)
    assert outcome.get("result", {}).get("postcopy") is True, outcome
    assert "ok-16" in destination.console_run("mig16", "echo ok-$((8+8))", "ok-16")
    assert source.qemu_pids() == []


def test_killing_the_destination_qemu_during_the_disk_copy(
        netns_pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    """SIGKILL of the destination QEMU while the disk is mirrored into its NBD export:
    the mirror fails, the VM keeps running here, the destination removes the image it
    created and keeps nothing."""
    source, destination = netns_pair
    disk = _local_disk(tmp_path / "source-host")
    (tmp_path / "destination-host").mkdir()
    copy = tmp_path / "destination-host" / "disk.qcow2"
    _booted(source, "mig17", disks=[{"path": str(disk), "format": "qcow2"}])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _migrate(source, destination, "mig17", address=DESTINATION_IP,
                                         copy_storage_all=True, bandwidth=4,
                                         disk_paths={str(disk): str(copy)})
        except VirtkitError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: _job(source, "mig17").get("disk_processed", 0) > 0, 60,
                 "the disk copy to progress")
        os.kill(destination.qemu_pids()[0], signal.SIGKILL)
    finally:
        thread.join(120)
    assert "error" in outcome, outcome
    assert source.info("mig17")["state"] == "running"
    assert "ok-17" in source.console_run("mig17", "echo ok-$((8+9))", "ok-17")
    wait_for(lambda: not copy.exists(), 10, "the destination to remove its image")
    assert "mig17" not in _names(destination) and destination.qemu_pids() == []
    # the source holds no leftover mirror or NBD client: a second try succeeds
    result = _migrate(source, destination, "mig17", address=DESTINATION_IP,
                      copy_storage_all=True, disk_paths={str(disk): str(copy)})
    assert result["destination"]["state"] == "running" and copy.is_file()


def test_offline_refusals_leave_nothing_on_the_destination(
        pair: tuple[DaemonHandle, DaemonHandle], tmp_path: Path) -> None:
    source, destination = pair
    disk = _local_disk(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    copy = tmp_path / "dst" / "disk.qcow2"
    source.define("mig18", disks=[{"path": str(disk), "format": "qcow2"}])
    destination.define("mig18")  # another domain of that name
    with pytest.raises(ApiError) as excinfo:
        _migrate(source, destination, "mig18", offline=True, live=False,
                 copy_storage_all=True, disk_paths={str(disk): str(copy)})
    assert excinfo.value.http_status == 409
    assert not copy.exists() and source.state("mig18") == "shutoff"
    # a network only the source has: refused after the image was made; it goes again
    source.cli("net-define-as", "lab2", "--mode", "isolated", "--subnet", "10.67.0.0/24")
    source.cli("undefine", "mig18")  # one writable definition per image: mig19 takes it
    source.define("mig19", disks=[{"path": str(disk), "format": "qcow2"}],
                  nics=[{"type": "network", "network": "lab2"}])
    with pytest.raises(ApiError) as excinfo:
        _migrate(source, destination, "mig19", offline=True, live=False,
                 copy_storage_all=True, disk_paths={str(disk): str(copy)})
    assert "network 'lab2' is not defined" in excinfo.value.message
    assert not copy.exists() and "mig19" not in _names(destination)
    assert destination.qemu_pids() == []


def test_hot_added_disk_and_nic_move_along(pair: tuple[DaemonHandle, DaemonHandle],
                                           tmp_path: Path) -> None:
    """A live disk and NIC hotplug, then a live migration without a restart: the
    destination QEMU is built with them where the source had them (runtime/devlayout.py),
    so the guest goes on with its RAM, its new disk and its new NIC."""
    source, destination = pair
    boot, hot = tmp_path / "hb.raw", tmp_path / "hh.raw"
    for path in (boot, hot):
        path.write_bytes(b"")
        os.truncate(path, 8 * 2**20)
    _booted(source, "mighot", disks=[{"path": str(boot), "format": "raw"}])
    source.cli("attach-disk", "mighot", str(hot), "--live", "--subdriver", "raw")
    source.cli("attach-interface", "mighot", "user", "--mac", "52:54:00:15:00:09", "--live")
    source.console_run("mighot", "until [ -b /dev/vdb ] && [ -e /sys/class/net/eth0 ]; do "
                       "sleep 0.2; done; echo moved > /tmp/mark; echo re''ady", "ready")
    result = _migrate(source, destination, "mighot", persistent=True, undefine_source=True)
    assert result["destination"]["state"] == "running"
    out = destination.console_run(
        "mighot", "echo STATE $(cat /tmp/mark) $(cat /sys/class/net/eth0/address) "
        "$([ -b /dev/vdb ] && echo vdb) E''ND", "END")
    assert "STATE moved 52:54:00:15:00:09 vdb" in out, out
