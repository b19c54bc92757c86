"""Virtual networks with real bridges, dnsmasq, nftables and tiny VMs, all inside namespaces.

The daemon runs inside a fresh "host" network namespace, joined by a veth pair to
an "outside" namespace (198.51.100.0/24, a documentation range). Every bridge,
tap, rule and DHCP server the daemon makes lives in that namespace, so nothing
on the real host changes and no packet leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.real.conftest import (
    OUTSIDE_HOST,
    OUTSIDE_PEER,
    DaemonHandle,
    wait_for,
)
from virtkit.cli.client import ApiError

pytestmark = pytest.mark.qemu

DHCP_SCRIPT = ("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ifconfig $interface $ip netmask "
               "$subnet && route add default gw $router\\nexit 0\\n' > /tmp/dhcp.sh; "
               "chmod +x /tmp/dhcp.sh; ifconfig eth0 up; "
               "udhcpc -i eth0 -n -q -t 10 -s /tmp/dhcp.sh >/dev/null 2>&1; "
               "echo GOT=$(ifconfig eth0 | sed -n 's/.*inet addr:\\([0-9.]*\\).*/\\1/p')=; "
               "echo dhcp-$((40+2))-done")


def _boot_with_dhcp(daemon: DaemonHandle, name: str, network: str, **extra: object) -> str:
    extra.setdefault("nics", [{"network": network}])
    daemon.define(name, **extra)
    daemon.client.post(daemon.client.domain_path(name, "/start"))
    daemon.wait_booted(name)
    time.sleep(1.0)
    output = daemon.console_run(name, DHCP_SCRIPT, "dhcp-42-done", timeout=60)
    found = re.findall(r"GOT=(\d+\.\d+\.\d+\.\d+)=", output)
    return found[-1] if found else ""


def _ping(daemon: DaemonHandle, name: str, target: str) -> int:
    """Ping ``target`` from the guest's console; the exit status of ping."""
    output = daemon.console_run(name, f"ping -c 2 -W 3 {target} >/dev/null 2>&1; "
                                      "echo rc=$?-end$((1+1))", "-end2", timeout=30)
    return int(re.findall(r"rc=(\d+)-end2", output)[-1])


