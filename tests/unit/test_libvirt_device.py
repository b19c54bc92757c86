"""virsh attach-device XML: one device element -> what virtkit attaches (pure)."""

from __future__ import annotations

import pytest

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_device import device_from_xml


def test_disk_interface_memory_and_hostdev_are_read() -> None:
    disk = device_from_xml("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                           "<source file='/var/lib/a.qcow2'/><target dev='sdb' bus='scsi'/>"
                           "</disk>")
    assert disk.kind == "disk"
    assert disk.spec["path"] == "/var/lib/a.qcow2" and disk.spec["format"] == "qcow2"
    assert disk.spec["target"] == "sdb" and disk.spec["bus"] == "scsi"
    nic = device_from_xml("<interface type='bridge'><mac address='52:54:00:aa:bb:cc'/>"
                          "<source bridge='br0'/><model type='e1000'/></interface>")
    assert nic.kind == "interface"
    assert nic.spec == {"type": "bridge", "bridge": "br0", "mac": "52:54:00:aa:bb:cc",
                        "model": "e1000"}
    memory = device_from_xml("<memory model='dimm'><target><size unit='GiB'>1</size>"
                             "</target></memory>")
    assert memory.spec == {"size_mib": 1024}
    hostdev = "<hostdev mode='subsystem' type='pci'/>"
    assert device_from_xml(hostdev).spec == {"xml": hostdev}


@pytest.mark.parametrize(("xml", "message"), [
    ("<video><model type='vga'/></video>", "takes <disk>"),
    ("<disk type='file'", "not well-formed"),
    ("<!DOCTYPE x><disk/>", "DOCTYPE"),
    ("<memory model='nvdimm'><target><size>1</size></target></memory>", "not supported"),
    ("<memory model='dimm'/>", "needs <target>"),
    ("<disk type='network' device='disk'><source protocol='rbd' name='p/i'/>"
     "<target dev='vdb'/></disk>", "rbd"),
])
def test_what_cannot_be_attached_is_refused_clearly(xml: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        device_from_xml(xml)
    assert message in str(caught.value)
