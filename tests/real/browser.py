"""A real browser for the web console tests: Debian's Chromium driven by Playwright,
and a local account that may log in (a user in the ``virtkit`` group, removed after)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.real.conftest import temporary_account

CHROMIUM = "/usr/bin/chromium"
#: Chromium as root, headless, and quiet on this machine's closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@dataclass
class Account:
    user: str
    password: str


@contextlib.contextmanager
def web_account(in_group: bool = True) -> Iterator[Account]:
    """A new local account with a random password, in the ``virtkit`` group unless
    ``in_group`` is false; removed afterwards."""
    with temporary_account("virtkit" if in_group else None) as (user, _uid, _gid):
        password = secrets.token_urlsafe(12)
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        yield Account(user, password)


@contextlib.contextmanager
def chromium(netns: str | None = None) -> Iterator[Any]:
    """A headless Chromium (Playwright's Browser), inside network namespace ``netns`` when
    given (to reach a daemon that lives there); missing Chromium fails the test."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/setup.sh test does)")
    executable = CHROMIUM
    with contextlib.ExitStack() as stack:
        if netns is not None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vkbrowser-")))
            wrapper = folder / "chromium-in-netns"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {CHROMIUM} "$@"\n')
            wrapper.chmod(0o755)
            executable = str(wrapper)
        yield stack.enter_context(_launched(executable))


@contextlib.contextmanager
def _launched(executable: str) -> Iterator[Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    context = browser.new_context(ignore_https_errors=True,
                                  viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def load(page: Any, url: str) -> None:
    """Load ``url``, once more if Chromium dropped it with ERR_NETWORK_CHANGED: it
    aborts loads when the addresses of its network namespace change, which they do
    while a test's daemon sets up bridges and links there."""
    try:
        page.goto(url)
    except Exception as exc:  # playwright's Error; its text names Chromium's reason
        if "ERR_NETWORK_CHANGED" not in str(exc):
            raise
        page.goto(url)


def log_in(page: Any, base: str, account: Account) -> None:
    load(page, base + "/")
    page.fill("input[name=username]", account.user)
    page.fill("input[name=password]", account.password)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