def test_isolated_network_dhcp_leases_and_guest_to_guest(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    d.cli("net-define-as", "lab", "--mode", "isolated", "--subnet", "10.66.0.0/24")
    d.cli("net-start", "lab")
    info = json.loads(d.cli("net-info", "lab", "--json").stdout)
    assert info["status"]["healthy"] is True and info["gateway"] == "10.66.0.1"
    ip1 = _boot_with_dhcp(d, "vm1", "lab")
    ip2 = _boot_with_dhcp(d, "vm2", "lab")
    assert ip1.startswith("10.66.0.") and ip2.startswith("10.66.0.") and ip1 != ip2
    leases = json.loads(d.cli("net-dhcp-leases", "lab", "--json").stdout)
    assert {lease["ip"] for lease in leases} >= {ip1, ip2}
    addr = json.loads(d.cli("domifaddr", "vm1", "--json").stdout)
    assert addr[0]["addresses"] == [ip1] and addr[0]["tap"].startswith("vktap")
    assert f"{ip1}/24" in d.cli("domifaddr", "vm1").stdout  # the prefix, as virsh shows
    assert _ping(d, "vm1", ip2) == 0
    # the isolated network forwards nothing: the outside host is unreachable
    assert _ping(d, "vm1", OUTSIDE_HOST) != 0
    tap = addr[0]["tap"]
    d.client.post(d.client.domain_path("vm1", "/destroy"))
    links = subprocess.run(["ip", "-n", d.netns or "", "-o", "link"], capture_output=True,
                           text=True).stdout
    assert tap not in links  # the tap went with the VM


def test_nat_masquerade_port_forward_and_reservation(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    d.cli("net-define-as", "natnet", "--mode", "nat", "--subnet", "10.67.0.0/24")
    d.cli("net-start", "natnet")
    mac = "52:54:00:42:42:42"
    # virsh's form of the reservation
    d.cli("net-update", "natnet", "add", "ip-dhcp-host",
          f"<host mac='{mac}' name='web' ip='10.67.0.50'/>", "--live", "--config")
    ip = _boot_with_dhcp(d, "web", "natnet", nics=[{"network": "natnet", "mac": mac}])
    assert ip == "10.67.0.50"  # the reservation
    assert _ping(d, "web", OUTSIDE_HOST) == 0
    d.console_run("web", "mkdir -p /tmp/www; echo served-by-guest > /tmp/www/index.html; "
                         "busybox httpd -p 80 -h /tmp/www && echo httpd-$((6*7))", "httpd-42")
    d.cli("net-port-forward", "natnet", "add", "--host-port", "8080", "--guest-ip", ip,
          "--guest-port", "80")
    fetch = [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
             f"'http://{OUTSIDE_PEER}:8080/', timeout=5).read().decode())"]
    outside = d.outside  # type: ignore[attr-defined]
    result = subprocess.run(["ip", "netns", "exec", outside, *fetch], capture_output=True,
                            text=True, timeout=30)
    assert "served-by-guest" in result.stdout, result.stderr
    listing = d.cli("net-port-forward", "natnet", "list").stdout
    assert "8080" in listing and ip in listing


def test_dnsmasq_killed_is_restarted_by_the_daemon(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    d.cli("net-define-as", "sup", "--mode", "isolated", "--subnet", "10.68.0.0/24")
    d.cli("net-start", "sup")
    pidfile = next((d.root / "networks").glob("*/dnsmasq.pid"))
    first = int(pidfile.read_text())
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()
             and int(pidfile.read_text()) != first
             and json.loads(d.cli("net-info", "sup", "--json").stdout)["status"]["healthy"],
             20, "dnsmasq to be restarted")


def test_bad_network_requests(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    result = d.cli("net-define-as", "bad", "--subnet", "10.69.0.0/24", "--dhcp-start",
                   "10.70.0.5", "--dhcp-end", "10.70.0.9", check=False)
    assert result.returncode == 1 and "dhcp" in result.stderr.lower()
    d.cli("net-define-as", "one", "--subnet", "10.71.0.0/24")
    d.cli("net-start", "one")
    d.cli("net-define-as", "two", "--subnet", "10.71.0.0/25")
    result = d.cli("net-start", "two", check=False)
    assert result.returncode == 1 and "overlap" in result.stderr.lower()
    with pytest.raises(ApiError) as excinfo:
        d.define("nonet", nics=[{"network": "missing"}])
    assert "network 'missing' is not defined" in excinfo.value.message
    d.define("early", nics=[{"network": "two"}])
    with pytest.raises(ApiError) as excinfo:
        d.client.post(d.client.domain_path("early", "/start"))
    assert "network 'two' is not active" in excinfo.value.message
    assert d.qemu_pids() == []


def test_daemon_restart_keeps_networks_and_guest_connectivity(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    d.cli("net-define-as", "keep", "--mode", "nat", "--subnet", "10.72.0.0/24")
    d.cli("net-start", "keep")
    ip = _boot_with_dhcp(d, "steady", "keep")
    ping = ["ip", "netns", "exec", d.netns or "", "busybox", "ping", "-c", "1", "-W", "3", ip]
    assert subprocess.run(ping, capture_output=True).returncode == 0
    qemu_pid = d.info("steady")["pid"]
    d.kill9()
    d.restart()
    info = json.loads(d.cli("net-info", "keep", "--json").stdout)
    assert info["state"] == "active" and info["status"]["healthy"] is True
    assert d.info("steady")["pid"] == qemu_pid
    assert subprocess.run(ping, capture_output=True).returncode == 0
    assert _ping(d, "steady", OUTSIDE_HOST) == 0


def test_domif_setlink_cuts_and_restores_the_link(netns_daemon: DaemonHandle) -> None:
    d = netns_daemon
    d.cli("net-define-as", "wire", "--mode", "isolated", "--subnet", "10.73.0.0/24")
    d.cli("net-start", "wire")
    ip = _boot_with_dhcp(d, "plug", "wire")
    mac = d.info("plug")["spec"]["nics"][0]["mac"]
    ping = ["ip", "netns", "exec", d.netns or "", "busybox", "ping", "-c", "1", "-W", "2", ip]
    assert subprocess.run(ping, capture_output=True).returncode == 0
    assert "link down" in d.cli("domif-setlink", "plug", mac, "down").stdout
    assert json.loads(d.cli("domiflist", "plug", "--json").stdout)[0]["link"] == "down"
    assert subprocess.run(ping, capture_output=True).returncode != 0
    d.cli("domif-setlink", "plug", mac, "up")
    wait_for(lambda: subprocess.run(ping, capture_output=True).returncode == 0, 15,
             "the guest to answer again")
    result = d.cli("domif-setlink", "plug", "52:54:00:00:00:99", "down", check=False)
    assert result.returncode == 1 and "no interface" in result.stderr
