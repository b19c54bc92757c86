"""Real virtual networks, built inside network namespaces this test makes.

Each test gets a fresh lab of namespaces (names ``vkt-<random>-<role>``):

- ``host``: plays the virtualization host; the network under test lives here
  (bridge, dnsmasq, nft table).  Its only other link is a veth to ``outside``.
- ``outside``: plays the world beyond the host, 198.51.100.1/24 (TEST-NET-2);
  the host's side of the veth is 198.51.100.2/24.
- ``c1``, ``c2`` ...: "guests": a veth whose host end is a port of the bridge
  (as a tap would be), running busybox udhcpc, ping, nslookup and tiny servers.

Guest subnets are TEST-NET-3 (203.0.113.0/24) and the RFC 2544 benchmark range
(198.18.0.0/24).  No namespace has a route off the machine, so no packet can
leave it.  At teardown every process in the lab's namespaces is killed by PID
and the namespaces are deleted (which removes their links and nft tables),
also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound, StateError
from virtkit.model.network import Network
from virtkit.network import dnsmasq, nftables
from virtkit.network.backend import NetworkBackend
from virtkit.network.links import Links

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed"),
]

OUTSIDE_IP = "198.51.100.1"
HOST_OUTSIDE_IP = "198.51.100.2"
NAT_SUBNET = "203.0.113.0/24"
NAT_GATEWAY = "203.0.113.1"
RESERVED_IP = "203.0.113.50"
MAC1 = "52:54:00:0a:00:01"
MAC2 = "52:54:00:0a:00:02"
MAC3 = "52:54:00:0a:00:03"

#: a TCP server that answers each connection with the peer address it saw; it ends
#: by itself after 60 s, and teardown kills it by PID anyway.
SERVER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
s.settimeout(1)
print("ready", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        c, peer = s.accept()
    except TimeoutError:
        continue
    c.sendall(peer[0].encode())
    c.close()
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    print(s.recv(100).decode())
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    /usr/sbin/ip addr flush dev "$interface"
    /usr/sbin/ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then
      /usr/sbin/ip route replace default via "$router" dev "$interface"
    fi
    echo "ip=$ip mask=$mask router=$router dns=$dns" > "$UDHCPC_OUT"
    ;;
esac
"""


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): "
                             f"{result.stderr.strip()}")
    return result


