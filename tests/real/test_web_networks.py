"""The web console's Networks page (issue 7) against real bridges, dnsmasq and nftables.

The daemon lives in a network namespace of the test (as in test_networks.py), and so
does the browser (Chromium started through ``ip netns exec``), so nothing the page
creates touches the real host.  Create a NAT network in the page; boot a guest on it
that takes a DHCP lease; see the lease, add a reservation and a port forward in the
page; see a bad subnet refused in plain words.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.real.browser import Account, chromium, log_in, new_page, web_account
from tests.real.conftest import DaemonHandle, daemon_in_netns, free_port
from tests.real.test_networks import _boot_with_dhcp
from tests.real.test_web_console import shot
from virtkit.images.tinyguest import TinyGuest

pytestmark = pytest.mark.qemu


@pytest.fixture
def web_netns(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, str]]:
    port = free_port()
    with daemon_in_netns(tiny_guest, ("--web", f"127.0.0.1:{port}")) as daemon:
        yield daemon, f"https://127.0.0.1:{port}"


@pytest.fixture
def account() -> Iterator[Account]:
    with web_account() as acc:
        yield acc


def test_networks_page_creates_a_nat_network_and_shows_leases_and_forwards(
        web_netns: tuple[DaemonHandle, str], account: Account) -> None:
    daemon, base = web_netns
    with chromium(daemon.netns) as browser:
        page = new_page(browser)
        log_in(page, base, account)
        page.goto(base + "/#/networks")
        form = page.locator("form[aria-label='Create a network']")
        form.locator("input[name=name]").fill("bad")
        form.locator("input[name=subnet]").fill("10.300.0.0/24")
        form.locator("button[type=submit]").click()
        page.locator(".toast.error").first.wait_for()
        assert "subnet" in page.locator(".toast.error").first.inner_text().lower()
        assert daemon.client.get("/v1/networks") == []

        form.locator("input[name=name]").fill("lab")
        form.locator("select[name=mode]").select_option("nat")
        form.locator("input[name=subnet]").fill("10.77.0.0/24")
        form.locator("button[type=submit]").click()
        page.wait_for_url("**/#/networks/lab")
        page.locator("table[aria-label=Networks] tr", has_text="lab").locator(
            "text=active").wait_for()
        info = daemon.client.get("/v1/networks/lab")
        assert info["state"] == "active" and info["mode"] == "nat"

        ip = _boot_with_dhcp(daemon, "netvm", "lab")
        assert ip.startswith("10.77.0.")
        mac = daemon.info("netvm")["spec"]["nics"][0]["mac"]
        page.reload()  # the same URL: a new goto would not reload the page
        page.wait_for_selector("#app:not([hidden])")
        page.locator("table[aria-label='DHCP leases'] td", has_text=ip).wait_for()

        form = page.locator("form[aria-label='Add a DHCP reservation']")
        form.locator("input[name=mac]").fill(mac)
        form.locator("input[name=ip]").fill("10.77.0.50")
        form.locator("button[type=submit]").click()
        page.locator("table[aria-label='DHCP reservations'] td", has_text="10.77.0.50").wait_for()
        hosts = daemon.client.get("/v1/networks/lab")["spec"]["dhcp"]["hosts"]
        assert [(h["mac"], h["ip"]) for h in hosts] == [(mac, "10.77.0.50")]

        form = page.locator("form[aria-label='Add a port forward']")
        form.locator("input[name=host_port]").fill("8080")
        form.locator("input[name=guest_ip]").fill(ip)
        form.locator("input[name=guest_port]").fill("80")
        form.locator("button[type=submit]").click()
        page.locator("table[aria-label='Port forwards'] td", has_text=f"{ip}:80").wait_for()
        forwards = daemon.client.get("/v1/networks/lab")["spec"]["forwards"]
        assert [(f["host_port"], f["guest_ip"], f["guest_port"]) for f in forwards] == \
            [(8080, ip, 80)]
        shot(page, "networks")
