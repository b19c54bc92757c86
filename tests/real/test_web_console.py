"""The web console end to end (issue 7): a real virtkitd with --web, real QEMU, and
Debian's Chromium driven by Playwright, doing what a virt-manager user does.

Log in with a local account; create an "iso" and a "kvm-vm" pool; upload the test
installer ISO; run the New VM wizard (local install media -> the ISO -> OS ->
memory and CPUs -> a new volume -> no network -> finish); watch the VNC canvas draw;
wait for the installed system; type into the serial console and read the answer;
take a snapshot; shut the VM down and delete it with the list's bulk actions.

Set VIRTKIT_WEB_SCREENSHOTS=DIR to keep screenshots of the main pages there (the
ones in docs/screenshots/ were made so).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.browser import Account, chromium, log_in, new_page, web_account
from tests.real.conftest import DaemonHandle, free_port, running_daemon, wait_for
from virtkit.images.installer import DONE_MARKER, Installer, build_installer
from virtkit.images.tinyguest import BOOT_MARKER, TinyGuest

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def web_daemon(tiny_guest: TinyGuest) -> Iterator[tuple[DaemonHandle, str]]:
    port = free_port()
    with running_daemon(tiny_guest, ("--web", f"127.0.0.1:{port}")) as daemon:
        yield daemon, f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    with web_account() as acc:
        yield acc


def shot(page: Any, name: str) -> None:
    folder = os.environ.get("VIRTKIT_WEB_SCREENSHOTS")
    target = Path(folder) if folder else Path(tempfile.gettempdir())
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"))


def canvas_lit_pixels(page: Any) -> int:
    """How many pixels of noVNC's canvas are lit (text or graphics; 0 = blank), counted
    only while the canvas is really on screen (a zero-height box shows nothing)."""
    return int(page.evaluate("""() => {
        const c = document.querySelector('#vnc-screen canvas');
        if (!c || !c.width || c.getBoundingClientRect().height < 100) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 96) lit++;
        return lit;
    }"""))


def terminal_text(page: Any) -> str:
    return str(page.evaluate(
        "() => (document.querySelector('#serial-terminal .xterm-rows') || {}).innerText || ''"))


def test_new_vm_wizard_to_delete_in_the_browser(
        web_daemon: tuple[DaemonHandle, str], account: Account, tmp_path: Path) -> None:
    daemon, base = web_daemon
    installer: Installer = build_installer()
    with chromium() as browser:
        page = new_page(browser)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(page, base, account)
        assert page.inner_text("#who") == account.user
        page.locator("table[aria-label='Host check'] td", has_text="qemu-img").first.wait_for()
        shot(page, "host")
        assert page.inner_text("#accelerator") in ("tcg", "kvm")

        # -- storage: two pools, then the ISO uploaded into one of them -------------------
        for name in ("iso", "kvm-vm"):
            page.goto(base + "/#/storage")
            form = page.locator("form[aria-label='Create a pool']")
            form.locator("input[name=name]").fill(name)
            form.locator("input[name=target]").fill(str(tmp_path / name))
            form.locator("button[type=submit]").click()
            page.wait_for_selector(f"text=Volumes in {name}")
        assert {p["name"] for p in daemon.client.get("/v1/pools")} >= {"iso", "kvm-vm"}
        page.goto(base + "/#/storage/iso")
        page.wait_for_selector("text=Volumes in iso")
        page.set_input_files("form[aria-label='Upload a file'] input[type=file]",
                             str(installer.iso))
        page.click("form[aria-label='Upload a file'] button[type=submit]")
        page.wait_for_selector(f"table[aria-label='Volumes in iso'] >> text={installer.iso.name}",
                               timeout=120_000)  # the page reloads the list when done
        volumes = daemon.client.get("/v1/pools/iso/volumes")
        uploaded = next(v for v in volumes if v["name"] == installer.iso.name)
        assert uploaded["capacity"] == installer.iso.stat().st_size
        shot(page, "storage")

        # -- the New VM wizard --------------------------------------------------------------
        page.goto(base + "/#/new")
        page.wait_for_selector("#wizard")
        page.check("input[name=method][value=cdrom]")
        page.select_option("select[name=isoPool]", "iso")
        page.select_option("select[name=iso]", uploaded["path"])
        page.click("#wizard button[type=submit]")  # -> operating system
        page.fill("input[name=os]", "generic")
        page.click("#wizard button[type=submit]")  # -> memory and CPUs
        page.fill("input[name=memory]", "256")
        page.fill("input[name=vcpus]", "1")
        page.click("#wizard button[type=submit]")  # -> storage
        page.check("input[name=storage][value=new]")
        page.select_option("select[name=diskPool]", "kvm-vm")
        page.fill("input[name=size]", "1")
        page.click("#wizard button[type=submit]")  # -> network
        page.select_option("select[name=network]", "")
        page.click("#wizard button[type=submit]")  # -> finish
        # the name pattern compiles in Chromium (its v-flag regexes refuse an unescaped
        # '-' in a class, and then drop the check silently)
        page.fill("input[name=name]", "-bad name")
        assert page.eval_on_selector("input[name=name]", "e => e.validity.patternMismatch")
        page.fill("input[name=name]", "webvm")
        assert not page.eval_on_selector("input[name=name]", "e => e.validity.patternMismatch")
        assert "--cdrom" in page.inner_text("#equivalent")
        shot(page, "new-vm")
        page.click("#finish")
        page.wait_for_url("**/#/vm/webvm/console")
        info = daemon.info("webvm")
        assert info["state"] == "running" and info["installing"]
        assert [d["pool"] for d in info["spec"]["disks"] if d.get("pool")] == ["kvm-vm"]

        # -- the graphical console draws ---------------------------------------------------
        page.wait_for_selector("#vnc-status:has-text('connected')")
        wait_for(lambda: canvas_lit_pixels(page) > 200, 90, "the VNC canvas to show text")
        shot(page, "vnc-console")

        # -- the installer runs, then the installed system boots -----------------------------
        wait_for(lambda: DONE_MARKER in daemon.console_log("webvm"), 300, "the installer")
        wait_for(lambda: BOOT_MARKER in daemon.console_log("webvm").split(DONE_MARKER)[-1],
                 180, "the installed system to boot")

        # -- the serial console answers ------------------------------------------------------
        page.goto(base + "/#/vm/webvm/serial")
        page.wait_for_selector("#serial-status:has-text('connected')")
        page.click("#serial-terminal")
        page.keyboard.type("echo web-$((6*7))\n")
        wait_for(lambda: "web-42" in terminal_text(page), 30, "the guest's answer")
        shot(page, "serial-console")

        # -- a snapshot -----------------------------------------------------------------
        page.goto(base + "/#/vm/webvm/snapshots")
        form = page.locator("form[aria-label='Take a snapshot']")
        form.locator("input[name=name]").fill("before-shutdown")
        form.locator("button[type=submit]").click()
        page.wait_for_selector("table[aria-label=Snapshots] >> text=before-shutdown",
                               timeout=120_000)
        snapshots = daemon.client.get(daemon.client.domain_path("webvm", "/snapshots"))
        assert [s["name"] for s in snapshots] == ["before-shutdown"]
        created = page.locator("table[aria-label=Snapshots] tr", has_text="before-shutdown"
                               ).locator("td").nth(1).inner_text()
        assert created.strip() not in ("", "-"), "the Created column shows the time"

        # -- hardware: a new volume attached live, the CD changed, the disk removed --------
        page.goto(base + "/#/storage/kvm-vm")
        form = page.locator("form[aria-label='New volume']")
        form.locator("input[name=name]").fill("extra.qcow2")
        form.locator("input[name=capacity]").fill("64M")
        form.locator("button[type=submit]").click()
        page.wait_for_selector("table[aria-label='Volumes in kvm-vm'] >> text=extra.qcow2")
        page.goto(base + "/#/vm/webvm/hardware")
        form = page.locator("form[aria-label='Add a disk']")
        form.locator("select[name=pool]").select_option("kvm-vm")
        page.wait_for_selector("select[name=volume] option[value='extra.qcow2']",
                               state="attached")
        own = next(d["volume"] for d in info["spec"]["disks"] if d.get("pool") == "kvm-vm")
        # a volume a VM uses is listed but cannot be chosen for another disk
        assert page.eval_on_selector(f"select[name=volume] option[value='{own}']",
                                     "o => o.disabled")
        form.locator("select[name=volume]").select_option("extra.qcow2")
        form.locator("button[type=submit]").click()
        page.wait_for_selector("table[aria-label=Disks] >> text=extra.qcow2")
        live = daemon.client.get(daemon.client.domain_path("webvm", "/disks"))
        added = next(d for d in live if (d.get("path") or "").endswith("extra.qcow2"))
        cdrom = next(d for d in live if d["device"] == "cdrom")
        page.locator("table[aria-label=Disks] tr", has_text=cdrom["target"]).locator(
            "button:has-text('Change media')").click()
        page.fill("dialog input[aria-label='ISO path']", uploaded["path"])
        page.click("dialog button[value=yes]")
        page.locator("table[aria-label=Disks] td", has_text=uploaded["path"]).wait_for()
        page.locator("table[aria-label=Disks] tr", has_text=added["target"]).locator(
            "button:has-text('Remove')").click()
        page.click("dialog button[value=yes]")
        wait_for(lambda: all(d["target"] != added["target"] for d in daemon.client.get(
            daemon.client.domain_path("webvm", "/disks?inactive=1"))), 30,
            "the disk to leave the definition")
        shot(page, "hardware")

        # -- the list, live; then bulk shut down and bulk delete ----------------------------
        page.goto(base + "/#/vms")
        row = page.locator("#vm-rows tr[data-name=webvm]")
        row.locator("text=running").wait_for()
        shot(page, "vm-list")
        row.locator("input[type=checkbox]").check()
        page.click("button:has-text('Shut down')")
        wait_for(lambda: daemon.state("webvm") == "shutoff", 120, "the guest to power off")
        row.locator("text=shutoff").wait_for()  # the list follows the event feed
        page.goto(base + "/#/vm/webvm/overview")  # no console tabs for a shut-off VM
        page.wait_for_selector("#tab-console", state="hidden")
        assert page.locator("#tab-serial").is_hidden()
        # -- a clone of the shut-off VM, then both deleted at once -----------------------
        page.goto(base + "/#/vm/webvm/clone")
        page.fill("form[aria-label=Clone] input[name=name]", "webvm-copy")
        page.click("form[aria-label=Clone] button[type=submit]")
        page.wait_for_url("**/#/vm/webvm-copy", timeout=120_000)
        assert daemon.info("webvm-copy")["spec"]["disks"][0]["path"] != \
            daemon.info("webvm")["spec"]["disks"][0]["path"]
        page.goto(base + "/#/events")
        page.wait_for_selector("ul.events >> text=webvm-copy")
        page.goto(base + "/#/vms")
        page.fill("input[type=search]", "webvm")
        page.check("thead input[type=checkbox]")  # select all shown
        page.click("button:has-text('Delete')")
        page.click("dialog button[value=yes]")
        page.wait_for_selector("#vm-rows tr[data-name]", state="detached", timeout=15_000)
        assert [d["name"] for d in daemon.client.get("/v1/domains?all=1")] == []
        assert errors == []
        assert page.locator(".toast.error").all_inner_texts() == []
