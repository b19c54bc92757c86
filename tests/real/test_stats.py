"""Live statistics against real QEMU: domstats, vcpuinfo, dominfo, top, /metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.service.metrics import parse_exposition

pytestmark = pytest.mark.qemu

MIB = 2**20


def _stats(daemon: DaemonHandle, name: str) -> dict[str, Any]:
    result: list[dict[str, Any]] = daemon.client.get(f"/v1/domstats?domain={name}")
    assert [item["name"] for item in result] == [name]
    return result[0]


def _start_with_disk(daemon: DaemonHandle, tmp_path: Path, name: str, **extra: Any) -> None:
    disk = tmp_path / f"{name}.raw"
    with open(disk, "wb") as image:
        image.truncate(32 * MIB)
    daemon.define(name, memory=128, disks=[{"path": str(disk), "format": "raw"}], **extra)
    daemon.client.post(daemon.client.domain_path(name, "/start"))
    daemon.wait_booted(name)


def test_stats_move_when_the_guest_works(daemon: DaemonHandle, tmp_path: Path) -> None:
    _start_with_disk(daemon, tmp_path, "st1")
    before = _stats(daemon, "st1")
    assert before["state"] == {"state": "running", "reason": "booted"}
    assert before["balloon"]["current"] == 128 * 1024
    assert before["balloon"]["maximum"] == 128 * 1024
    assert before["balloon"]["rss"] > 10 * 1024  # KiB: QEMU holds guest pages
    assert [disk["name"] for disk in before["block"]] == ["vda"]
    # a busy loop and direct I/O on the raw disk (echo's arithmetic keeps the marker out
    # of the echoed command line)
    daemon.console_run("st1", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; "
                       "echo BUSY$((40+2))", "BUSY42", timeout=60)
    daemon.console_run("st1", "dd if=/dev/zero of=/dev/vda bs=1M count=8 oflag=direct "
                       "2>/dev/null; dd if=/dev/vda of=/dev/null bs=1M count=4 iflag=direct "
                       "2>/dev/null; echo IO$((40+3))", "IO43", timeout=60)
    after = _stats(daemon, "st1")
    assert after["cpu"]["time"] > before["cpu"]["time"]
    assert after["vcpu"]["vcpus"][0]["time"] > before["vcpu"]["vcpus"][0]["time"]
    assert after["cpu"]["percent"] is not None and after["cpu"]["percent"] > 0
    disk_before, disk_after = before["block"][0], after["block"][0]
    assert disk_after["wr_bytes"] - disk_before["wr_bytes"] >= 8 * MIB
    assert disk_after["rd_bytes"] - disk_before["rd_bytes"] >= 4 * MIB
    assert disk_after["wr_reqs"] > disk_before["wr_reqs"]
    assert disk_after["wr_latency_us"] > 0
    # the balloon driver reports the guest's own memory figures once polling is on
    balloon = wait_for(lambda: (b := _stats(daemon, "st1")["balloon"]).get("available") and b,
                       15, "guest memory stats from the balloon")
    assert 0 < balloon["unused"] <= balloon["available"] <= 128 * 1024
    # the CLI prints virsh's key=value form
    text = daemon.cli("domstats", "st1").stdout
    assert text.startswith("Domain: 'st1'\n  state.state=1\n")
    assert "  block.0.name=vda\n" in text and "  cpu.time=" in text
    # virsh's form: numeric reason (1: booted), block sizes, never an empty value
    assert "  state.reason=1\n" in text and "  block.0.capacity=" in text, text
    assert not [line for line in text.splitlines() if line.endswith("=")], text
    only = json.loads(daemon.cli("domstats", "st1", "--cpu-total", "--json").stdout)[0]
    assert set(only) == {"name", "uuid", "pid", "started", "cpu"}


def test_domstats_of_all_domains_includes_stopped_ones(daemon: DaemonHandle) -> None:
    daemon.define("off1", memory=64)
    daemon.define("on1", memory=64)
    daemon.client.post(daemon.client.domain_path("on1", "/start"), {"paused": True})
    stats = {item["name"]: item for item in daemon.client.get("/v1/domstats")}
    assert set(stats) == {"off1", "on1"}
    assert stats["off1"]["state"]["state"] == "shutoff" and "cpu" not in stats["off1"]
    assert stats["on1"]["state"]["state"] == "paused" and stats["on1"]["cpu"]["time"] >= 0
    active = daemon.client.get("/v1/domstats?active=1")
    assert [item["name"] for item in active] == ["on1"]
    bad = daemon.cli("domstats", "nosuch", check=False)
    assert bad.returncode == 1 and "failed to get domain 'nosuch'" in bad.stderr


def test_vcpuinfo_names_real_threads_of_qemu(daemon: DaemonHandle) -> None:
    daemon.define("vc", memory=64, vcpus=2)
    daemon.client.post(daemon.client.domain_path("vc", "/start"))
    info = daemon.client.get(daemon.client.domain_path("vc", "/vcpus"))
    pid = info["pid"]
    tasks = {int(task) for task in os.listdir(f"/proc/{pid}/task")}
    assert [item["id"] for item in info["vcpus"]] == [0, 1]
    for item in info["vcpus"]:
        assert item["thread_id"] in tasks and item["thread_id"] != pid
        comm = Path(f"/proc/{pid}/task/{item['thread_id']}/comm").read_text()
        assert comm.startswith("CPU ")  # debug-threads=on names them "CPU N/TCG"
        assert item["host_cpu"] in os.sched_getaffinity(0)
        assert item["affinity"] == "0-1"
    text = daemon.cli("vcpuinfo", "vc").stdout
    assert f"Thread:         {info['vcpus'][1]['thread_id']}" in text
    host_cpus = daemon.client.get("/v1/host")["cpus"]
    assert f"CPU Affinity:   {'yy' + '-' * (host_cpus - 2)}\n" in text + "\n"  # virsh's map
    dominfo = daemon.info("vc")
    assert dominfo["pid"] == pid and dominfo["cpu_time"] >= 0
    assert "CPU time:" in daemon.cli("dominfo", "vc").stdout
    daemon.client.post(daemon.client.domain_path("vc", "/destroy"))
    refused = daemon.cli("vcpuinfo", "vc", check=False)
    assert refused.returncode == 1 and "it is not running" in refused.stderr


def test_top_batch_shows_the_domains(daemon: DaemonHandle) -> None:
    for name in ("topa", "topb"):
        daemon.define(name, memory=64)
        daemon.client.post(daemon.client.domain_path(name, "/start"))
    out = daemon.cli("top", "--batch", "-n", "2", "-d", "0.5", "--sort", "name").stdout
    frames = [frame for frame in out.split("virtkit top ") if frame]
    assert len(frames) == 2
    for frame in frames:
        lines = frame.splitlines()
        assert "2 domains, 2 running" in lines[0] and "sorted by name" in lines[0]
        assert lines[1].split()[:3] == ["ID", "S", "%CPU"]
        names = [line.split()[-1] for line in lines[3:] if line.strip()]
        assert names == ["topa", "topb"]
    cpu = float(frames[1].splitlines()[3].split()[2])
    assert cpu > 0  # booting under TCG keeps a vCPU busy


def test_metrics_endpoint_parses_and_has_the_domain(daemon: DaemonHandle) -> None:
    daemon.define("prom", memory=64)
    daemon.define("prom-off", memory=64)
    daemon.client.post(daemon.client.domain_path("prom", "/start"))
    status, content_type, body = _raw_get(daemon, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = parse_exposition(body.decode())
    cpu = dict((labels["domain"], value) for labels, value
               in families["virtkit_domain_cpu_seconds_total"])
    assert set(cpu) == {"prom"} and cpu["prom"] > 0
    states = {(labels["domain"], labels["state"]): value
              for labels, value in families["virtkit_domain_state"]}
    assert states[("prom", "running")] == 1 and states[("prom-off", "shutoff")] == 1
    assert states[("prom-off", "running")] == 0
    assert families["virtkit_host_cpus"][0][1] == len(os.sched_getaffinity(0))
    assert ({"kind": "defined"}, 2.0) in families["virtkit_host_domains"]
    memory = dict((labels["domain"], value) for labels, value
                  in families["virtkit_domain_memory_bytes"])
    assert memory["prom"] == 64 * MIB
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert "virtkit_domain_cpu_seconds" in names


def _raw_get(daemon: DaemonHandle, path: str) -> tuple[int, str, bytes]:
    from virtkit.cli.client import _exchange
    from virtkit.cli.transport import Transport

    request = f"GET {path} HTTP/1.1\r\nHost: virtkitd\r\nConnection: close\r\n\r\n".encode()
    return _exchange(Transport(daemon.root / "virtkitd.sock"), request, 30.0)


def test_nic_counters_come_from_the_tap(netns_daemon: DaemonHandle) -> None:
    from tests.real.test_networks import _boot_with_dhcp, _ping

    d = netns_daemon
    d.cli("net-define-as", "statnet", "--mode", "isolated", "--subnet", "10.79.0.0/24")
    d.cli("net-start", "statnet")
    assert _boot_with_dhcp(d, "netstat", "statnet").startswith("10.79.0.")
    before = _stats(d, "netstat")["net"][0]
    assert before["name"].startswith("vktap") and before["type"] == "network"
    assert before["tx_packets"] > 0 and before["rx_packets"] > 0  # the DHCP exchange
    assert _ping(d, "netstat", "10.79.0.1") == 0
    after = _stats(d, "netstat")["net"][0]
    assert after["tx_packets"] >= before["tx_packets"] + 2  # the guest's echo requests
    assert after["rx_bytes"] > before["rx_bytes"]  # and the replies it received
    text = d.cli("domstats", "netstat", "--interface").stdout
    assert "  net.count=1\n" in text and f"  net.0.name={after['name']}\n" in text


def test_a_hot_plugged_disk_has_stats_under_its_own_name(daemon: DaemonHandle,
                                                         tmp_path: Path) -> None:
    _start_with_disk(daemon, tmp_path, "hotst")
    extra = tmp_path / "extra.raw"
    with open(extra, "wb") as image:
        image.truncate(16 * MIB)
    daemon.cli("attach-disk", "hotst", str(extra), "vdb", "--live")
    disks = wait_for(lambda: len(b := _stats(daemon, "hotst")["block"]) == 2 and b, 30,
                     "the hot-plugged disk in domstats")
    assert [(d["name"], d["path"]) for d in disks] == [("vda", str(tmp_path / "hotst.raw")),
                                                       ("vdb", str(extra))]
    daemon.console_run("hotst", "dd if=/dev/zero of=/dev/vdb bs=1M count=2 oflag=direct "
                       "2>/dev/null; echo HOT$((40+4))", "HOT44", timeout=60)
    after = {d["name"]: d for d in _stats(daemon, "hotst")["block"]}
    assert after["vdb"]["wr_bytes"] >= 2 * MIB
    assert after["vda"]["wr_bytes"] < 2 * MIB
