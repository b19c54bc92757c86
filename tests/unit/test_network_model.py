"""The network spec (validation, defaults) and the pure renderers built on it.

No I/O beyond a temporary lease file: the dnsmasq config, hosts files and nft
scripts are pure functions of the spec.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import InvalidSpec, VirtkitError
from virtkit.model.network import dump_network, load_network, pick_bridge_name
from virtkit.network import dnsmasq, nftables
from virtkit.network.links import Links, stable_mac

BASE: dict[str, Any] = {"name": "default", "subnet": "192.168.122.0/24"}


def spec(**overrides: Any) -> dict[str, Any]:
    return {**BASE, **overrides}


def test_defaults_for_a_24() -> None:
    net = load_network(spec())
    assert net.mode == "nat" and net.bridge is None and not net.autostart
    assert net.gateway_ip == IPv4Address("192.168.122.1")
    assert net.gateway_cidr == "192.168.122.1/24"
    assert net.dhcp_range == (IPv4Address("192.168.122.2"), IPv4Address("192.168.122.254"))
    assert net.dhcp is not None and net.dhcp.lease_time == 3600 and not net.dhcp.ping_check
    assert net.owner_tag == f"virtkit:{net.uuid}"
    assert load_network(dump_network(net)) == net


@pytest.mark.parametrize(("overrides", "first", "last"), [
    ({"subnet": "10.0.0.0/30"}, "10.0.0.2", "10.0.0.2"),
    ({"subnet": "10.0.0.0/16"}, "10.0.0.2", "10.0.255.254"),
    ({"gateway": "192.168.122.254"}, "192.168.122.1", "192.168.122.253"),
    ({"gateway": "192.168.122.100"}, "192.168.122.101", "192.168.122.254"),
    ({"dhcp": {"start": "192.168.122.100"}}, "192.168.122.100", "192.168.122.254"),
])
def test_default_dhcp_range_avoids_the_gateway(overrides: dict[str, Any], first: str,
                                               last: str) -> None:
    assert load_network(spec(**overrides)).dhcp_range == (IPv4Address(first), IPv4Address(last))


def test_short_forms_and_normalisation() -> None:
    assert load_network(spec(dhcp=False)).dhcp is None
    assert load_network(spec(dhcp=True)).dhcp is not None
    net = load_network(spec(dhcp={"hosts": [{"mac": "52-54-00-AB-CD-EF", "ip": "192.168.122.9"}]},
                            domain="Lab.Example."))
    assert net.dhcp is not None and net.dhcp.hosts[0].mac == "52:54:00:ab:cd:ef"
    assert net.domain == "lab.example"
    assert load_network("name: n\nmode: isolated\nsubnet: 10.1.0.0/24\n").mode == "isolated"


def test_bridge_mode() -> None:
    net = load_network({"name": "lan", "mode": "bridge", "bridge": "br0"})
    assert net.dhcp is None and net.subnet is None and net.dhcp_range is None


def test_a_network_without_subnet_waits_for_completion() -> None:
    net = load_network({"name": "later"})
    assert net.subnet is None and net.gateway_ip is None and net.dhcp_range is None


# (overrides, field named by the error, words in the message)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "a/b"}, "name", "'/'"),
    ({"uuid": "nope"}, "uuid", "not a UUID"),
    ({"mode": "routed"}, "mode", "nat"),
    ({"subnet": "192.168.122.1/24"}, "subnet", "host bits set; write 192.168.122.0/24"),
    ({"subnet": "192.168.122.0"}, "subnet", "prefix length"),
    ({"subnet": "nonsense"}, "subnet", "CIDR"),
    ({"subnet": "10.0.0.0/31"}, "subnet", "too small"),
    ({"subnet": "127.0.0.0/8"}, "subnet", "loopback"),
    ({"subnet": "224.0.0.0/24"}, "subnet", "multicast"),
    ({"subnet": "0.0.0.0/8"}, "subnet", "cannot be used"),
    ({"gateway": "10.0.0.1"}, "gateway", "not a host address"),
    ({"gateway": "192.168.122.255"}, "gateway", "not a host address"),
    ({"dhcp": {"start": "192.168.122.1"}}, "dhcp.start", "contains the gateway"),
    ({"dhcp": {"start": "192.168.122.0"}}, "dhcp.start", "not a host address"),
    ({"dhcp": {"end": "192.168.123.10"}}, "dhcp.end", "not a host address"),
    ({"dhcp": {"start": "192.168.122.200", "end": "192.168.122.100"}}, "dhcp.start",
     "after its end"),
    ({"gateway": "192.168.122.50", "dhcp": {"start": "192.168.122.10",
                                            "end": "192.168.122.60"}},
     "dhcp.start", "contains the gateway"),
    ({"dhcp": {"start": "banana"}}, "dhcp.start", "not an IPv4 address"),
    ({"dhcp": {"lease_time": 60}}, "dhcp.lease_time", "minimum"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.9.9.9"}]}},
     "dhcp.hosts[0].ip", "not a host address"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.122.1"}]}},
     "dhcp.hosts[0].ip", "is the gateway"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.122.5"},
                         {"mac": "52:54:00:00:00:01", "ip": "192.168.122.6"}]}},
     "dhcp.hosts[1].mac", "reserved twice"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.122.5"},
                         {"mac": "52:54:00:00:00:02", "ip": "192.168.122.5"}]}},
     "dhcp.hosts[1].ip", "reserved twice"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.122.5", "name": "a"},
                         {"mac": "52:54:00:00:00:02", "ip": "192.168.122.6", "name": "A"}]}},
     "dhcp.hosts[1].name", "reserved twice"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:01", "ip": "192.168.122.5"}]}},
     "dhcp.hosts[0].mac", "must look like"),
    ({"dhcp": {"hosts": [{"mac": "01:00:5e:00:00:01", "ip": "192.168.122.5"}]}},
     "dhcp.hosts[0].mac", "multicast"),
    ({"dhcp": {"hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.122.5",
                          "name": "bad_name"}]}}, "dhcp.hosts[0].name", "not valid"),
    ({"bridge": "a-very-long-bridge"}, "bridge", "1-15 characters"),
    ({"bridge": "br 0"}, "bridge", "1-15 characters"),
    ({"bridge": "br/0"}, "bridge", "1-15 characters"),
    ({"bridge": "-br0"}, "bridge", "not starting with '-'"),
    ({"bridge": ""}, "bridge", "1-15 characters"),
    ({"mtu": 10}, "mtu", "between 68 and 65535"),
    ({"dns_hosts": [{"ip": "192.168.122.5", "hostnames": []}]}, "dns_hosts[0].hostnames",
     "at least one"),
    ({"dns_hosts": [{"ip": "x", "hostnames": ["a"]}]}, "dns_hosts[0].ip", "not an IP"),
    ({"forwards": [{"host_port": 0, "guest_ip": "192.168.122.5"}]}, "forwards[0].host_port",
     "between 1 and 65535"),
    ({"forwards": [{"host_port": 80, "guest_port": 70000, "guest_ip": "192.168.122.5"}]},
     "forwards[0].guest_port", "between 1 and 65535"),
    ({"forwards": [{"proto": "sctp", "host_port": 80, "guest_ip": "192.168.122.5"}]},
     "forwards[0].proto", "tcp"),
    ({"forwards": [{"host_port": 80, "guest_ip": "10.0.0.5"}]}, "forwards[0].guest_ip",
     "not a guest address"),
    ({"forwards": [{"host_port": 80, "guest_ip": "192.168.122.1"}]}, "forwards[0].guest_ip",
     "not a guest address"),
    ({"forwards": [{"host_port": 80, "host_address": "127.0.0.1",
                    "guest_ip": "192.168.122.5"}]}, "forwards[0].host_address", "0.0.0.0"),
    ({"forwards": [{"host_port": 80, "guest_ip": "192.168.122.5"},
                   {"host_port": 80, "host_address": "198.51.100.2",
                    "guest_ip": "192.168.122.6"}]}, "forwards[1].host_port", "twice"),
    ({"mode": "isolated", "forwards": [{"host_port": 80, "guest_ip": "192.168.122.5"}]},
     "forwards", "isolated"),
    ({"extra": 1}, "extra", "unknown field"),
]


@pytest.mark.parametrize(("overrides", "field", "words"), INVALID,
                         ids=[f"{i}-{f}" for i, (_, f, _) in enumerate(INVALID)])
def test_invalid_specs_name_the_field(overrides: dict[str, Any], field: str,
                                      words: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        load_network(spec(**overrides))
    assert caught.value.field == field, caught.value.message
    assert words in caught.value.message
    assert caught.value.message.startswith("invalid network spec: ")


BRIDGE_MODE_INVALID: list[tuple[dict[str, Any], str]] = [
    ({}, "bridge"),
    ({"bridge": "br0", "subnet": "10.0.0.0/24"}, "subnet"),
    ({"bridge": "br0", "dhcp": {}}, "dhcp"),
    ({"bridge": "br0", "domain": "lan"}, "domain"),
    ({"bridge": "br0", "dns_hosts": [{"ip": "10.0.0.5", "hostnames": ["a"]}]}, "dns_hosts"),
    ({"bridge": "br0", "forwards": [{"host_port": 80, "guest_ip": "10.0.0.5"}]}, "forwards"),
]


@pytest.mark.parametrize(("overrides", "field"), BRIDGE_MODE_INVALID)
def test_bridge_mode_refuses_what_it_cannot_do(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        load_network({"name": "lan", "mode": "bridge", **overrides})
    assert caught.value.field == field


def test_without_a_subnet_nothing_may_depend_on_it() -> None:
    with pytest.raises(InvalidSpec, match="needs a subnet") as caught:
        load_network({"name": "n", "dhcp": {"start": "10.0.0.5"}})
    assert caught.value.field == "dhcp"


def test_pick_bridge_name() -> None:
    assert pick_bridge_name([]) == "vkbr0"
    assert pick_bridge_name(["vkbr0", "vkbr1", "eth0", "vkbr3"]) == "vkbr2"


# -- dnsmasq files -------------------------------------------------------------------------


FULL = spec(bridge="vkbr0", domain="lab", mtu=1400,
            dhcp={"hosts": [{"mac": "52:54:00:00:00:05", "ip": "192.168.122.5", "name": "db"},
                            {"mac": "52:54:00:00:00:06", "ip": "192.168.122.6"}]},
            dns_hosts=[{"ip": "192.168.122.5", "hostnames": ["db.lab", "sql.lab"]}],
            forwards=[{"host_port": 8080, "guest_ip": "192.168.122.5", "guest_port": 80}])


def test_dnsmasq_config() -> None:
    net = load_network(FULL)
    files = dnsmasq.files_in("/var/lib/virtkit/networks/x")
    conf = dnsmasq.render_config(net, files).splitlines()
    for line in ["bind-interfaces", "interface=vkbr0", "except-interface=lo",
                 "dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0,3600",
                 "dhcp-leasefile=/var/lib/virtkit/networks/x/dnsmasq.leases",
                 "dhcp-hostsfile=/var/lib/virtkit/networks/x/dnsmasq.hostsfile",
                 "addn-hosts=/var/lib/virtkit/networks/x/dnsmasq.addnhosts",
                 "pid-file=/var/lib/virtkit/networks/x/dnsmasq.pid",
                 "log-facility=/var/lib/virtkit/networks/x/dnsmasq.log",
                 "local=/lab/", "domain=lab", "no-hosts", "no-ping",
                 "dhcp-option=option:mtu,1400", "dhcp-lease-max=255"]:
        assert line in conf
    assert "no-resolv" not in conf and "dhcp-option=option:router" not in conf
    assert dnsmasq.render_hostsfile(net) == ("52:54:00:00:00:05,192.168.122.5,db\n"
                                             "52:54:00:00:00:06,192.168.122.6\n")
    assert dnsmasq.render_addn_hosts(net) == "192.168.122.5 db.lab sql.lab\n"


def test_dnsmasq_config_of_an_isolated_network() -> None:
    net = load_network(spec(mode="isolated", bridge="vkbr1", dhcp={"ping_check": True}))
    conf = dnsmasq.render_config(net, dnsmasq.files_in("/s")).splitlines()
    assert "no-resolv" in conf and "dhcp-option=option:router" in conf
    assert "no-ping" not in conf


def test_dnsmasq_serves_tftp_and_names_the_boot_file() -> None:
    net = load_network(spec(bridge="vkbr2", dhcp={"tftp_root": "/srv/tftp",
                                                  "boot_file": "boot.ipxe"}))
    conf = dnsmasq.render_config(net, dnsmasq.files_in("/s")).splitlines()
    boot_lines = [line for line in conf if "tftp" in line or "dhcp-boot" in line]
    assert boot_lines == ["enable-tftp", "tftp-root=/srv/tftp", "dhcp-boot=boot.ipxe"]
    other = load_network(spec(bridge="vkbr2", dhcp={"boot_file": "pxelinux.0",
                                                    "boot_server": "10.0.0.5"}))
    conf = dnsmasq.render_config(other, dnsmasq.files_in("/s")).splitlines()
    assert "dhcp-boot=pxelinux.0,,10.0.0.5" in conf and "enable-tftp" not in conf


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tftp_root", "srv/tftp", "absolute folder"),
    ("tftp_root", "/srv/a,b", "without commas"),
    ("boot_file", "boot.ipxe\nconf-file=/etc/shadow", "without commas, spaces or control"),
    ("boot_server", "not-an-ip", "boot server address"),
])
def test_network_boot_values_cannot_inject_dnsmasq_options(field: str, value: str,
                                                           message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        load_network(spec(dhcp={field: value}))


def test_dnsmasq_refuses_relative_or_odd_state_folders() -> None:
    for bad in ("relative/dir", "/tmp/a\nb"):
        with pytest.raises(InvalidSpec):
            dnsmasq.files_in(bad)
    with pytest.raises(InvalidSpec, match="no bridge"):
        dnsmasq.render_config(load_network(spec()), dnsmasq.files_in("/s"))


def test_parse_leases(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    leases.write_text("1795609636 52:54:00:AA:bb:01 192.168.122.55 client1 01:52:54:00:aa:bb:01\n"
                      "1795609637 52:54:00:aa:bb:02 192.168.122.56 * *\n"
                      "duid 00:01:00:01:2c:aa\n"
                      "garbage\n")
    assert dnsmasq.parse_leases(leases) == [
        dnsmasq.Lease(1795609636, "52:54:00:aa:bb:01", "192.168.122.55", "client1",
                      "01:52:54:00:aa:bb:01"),
        dnsmasq.Lease(1795609637, "52:54:00:aa:bb:02", "192.168.122.56", None, None),
    ]
    assert dnsmasq.parse_leases(tmp_path / "missing") == []


# -- nft scripts ---------------------------------------------------------------------------


def test_nft_script_of_a_nat_network() -> None:
    net = load_network(FULL)
    script = nftables.apply_script(net)
    assert script.startswith("add table inet virtkit\n")
    lines = script.splitlines()
    rules = [line for line in lines if line.startswith("add rule")]
    assert all(f'comment "virtkit:{net.uuid} ' in line for line in rules)
    assert all(f"vk-{net.uuid}-" in line for line in lines[1:])  # only our own chains
    text = "\n".join(rules)
    assert ('ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 oifname != "vkbr0" '
            "masquerade") in text
    assert "fib daddr type local tcp dport 8080 dnat ip to 192.168.122.5:80" in text
    assert 'oifname "vkbr0" ip daddr 192.168.122.5 tcp dport 80 ct status dnat accept' in text
    assert "hook postrouting priority 100" in script and "hook prerouting priority -100" in script


def test_nft_script_of_an_isolated_network_drops_and_removes_nat_chains() -> None:
    net = load_network(spec(mode="isolated", bridge="vkbr1"))
    script = nftables.apply_script(net)
    assert nftables.rules(net) == {"forward": ['iifname "vkbr1" oifname "vkbr1" accept',
                                               'iifname "vkbr1" drop', 'oifname "vkbr1" drop']}
    for role in ("postrouting", "prerouting", "output"):
        assert f"delete chain inet virtkit vk-{net.uuid}-{role}" in script


def test_nft_remove_script_touches_only_our_chains() -> None:
    net = load_network(FULL)
    lines = nftables.remove_script(net).splitlines()
    assert lines[0] == "add table inet virtkit"
    assert all(f"vk-{net.uuid}-" in line for line in lines[1:])
    assert sum(line.startswith("delete chain") for line in lines) == 4
    assert not any("delete table" in line or "flush ruleset" in line for line in lines)


def test_rule_fingerprints_change_with_the_rule() -> None:
    net = load_network(FULL)
    moved = load_network({**FULL, "uuid": net.uuid,
                          "forwards": [{"host_port": 8081, "guest_ip": "192.168.122.5"}]})
    assert nftables.apply_script(net) != nftables.apply_script(moved)
    a = nftables.rule_comment(net, "prerouting", 0, nftables.rules(net)["prerouting"][0])
    b = nftables.rule_comment(moved, "prerouting", 0, nftables.rules(moved)["prerouting"][0])
    assert a != b and a.startswith(net.owner_tag)


# -- links: pure helpers and guards -----------------------------------------------------------


def test_links_refuse_to_run_on_an_event_loop_thread() -> None:
    async def inside_the_loop() -> None:
        with pytest.raises(VirtkitError, match="event loop") as caught:
            Links()
        assert caught.value.fix and "to_thread" in caught.value.fix

    asyncio.run(inside_the_loop())


def test_bridge_macs_are_stable_locally_administered_unicast() -> None:
    mac = stable_mac("virtkit:1")
    assert mac == stable_mac("virtkit:1") != stable_mac("virtkit:2")
    assert mac.startswith("52:54:00:") and len(mac) == 17
