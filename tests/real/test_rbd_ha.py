"""HA restart of a VM on an rbd pool fences the old host's Ceph clients first (issue 18
item 6; docs/cluster.md, "Storage fencing"): three namespaced hosts (clusterhosts.py)
and a one-node Ceph on their bridge (cephserver.py).  b's daemon is SIGKILLed with the
HA VM running; its guard kills the QEMU, whose rbd watch lingers in Ceph; the host that
restarts the VM blocklists that client before it starts the VM, and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.real.cephserver import CephServer, ceph_server
from tests.real.clusterhosts import form_cluster, qemus_of, three_hosts
from tests.real.conftest import DaemonHandle, wait_for
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

CEPH_IP = "192.0.2.100"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[dict[str, DaemonHandle], CephServer]]:
    with three_hosts() as handles:
        lan = handles["a"].lan[0]  # type: ignore[attr-defined]
        # the Ceph daemons sit on the hosts' bridge; lo up: Ceph talks to itself too
        subprocess.run(["ip", "-n", lan, "addr", "add", f"{CEPH_IP}/24", "dev", "br0"],
                       check=True)
        subprocess.run(["ip", "-n", lan, "link", "set", "lo", "up"], check=True)
        with ceph_server(netns=lan, ip=CEPH_IP) as ceph:
            form_cluster(handles)
            yield handles, ceph


def test_an_ha_vm_on_rbd_is_restarted_after_its_old_client_is_fenced(
        cluster: tuple[dict[str, DaemonHandle], CephServer]) -> None:
    hosts, ceph = cluster
    for handle in hosts.values():
        handle.cli("pool-define-as", "ceph", "rbd", "--source-host", ceph.monitor,
                   "--source-name", ceph.pool)
        handle.cli("pool-start", "ceph")
    b = hosts["b"]
    b.cli("vol-create-as", "ceph", "ha-disk", "8M")
    uuid = b.client.post("/v1/domains?host=b", {"spec": {
        "name": "ha-rbd", "memory": 64, "vcpus": 1,
        "disks": [{"pool": "ceph", "volume": "ha-disk"}]}})["uuid"]
    b.cli("ha", "enable", "ha-rbd")
    b.cli("start", "ha-rbd")
    arm = b.root / "cluster" / "guard" / "arm.json"
    wait_for(lambda: arm.exists() and uuid in arm.read_text(), 15, "b's guard armed")
    # the running QEMU has the image open: Ceph lists its client as a watcher
    wait_for(lambda: '"address"' in ceph.rbd("status", "--format", "json",
                                             f"{ceph.pool}/ha-disk"), 30, "b's QEMU watching")
    old = ceph.rbd("status", "--format", "json", f"{ceph.pool}/ha-disk")
    os.kill(b.process.pid, signal.SIGKILL)
    b.process.wait(10)
    deadline, new_host = time.monotonic() + 90, None
    while time.monotonic() < deadline and new_host is None:
        assert len(qemus_of(uuid)) <= 1
        for name in ("a", "c"):
            rows = {r["name"]: r for r in hosts[name].client.get("/v1/domains?all=1")}
            if rows.get("ha-rbd", {}).get("state") == "running":
                new_host = name
        time.sleep(0.2)
    assert new_host is not None, "the HA VM did not run again on a or c"
    log = state_paths(hosts[new_host].root).daemon_log.read_text(errors="replace")
    fenced = [line for line in log.splitlines() if "storage fenced" in line]
    assert fenced and "ha-disk" in fenced[-1], log[-3000:]
    address = old.split('"address":"')[1].split('"')[0]
    assert address in fenced[-1]  # the dead QEMU's client, blocklisted in Ceph
    assert address in ceph.ceph("osd", "blocklist", "ls")
    owner = hosts[new_host]
    owner.cli("destroy", "ha-rbd")
