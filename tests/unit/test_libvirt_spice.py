"""virt-manager's SPICE display imported as VNC, its SPICE plumbing left out, a warning
each (formats/libvirt_spice.py); the whole virt-manager 4 document is a golden file
(tests/data/xml/vm-virtmanager4-q35-debian.xml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_xml import domain_from_xml
from virtkit.model.load import load_domain

DATA = Path(__file__).parent.parent / "data" / "xml"


def _domain(devices: str) -> str:
    return ("<domain type='kvm'><name>t</name><memory>262144</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
            f"<devices>{devices}</devices></domain>")


def test_virt_manager_4_default_vm_imports_without_force() -> None:
    spec, warnings = domain_from_xml((DATA / "vm-virtmanager4-q35-debian.xml").read_text())
    assert spec["graphics"] == {"type": "vnc"}
    assert spec["video"] == "qxl"
    assert spec["sound"] == [{"model": "ich9"}]
    assert spec["guest_agent"] is True
    assert [w.split(":")[0] for w in warnings] == [
        "left out devices/channel[2]", "devices/graphics", "left out devices/audio",
        "left out devices/redirdev[1]", "left out devices/redirdev[2]"]
    assert "the SPICE display became VNC" in warnings[1]
    load_domain(spec)  # what define validates next


def test_spice_listen_port_password_and_keymap_carry_over() -> None:
    spec, warnings = domain_from_xml(_domain(
        "<graphics type='spice' port='5905' autoport='no' passwd='pw' keymap='de' "
        "tlsPort='5906' defaultMode='any'><listen type='address' address='0.0.0.0'/>"
        "<image compression='off'/><gl enable='no'/><streaming mode='filter'/></graphics>"))
    assert spec["graphics"] == {"type": "vnc", "listen": "0.0.0.0", "port": 5905,
                                "password": "pw", "keymap": "de"}
    assert warnings == ["devices/graphics: the SPICE display became VNC (virtkit's display); "
                        "its SPICE-only settings are left out (defaultMode, gl, image, "
                        "streaming, tlsPort): connect with a VNC viewer (virtkit vncdisplay) "
                        "or the web console"]


def test_spice_with_opengl_and_no_listener_becomes_local_vnc() -> None:
    spec, warnings = domain_from_xml(_domain(
        "<graphics type='spice'><listen type='none'/><gl enable='yes' "
        "rendernode='/dev/dri/renderD128'/></graphics>"))
    assert spec["graphics"] == {"type": "vnc"}  # VNC's default: 127.0.0.1, a free port
    assert "SPICE's OpenGL (virgl) is not used" in warnings[0]


def test_an_unknown_spice_attribute_is_still_refused_where_it_is() -> None:
    with pytest.raises(InvalidSpec) as info:
        domain_from_xml(_domain("<graphics type='spice' bogus='1'/>"))
    assert info.value.details["problems"] == [
        "devices/graphics@bogus='1': not supported by virtkit"]


def test_spice_plumbing_is_left_out_with_a_warning_each() -> None:
    spec, warnings = domain_from_xml(_domain(
        "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>"
        "<redirdev bus='usb' type='spicevmc'/><audio id='1' type='spice'/>"))
    assert "graphics" not in spec
    assert warnings == [
        "left out devices/channel: the SPICE agent channel (clipboard, resolution), "
        "meaningless without SPICE",
        "left out devices/redirdev: USB redirection over SPICE, meaningless without SPICE",
        "left out devices/audio: sound over SPICE, meaningless without SPICE"]
    # USB redirection that is not SPICE's is still refused
    with pytest.raises(InvalidSpec, match="USB redirection is not supported"):
        domain_from_xml(_domain("<redirdev bus='usb' type='tcp'/>"))
