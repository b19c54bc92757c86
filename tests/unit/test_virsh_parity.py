"""Output that scripts parse, compared with virsh 9's exact formats (taken from libvirt's
tools/virsh-host.c, virsh-domain-monitor.c, virsh-domain.c and virsh-snapshot.c:
``%-20s %s`` for nodeinfo, ``%-15s %s`` for dominfo, numeric state/reason in domstats,
virsh's usage errors and ``error: failed to get domain 'x'``), and the pure parts of
the block-job commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from virtkit.cli import main as cli_main
from virtkit.cli.blockjobs import blockjob_lines, progress_text, scaled_size
from virtkit.cli.client import ApiError
from virtkit.cli.domains import dominfo_pairs, list_rows, state_word
from virtkit.cli.main import nodeinfo_lines
from virtkit.cli.snapshots import select_snapshots, snapshot_state, snapshot_table
from virtkit.cli.stats import flatten, reason_number
from virtkit.errors import InvalidSpec
from virtkit.host.nodefacts import cpu_topology
from virtkit.runtime.blockops import pick_image

# -- nodeinfo ------------------------------------------------------------------------------

#: what virsh 9 prints on a 2-CPU, one-socket host (virsh-host.c cmdNodeinfo)
VIRSH_NODEINFO = """\
CPU model:           x86_64
CPU(s):              2
CPU frequency:       2394 MHz
CPU socket(s):       1
Core(s) per socket:  2
Thread(s) per core:  1
NUMA cell(s):        1
Memory size:         8024132 KiB
"""


def test_nodeinfo_lines_are_virsh_s() -> None:
    info = {"arch": "x86_64", "memory_kib": 8024132,
            "topology": {"cpus": 2, "mhz": 2394, "sockets": 1, "cores": 2, "threads": 1,
                         "nodes": 1}}
    assert "".join(f"{line}\n" for line in nodeinfo_lines(info)) == VIRSH_NODEINFO
    info["topology"]["mhz"] = 0  # virsh leaves the line out when the frequency is unknown
    assert not any(line.startswith("CPU frequency") for line in nodeinfo_lines(info))


def _cpu(root: Path, index: int, package: int, core: int) -> None:
    topo = root / "cpu" / f"cpu{index}" / "topology"
    topo.mkdir(parents=True)
    (topo / "physical_package_id").write_text(f"{package}\n")
    (topo / "core_id").write_text(f"{core}\n")


def test_cpu_topology_counts_as_libvirt(tmp_path: Path) -> None:
    # 2 sockets x 2 cores x 2 threads, one NUMA node
    for index in range(8):
        _cpu(tmp_path, index, package=index // 4, core=(index // 2) % 2)
    (tmp_path / "node" / "node0").mkdir(parents=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2394.454\n")
    assert cpu_topology(tmp_path, cpuinfo) == {"cpus": 8, "mhz": 2394, "nodes": 1,
                                               "sockets": 2, "cores": 2, "threads": 2}


# -- domstats ------------------------------------------------------------------------------

STATS: dict[str, Any] = {
    "name": "vm", "state": {"state": "running", "reason": "booted"},
    "cpu": {"time": 1.5, "user": 1.0, "system": 0.5, "percent": 3.0},
    "balloon": {"current": 131072, "maximum": 131072, "rss": None, "usable_total": 120000,
                "available": 90000, "usage": 30000},
    "vcpu": {"current": 1, "maximum": 2, "vcpus": [{"id": 0, "state": "R", "time": 2.0}]},
    "block": [{"name": "vda", "path": "/img/a.qcow2", "rd_reqs": 3, "rd_bytes": 1536,
               "rd_times": 7, "rd_latency_us": 1.0, "wr_reqs": 0, "wr_bytes": 0,
               "wr_times": 0, "fl_reqs": 0, "fl_times": 0, "fl_latency_us": None,
               "capacity": 33554432, "allocation": 200704, "physical": 196624}],
}

#: virsh 9's domstats for the same figures (libvirt's key names, numeric state and
#: reason, no empty values)
VIRSH_DOMSTATS = """\
  state.state=1
  state.reason=1
  cpu.time=1500000000
  cpu.user=1000000000
  cpu.system=500000000
  balloon.current=131072
  balloon.maximum=131072
  balloon.available=120000
  balloon.usable=90000
  vcpu.current=1
  vcpu.maximum=2
  vcpu.0.state=1
  vcpu.0.time=2000000000
  block.count=1
  block.0.name=vda
  block.0.path=/img/a.qcow2
  block.0.rd.reqs=3
  block.0.rd.bytes=1536
  block.0.rd.times=7
  block.0.wr.reqs=0
  block.0.wr.bytes=0
  block.0.wr.times=0
  block.0.fl.reqs=0
  block.0.fl.times=0
  block.0.allocation=200704
  block.0.capacity=33554432
  block.0.physical=196624
