"""virtkit's output against real QEMU, compared by *form* with real virsh 9's output for the
same objects (tests/data/virsh/, recorded by scripts/record-virsh-output.sh from a
private libvirtd; no libvirtd runs here): the same field names and columns in virsh's
order (virtkit's own ones only after virsh's), the same shape of every value
(tests/virshdata.shape), the same error lines.  The objects carry the recording's names:
network rec-net (isolated), pool rec-pool with volume rec.qcow2, a running tiny guest
'rec' (128 MiB, 1 of 2 vCPUs, title 'tiny', VNC, a NIC with a DHCP lease) with
snapshots s1 (taken shut off) and s2 (running), and a shut-off 'rec-off'.

Where virtkit differs on purpose the difference is listed here with its reason."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, daemon_in_netns
from tests.real.test_networks import DHCP_SCRIPT
from tests.virshdata import domstats, keyvalues, recording, shape, table
from virtkit.images.tinyguest import TinyGuest

pytestmark = pytest.mark.qemu

#: virsh fields virtkit leaves out on purpose, per recording
ABSENT_FIELDS = {
    # libvirt's taint messages ("running with undesirable elevated privileges")
    "dominfo": {"Messages"},
    "dominfo-paused": {"Messages"},
    # virtkit reports its confinement (Security model ...) for a running QEMU only: a
    # shut-off domain has no process, label or cgroup to describe
    "dominfo-off": {"Security model", "Security DOI"},
    "dominfo-shutoff": {"Security model", "Security DOI"},
}
#: values whose shape differs on purpose: virtkit's names for its own objects
OWN_VALUES = {
    "Security model": r"virtkit-dac|none",  # libvirt: none/selinux/apparmor/dac
    "Bridge": r"vkbr\d+",  # libvirt: virbrN
    "Name": r"\S+",  # (domifaddr, domiflist) tap names: vktapN, libvirt: vnetN
    "Interface": r"vktap\d+",
    # the lease's: the tiny guest's udhcpc sends no host name ('-'); the recording's
    # lease was written with one
    "Hostname": r"\S+",
    "Client ID or DUID": r"\S+",
}
#: domstats keys libvirt has and virtkit does not (libvirt-only accounting: resctrl
#: cache monitoring, halt polling, per-vCPU steal time, backing-chain index, dirty-rate)
ABSENT_STATS = re.compile(r"cpu\.cache\..*|cpu\.haltpoll\..*|vcpu\.<n>\.(wait|delay)"
                          r"|block\.<n>\.backingIndex|dirtyrate\..*")
# Not compared: virsh prints an empty line after every command's output unless -q;
# virtkit does after tables and documents but not after one-line answers (domid,
# domuuid, vncdisplay): a script reading lines or $(...) gets the same text.


@pytest.fixture(scope="module")
def rec(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    with daemon_in_netns(tiny_guest) as d:
        pool = Path(tempfile.mkdtemp(prefix="vk-rec-", dir="/tmp"))
        d.cli("net-define-as", "rec-net", "--mode", "isolated", "--subnet", "10.66.0.0/24")
        d.cli("net-start", "rec-net")
        d.cli("pool-define-as", "rec-pool", "dir", "--target", str(pool / "pool"))
        d.cli("pool-build", "rec-pool")
        d.cli("pool-start", "rec-pool")
        for vol, size in (("rec.qcow2", "32M"), ("off.qcow2", "16M")):
            d.cli("vol-create-as", "rec-pool", vol, size, "--format", "qcow2")
        common = {"memory": 128, "vcpus": {"current": 1, "max": 2}, "title": "tiny",
                  "graphics": {"type": "vnc"}}
        d.define("rec-off", disks=[{"pool": "rec-pool", "volume": "off.qcow2"}], **common)
        d.define("rec", disks=[{"pool": "rec-pool", "volume": "rec.qcow2"}],
                 nics=[{"network": "rec-net"}], **common)
        d.cli("snapshot-create-as", "rec", "s1")
        d.client.post(d.client.domain_path("rec", "/start"))
        d.wait_booted("rec")
        # a DHCP lease for domifaddr and net-dhcp-leases: udhcpc on the guest's console
        d.console_run("rec", DHCP_SCRIPT, "dhcp-42-done", timeout=60)
        d.cli("snapshot-create-as", "rec", "s2")
        try:
            yield d
        finally:
            shutil.rmtree(pool, ignore_errors=True)


def _run(d: DaemonHandle, command: str) -> str:
    return d.cli(*command.split()).stdout


def assert_same_fields(name: str, ours: str) -> None:
    """virsh's ``Key: value`` fields, in its order, first; each value of virsh's shape."""
    theirs = keyvalues(recording(name).text)
    mine = keyvalues(ours)
    expected = [(k, v) for k, v in theirs if k not in ABSENT_FIELDS.get(name, set())]
    keys = [k for k, _ in mine]
    assert keys[:len(expected)] == [k for k, _ in expected], (name, keys)
    for (key, value), (_, virsh_value) in zip(mine, expected, strict=False):
        if key in OWN_VALUES:
            assert re.fullmatch(OWN_VALUES[key], value), (name, key, value)
        else:
            assert shape(value) == shape(virsh_value), (name, key, value, virsh_value)


def assert_same_table(name: str, ours: str, key_column: int = 0) -> None:
    """virsh's columns, in its order, first; rows of the same objects of virsh's shape."""
    columns, rows = table(recording(name).text)
    my_columns, my_rows = table(ours)
    assert my_columns[:len(columns)] == columns, (name, my_columns)
    mine = {row[key_column]: row for row in my_rows}
    compared = 0
    for row in rows:
        if row[key_column] not in mine:
            continue
        compared += 1
        for column, theirs, value in zip(columns, row, mine[row[key_column]], strict=False):
            if column in OWN_VALUES and value:
                assert re.fullmatch(OWN_VALUES[column], value), (name, column, value)
            elif column not in OWN_VALUES:
                assert shape(value) == shape(theirs), (name, column, value, theirs)
    assert compared or not rows, f"{name}: no row of virsh's objects in {ours!r}"


FIELD_DOCUMENTS = [
    ("dominfo", "dominfo rec"), ("dominfo-off", "dominfo rec-off"), ("nodeinfo", "nodeinfo"),
    ("net-info", "net-info rec-net"), ("pool-info", "pool-info rec-pool"),
    ("vol-info", "vol-info --pool rec-pool rec.qcow2"), ("domblkinfo", "domblkinfo rec vda"),
    ("vcpuinfo", "vcpuinfo rec"),
]


@pytest.mark.parametrize(("name", "command"), FIELD_DOCUMENTS, ids=[n for n, _ in FIELD_DOCUMENTS])
def test_documents_have_virsh_s_fields_and_value_shapes(rec: DaemonHandle, name: str,
                                                        command: str) -> None:
    assert_same_fields(name, _run(rec, command))


TABLES = [
    ("list", "list", 1), ("list-all", "list --all", 1), ("list-inactive", "list --inactive", 1),
    ("list-title", "list --all --title", 1), ("list-state-running", "list --state-running", 1),
    ("list-state-shutoff", "list --state-shutoff", 1),
    ("list-state-paused", "list --state-paused", 1),
    ("net-list", "net-list --all", 0), ("net-dhcp-leases", "net-dhcp-leases rec-net", 2),
    ("pool-list", "pool-list --all", 0), ("pool-list-details", "pool-list --all --details", 0),
    ("vol-list", "vol-list rec-pool", 0), ("vol-list-details", "vol-list rec-pool --details", 0),
    ("snapshot-list", "snapshot-list rec", 0),
    ("snapshot-list-parent", "snapshot-list rec --parent", 0),
    ("domblklist", "domblklist rec", 0), ("domblklist-details", "domblklist rec --details", 2),
    ("domiflist", "domiflist rec", 1), ("domifaddr", "domifaddr rec", 2),
    ("domblkinfo-all", "domblkinfo rec --all", 0),
]


@pytest.mark.parametrize(("name", "command", "key"), TABLES, ids=[n for n, _, _ in TABLES])
def test_tables_have_virsh_s_columns_and_value_shapes(rec: DaemonHandle, name: str,
                                                      command: str, key: int) -> None:
    assert_same_table(name, _run(rec, command), key)


LINES = [  # one value a line: the same lines, of the same shape
    ("list-name", "list --all --name"), ("list-uuid", "list --all --uuid"),
    ("list-id", "list --id"), ("list-uuid-name", "list --all --uuid --name"),
    ("domstate", "domstate rec"), ("domstate-reason", "domstate rec --reason"),
    ("domstate-off-reason", "domstate rec-off --reason"), ("domid", "domid rec"),
    ("domuuid", "domuuid rec"), ("domname", "domname 1"), ("vncdisplay", "vncdisplay rec"),
    ("vcpucount", "vcpucount rec"), ("vcpucount-off", "vcpucount rec-off"),
    ("snapshot-list-name", "snapshot-list rec --name"),
    ("snapshot-current-name", "snapshot-current rec --name"),
    ("domblkstat", "domblkstat rec vda"),
]


@pytest.mark.parametrize(("name", "command"), LINES, ids=[n for n, _ in LINES])
def test_line_answers_have_virsh_s_shape(rec: DaemonHandle, name: str, command: str) -> None:
    theirs = [shape(line) for line in recording(name).text.splitlines() if line.strip()]
    mine = [shape(line) for line in _run(rec, command).splitlines() if line.strip()]
    if name == "domstate-reason":  # libvirt: 'unpaused' after its snapshot paused it
        theirs = [line.replace("unpaused", "booted") for line in theirs]
    assert mine == theirs, (name, mine, theirs)


def test_domstats_keys_are_virsh_s_and_in_its_order(rec: DaemonHandle) -> None:
    theirs = domstats(recording("domstats").text)["rec"]
    mine = domstats(_run(rec, "domstats rec"))["rec"]
    assert all(value != "" for _, value in mine), mine  # never an empty value
    known = [shape(k) for k, _ in theirs]
    balloon_guest = re.compile(r"balloon\.(swap_in|swap_out|major_fault|minor_fault|unused"
                               r"|available|usable|disk_caches|hugetlb_pgalloc"
                               r"|hugetlb_pgfail)")  # what a guest's balloon driver reports
    my_keys = [shape(k) for k, _ in mine]
    for key in my_keys:
        assert key in known or balloon_guest.fullmatch(key), key
    missing = [k for k in dict.fromkeys(known) if k not in my_keys]
    assert all(ABSENT_STATS.fullmatch(k) or k.startswith("block.<n>.") for k in missing), \
        missing  # block.1.*: the recording's empty CD-ROM, which 'rec' here does not have
    common = [k for k in dict.fromkeys(my_keys) if k in known]
    assert common == [k for k in dict.fromkeys(known) if k in common]  # virsh's order
    values = dict(mine)
    assert values["state.state"] == "1" and values["state.reason"].isdigit()
    for key in ("capacity", "allocation", "physical"):
        assert values[f"block.0.{key}"].isdigit()
    assert domstats(_run(rec, "domstats --state")) .keys() >= {"rec", "rec-off"}


def test_domstats_of_a_shut_off_domain_has_virsh_s_keys(rec: DaemonHandle) -> None:
    """The definition's memory, vCPU counts and disk sizes, as virsh shows them; not
    libvirt's cpu.* of a shut-off domain (virtkit has no CPU time without a QEMU)."""
    theirs = [(k, v) for k, v in domstats(recording("domstats-off").text)["rec-off"]
              if not k.startswith("cpu.") and not k.startswith("block.1.")]
    theirs = [(k, "1" if k == "block.count" else v) for k, v in theirs]  # one disk here
    mine = domstats(_run(rec, "domstats rec-off"))["rec-off"]
    assert [k for k, _ in mine] == [k for k, _ in theirs]
    assert [shape(v) for _, v in mine] == [shape(v) for _, v in theirs]
    values = dict(mine)
    assert values["balloon.maximum"] == "131072" and values["vcpu.maximum"] == "2"
    assert values["block.0.capacity"] == str(16 * 2**20)
    assert domstats(_run(rec, "domstats --state rec-off"))["rec-off"] == \
        [("state.state", "5"), ("state.reason", "0")]


