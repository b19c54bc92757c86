"""libvirt domain XML through the real CLI and daemon: define, boot, dumpxml, define again."""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from tests.real.conftest import DaemonHandle

pytestmark = pytest.mark.qemu


def _libvirt_xml(daemon: DaemonHandle, name: str) -> str:
    """The tiny guest as a virt-manager user would write it, sound card and TPM included."""
    guest = daemon.guest
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>{escape(str(guest.kernel))}</kernel>
    <initrd>{escape(str(guest.initrd))}</initrd>
    <cmdline>{escape(guest.cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='maximum'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' index='0' model='pcie-root'/>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <input type='mouse' bus='ps2'/>
    <sound model='ich9'/>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""


def test_define_from_xml_boot_and_define_the_dumpxml_again(daemon: DaemonHandle,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "guest.xml"
    path.write_text(_libvirt_xml(daemon, "fromxml"))

    refused = daemon.cli("define", str(path), check=False)
    assert refused.returncode == 1
    assert "devices/tpm (TPM devices are not supported)" in refused.stderr
    assert "pass --force to drop them with a warning" in refused.stderr
    assert daemon.cli("list", "--all", "--name").stdout == "\n"

    forced = daemon.cli("define", str(path), "--force")
    assert "Domain 'fromxml' defined" in forced.stdout
    assert forced.stderr.strip() == "warning: dropped devices/tpm: TPM devices are not " \
                                    "supported"
    daemon.cli("start", "fromxml")
    daemon.wait_booted("fromxml")

    dumped = daemon.cli("dumpxml", "fromxml").stdout
    assert dumped.startswith("<domain type='qemu'>\n  <name>fromxml</name>\n")
    assert f"<kernel>{escape(str(daemon.guest.kernel))}</kernel>" in dumped
    assert "<channel type='unix'>" in dumped and "<sound model='ich9'/>" in dumped
    assert "tpm" not in dumped

    # a copy under another name, as libvirt users make one: new name, no uuid
    copy = re.sub(r"\s*<uuid>.*</uuid>", "", dumped).replace("<name>fromxml</name>",
                                                                "<name>fromxml2</name>")
    (tmp_path / "copy.xml").write_text(copy)
    again = daemon.cli("define", str(tmp_path / "copy.xml"))
    assert "Domain 'fromxml2' defined" in again.stdout and again.stderr == ""
    first, second = daemon.info("fromxml"), daemon.info("fromxml2")
    assert second["uuid"] != first["uuid"] and first["state"] == "running"
    strip = {"name", "uuid"}
    assert {k: v for k, v in second["spec"].items() if k not in strip} == \
        {k: v for k, v in first["spec"].items() if k not in strip}
    redumped = daemon.cli("dumpxml", "fromxml2").stdout
    assert redumped.replace("fromxml2", "fromxml").replace(second["uuid"], first["uuid"]) \
        == dumped

    missing = daemon.cli("dumpxml", "nosuch", check=False)
    assert missing.returncode == 1 and "failed to get domain 'nosuch'" in missing.stderr


def test_dumpxml_says_what_the_domain_runs_under(daemon: DaemonHandle) -> None:
    """libvirt's domain type is 'qemu' for a domain running under TCG: a definition that
    lets virtkit choose (accelerator auto) says 'kvm' while shut off, and what it got
    while it runs."""
    daemon.define("auto")
    assert daemon.cli("dumpxml", "auto").stdout.startswith("<domain type='kvm'>\n")
    daemon.cli("start", "auto")
    running = daemon.info("auto")["accelerator"]
    expected = "qemu" if running == "tcg" else "kvm"
    assert daemon.cli("dumpxml", "auto").stdout.startswith(f"<domain type='{expected}'>\n")