"""


def test_domstats_keys_values_and_order_are_virsh_s() -> None:
    text = "".join(f"  {key}={value}\n" for key, value in flatten(STATS))
    assert text == VIRSH_DOMSTATS
    assert all(str(value) != "" for _key, value in flatten(STATS))


@pytest.mark.parametrize(("state", "reason", "number"), [
    ("running", "booted", 1), ("running", "migrated", 2), ("running", "restored", 3),
    ("running", "reverted to a snapshot", 4), ("running", "user", 5),
    ("running", "migration failed", 6), ("paused", "user", 1),
    ("paused", "migration outcome unknown", 2), ("paused", "starting", 11),
    ("paused", "postcopy failed", 13), ("shutoff", "shutdown", 1),
    ("shutoff", "destroyed (host)", 2), ("shutoff", "QEMU exited unexpectedly", 3),
    ("shutoff", "saved", 5), ("shutoff", "restart failed: x", 6),
    ("shutoff", "daemon restarted", 8), ("crashed", "guest panicked", 1),
    ("running", "", 0), ("shutoff", "something new", 0),
])
def test_reason_numbers_are_libvirt_s(state: str, reason: str, number: int) -> None:
    assert reason_number(state, reason) == number


# -- list, dominfo, domstate ----------------------------------------------------------------

ROWS = [{"name": "a", "uuid": "u-a", "state": "running", "id": 1, "pid": 4000, "title": "A"},
        {"name": "b", "uuid": "u-b", "state": "shutoff", "id": None, "pid": None,
         "title": None},
        {"name": "c", "uuid": "u-c", "state": "paused", "id": 2, "pid": 4100, "title": None}]


def _args(**flags: bool) -> argparse.Namespace:
    names = ("all", "inactive", "state_running", "state_paused", "state_shutoff",
             "state_other", "name", "uuid", "id", "title", "json", "table")
    return argparse.Namespace(**{name: flags.get(name, False) for name in names})


def test_list_filters_as_virsh() -> None:
    assert [r["name"] for r in list_rows(ROWS, _args())] == ["a", "c"]
    assert [r["name"] for r in list_rows(ROWS, _args(all=True))] == ["a", "b", "c"]
    assert [r["name"] for r in list_rows(ROWS, _args(inactive=True))] == ["b"]
    assert [r["name"] for r in list_rows(ROWS, _args(state_paused=True))] == ["c"]
    assert [r["name"] for r in list_rows(ROWS, _args(state_running=True,
                                                     state_shutoff=True))] == ["a", "b"]


class _Client:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def get(self, path: str) -> list[dict[str, Any]]:
        return self.rows if "all=1" in path else [r for r in self.rows
                                                  if r["state"] != "shutoff"]


def test_list_table_ids_and_one_per_line_forms(capsys: pytest.CaptureFixture[str]) -> None:
    from virtkit.cli.domains import cmd_list

    cmd_list(_Client(ROWS), _args(all=True))  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Id", "Name", "State"]
    assert [line.split() for line in lines[2:]] == [["1", "a", "running"],
                                                    ["-", "b", "shut", "off"],
                                                    ["2", "c", "paused"], []]
    cmd_list(_Client(ROWS), _args(all=True, id=True))  # type: ignore[arg-type]
    assert capsys.readouterr().out == "1\n2\n\n"  # shut-off domains have no Id
    cmd_list(_Client(ROWS), _args(uuid=True, name=True))  # type: ignore[arg-type]
    assert capsys.readouterr().out == "u-a a\nu-c c\n\n"
    cmd_list(_Client(ROWS), _args(title=True))  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["Id", "Name", "State", "Title"]
    assert out[2].split() == ["1", "a", "running", "A"]


def test_dominfo_fields_in_virsh_s_order_and_words() -> None:
    info = {"id": 3, "name": "vm", "uuid": "u", "state": "shutoff", "vcpus": 1,
            "cpu_time": None, "max_memory_mib": 256, "memory_mib": 128, "autostart": False,
            "persistent": True, "pid": None, "max_vcpus": 2, "machine": "q35",
            "accelerator": "tcg", "version": 4, "console_log": "/x"}
    pairs = dominfo_pairs(info)
    assert [key for key, _v in pairs][:11] == [
        "Id", "Name", "UUID", "OS Type", "State", "CPU(s)", "Max memory", "Used memory",
        "Persistent", "Autostart", "Managed save"]
    values = dict(pairs)
    assert (values["State"], values["Persistent"], values["Autostart"],
            values["Managed save"], values["OS Type"]) == ("shut off", "yes", "disable",
                                                           "no", "hvm")
    assert f"{'Max memory:':<15} {values['Max memory']}" == "Max memory:     262144 KiB"
    assert state_word("running") == "running" and state_word("shutoff") == "shut off"


# -- snapshot-list ---------------------------------------------------------------------------

SNAPS = [{"name": "s1", "created": 0.0, "state": "running", "kind": "external",
          "memory": False, "current": False, "parent": None},
         {"name": "s2", "created": 0.0, "state": "running", "kind": "internal",
          "memory": True, "current": True, "parent": "s1"}]


def test_snapshot_list_has_virsh_s_columns_first() -> None:
    headers, rows = snapshot_table(SNAPS, parent=False)
    assert headers[:3] == ["Name", "Creation Time", "State"]
    assert rows[0][2] == "disk-snapshot" and rows[1][2] == "running"  # libvirt's states
    assert rows[1][-1] == "*" and rows[0][-1] == ""  # the current mark shifts nothing
    headers, rows = snapshot_table(SNAPS, parent=True)
    assert headers[:4] == ["Name", "Creation Time", "State", "Parent"]
    assert rows[1][3] == "s1"
    assert snapshot_state({**SNAPS[0], "state": "shutoff"}) == "shutoff"
    flags = argparse.Namespace(current=False, roots=True, leaves=False, no_leaves=False)
    assert [s["name"] for s in select_snapshots(SNAPS, flags)] == ["s1"]
    flags = argparse.Namespace(current=False, roots=False, leaves=True, no_leaves=False)
    assert [s["name"] for s in select_snapshots(SNAPS, flags)] == ["s2"]


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["dominfo"], "error: command 'dominfo' requires <domain> option\n"),
    (["blockcommit", "vm"], "error: command 'blockcommit' requires <path> option\n"),
    (["dominfx"], "error: unknown command: 'dominfx' (did you mean: dominfo"),
])
def test_usage_errors_are_virsh_s_with_exit_1(argv: list[str], expected: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli_main.run(argv)
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert expected in err
    assert "choose from" not in err  # never the list of every command


def test_unknown_domain_is_virsh_s_line(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    class Missing:
        def domain_path(self, ref: str, suffix: str = "") -> str:
            return f"/v1/domains/{ref}{suffix}"

        def get(self, path: str) -> Any:
            raise ApiError(404, {"error": "not_found", "message": "domain 'x' not found",
                                 "fix": "see 'virtkit list --all'"})

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli_main, "connect_with", lambda *a, **k: Missing())
    monkeypatch.setenv("NO_COLOR", "1")
    words = ["dominfo", "x"]
    assert cli_main.run(words) == 1
    assert capsys.readouterr().err == "error: failed to get domain 'x'\n"


# -- block jobs -----------------------------------------------------------------------------

def test_block_job_helpers() -> None:
    assert scaled_size("10G") == 10 * 2**30 and scaled_size("512MiB") == 512 * 2**20
    assert scaled_size("1000") == 1000 * 1024  # a bare number is KiB, as virsh
    assert scaled_size("1000KB") == 1_000_000 and scaled_size("4096b") == 4096
    with pytest.raises(InvalidSpec):
        scaled_size("ten")
    # virshPrintJobProgress: %5.2f, truncated, never 100 before the end
    assert progress_text("Block Commit", 42.129) == "\rBlock Commit: [42.12 %]"
    assert progress_text("Block Pull", 99.999) == "\rBlock Pull: [99.99 %]"
    assert progress_text("Block Pull", 100.0) == "\rBlock Pull: [100.00 %]"
    assert progress_text("Block Pull", 5.0) == "\rBlock Pull: [ 5.00 %]"
    assert blockjob_lines({"job": None, "disk": "vda"}, raw=False) == \
        "No current block job for vda\n"
    assert blockjob_lines({"job": "active-commit", "disk": "vda", "cur": 5, "end": 10,
                           "bandwidth": 0}, raw=True) == \
        " type=active_commit\n bandwidth=0\n cur=5\n end=10\n"


def test_pick_image_by_file_or_index() -> None:
    chain = [("/i/top.qcow2", "n2", "qcow2"), ("/i/mid.qcow2", "n1", "qcow2"),
             ("/i/base.qcow2", "n0", "qcow2")]
    assert pick_image(chain, "vda", "/i/mid.qcow2", "base") == 1
    assert pick_image(chain, "vda", "vda[2]", "base") == 2
    with pytest.raises(InvalidSpec, match="not in the backing chain of disk vda"):
        pick_image(chain, "vda", "/i/other.qcow2", "base")
    with pytest.raises(InvalidSpec):
        pick_image(chain, "vda", "vda[3]", "top")
