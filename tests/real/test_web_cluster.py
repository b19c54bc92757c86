"""The web console in a cluster (docs/web.md, "Cluster"): three namespaced hosts, the
console served by host a, the browser (Chromium) in a's namespace.  The Cluster page
shows every host up with etcd's quorum and leader; the VM list shows b's VM with its
host; Start on it in a's page runs it on b (a carried it to b's cluster API)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.real.browser import Account, chromium, log_in, new_page, web_account
from tests.real.clusterhosts import ADDRESSES, form_cluster, three_hosts
from tests.real.conftest import DaemonHandle, free_port, wait_for
from tests.real.test_web_console import shot

pytestmark = pytest.mark.qemu
PORT = free_port()


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, DaemonHandle]]:
    with three_hosts({"a": ("--web", f"127.0.0.1:{PORT}")}) as handles:
        form_cluster(handles)
        yield handles


@pytest.fixture
def account() -> Iterator[Account]:
    with web_account() as acc:
        yield acc


def test_cluster_page_and_a_vm_of_another_host_started_from_the_list(
        hosts: dict[str, DaemonHandle], account: Account) -> None:
    a, b = hosts["a"], hosts["b"]
    a.client.post("/v1/domains?host=b", {"spec": {"name": "web-b", "memory": 64,
                                                  "vcpus": 1}})
    with chromium(a.netns) as browser:
        page = new_page(browser)
        log_in(page, f"https://127.0.0.1:{PORT}", account)
        page.click("nav a[data-nav=hosts]")
        rows = page.locator("table[aria-label=Hosts] tbody tr")
        for name in ADDRESSES:
            rows.filter(has_text=ADDRESSES[name]).locator(".state.up").wait_for()
        assert page.locator("#cluster-quorum").inner_text() == "yes"
        assert page.locator("#cluster-leader").inner_text() in ADDRESSES
        assert "3/3 healthy, quorum 2" in page.locator("dl[aria-label='Cluster status']"
                                                        ).inner_text()
        shot(page, "cluster-hosts")

        page.click("nav a[data-nav=vms]")
        row = page.locator("#vm-rows tr[data-name=web-b]")
        row.locator("td.host", has_text="b").wait_for()
        row.locator("input[type=checkbox]").check()
        page.locator("button", has_text="Start").click()
        page.locator(".toast", has_text="Start: done for 1 VM(s)").wait_for()
        row.locator(".state.running").wait_for()
        shot(page, "cluster-vms")
    state = next(r for r in b.client.get("/v1/domains?all=1") if r["name"] == "web-b")
    assert state["state"] == "running" and state["pid"]
    # b was asked by host a, for the console's user, over b's cluster API
    audit = [json.loads(line) for line in (b.root / "log" / "audit.log").read_text()
             .splitlines()]
    assert [(r["user"], r["status"]) for r in audit if r["path"] == "/v1/domains/web-b/start"
            ] == [(f"host:a for {account.user}", 200)]
    a.cli("destroy", "web-b")
    a.cli("undefine", "web-b")
    wait_for(lambda: all(r["name"] != "web-b" for r in b.client.get("/v1/domains?all=1")),
             10, "web-b gone")
