"""virsh's everyday commands against a real virtkitd and a running tiny guest:
screenshot, send-key, domid/domname/domuuid, vcpucount, domblkinfo, desc,
domblkstat/dommemstat, the node and host documents, vol-create-as
--backing-vol-format.  Output layouts are virsh 9's (recorded with
``virsh -c test:///default``)."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for

pytestmark = pytest.mark.qemu

MIB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonHandle, tmp_path_factory: pytest.TempPathFactory
          ) -> DaemonHandle:
    """One running tiny guest 'vx' with a 32 MiB raw disk (and a title)."""
    disk = tmp_path_factory.mktemp("vx") / "vx.raw"
    with open(disk, "wb") as image:
        image.truncate(32 * MIB)
    module_daemon.define("vx", memory=128, vcpus={"current": 1, "max": 2},
                         title="tiny", graphics={"type": "vnc"},
                         disks=[{"path": str(disk), "format": "raw"}])
    module_daemon.client.post(module_daemon.client.domain_path("vx", "/start"))
    module_daemon.wait_booted("vx")
    return module_daemon


def test_screenshot_is_written_by_the_cli(guest: DaemonHandle, tmp_path: Path) -> None:
    target = tmp_path / "shot.png"
    out = guest.cli("screenshot", "vx", str(target)).stdout
    assert out == f"Screenshot saved to {target}, with type of image/png\n"
    assert target.read_bytes().startswith(PNG_MAGIC)
    # virsh's default name: DOMAIN-YYYY-MM-DD-HH:MM:SS.png in the current folder
    result = subprocess.run(guest.cli_argv("screenshot", "vx"), env=guest.env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    name = re.fullmatch(r"Screenshot saved to (vx-\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d\.png), "
                        r"with type of image/png\n", result.stdout)
    assert name, result.stdout
    assert (tmp_path / name.group(1)).read_bytes().startswith(PNG_MAGIC)
    guest.cli("screenshot", "vx", str(tmp_path / "s0.png"), "--screen", "0")
    assert (tmp_path / "s0.png").read_bytes().startswith(PNG_MAGIC)
    bad = guest.cli("screenshot", "vx", str(tmp_path / "x.png"), "--screen", "3",
                    check=False)
    assert bad.returncode == 1 and "head" in bad.stderr.lower(), bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_screenshot_of_a_headless_domain_says_why(guest: DaemonHandle, tmp_path: Path
                                                   ) -> None:
    guest.define("vx-headless")
    try:
        guest.client.post(guest.client.domain_path("vx-headless", "/start"))
        bad = guest.cli("screenshot", "vx-headless", str(tmp_path / "h.png"), check=False)
        assert bad.returncode == 1
        assert "has no display to take a screenshot of (graphics: none)" in bad.stderr
    finally:
        guest.cli("destroy", "vx-headless", check=False)
        guest.cli("undefine", "vx-headless")


def test_screenshot_is_not_served_on_the_read_only_socket(guest: DaemonHandle,
                                                          tmp_path: Path) -> None:
    result = guest.cli("-r", "screenshot", "vx", str(tmp_path / "ro.png"), check=False)
    assert result.returncode == 1 and "read-only" in result.stderr
    assert not (tmp_path / "ro.png").exists()


def test_send_key_reaches_the_guest_kernel(guest: DaemonHandle) -> None:
    """Alt+SysRq+H on the PS/2 keyboard: the guest kernel prints its SysRq help on the
    serial console."""
    before = guest.console_log("vx").count("HELP")
    guest.cli("send-key", "vx", "KEY_LEFTALT", "KEY_SYSRQ", "KEY_H")
    wait_for(lambda: guest.console_log("vx").count("HELP") > before, 30,
             "the guest's SysRq help after send-key")
    # the same keys as numbers in the usb codeset (left alt 0xe2, sysrq 0x46, h 0x0b)
    guest.cli("send-key", "vx", "--codeset", "usb", "--holdtime", "50", "0xe2", "0x46", "0x0b")
    wait_for(lambda: guest.console_log("vx").count("HELP") > before + 1, 30,
             "the SysRq help after a usb-codeset send-key")
    bad = guest.cli("send-key", "vx", "KEY_NOSUCH", check=False)
    assert bad.returncode == 1 and "unknown key 'KEY_NOSUCH'" in bad.stderr


def test_ids_names_uuids(guest: DaemonHandle) -> None:
    info = guest.info("vx")
    listed = guest.cli("list").stdout
    assert re.search(rf"^ {info['id']}\s+vx\s+running", listed, re.M), listed
    assert guest.cli("domid", "vx").stdout == f"{info['id']}\n"  # virsh's small Id
    assert 0 < info["id"] < 1000
    assert guest.cli("domname", str(info["id"])).stdout == "vx\n"
    assert guest.cli("domname", str(info["pid"])).stdout == "vx\n"  # the pid still works
    assert guest.cli("domname", info["uuid"]).stdout == "vx\n"
    assert guest.cli("domuuid", "vx").stdout == f"{info['uuid']}\n"
    guest.define("vx-off")
    try:
        assert guest.cli("domid", "vx-off").stdout == "-\n"
        assert guest.cli("vcpucount", "vx-off").stdout == (
            "maximum      config         1\ncurrent      config         1\n\n")
    finally:
        guest.cli("undefine", "vx-off")


def test_vcpucount_table_and_single_values(guest: DaemonHandle) -> None:
    assert guest.cli("vcpucount", "vx").stdout == (
        "maximum      config         2\n"
        "maximum      live           2\n"
        "current      config         1\n"
        "current      live           1\n\n")
    assert guest.cli("vcpucount", "vx", "--maximum", "--live").stdout == "2\n\n"
    assert guest.cli("vcpucount", "vx", "--active").stdout == "1\n\n"


def test_domblkinfo_and_domblkstat(guest: DaemonHandle) -> None:
    out = guest.cli("domblkinfo", "vx", "vda").stdout
    assert out.splitlines()[0] == f"Capacity:       {32 * MIB}"
    assert [line.split(":")[0] for line in out.splitlines() if line] == [
        "Capacity", "Allocation", "Physical"]
    human = guest.cli("domblkinfo", "vx", "vda", "--human").stdout
    assert human.splitlines()[0] == "Capacity:       32.000 MiB"
    table = guest.cli("domblkinfo", "vx", "--all").stdout.splitlines()
    assert table[0].split() == ["Target", "Capacity", "Allocation", "Physical"]
    assert table[2].split()[:2] == ["vda", str(32 * MIB)]
    guest.console_run("vx", "dd if=/dev/vda of=/dev/null bs=1M count=2 iflag=direct "
                      "2>/dev/null; echo RD$((40+1))", "RD41", timeout=60)
    stat = dict(line.split(" ")[1:] for line in
                guest.cli("domblkstat", "vx", "vda").stdout.splitlines() if line)
    assert list(stat)[:4] == ["rd_req", "rd_bytes", "wr_req", "wr_bytes"]
    assert int(stat["rd_bytes"]) >= 2 * MIB
    assert "number of bytes read:" in guest.cli("domblkstat", "vx", "vda", "--human").stdout


def test_dommemstat(guest: DaemonHandle) -> None:
    lines = guest.cli("dommemstat", "vx").stdout.split("\n")
    assert lines[0] == f"actual {128 * 1024}"
    assert any(line.startswith("rss ") for line in lines)


def test_desc_and_title(guest: DaemonHandle) -> None:
    assert guest.cli("desc", "vx", "--title").stdout == "tiny\n"
    assert guest.cli("desc", "vx").stdout == "No description for domain: vx\n"
    assert guest.cli("desc", "vx", "--new-desc", "web server\nsecond line").stdout == \
        "Domain description updated successfully\n"
    assert guest.cli("desc", "vx").stdout == "web server\nsecond line\n"
    assert guest.info("vx")["description"] == "web server\nsecond line"
    assert guest.cli("desc", "vx", "--title", "--live", "new", "title").stdout == \
        "Domain title updated successfully\n"
    assert guest.info("vx")["title"] == "new title"
    assert "<title>new title</title>" in guest.cli("dumpxml", "vx").stdout


def test_node_stats(guest: DaemonHandle) -> None:
    mem = guest.cli("nodememstats").stdout.splitlines()
    assert [line.split(":")[0] for line in mem if line] == ["total  ", "free   ", "buffers",
                                                           "cached "]
    total = int(mem[0].split()[2])
    with open("/proc/meminfo") as meminfo:
        assert f"{total} kB" in meminfo.readline()
    assert re.fullmatch(r"total  : +\d+ KiB", mem[0]) and len(mem[0]) == 25
    cpu = guest.cli("nodecpustats").stdout.splitlines()
    assert [line[:15].strip() for line in cpu if line] == ["user:", "system:", "idle:",
                                                          "iowait:"]
    assert all(len(line) == 36 for line in cpu if line)
    percent = guest.cli("nodecpustats", "--percent", "--cpu", "0").stdout.splitlines()
    assert [line.split()[0] for line in percent if line] == ["usage:", "user:", "system:",
                                                             "idle:", "iowait:"]
    assert all(re.fullmatch(r"\S+: +\d+\.\d%", line) for line in percent if line)


def test_host_identity_and_version(guest: DaemonHandle) -> None:
    assert guest.cli("hostname").stdout == f"{os.uname().nodename}\n"
    assert guest.cli("uri").stdout == "virtkit:///\n"
    assert guest.cli("-c", "qemu:///session", "uri", check=False).stdout in (
        "qemu:///session\n", "")
    version = guest.cli("version").stdout.splitlines()
    assert version[0].startswith("Compiled against library: virtkit ")
    assert version[2].startswith("Using API: QEMU ")
    assert re.fullmatch(r"Running hypervisor: QEMU \d+\.\d+\.\d+", version[3])


def test_sysinfo_capabilities_domcapabilities(guest: DaemonHandle) -> None:
    sysinfo = ET.fromstring(guest.cli("sysinfo").stdout)
    assert sysinfo.tag == "sysinfo" and sysinfo.get("type") == "smbios"
    vendor = Path("/sys/class/dmi/id/sys_vendor")
    if vendor.exists() and vendor.read_text().strip():
        assert sysinfo.findtext("system/entry[@name='manufacturer']") == \
            vendor.read_text().strip()
    caps = ET.fromstring(guest.cli("capabilities").stdout)
    assert caps.findtext("host/cpu/arch") == "x86_64"
    arch = caps.find("guest/arch[@name='x86_64']")
    assert arch is not None and caps.findtext("guest/os_type") == "hvm"
    machines = [m.text for m in arch.findall("machine")]
    assert "q35" in machines and any(m and m.startswith("pc-q35-") for m in machines)
    accel = guest.client.get("/v1/host")["accelerator"]
    kinds = [d.get("type") for d in arch.findall("domain")]
    assert kinds == (["qemu", "kvm"] if accel == "kvm" else ["qemu"])
    dom = ET.fromstring(guest.cli("domcapabilities").stdout)
    assert dom.tag == "domainCapabilities"
    assert dom.findtext("domain") == ("kvm" if accel == "kvm" else "qemu")
    assert (dom.findtext("machine") or "").startswith("pc-q35-")
    assert dom.findtext("arch") == "x86_64"
    assert [v.text for v in dom.findall("devices/graphics/enum/value")] == ["vnc"]
    assert "virtio" in [v.text for v in dom.findall("devices/disk/enum[@name='bus']/value")]
    if accel != "kvm":
        bad = guest.cli("domcapabilities", "--virttype", "kvm", check=False)
        assert bad.returncode == 1 and "KVM cannot run guests natively" in bad.stderr


def test_vol_create_as_backing_vol_format(guest: DaemonHandle) -> None:
    guest.cli("vol-create-as", "default", "vxbase.qcow2", "16M")
    out = guest.cli("vol-create-as", "default", "vxover.qcow2", "16M", "--backing-vol",
                    "vxbase.qcow2", "--backing-vol-format", "qcow2").stdout
    assert out == "Vol vxover.qcow2 created\n"
    bad = guest.cli("vol-create-as", "default", "vxover2.qcow2", "16M", "--backing-vol",
                    "vxbase.qcow2", "--backing-vol-format", "raw", check=False)
    assert bad.returncode == 1 and "volume 'vxbase.qcow2' is qcow2" in bad.stderr
    listed = guest.cli("vol-list", "default").stdout
    assert "vxover2.qcow2" not in listed


def test_virt_manager_spice_vm_defines_with_a_vnc_display(guest: DaemonHandle,
                                                          tmp_path: Path) -> None:
    """virt-manager 4's default q35 VM (SPICE, qxl, spicevmc, SPICE audio) defines
    without --force; `define` prints a warning per change; the VM starts with a VNC
    display a screenshot can be taken of."""
    source = Path(__file__).parent.parent / "data" / "xml" / "vm-virtmanager4-q35-debian.xml"
    root = ET.fromstring(source.read_text())
    disk, iso = tmp_path / "debian12.qcow2", tmp_path / "netinst.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    iso.write_bytes(b"\0" * 2 * MIB)
    for element, path in zip(root.findall("devices/disk/source"), (disk, iso), strict=True):
        element.set("file", str(path))
    devices = root.find("devices")
    assert devices is not None
    for nic in devices.findall("interface"):  # this test daemon has no 'default' network
        devices.remove(nic)
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        assert element is not None
        element.text = str(256 * 1024)
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"  # kept: runs as 'max' on TCG
    xml_file = tmp_path / "debian12.xml"
    xml_file.write_text(ET.tostring(root, encoding="unicode"))
    result = guest.cli("define", str(xml_file))
    assert "warning: devices/graphics: the SPICE display became VNC" in result.stderr
    assert result.stderr.count("warning: left out devices/") == 4
    try:
        dumped = ET.fromstring(guest.cli("dumpxml", "debian12").stdout)
        assert [g.get("type") for g in dumped.findall("devices/graphics")] == ["vnc"]
        guest.cli("start", "debian12")
        assert re.fullmatch(r"127\.0\.0\.1:\d+\n", guest.cli("vncdisplay", "debian12").stdout)
        out = guest.cli("screenshot", "debian12", str(tmp_path / "d.png")).stdout
        assert out.endswith("with type of image/png\n")
    finally:
        guest.cli("destroy", "debian12", check=False)
        guest.cli("undefine", "debian12")


def test_metadata_set_show_remove(guest: DaemonHandle) -> None:
    uri = "http://app1.org/app1/"
    bad = guest.cli("metadata", "vx", uri, "--set", "<foo/>", check=False)
    assert bad.returncode == 1 and "namespace key is required" in bad.stderr
    assert guest.cli("metadata", "vx", uri, "--key", "app1", "--set",
                     '<foo a="1"><bar>x</bar></foo>').stdout == "Metadata modified\n\n"
    assert guest.cli("metadata", "vx", uri).stdout == (
        '<foo a="1">\n  <bar>x</bar>\n</foo>\n\n')  # as virsh shows it
    dumped = guest.cli("dumpxml", "vx").stdout
    assert '<app1:foo xmlns:app1="http://app1.org/app1/" a="1">' in dumped
    assert guest.cli("metadata", "vx", uri, "--remove").stdout == "Metadata removed\n\n"
    missing = guest.cli("metadata", "vx", uri, check=False)
    assert missing.returncode == 1 and "metadata not found" in missing.stderr
