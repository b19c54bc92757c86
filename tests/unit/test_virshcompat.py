"""The pure parts of virsh's extra commands: key code tables, host fact readers, the
capabilities documents, and the CLI's layouts -- compared with virsh 9's own output
(recorded with ``virsh -c test:///default``; checked live when virsh is installed)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtkit.cli import virshcompat as vc
from virtkit.errors import InvalidSpec, NotFound
from virtkit.formats.libvirt_caps import (
    HostFacts,
    capabilities_xml,
    domcapabilities_xml,
    sysinfo_xml,
)
from virtkit.host import nodefacts
from virtkit.model import keycodes

# virsh 9.0 (Debian libvirt-clients), test:///default driver
VIRSH_VCPUCOUNT = ("maximum      config         2\nmaximum      live           2\n"
                   "current      config         2\ncurrent      live           2\n")
VIRSH_NODECPUSTATS = ("user:                     9797400000\nsystem:               "
                      "34678723400000\nidle:                    87264900000\n"
                      "iowait:                    763600000\n")
VIRSH_DOMBLKINFO = ("Capacity:       1099506450432\nAllocation:     1099511627776\n"
                    "Physical:       1099511627776\n")
VIRSH_DOMBLKINFO_HUMAN = ("Capacity:       1023.995 GiB\nAllocation:     1.000 TiB\n"
                          "Physical:       1.000 TiB\n")
VIRSH_DOMIFSTAT = ("testnet0 rx_bytes 179654195580305\ntestnet0 rx_packets 17965419558030\n"
                   "testnet0 rx_errs 1796541955\ntestnet0 rx_drop 898270977\n"
                   "testnet0 tx_bytes 89827097790152\ntestnet0 tx_packets 16332199598209\n"
                   "testnet0 tx_errs 598847318\ntestnet0 tx_drop 449135488\n")
VIRSH_DOMBLKSTAT_HUMAN = ("Device: vda\n number of read operations:      179654195360978\n"
                          " number of bytes read:           89827097680489\n")


def _virsh(*args: str) -> str | None:
    """virsh's output against its test driver, or None when virsh is not installed."""
    if shutil.which("virsh") is None:
        return None
    result = subprocess.run(["virsh", "-c", "test:///default", *args], capture_output=True,
                            text=True, timeout=30, check=False)
    return result.stdout if result.returncode == 0 else None


def _shape(text: str) -> list[str]:
    """A layout with the numbers blanked: same labels, same columns."""
    return [re.sub(r"\d+", "N", line) for line in text.splitlines()]


# -- send-key ------------------------------------------------------------------------------

@pytest.mark.parametrize(("codeset", "keys", "qnums"), [
    ("linux", ["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_DELETE"], [0x1D, 0x38, 0xD3]),
    ("linux", ["key_f2", "29", "0x2e"], [0x3C, 0x1D, 0x2E]),  # names any case, numbers
    ("linux", ["KEY_UP", "KEY_RIGHTCTRL", "KEY_LEFTMETA", "KEY_KPENTER"], [0xC8, 0x9D, 0xDB,
                                                                          0x9C]),
    ("LINUX", ["KEY_SYSRQ", "KEY_F12", "KEY_102ND"], [0x54, 0x58, 0x56]),
    ("xt", ["0x1d", "0xe048", "56"], [0x1D, 0xC8, 0x38]),
    ("atset1", ["0xe01d"], [0x9D]),
    ("qnum", ["0x9d", "200"], [0x9D, 0xC8]),
    ("rfb", ["0x1e"], [0x1E]),
    ("usb", ["0x04", "0xe0", "0x52", "0x28", "0x46"], [0x1E, 0x1D, 0xC8, 0x1C, 0x54]),
])
def test_codesets_translate_to_qnum(codeset: str, keys: list[str], qnums: list[int]) -> None:
    assert keycodes.translate(codeset, keys) == qnums


