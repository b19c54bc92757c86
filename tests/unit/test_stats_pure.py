"""Pure parts of statistics: cpulists, /proc parsing, CPU % math, block stats mapping,
the Prometheus exposition, virsh's domstats keys and virt-top's frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from virtkit.cli.stats import flatten
from virtkit.cli.top import Frames, render_frame, sort_rows
from virtkit.host import procstat
from virtkit.model.cpulist import cpulist_ranges, format_cpulist, parse_cpulist
from virtkit.model.load import load_domain
from virtkit.runtime.stats import Sample, block_stats, cpu_percent
from virtkit.service.metrics import escape_label, exposition, parse_exposition

# -- cpulists --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}), ("1, 3,5-6", {1, 3, 5, 6}),
    ("0-7,^1-6", {0, 7}), ("4-4", {4}),
])
def test_parse_cpulist(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "^1", "0-1,^0-1", "1.5", "0-999999"])
def test_parse_cpulist_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="cpuset"):
        parse_cpulist(text)


def test_format_and_ranges_round_trip() -> None:
    assert format_cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpulist(set()) == ""
    assert cpulist_ranges({0, 1, 2, 5}) == [(0, 2), (5, 5)]
    for text in ("0", "0-2,5", "1,3,5", "0-63"):
        assert format_cpulist(parse_cpulist(text)) == text


# -- /proc -----------------------------------------------------------------------------------

STAT = ("4242 (qemu (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 "
        "7 0 954093 3133440 {rss} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_survives_a_comm_with_parentheses_and_spaces() -> None:
    line = STAT.format(utime=250, stime=50, rss=1000)
    stat = procstat.parse_stat(line)
    assert stat.comm == "qemu (odd) name"
    assert stat.state == "S"
    assert stat.user_s == 250 / procstat.TICK and stat.system_s == 50 / procstat.TICK
    assert stat.cpu_s == pytest.approx(300 / procstat.TICK)
    assert stat.threads == 7
    assert stat.rss_kib == 1000 * procstat.PAGE // 1024
    assert stat.processor == 1  # field 39


def test_parse_stat_of_this_process_and_thread() -> None:
    import os

    stat = procstat.process_stat(os.getpid())
    assert stat is not None and stat.threads >= 1 and stat.rss_kib > 0
    threads = procstat.thread_stats(os.getpid())
    assert os.getpid() in threads
    assert procstat.process_stat(2**22 + 1) is None
    assert procstat.affinity(os.getpid()) == format_cpulist(os.sched_getaffinity(0))


def test_tap_counters_are_swapped_to_the_guests_view(tmp_path: Path) -> None:
    folder = tmp_path / "class" / "net" / "vk0" / "statistics"
    folder.mkdir(parents=True)
    for index, name in enumerate(procstat.NIC_COUNTERS):
        (folder / name).write_text(f"{index + 1}\n")
    counters = procstat.tap_counters("vk0", tmp_path)
    assert counters is not None
    assert counters["rx_bytes"] == 5 and counters["tx_bytes"] == 1  # tap tx = guest rx
    assert procstat.tap_counters("gone", tmp_path) is None


# -- CPU % -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "percent"), [
    (None, Sample(10.0, 5.0, {}), None),
    (Sample(10.0, 5.0, {}), Sample(12.0, 6.0, {}), 50.0),
    (Sample(10.0, 5.0, {}), Sample(11.0, 7.0, {}), 200.0),  # two host CPUs busy
    (Sample(10.0, 5.0, {}), Sample(10.001, 5.0, {}), None),  # too close to measure
    (Sample(10.0, 5.0, {}), Sample(12.0, 1.0, {}), None),  # a new process: time went back
])
def test_cpu_percent(before: Sample | None, after: Sample, percent: float | None) -> None:
    assert cpu_percent(before, after) == percent


# -- block stats -----------------------------------------------------------------------------

def test_blockstats_map_to_the_spec_disks_with_latency() -> None:
    domain = load_domain({"name": "b", "memory": 64, "disks": [
        {"path": "/a.raw", "format": "raw"}, {"path": "/b.raw", "format": "raw", "bus": "sata"}]})
    replies = [
        {"node-name": "drive-disk1", "qdev": "/machine/peripheral/disk1",
         "stats": {"rd_operations": 4, "rd_bytes": 4096, "rd_total_time_ns": 8000,
                   "wr_operations": 0, "wr_bytes": 0, "wr_total_time_ns": 0}},
        {"node-name": "other", "qdev": "/machine/peripheral/disk0/virtio-backend",
         "stats": {"rd_operations": 1, "rd_bytes": 512, "rd_total_time_ns": 1000,
                   "wr_operations": 2, "wr_bytes": 1024, "wr_total_time_ns": 6000,
                   "flush_operations": 1, "flush_total_time_ns": 500}},
    ]
    disks = block_stats(domain, replies)
    assert [d["name"] for d in disks] == ["vda", "sda"]
    assert disks[0]["wr_bytes"] == 1024 and disks[0]["wr_latency_us"] == 3.0
    assert disks[0]["fl_reqs"] == 1 and disks[0]["fl_latency_us"] == 0.5
    assert disks[1]["rd_latency_us"] == 2.0 and disks[1]["wr_latency_us"] is None
    # after hotplug the QEMU numbers are not the positions: disk 0 unplugged, disk 1 kept,
    # a new one is drive-disk2
    hot = load_domain({"name": "b", "memory": 64, "disks": [
        {"path": "/b.raw", "format": "raw", "bus": "sata", "target": "sda"},
        {"path": "/c.raw", "format": "raw", "target": "vdb"}]})
    replies.append({"node-name": "drive-disk2", "stats": {"wr_operations": 1, "wr_bytes": 7}})
    disks = block_stats(hot, replies, [1, 2])
    assert [(d["name"], d["rd_bytes"], d["wr_bytes"]) for d in disks] == [
        ("sda", 4096, 0), ("vdb", 0, 7)]


# -- exposition ------------------------------------------------------------------------------

STATS: list[dict[str, Any]] = [
    {"name": 'we"ird\\name\n', "uuid": "u1", "state": {"state": "running", "reason": "booted"},
     "cpu": {"time": 12.5},
     "vcpu": {"current": 1, "maximum": 2, "vcpus": [{"id": 0, "state": "R", "time": 10.25}]},
     "balloon": {"current": 65536, "maximum": 65536, "rss": 1024, "available": None},
     "block": [{"name": "vda", "rd_bytes": 10, "wr_bytes": 20, "rd_reqs": 1, "wr_reqs": 2}],
     "net": [{"name": "vk0", "rx_bytes": 5, "tx_bytes": 6, "rx_packets": 1, "tx_packets": 1}]},
    {"name": "off", "uuid": "u2", "state": {"state": "shutoff", "reason": ""}},
]
CAPACITY = {"host": {"cpus": 2, "memory_mib": 1024},
            "running": {"domains": 1, "vcpus": 1, "memory_mib": 64},
            "defined": {"domains": 2, "vcpus": 2, "memory_mib": 128}}


def test_exposition_is_well_formed_and_parses_back() -> None:
    text = exposition(STATS, CAPACITY, 1700000000.5)
    assert text.endswith("\n")
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("# TYPE "):
            assert lines[index - 1].startswith("# HELP " + line.split()[2])
            assert line.split()[3] in ("counter", "gauge")
    families = parse_exposition(text)
    name = 'we"ird\\name\n'
    assert families["virtkit_domain_cpu_seconds_total"] == [({"domain": name}, 12.5)]
    assert ({"domain": name, "vcpu": "0"}, 10.25) in \
        families["virtkit_domain_vcpu_seconds_total"]
    assert families["virtkit_domain_memory_bytes"] == [({"domain": name}, 65536 * 1024)]
    assert "virtkit_domain_memory_available_bytes" not in families  # None is left out
    assert ({"domain": "off", "state": "shutoff"}, 1.0) in families["virtkit_domain_state"]
    assert ({"domain": "off", "state": "running"}, 0.0) in families["virtkit_domain_state"]
    assert families["virtkit_domain_net_receive_bytes_total"] == [
        ({"domain": name, "interface": "vk0"}, 5.0)]
    assert families["virtkit_host_memory_bytes"] == [({}, 1024 * 2**20)]
    assert 'domain="we\\"ird\\\\name\\n"' in text
    assert escape_label('a"b') == 'a\\"b'


def test_exposition_matches_prometheus_client_parser_when_installed() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    text = exposition(STATS, CAPACITY, 1.0)
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["virtkit_domain_cpu_seconds"].type == "counter"


# -- CLI rendering ---------------------------------------------------------------------------

def test_flatten_gives_virsh_domstats_keys() -> None:
    pairs = dict(flatten({**STATS[0], "cpu": {"time": 1.5, "user": 1.0, "system": 0.5,
                                              "percent": 3.0}}))
    assert pairs["state.state"] == 1 and pairs["state.reason"] == 1
    assert pairs["cpu.time"] == 1_500_000_000 and pairs["cpu.system"] == 500_000_000
    assert pairs["balloon.current"] == 65536 and pairs["vcpu.0.time"] == 10_250_000_000
    assert pairs["net.count"] == 1 and pairs["net.0.rx.bytes"] == 5
    assert pairs["net.0.rx.pkts"] == 1
    assert pairs["block.count"] == 1 and pairs["block.0.rd.bytes"] == 10


def _item(name: str, cpu: float, rss: int, rd: int, rx: int) -> dict[str, Any]:
    return {"name": name, "uuid": name, "pid": 1, "state": {"state": "running"},
            "cpu": {"time": cpu, "percent": None}, "balloon": {"rss": rss},
            "block": [{"rd_bytes": rd, "wr_bytes": 0}], "net": [{"rx_bytes": rx,
                                                                 "tx_bytes": 0}]}


def test_top_frames_compute_rates_and_sort() -> None:
    frames = Frames(host_mib=1000)
    first = frames.rows([_item("a", 1.0, 102400, 0, 0), _item("b", 1.0, 51200, 0, 0)], 10.0)
    assert [r["cpu"] for r in first] == [0.0, 0.0]
    rows = frames.rows([_item("a", 1.5, 102400, 4096, 0),
                        _item("b", 3.0, 51200, 0, 8192)], 12.0)
    by_name = {r["name"]: r for r in rows}
    assert by_name["a"]["cpu"] == 25.0 and by_name["b"]["cpu"] == 100.0
    assert by_name["a"]["rd"] == 2048.0 and by_name["b"]["rx"] == 4096.0
    assert by_name["a"]["mem"] == 100.0 and by_name["a"]["mem_pct"] == 10.0
    assert [r["name"] for r in sort_rows(rows, "cpu")] == ["b", "a"]
    assert [r["name"] for r in sort_rows(rows, "mem")] == ["a", "b"]
    assert [r["name"] for r in sort_rows(rows, "block")] == ["a", "b"]
    assert [r["name"] for r in sort_rows(rows, "net")] == ["b", "a"]
    assert [r["name"] for r in sort_rows(rows, "name")] == ["a", "b"]
    text = render_frame(rows, "cpu", {"host": {"cpus": 2, "memory_mib": 1000}}, 0.0)
    assert "2 domains, 2 running" in text and text.splitlines()[3].split()[-1] == "b"
