"""libvirt network and storage pool XML in and out (net-dumpxml/net-define, pool-*).

Golden files under tests/data/xml: ``net-*.xml`` / ``pool-*.xml`` (real virsh output from
``virtinst/generate-virsh.sh``, libvirt's own default network, and hand-written refusals)
with ``<case>.expected.yaml``; ``export-net-<case>.xml`` / ``export-pool-<case>.xml`` for
the round-trip specs below.  ``--regenerate`` rewrites them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import FORCE_FIX
from virtkit.formats.libvirt_network_xml import network_from_xml, network_to_xml
from virtkit.formats.libvirt_pool_xml import pool_from_xml, pool_to_xml
from virtkit.model.network import Network, dump_network, load_network
from virtkit.model.pool import Pool

DATA = Path(__file__).parent.parent / "data" / "xml"
NET_CASES = sorted(p.stem for p in DATA.glob("net-*.xml"))
POOL_CASES = sorted(p.stem for p in DATA.glob("pool-*.xml"))
UUID = "22222222-3333-4444-5555-000000000001"
Reader = Callable[..., tuple[dict[str, Any], list[str]]]


def _read(reader: Reader, text: str) -> dict[str, Any]:
    refused: list[str] = []
    try:
        spec, warnings = reader(text)
    except InvalidSpec as exc:
        assert exc.fix == FORCE_FIX
        refused = [problem.split(": ", 1)[0] for problem in exc.details["problems"]]
        assert all(location in exc.message for location in refused)
        spec, warnings = reader(text, force=True)
    return {"refused": refused, "warnings": warnings, "spec": spec}


def _golden(case: str, actual: dict[str, Any], regenerate: bool) -> None:
    golden = DATA / f"{case}.expected.yaml"
    if regenerate or not golden.exists():
        golden.write_text(yaml.safe_dump(actual, sort_keys=False, width=100))
    assert actual == yaml.safe_load(golden.read_text())


@pytest.mark.parametrize("case", NET_CASES)
def test_network_import_matches_golden(case: str, regenerate: bool) -> None:
    actual = _read(network_from_xml, (DATA / f"{case}.xml").read_text())
    _golden(case, actual, regenerate)
    load_network(actual["spec"])


@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_import_matches_golden(case: str, regenerate: bool) -> None:
    actual = _read(pool_from_xml, (DATA / f"{case}.xml").read_text())
    _golden(case, actual, regenerate)
    Pool.model_validate(actual["spec"])


NETWORKS: dict[str, dict[str, Any]] = {
    "default": {"name": "default", "uuid": UUID, "bridge": "virbr0",
                "subnet": "192.168.122.0/24"},
    "full": {"name": "full", "uuid": UUID, "mode": "nat", "bridge": "vkbr3", "mtu": 9000,
             "subnet": "10.20.0.0/16", "gateway": "10.20.255.254", "domain": "lab",
             "dhcp": {"start": "10.20.1.10", "end": "10.20.1.200", "lease_time": 600,
                      "ping_check": True,
                      "hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.20.0.5", "name": "db"},
                                {"mac": "52:54:00:00:00:02", "ip": "10.20.0.6"}]},
             "dns_hosts": [{"ip": "10.20.0.5", "hostnames": ["db", "db.lab"]}],
             "forwards": [{"proto": "udp", "host_port": 5353, "guest_ip": "10.20.0.5",
                           "guest_port": 53},
                          {"host_address": "192.0.2.7", "host_port": 8080,
                           "guest_ip": "10.20.0.6"}],
             "autostart": True},
    "isolated": {"name": "iso-net", "uuid": UUID, "mode": "isolated", "bridge": "vkbr1",
                 "subnet": "172.16.5.0/24", "dhcp": None},
    "bridge": {"name": "lan", "uuid": UUID, "mode": "bridge", "bridge": "br0"},
}
POOLS: dict[str, dict[str, Any]] = {
    "dir": {"name": "default", "uuid": UUID, "target": "/var/lib/virtkit/images"},
    "logical": {"name": "fast", "uuid": UUID, "type": "logical", "target": "vg_fast",
                "source_devices": ["/dev/sdb", "/dev/sdc"], "autostart": True},
    "iso": {"name": "isos", "uuid": UUID, "type": "iso", "target": "/srv/iso"},
    "netfs": {"name": "nas", "uuid": UUID, "type": "netfs", "source_host": "nas1",
              "source_path": "/export/vms"},
}


def _canonical_network(network: Network) -> dict[str, Any]:
    """Stored form with derived values filled in (the gateway, the DHCP range)."""
    data = dump_network(network)
    data["gateway"] = str(network.gateway_ip) if network.gateway_ip else None
    if data["dhcp"] is not None and network.dhcp_range is not None:
        data["dhcp"].update(start=str(network.dhcp_range[0]), end=str(network.dhcp_range[1]))
    return data


@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_network_round_trip_and_export_golden(case: str, regenerate: bool) -> None:
    network = load_network(NETWORKS[case])
    text = network_to_xml(network)
    golden = DATA / f"export-net-{case}.xml"
    if regenerate or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text()
    spec, warnings = network_from_xml(text)
    back = load_network(spec)
    assert warnings == []
    assert _canonical_network(back) == _canonical_network(network)
    assert network_to_xml(back) == text


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pool_round_trip_and_export_golden(case: str, regenerate: bool) -> None:
    pool = Pool.model_validate(POOLS[case])
    text = pool_to_xml(pool)
    golden = DATA / f"export-pool-{case}.xml"
    if regenerate or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text()
    spec, warnings = pool_from_xml(text)
    assert warnings == []
    assert Pool.model_validate(spec) == pool


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
@pytest.mark.parametrize(("kind", "text"), [
    *(("network", network_to_xml(load_network(spec))) for spec in NETWORKS.values()),
    *(("storagepool", pool_to_xml(Pool.model_validate(spec))) for spec in POOLS.values()
      if spec.get("type", "dir") != "iso" and not spec.get("autostart")),
], ids=lambda value: value if value in ("network", "storagepool") else "")
def test_export_validates_against_libvirts_schema(kind: str, text: str, tmp_path: Path) -> None:
    """Pools with virtkit metadata are left out: libvirt's pool schema has no <metadata>
    (libvirt ignores it when defining; virtkit reads it back)."""
    path = tmp_path / "object.xml"
    path.write_text(text)
    result = subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_network_details() -> None:
    text = ("<network><name>n</name><forward/><ip address='10.0.0.129' prefix='25'>"
            "<dhcp><range start='10.0.0.130' end='10.0.0.254'><lease expiry='30' "
            "unit='minutes'/></range></dhcp></ip></network>")
    spec, _ = network_from_xml(text)
    assert spec == {"name": "n", "mode": "nat", "subnet": "10.0.0.128/25",
                    "dhcp": {"lease_time": 1800}}
    spec, warnings = network_from_xml("<network><name>l2</name></network>")
    assert spec == {"name": "l2", "mode": "isolated", "dhcp": None}
    assert warnings == ["the network has no <ip>: virtkit gives its bridge a free subnet "
                        "(without DHCP)"]
    with pytest.raises(InvalidSpec, match="expected a libvirt <network> document, got <pool>"):
        network_from_xml("<pool type='dir'><name>x</name></pool>")


def test_pool_details() -> None:
    spec, _ = pool_from_xml("<pool type='logical'><name>vg9</name><source><device "
                            "path='/dev/sdx'/></source></pool>")
    assert spec == {"name": "vg9", "type": "logical", "target": "vg9",
                    "source_devices": ["/dev/sdx"]}
    with pytest.raises(InvalidSpec, match="libvirt iscsi pools cannot be imported"):
        pool_from_xml("<pool type='iscsi'><name>san</name></pool>", force=True)
    with pytest.raises(InvalidSpec, match="not well-formed XML"):
        pool_from_xml("<pool type='dir'>", force=True)