def test_dommemstat_names_are_virsh_s(rec: DaemonHandle) -> None:
    theirs = [line.split()[0] for line in recording("dommemstat").text.splitlines() if line]
    mine = [line.split() for line in _run(rec, "dommemstat rec").splitlines() if line]
    names = [name for name, _ in mine]
    assert all(value.isdigit() for _, value in mine), mine
    assert [n for n in names if n in theirs] == theirs  # virsh's, in its order
    libvirt = {"actual", "swap_in", "swap_out", "major_fault", "minor_fault", "unused",
               "available", "usable", "last_update", "disk_caches", "hugetlb_pgalloc",
               "hugetlb_pgfail", "rss"}
    assert set(names) <= libvirt, names


ERRORS = [  # virsh's error line (the last line of stderr), exit status 1
    ("error-missing-domain", "dominfo nosuch", "exact"),
    ("error-missing-argument", "dominfo", "exact"),
    ("error-unknown-option", "dominfo rec --nosuch", "exact"),
    # virtkit adds what may have been meant, or where the list is
    ("error-unknown-command", "nosuchcommand", "prefix"),
    # virtkit's wording names the fix: the same 'error: ' line and status
    ("error-start-running", "start rec", "form"),
]


@pytest.mark.parametrize(("name", "command", "how"), ERRORS, ids=[n for n, _, _ in ERRORS])
def test_errors_are_virsh_s_lines(rec: DaemonHandle, name: str, command: str, how: str
                                  ) -> None:
    theirs = recording(name, "err")
    result = rec.cli(*command.split(), check=False)
    assert result.returncode == theirs.status == 1
    assert result.stdout == ""
    line = result.stderr.splitlines()[-1]
    virsh_line = theirs.text.splitlines()[-1]
    if how == "exact":
        assert line == virsh_line
    elif how == "prefix":
        assert line.startswith(virsh_line), line
    else:
        assert line.startswith("error: ") and virsh_line.startswith("error: ")


def test_paused_then_destroyed_as_virsh(rec: DaemonHandle) -> None:
    """Last (it changes the guest): paused, then destroyed, in virsh's words."""
    rec.cli("suspend", "rec")
    assert_same_table("list-paused", _run(rec, "list --state-paused"), 1)
    assert_same_fields("dominfo-paused", _run(rec, "dominfo rec"))
    assert _run(rec, "domstate rec --reason").strip() == \
        recording("domstate-reason-paused").text.strip()
    rec.cli("destroy", "rec")
    assert _run(rec, "domstate rec --reason").strip() == \
        recording("domstate-reason-destroyed").text.strip()
    assert_same_table("list-all-destroyed", _run(rec, "list --all"), 1)
    assert_same_fields("dominfo-shutoff", _run(rec, "dominfo rec"))