@dataclass
class Lab:
    """The namespaces, processes and networks of one test, and helpers to use them."""

    tag: str
    state: Path
    backend: NetworkBackend = field(default_factory=NetworkBackend)
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    started: list[tuple[Network, Path]] = field(default_factory=list)

    def netns(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @property
    def host(self) -> str:
        return f"{self.tag}-host"

    @property
    def outside(self) -> str:
        return f"{self.tag}-out"

    def in_ns(self, netns: str, *argv: str, check: bool = True,
              timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", netns, *argv, check=check, timeout=timeout)

    def state_dir(self, net: Network) -> Path:
        return self.state / net.name

    def start(self, net: Network) -> dict[str, Any]:
        self.started.append((net, self.state_dir(net)))
        return self.backend.start(net, self.state_dir(net), netns=self.host)

    def client(self, role: str, mac: str, bridge: str = "vkbr0") -> str:
        """A guest-like namespace whose eth0 is cabled to a port of ``bridge``."""
        netns = self.netns(role)
        port = f"vp-{role}"
        run("ip", "link", "add", port, "netns", self.host, "type", "veth", "peer", "name",
            "eth0", "netns", netns)
        run("ip", "-n", self.host, "link", "set", port, "master", bridge, "up")
        run("ip", "-n", netns, "link", "set", "eth0", "address", mac, "up")
        return netns

    def dhcp(self, netns: str, hostname: str | None = None) -> dict[str, str]:
        """Run busybox udhcpc in ``netns``; return what it was given (ip, mask, router)."""
        script = self.state / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        out = self.state / f"udhcpc-{netns}.out"
        argv = ["ip", "netns", "exec", netns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q",
                "-n", "-t", "10", "-T", "1", "-s", str(script)]
        if hostname:
            argv += ["-x", f"hostname:{hostname}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                env={**os.environ, "UDHCPC_OUT": str(out)}, check=False)
        assert result.returncode == 0, f"no DHCP lease: {result.stderr}"
        words = out.read_text().split()
        return dict(w.split("=", 1) for w in words)

    def server(self, netns: str, port: int) -> None:
        process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER,
                                    str(port)], stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"

    def ask(self, netns: str, address: str, port: int) -> subprocess.CompletedProcess[str]:
        """Connect from ``netns`` to a SERVER; stdout is the peer address it saw."""
        return self.in_ns(netns, sys.executable, "-c", CLIENT, address, str(port), check=False)

    def teardown(self) -> None:
        for net, state_dir in self.started:
            with contextlib.suppress(Exception):
                self.backend.stop(net, state_dir, netns=self.host)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(5)
        killed: list[int] = []
        for netns in reversed(self.namespaces):
            listed = run("ip", "netns", "pids", netns, check=False).stdout.split()
            for pid in map(int, listed):  # only this test's processes live in its namespaces
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        for pid in killed:  # reap dnsmasq children the backend started
            child = dnsmasq._CHILDREN.pop(pid, None)
            if child is not None:
                with contextlib.suppress(Exception):
                    child.wait(5)
        for netns in reversed(self.namespaces):
            run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = f"vkt-{uuidlib.uuid4().hex[:8]}"
    state = Path(tempfile.mkdtemp(prefix="vknet-", dir="/tmp"))
    state.chmod(0o711)  # dnsmasq, as nobody, must reach the network state folders
    lab = Lab(tag=tag, state=state)
    try:
        host = lab.netns("host")
        outside = lab.netns("out")
        run("ip", "link", "add", "out0", "netns", host, "type", "veth", "peer", "name", "eth0",
            "netns", outside)
        run("ip", "-n", host, "addr", "add", f"{HOST_OUTSIDE_IP}/24", "dev", "out0")
        run("ip", "-n", host, "link", "set", "out0", "up")
        run("ip", "-n", outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        run("ip", "-n", outside, "link", "set", "eth0", "up")
        yield lab
    finally:
        lab.teardown()
    assert not any(n in run("ip", "netns", "list").stdout for n in lab.namespaces)


def nat_network(**overrides: Any) -> Network:
    spec: dict[str, Any] = {
        "name": "lab", "bridge": "vkbr0", "subnet": NAT_SUBNET, "domain": "lab",
        "dhcp": {"hosts": [{"mac": MAC2, "ip": RESERVED_IP, "name": "reserved"}]},
        "dns_hosts": [{"ip": RESERVED_IP, "hostnames": ["web.lab"]}],
        "forwards": [{"host_port": 8080, "guest_ip": RESERVED_IP, "guest_port": 80}],
    }
    spec.update(overrides)
    return Network.model_validate(spec)


# -- nat ---------------------------------------------------------------------------------


def test_nat_start_makes_bridge_dnsmasq_and_rules(lab: Lab) -> None:
    net = nat_network()
    facts = lab.start(net)
    assert facts["bridge"] == "vkbr0" and facts["gateway"] == f"{NAT_GATEWAY}/24"
    with Links(lab.host) as links:
        bridge = links.require("vkbr0")
        assert bridge.kind == "bridge" and bridge.up and bridge.alias == f"virtkit:{net.uuid}"
        assert links.addresses("vkbr0") == [f"{NAT_GATEWAY}/24"]
    files = dnsmasq.files_in(lab.state_dir(net))
    assert dnsmasq.is_alive(facts["dnsmasq_pid"], files)
    assert nftables.check(net, netns=lab.host)
    assert len(nftables.chains_of(net, netns=lab.host)) == 4
    status = lab.backend.status(net, lab.state_dir(net), netns=lab.host)
    assert status.healthy, status.problems
    assert status.dnsmasq_pid == facts["dnsmasq_pid"]
    # the real host is untouched: its namespace has no such bridge and no table of ours
    with Links() as host_links:
        assert host_links.get("vkbr0") is None or host_links.get("vkbr0") != bridge


def test_dhcp_lease_reservation_and_dns(lab: Lab) -> None:
    net = nat_network()
    began = time.monotonic()
    lab.start(net)
    c1 = lab.client("c1", MAC1)
    got = lab.dhcp(c1, hostname="client1")
    elapsed = time.monotonic() - began
    print(f"start() to DHCP lease: {elapsed * 1000:.0f} ms")
    assert got["router"] == NAT_GATEWAY and got["mask"] == "24"
    assert got["ip"] != RESERVED_IP
    leases = lab.backend.leases(net, lab.state_dir(net))
    assert [(le.mac, le.ip, le.hostname) for le in leases] == [(MAC1, got["ip"], "client1")]
    c2 = lab.client("c2", MAC2)
    assert lab.dhcp(c2)["ip"] == RESERVED_IP
    assert lookup(lab, c1, "web.lab") == [RESERVED_IP]  # dns_hosts
    assert lookup(lab, c1, "reserved.lab") == [RESERVED_IP]  # reservation's name
    assert lookup(lab, c1, "client1.lab") == [got["ip"]]  # name the client sent


def test_masquerade_to_the_outside(lab: Lab) -> None:
    lab.start(nat_network())
    c1 = lab.client("c1", MAC1)
    lab.dhcp(c1)
    lab.in_ns(c1, "busybox", "ping", "-c", "1", "-W", "2", OUTSIDE_IP)
    lab.server(lab.outside, 7000)
    seen = lab.ask(c1, OUTSIDE_IP, 7000)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip() == HOST_OUTSIDE_IP  # masqueraded to the host's address


def test_port_forward_reaches_the_guest_and_nothing_else_does(lab: Lab) -> None:
    lab.start(nat_network())
    c2 = lab.client("c2", MAC2)
    assert lab.dhcp(c2)["ip"] == RESERVED_IP
    lab.server(c2, 80)
    seen = lab.ask(lab.outside, HOST_OUTSIDE_IP, 8080)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip() == OUTSIDE_IP  # DNAT only: the guest sees the real client
    # the host itself reaches the forward on its own address too (nat output chain)
    assert lab.ask(lab.host, HOST_OUTSIDE_IP, 8080).stdout.strip() == HOST_OUTSIDE_IP
    # another guest reaches the forward too (hairpin: it is masqueraded to the gateway)
    c1 = lab.client("c1", MAC1)
    lab.dhcp(c1)
    assert lab.ask(c1, HOST_OUTSIDE_IP, 8080).stdout.strip() == NAT_GATEWAY
    # a direct new connection from outside into the NAT subnet is rejected
    run("ip", "-n", lab.outside, "route", "add", NAT_SUBNET, "via", HOST_OUTSIDE_IP)
    direct = lab.ask(lab.outside, RESERVED_IP, 80)
    assert direct.returncode != 0 and "ConnectionRefused" in direct.stderr


def test_reservations_and_dns_hosts_change_live(lab: Lab) -> None:
    net = nat_network()
    facts = lab.start(net)
    state = lab.state_dir(net)
    data = net.model_dump()
    data["dhcp"]["hosts"].append({"mac": MAC3, "ip": "203.0.113.60", "name": "late"})
    data["dns_hosts"].append({"ip": "203.0.113.61", "hostnames": ["new.lab"]})
    changed = Network.model_validate(data)
    assert lab.backend.update_hosts(changed, state)
    assert not lab.backend.update_hosts(changed, state)  # nothing new the second time
    c3 = lab.client("c3", MAC3)
    assert lab.dhcp(c3)["ip"] == "203.0.113.60"
    assert lookup(lab, c3, "new.lab") == ["203.0.113.61"]
    status = lab.backend.status(net, state, netns=lab.host)
    assert status.dnsmasq_pid == facts["dnsmasq_pid"]  # reloaded, not restarted


def test_killed_dnsmasq_is_seen_and_repaired_without_flapping(lab: Lab) -> None:
    net = nat_network()
    state = lab.state_dir(net)
    facts = lab.start(net)
    with Links(lab.host) as links:
        before = links.require("vkbr0")
    handles = _rule_handles(lab.host)
    os.kill(facts["dnsmasq_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while lab.backend.status(net, state, netns=lab.host).dnsmasq_alive:
        assert time.monotonic() < deadline, "killed dnsmasq still looks alive"
        time.sleep(0.05)
    status = lab.backend.status(net, state, netns=lab.host)
    assert status.problems == ["dnsmasq is not running"]
    assert status.bridge_present and status.rules_present
    done = lab.backend.repair(net, state, netns=lab.host)
    assert len(done) == 1 and done[0].startswith("started dnsmasq")
    assert lab.backend.status(net, state, netns=lab.host).healthy
    with Links(lab.host) as links:
        assert links.require("vkbr0") == before  # same index, still up: no flap
    assert _rule_handles(lab.host) == handles  # rules untouched
    c1 = lab.client("c1", MAC1)
    lab.dhcp(c1)
    assert lab.backend.repair(net, state, netns=lab.host) == []


def test_repair_restores_deleted_rules_and_a_downed_bridge(lab: Lab) -> None:
    net = nat_network()
    state = lab.state_dir(net)
    facts = lab.start(net)
    chain = nftables.chain_name(net, "postrouting")
    run("ip", "netns", "exec", lab.host, "nft", "flush", "chain", "inet", "virtkit", chain)
    run("ip", "-n", lab.host, "link", "set", "vkbr0", "down")
    status = lab.backend.status(net, state, netns=lab.host)
    assert not status.rules_present and not status.bridge_up
    assert any(chain in p for p in status.problems)
    done = lab.backend.repair(net, state, netns=lab.host)
    assert done == ["set vkbr0 up", "re-applied nft rules"]
    status = lab.backend.status(net, state, netns=lab.host)
    assert status.healthy and status.dnsmasq_pid == facts["dnsmasq_pid"]


def test_repair_remakes_a_deleted_bridge_and_rebinds_dnsmasq(lab: Lab) -> None:
    net = nat_network()
    state = lab.state_dir(net)
    facts = lab.start(net)
    run("ip", "-n", lab.host, "link", "del", "vkbr0")
    assert lab.backend.status(net, state, netns=lab.host).problems == ["bridge vkbr0 is missing"]
    done = lab.backend.repair(net, state, netns=lab.host)
    assert done[:4] == ["created bridge vkbr0", f"added address {NAT_GATEWAY}/24 to vkbr0",
                        "set vkbr0 up", "stopped dnsmasq bound to the old bridge/address"]
    assert done[4].startswith("started dnsmasq") and len(done) == 5
    status = lab.backend.status(net, state, netns=lab.host)
    assert status.healthy and status.dnsmasq_pid != facts["dnsmasq_pid"]
    c2 = lab.client("c2", MAC2)
    assert lab.dhcp(c2)["ip"] == RESERVED_IP


def lookup(lab: Lab, netns: str, name: str) -> list[str]:
    """IPv4 addresses the network's dnsmasq gives for ``name`` (asked from ``netns``).

    Only names under the network's local-only domain are asked, so dnsmasq never
    forwards a query upstream (and the host namespace has no route there anyway).
    """
    answer = lab.in_ns(netns, "busybox", "nslookup", "-type=a", name, NAT_GATEWAY,
                       check=False).stdout
    part = answer.split(f"Name:\t{name}", 1)
    return [line.split()[-1] for line in part[-1].splitlines()
            if line.startswith("Address")] if len(part) == 2 else []


def _rule_handles(netns: str) -> list[int]:
    return sorted(o["rule"]["handle"] for o in nftables.list_table(netns) if "rule" in o)


# -- refusals, failures, stop -----------------------------------------------------------


def test_subnet_overlapping_a_route_is_refused(lab: Lab) -> None:
    run("ip", "-n", lab.host, "route", "add", "203.0.113.0/25", "via", OUTSIDE_IP)
    net = nat_network()
    with pytest.raises(Conflict) as caught:
        lab.start(net)
    assert "203.0.113.0/25" in caught.value.message
    assert caught.value.fix and "203.0.114.0/24" in caught.value.fix
    with Links(lab.host) as links:
        assert links.get("vkbr0") is None
    assert nftables.chains_of(net, netns=lab.host) == []


def test_subnet_overlapping_an_address_is_refused(lab: Lab) -> None:
    net = nat_network(subnet="198.51.100.0/24", dhcp=True, dns_hosts=[], forwards=[])
    with pytest.raises(Conflict, match=r"address 198\.51\.100\.2/24 on out0"):
        lab.start(net)


def test_a_foreign_interface_with_our_bridge_name_is_left_alone(lab: Lab) -> None:
    run("ip", "-n", lab.host, "link", "add", "vkbr0", "type", "bridge")
    with pytest.raises(Conflict, match="not made by virtkit"):
        lab.start(nat_network())
    with Links(lab.host) as links:
        assert links.require("vkbr0").alias is None  # still there, still not ours


def test_starting_twice_is_a_state_error(lab: Lab) -> None:
    net = nat_network()
    lab.start(net)
    with pytest.raises(StateError, match="already active"):
        lab.start(net)


def test_failure_half_way_leaves_nothing_behind(lab: Lab) -> None:
    net = nat_network()
    lab.backend.dnsmasq_binary = "/nonexistent/dnsmasq"
    with pytest.raises(HostError, match="dnsmasq") as caught:
        lab.start(net)
    assert caught.value.fix and "dnsmasq-base" in caught.value.fix
    with Links(lab.host) as links:
        assert links.get("vkbr0") is None
    assert nftables.chains_of(net, netns=lab.host) == []


def test_dnsmasq_that_cannot_bind_undoes_the_start(lab: Lab) -> None:
    net = nat_network()
    # something else already serves DNS on the gateway address: dnsmasq exits at start
    run("ip", "-n", lab.host, "addr", "add", f"{NAT_GATEWAY}/32", "dev", "lo")
    blocker = subprocess.Popen(
        ["ip", "netns", "exec", lab.host, sys.executable, "-c",
         "import socket,sys,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         f"s.bind(('{NAT_GATEWAY}', 53))\nprint('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    lab.processes.append(blocker)
    assert blocker.stdout is not None and blocker.stdout.readline().strip() == "ready"
    run("ip", "-n", lab.host, "addr", "del", f"{NAT_GATEWAY}/32", "dev", "lo")
    with pytest.raises(HostError, match="exited at start") as caught:
        lab.start(net)
    assert "Address already in use" in caught.value.message or "socket" in caught.value.message
    with Links(lab.host) as links:
        assert links.get("vkbr0") is None
    assert nftables.chains_of(net, netns=lab.host) == []


def test_a_state_folder_dnsmasq_cannot_reach_is_refused(lab: Lab) -> None:
    lab.state.chmod(0o700)
    with pytest.raises(HostError, match="cannot reach") as caught:
        lab.start(nat_network())
    assert caught.value.fix and "chmod o+x" in caught.value.fix
    with Links(lab.host) as links:
        assert links.get("vkbr0") is None


def test_stop_removes_bridge_dnsmasq_and_chains(lab: Lab) -> None:
    net = nat_network()
    state = lab.state_dir(net)
    other = nat_network(name="other", uuid=str(uuidlib.uuid4()), bridge="vkbr1",
                        subnet="198.18.0.0/24", dhcp=True, dns_hosts=[], forwards=[])
    facts = lab.start(net)
    lab.start(other)
    c1 = lab.client("c1", MAC1)
    lab.dhcp(c1)
    lab.backend.stop(net, state, netns=lab.host)
    with Links(lab.host) as links:
        assert links.get("vkbr0") is None
        assert links.get("vkbr1") is not None  # the other network is untouched
    assert not Path(f"/proc/{facts['dnsmasq_pid']}").exists()
    assert nftables.chains_of(net, netns=lab.host) == []
    assert nftables.check(other, netns=lab.host)
    status = lab.backend.status(net, state, netns=lab.host)
    assert not status.active and not status.dnsmasq_alive and not status.rules_present
    assert dnsmasq.files_in(state).leases.exists()  # leases survive a stop
    lab.backend.stop(net, state, netns=lab.host)  # stopping again is harmless


# -- isolated and bridge modes, taps, completion -------------------------------------------


def test_isolated_network_serves_dhcp_but_forwards_nothing(lab: Lab) -> None:
    net = Network.model_validate({"name": "iso", "mode": "isolated", "bridge": "vkbr0",
                                  "subnet": "198.18.0.0/24"})
    lab.start(net)
    assert [c.rsplit("-", 1)[1] for c in nftables.chains_of(net, netns=lab.host)] == ["forward"]
    c1 = lab.client("c1", MAC1)
    got = lab.dhcp(c1)
    assert got["ip"].startswith("198.18.0.") and got["router"] == ""  # no default route
    lab.in_ns(c1, "busybox", "ping", "-c", "1", "-W", "1", "198.18.0.1")  # gateway: yes
    run("ip", "-n", c1, "route", "add", "default", "via", "198.18.0.1")
    lost = lab.in_ns(c1, "busybox", "ping", "-c", "1", "-W", "1", OUTSIDE_IP, check=False)
    assert lost.returncode != 0  # dropped by the isolated network's forward chain


def test_bridge_mode_uses_an_existing_host_bridge(lab: Lab) -> None:
    net = Network.model_validate({"name": "lan", "mode": "bridge", "bridge": "br0"})
    with pytest.raises(NotFound, match="br0"):
        lab.start(net)
    with pytest.raises(InvalidSpec, match="not a bridge"):
        lab.start(Network.model_validate({"name": "lan", "mode": "bridge", "bridge": "out0"}))
    run("ip", "-n", lab.host, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", lab.host, "link", "set", "br0", "up")
    assert lab.start(net)["bridge"] == "br0"
    assert lab.backend.status(net, lab.state / "lan", netns=lab.host).healthy
    tap = lab.backend.create_tap(net, str(uuidlib.uuid4()), netns=lab.host)
    try:
        with Links(lab.host) as links:
            assert links.ports("br0") == [tap.name]
    finally:
        tap.close()
    lab.backend.stop(net, lab.state / "lan", netns=lab.host)
    with Links(lab.host) as links:
        assert links.get("br0") is not None  # not ours: never deleted


def test_taps_join_the_bridge_and_vanish_with_their_fd(lab: Lab) -> None:
    net = nat_network()
    domain = str(uuidlib.uuid4())
    with pytest.raises(StateError, match="not active"):
        lab.backend.create_tap(net, domain, netns=lab.host)
    lab.start(net)
    tap = lab.backend.create_tap(net, domain, netns=lab.host, guest_mac="52:54:00:12:34:56")
    named = lab.backend.create_tap(net, domain, netns=lab.host, name="vm1-nic0")
    try:
        assert tap.name == "vktap0" and tap.fd >= 0
        with Links(lab.host) as links:
            info = links.require(tap.name)
            assert info.alias == f"virtkit:{domain}" and info.up
            assert info.mac == "fe:54:00:12:34:56"
            assert links.ports("vkbr0") == ["vktap0", "vm1-nic0"]
            assert links.delete_tap("vm1-nic0", f"virtkit:{domain}")
    finally:
        tap.close()
        named.close()
    with Links(lab.host) as links:
        assert links.ports("vkbr0") == []


def test_complete_picks_a_free_bridge_and_subnet(lab: Lab) -> None:
    run("ip", "-n", lab.host, "link", "add", "vkbr0", "type", "bridge")
    run("ip", "-n", lab.host, "addr", "add", "192.168.122.1/24", "dev", "vkbr0")
    taken = Network(name="taken", bridge="vkbr1", subnet="192.168.123.0/24")
    done = lab.backend.complete(Network(name="new"), netns=lab.host, other_networks=[taken])
    assert (done.bridge, done.subnet) == ("vkbr2", "192.168.124.0/24")
    done = lab.backend.complete(Network(name="x"), netns=lab.host,
                                subnet_start="198.18.0.0/24")
    assert done.subnet == "198.18.0.0/24"
    with Links(lab.host) as links:
        assert links.next_free_subnet("198.51.100.0/24") == "198.51.101.0/24"