@pytest.mark.parametrize(("codeset", "keys", "message"), [
    ("linux", ["KEY_NOPE"], "unknown key 'KEY_NOPE' in the linux codeset"),
    ("linux", ["300"], "has no PC scancode"),
    ("xt", ["KEY_A"], "the xt codeset takes numbers only"),
    ("xt", ["0x80"], "has no PC scancode"),
    ("usb", ["0x03"], "has no PC scancode"),
    ("win32", ["0x41"], "codeset 'win32' is not supported by virtkit"),
    ("klingon", ["1"], "unknown codeset 'klingon'"),
    ("linux", [], "at least one key"),
    ("linux", [str(n) for n in range(2, 19)], "at most 16 keys"),
    ("linux", ["KEY_A", "30"], "a key is given twice"),
    ("linux", ["-1"], "unknown key '-1'"),
])
def test_bad_keys_are_refused_naming_the_key(codeset: str, keys: list[str],
                                             message: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        keycodes.translate(codeset, keys)


def test_linux_table_matches_the_kernel_header() -> None:
    header = Path("/usr/include/linux/input-event-codes.h")
    if not header.exists():
        pytest.skip("linux-libc-dev is not installed")
    defined = dict(re.findall(r"#define KEY_(\w+)\s+(\d+)\b", header.read_text()))
    assert {name: code for name, (code, _q) in keycodes.LINUX.items()} == \
        {name: int(defined[name]) for name in keycodes.LINUX}


# -- host facts ----------------------------------------------------------------------------

def test_memory_stats(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8042572 kB\nMemFree:   1124316 kB\nMemAvailable: 5 kB\n"
                       "Buffers:    208800 kB\nCached:    3245620 kB\nHugePages_Total: 0\n")
    assert nodefacts.memory_stats(meminfo) == {"total": 8042572, "free": 1124316,
                                               "buffers": 208800, "cached": 3245620}


def test_cpu_stats_are_nanoseconds_like_libvirt(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 200 3000 40 6 7 0 0 0\ncpu0 50 1 100 1500 20 3 4 0 0 0\n"
                    "intr 1 2 3\n")
    import os
    tick = 10**9 // os.sysconf("SC_CLK_TCK")
    assert nodefacts.cpu_stats(None, stat) == {"user": 105 * tick, "system": 213 * tick,
                                               "idle": 3000 * tick, "iowait": 40 * tick}
    assert nodefacts.cpu_stats(0, stat)["user"] == 51 * tick
    with pytest.raises(InvalidSpec, match="the host has no CPU 7"):
        nodefacts.cpu_stats(7, stat)


def test_smbios_skips_unreadable_and_empty(tmp_path: Path) -> None:
    (tmp_path / "bios_vendor").write_text("SeaBIOS\n")
    (tmp_path / "bios_version").write_text("1.16.2-debian-1.16.2-1\n")
    (tmp_path / "sys_vendor").write_text("QEMU\n")
    (tmp_path / "product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    (tmp_path / "product_sku").write_text("\n")
    tables = nodefacts.smbios(tmp_path)
    assert tables == {"bios": [("vendor", "SeaBIOS"), ("version", "1.16.2-debian-1.16.2-1")],
                      "system": [("manufacturer", "QEMU"),
                                 ("product", "Standard PC (Q35 + ICH9, 2009)")]}
    root = ET.fromstring(sysinfo_xml(tables))
    assert root.tag == "sysinfo" and root.get("type") == "smbios"
    assert root.findtext("bios/entry[@name='vendor']") == "SeaBIOS"
    assert root.findtext("system/entry[@name='product']") == "Standard PC (Q35 + ICH9, 2009)"


def test_sysinfo_has_virsh_layout() -> None:
    recorded = _virsh("sysinfo")
    ours = sysinfo_xml({"bios": [("vendor", "LENOVO"), ("version", "G4ETA1WW (2.61 )"),
                                 ("date", "05/07/2014"), ("release", "2.61")]})
    expected = recorded or ("<sysinfo type='smbios'>\n  <bios>\n    <entry name='vendor'>"
                            "LENOVO</entry>\n")
    assert ours.replace('"', "'").splitlines()[:3] == expected.splitlines()[:3]


# -- capabilities documents ----------------------------------------------------------------

FACTS = HostFacts(arch="x86_64", uuid="11111111-2222-3333-4444-555555555555", cpus=2,
                  memory_kib=4096000, emulator="/usr/bin/qemu-system-x86_64",
                  machines=[("pc-q35-7.2", None), ("q35", "pc-q35-7.2"),
                            ("pc-i440fx-7.2", None), ("pc", "pc-i440fx-7.2")],
                  kvm=False, loaders=["/usr/share/OVMF/OVMF_CODE_4M.fd"])


def test_capabilities_lists_kvm_only_when_the_verdict_allows_it() -> None:
    root = ET.fromstring(capabilities_xml(FACTS))
    assert root.findtext("host/uuid") == FACTS.uuid
    assert root.findtext("host/cpu/arch") == "x86_64"
    arch = root.find("guest/arch[@name='x86_64']")
    assert arch is not None and arch.findtext("wordsize") == "64"
    assert arch.findtext("emulator") == "/usr/bin/qemu-system-x86_64"
    assert [(m.text, m.get("canonical")) for m in arch.findall("machine")] == [
        ("pc-q35-7.2", None), ("q35", "pc-q35-7.2"), ("pc-i440fx-7.2", None),
        ("pc", "pc-i440fx-7.2")]
    assert [d.get("type") for d in arch.findall("domain")] == ["qemu"]
    kvm = ET.fromstring(capabilities_xml(HostFacts(**{**FACTS.__dict__, "kvm": True})))
    assert [d.get("type") for d in kvm.findall("guest/arch/domain")] == ["qemu", "kvm"]
    assert len(root.findall("host/topology/cells/cell/cpus/cpu")) == 2


def test_capabilities_has_libvirt_element_names() -> None:
    recorded = _virsh("capabilities")
    if recorded is None:
        pytest.skip("virsh is not installed")
    theirs, ours = ET.fromstring(recorded), ET.fromstring(capabilities_xml(FACTS))
    for path in ("host/cpu/arch", "host/topology/cells/cell/memory", "host/secmodel/model",
                 "guest/os_type", "guest/arch/wordsize", "guest/arch/emulator",
                 "guest/arch/domain"):
        assert theirs.find(path) is not None and ours.find(path) is not None, path


def test_domcapabilities() -> None:
    root = ET.fromstring(domcapabilities_xml(FACTS, "pc-q35-7.2", "qemu"))
    assert [root.findtext(tag) for tag in ("path", "domain", "machine", "arch")] == [
        "/usr/bin/qemu-system-x86_64", "qemu", "pc-q35-7.2", "x86_64"]
    assert root.find("vcpu") is not None and int(root.find("vcpu").get("max", "0")) > 1
    assert [v.text for v in root.findall("os/loader/value")] == [
        "/usr/share/OVMF/OVMF_CODE_4M.fd"]
    assert [v.text for v in root.findall("os/enum[@name='firmware']/value")] == ["bios", "efi"]
    assert [v.text for v in root.findall("devices/disk/enum[@name='diskDevice']/value")] == [
        "disk", "cdrom"]
    assert [v.text for v in root.findall("devices/disk/enum[@name='bus']/value")] == [
        "virtio", "sata", "scsi", "ide"]
    assert [v.text for v in root.findall("devices/graphics/enum/value")] == ["vnc"]
    assert "qxl" in [v.text for v in root.findall("devices/video/enum/value")]
    assert root.find("cpu/mode[@name='host-passthrough']").get("supported") == "no"


# -- the CLI's layouts ---------------------------------------------------------------------

def _args(**flags: bool) -> argparse.Namespace:
    base = dict.fromkeys(("maximum", "active", "live", "config", "current"), False)
    return argparse.Namespace(**{**base, **flags})


COUNTS = {"name": "vm", "config": {"maximum": 2, "current": 2},
          "live": {"maximum": 2, "current": 2}}


def test_vcpucount_table_is_virshs() -> None:
    recorded = _virsh("vcpucount", "test") or VIRSH_VCPUCOUNT + "\n"
    assert "\n".join(vc.vcpucount_lines(COUNTS, _args())) + "\n\n" == recorded
    off = {**COUNTS, "live": None}
    assert vc.vcpucount_lines(off, _args()) == ["maximum      config         2",
                                                "current      config         2"]
    assert vc.vcpucount_lines({**COUNTS, "config": {"maximum": 4, "current": 1}},
                              _args(maximum=True, config=True)) == ["4"]
    assert vc.vcpucount_lines(COUNTS, _args(active=True)) == ["2"]
    with pytest.raises(InvalidSpec, match="not running"):
        vc.vcpucount_lines(off, _args(live=True))


def test_nodecpustats_layout(capsys: pytest.CaptureFixture[str]) -> None:
    class Fake:
        def get(self, path: str) -> dict[str, int]:
            return {"user": 9797400000, "system": 34678723400000, "idle": 87264900000,
                    "iowait": 763600000}

    vc.cmd_nodecpustats(Fake(), argparse.Namespace(cpu=None, percent=False))  # type: ignore[arg-type]
    recorded = _virsh("nodecpustats")
    expected = VIRSH_NODECPUSTATS + "\n"
    assert capsys.readouterr().out == expected
    if recorded is not None:
        assert _shape(recorded)[0][:15] == _shape(expected)[0][:15]
        assert {len(line) for line in recorded.splitlines() if line} == {36}


def test_cpu_percent() -> None:
    first = {"user": 0, "system": 0, "idle": 0, "iowait": 0}
    second = {"user": 20, "system": 10, "idle": 60, "iowait": 10}
    assert vc.cpu_percent(first, second) == {"usage": 30.0, "user": 20.0, "system": 10.0,
                                             "idle": 60.0, "iowait": 10.0}
    assert f"{'usage:':<15} {30.0:5.1f}%" == "usage:           30.0%"


def test_domblkinfo_layout(capsys: pytest.CaptureFixture[str]) -> None:
    disk = {"target": "vda", "path": "/i", "capacity": 1099506450432,
            "allocation": 1099511627776, "physical": 1099511627776}

    class Fake:
        def get(self, path: str) -> dict[str, object]:
            return {"name": "test", "disks": [disk]}

        def domain_path(self, ref: str, suffix: str = "") -> str:
            return f"/v1/domains/{ref}{suffix}"

    for human, expected in ((False, VIRSH_DOMBLKINFO), (True, VIRSH_DOMBLKINFO_HUMAN)):
        vc.cmd_domblkinfo(Fake(), argparse.Namespace(  # type: ignore[arg-type]
            domain="test", device="vda", all=False, human=human, json=False))
        assert capsys.readouterr().out == expected + "\n"
        recorded = _virsh("domblkinfo", "test", "vda", *(["--human"] if human else []))
        if recorded is not None:
            assert recorded == expected + "\n"


@pytest.mark.parametrize(("size", "text"), [(0, "0.000 B"), (1023, "1023.000 B"),
                                            (1024, "1.000 KiB"), (32 * 2**20, "32.000 MiB"),
                                            (2**40, "1.000 TiB")])
def test_pretty_capacity(size: int, text: str) -> None:
    assert vc.pretty_capacity(size) == text


def test_domifstat_layout() -> None:
    nic = {"name": "testnet0", "mac": "aa:bb:cc:dd:ee:ff", "rx_bytes": 179654195580305,
           "rx_packets": 17965419558030, "rx_errors": 1796541955, "rx_dropped": 898270977,
           "tx_bytes": 89827097790152, "tx_packets": 16332199598209, "tx_errors": 598847318,
           "tx_dropped": 449135488}
    lines = vc.domifstat_lines([nic], "testnet0")
    assert "\n".join(lines) + "\n" == VIRSH_DOMIFSTAT
    assert vc.domifstat_lines([nic], "aa:bb:cc:dd:ee:ff") == lines
    recorded = _virsh("domifstat", "test", "testnet0")
    if recorded is not None:
        assert _shape(recorded) == [*_shape(VIRSH_DOMIFSTAT), ""]
    with pytest.raises(NotFound, match="'vnet9' is not a known interface"):
        vc.domifstat_lines([nic], "vnet9")
    with pytest.raises(InvalidSpec, match="user-mode NIC"):
        vc.domifstat_lines([{"name": "nic0", "mac": "m"}], "nic0")


def test_domblkstat_layout() -> None:
    disks = [{"name": "vda", "path": "/a", "rd_reqs": 3, "rd_bytes": 4096, "wr_reqs": 1,
              "wr_bytes": 512, "fl_reqs": 1, "rd_times": 10, "wr_times": 20, "fl_times": 5},
             {"name": "vdb", "path": "/b", "rd_reqs": 1, "rd_bytes": 512, "wr_reqs": 0,
              "wr_bytes": 0, "fl_reqs": 0, "rd_times": 1, "wr_times": 0, "fl_times": 0}]
    assert vc.domblkstat_lines(disks, "vda", False)[:4] == [
        "vda rd_req 3", "vda rd_bytes 4096", "vda wr_req 1", "vda wr_bytes 512"]
    assert vc.domblkstat_lines(disks, None, False)[0] == " rd_req 4"  # all disks, summed
    human = vc.domblkstat_lines(disks, "vda", True)
    assert _shape("\n".join(human[:3])) == _shape(VIRSH_DOMBLKSTAT_HUMAN)
    recorded = _virsh("domblkstat", "test", "vda", "--human")
    if recorded is not None:
        assert _shape(recorded)[:3] == _shape("\n".join(human[:3]))


def test_dommemstat_names_follow_libvirt() -> None:
    balloon = {"current": 2097152, "maximum": 2097152, "rss": 1048576, "unused": 10,
               "available": 20, "usable_total": 30, "swap_in": 0, "last_update": 5}
    assert vc.dommemstat_lines(balloon) == ["actual 2097152", "swap_in 0", "unused 10",
                                            "available 30", "usable 20", "last_update 5",
                                            "rss 1048576"]
    recorded = _virsh("dommemstat", "test")
    if recorded is not None:
        names = [line.split()[0] for line in recorded.splitlines() if line]
        ours = [virsh for virsh, _ours in vc.MEMSTAT_FIELDS]
        assert [name for name in names if name in ours] == ours


def test_screenshot_name_and_type() -> None:
    import time

    now = time.mktime((2026, 12, 6, 9, 5, 7, 0, 0, -1))
    assert vc.default_screenshot_name("vm", "image/png", now) == "vm-2026-12-06-09:05:07.png"
    assert vc.default_screenshot_name("vm", "image/x-portable-pixmap", now).endswith(".ppm")
    assert vc.image_type(b"\x89PNG\r\n\x1a\n...") == "image/png"
    assert vc.image_type(b"P6\n640 480\n255\n") == "image/x-portable-pixmap"
    with pytest.raises(InvalidSpec):
        vc.image_type(b"GIF89a")


def test_desc_words_take_flags_anywhere() -> None:
    args = argparse.Namespace(words=["--title", "new", "--live", "title"], title=False,
                              edit=False, new_desc=None)
    vc.desc_words(args)
    assert (args.title, args.words) == (True, ["new", "title"])
    args = argparse.Namespace(words=["--new-desc", "a b"], title=False, edit=False,
                              new_desc=None)
    vc.desc_words(args)
    assert (args.new_desc, args.words) == ("a b", [])


def test_desc_text_is_shown_without_terminal_controls() -> None:
    assert vc.safe("web\n\x1b[2Jserver\t1") == "web\n\\x1b[2Jserver\t1"


def test_connection_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIRTKIT_DEFAULT_URI", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert vc.connection_uri("qemu:///system", None) == "qemu:///system"
    assert vc.connection_uri(None, Path("/var/lib/virtkit")) == "virtkit:///system"
    assert vc.connection_uri(None, tmp_path / "virtkit") == "virtkit:///session"
    assert vc.connection_uri(None, tmp_path / "other") == "virtkit:///"
    monkeypatch.setenv("VIRTKIT_DEFAULT_URI", "virtkit+tls://h")
    assert vc.connection_uri(None, None) == "virtkit+tls://h"
