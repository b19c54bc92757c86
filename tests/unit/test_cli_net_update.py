"""net-update's virsh form: the XML argument (text, or a file holding it) as an entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.cli.networks import entry_from_xml
from virtkit.errors import InvalidSpec


def test_a_dhcp_host_as_virsh_writes_it(tmp_path: Path) -> None:
    xml = "<host mac='52:54:00:00:00:01' name='web' ip='192.168.122.50'/>"
    expected = {"mac": "52:54:00:00:00:01", "ip": "192.168.122.50", "name": "web"}
    assert entry_from_xml("ip-dhcp-host", xml) == expected
    saved = tmp_path / "host.xml"
    saved.write_text(xml)
    assert entry_from_xml("ip-dhcp-host", str(saved)) == expected


def test_a_dns_host_with_its_names() -> None:
    xml = "<host ip='192.168.122.2'><hostname>a</hostname><hostname>b</hostname></host>"
    assert entry_from_xml("dns-host", xml) == {"ip": "192.168.122.2", "hostnames": ["a", "b"]}


@pytest.mark.parametrize(("xml", "says"), [
    ("<host mac='x'", "not well-formed"), ("<range start='a'/>", "expected a <host>"),
    ("<host name='web'/>", "neither ip nor mac")])
def test_bad_xml_is_refused_naming_the_problem(xml: str, says: str) -> None:
    with pytest.raises(InvalidSpec, match=says):
        entry_from_xml("ip-dhcp-host", xml)
