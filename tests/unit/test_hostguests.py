"""The host guests policy (libvirt-guests' settings) and what it does at daemon stop and
start, with the domain service replaced by a small fake."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from virtkit.cli.main import build_parser
from virtkit.errors import InvalidSpec, StateError
from virtkit.service import hostguests
from virtkit.service.hostguests import HostGuestsService, check_policy, parse_policy
from virtkit.service.models.hostguests import GuestsPolicyChange


def _change(**fields: Any) -> GuestsPolicyChange:
    return GuestsPolicyChange(**fields)


@dataclass
class Row:
    """What the policy reads of a domain's summary."""

    name: str
    state: str


def test_libvirt_guests_syntax_is_read() -> None:
    text = "# comment\nON_SHUTDOWN=suspend\nSHUTDOWN_TIMEOUT='120'\nPARALLEL_SHUTDOWN=2\n"
    assert parse_policy(text).wire() == {"on_shutdown": "managedsave",
                                         "shutdown_timeout": 120, "on_boot": "start"}
    assert parse_policy("") == hostguests.DEFAULTS


@pytest.mark.parametrize("policy", [
    {"on_shutdown": "hibernate"}, {"on_boot": "sometimes"}, {"shutdown_timeout": 0},
    {"shutdown_timeout": "soon"}, {"shutdown_timeout": 10**9}])
def test_bad_values_are_refused_naming_the_setting(policy: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec) as caught:
        check_policy({**hostguests.DEFAULTS.wire(), **policy})
    assert caught.value.field == next(iter(policy))


def test_a_line_without_equals_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="line 2"):
        parse_policy("ON_BOOT=start\nnonsense\n")


class FakeDomains:
    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.calls: list[tuple[str, str]] = []

    def list_domains(self, include_inactive: bool = True) -> list[Row]:
        return [Row(n, s) for n, s in self.states.items()
                if include_inactive or s not in ("shutoff", "crashed")]

    def summary(self, name: str) -> Row:
        return Row(name, self.states[name])

    async def shutdown(self, name: str, *, timeout: float, wait: bool) -> None:
        self.calls.append(("shutdown", name))
        if name != "stubborn":
            self.states[name] = "shutoff"

    async def simple(self, name: str, action: str) -> None:
        self.calls.append((action, name))
        self.states[name] = "shutoff"

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.states[name] = "running"


class FakeManaged:
    def __init__(self, domains: FakeDomains) -> None:
        self.domains = domains

    async def save(self, name: str, *, reason: str) -> None:
        if name == "broken":
            raise StateError("cannot save")
        self.domains.calls.append(("managedsave", name))
        self.domains.states[name] = "shutoff"


def _service(tmp_path: Path, states: dict[str, str]) -> tuple[HostGuestsService, FakeDomains]:
    domains = FakeDomains(states)
    return HostGuestsService(domains, FakeManaged(domains), tmp_path), domains  # type: ignore[arg-type]


def test_ignore_leaves_guests_running(tmp_path: Path) -> None:
    service, domains = _service(tmp_path, {"a": "running"})
    assert asyncio.run(service.on_daemon_stop()) == []
    assert domains.calls == [] and not (tmp_path / "guests-at-shutdown.json").exists()


def test_managedsave_saves_running_and_paused_and_start_brings_them_back(tmp_path: Path
                                                                         ) -> None:
    service, domains = _service(tmp_path, {"a": "running", "b": "paused", "c": "shutoff",
                                           "broken": "running"})
    status = service.set_policy(_change(on_shutdown="suspend", shutdown_timeout=None))
    assert status.on_shutdown == "managedsave"
    assert "ON_SHUTDOWN=managedsave" in (tmp_path / "guests.conf").read_text()
    assert asyncio.run(service.on_daemon_stop()) == ["a", "b"]
    assert json.loads((tmp_path / "guests-at-shutdown.json").read_text()) == ["a", "b"]
    assert service.status().pending == ["a", "b"]
    domains.calls.clear()
    assert asyncio.run(service.on_daemon_start()) == ["a", "b"]
    assert domains.calls == [("start", "a"), ("start", "b")]
    assert service.status().pending == []


def test_on_boot_ignore_leaves_them_off(tmp_path: Path) -> None:
    service, domains = _service(tmp_path, {"a": "running"})
    service.set_policy(_change(on_shutdown="managedsave", on_boot="ignore"))
    asyncio.run(service.on_daemon_stop())
    assert asyncio.run(service.on_daemon_start()) == []
    assert domains.states["a"] == "shutoff" and service.status().pending == []


def test_shutdown_waits_then_destroys_a_guest_that_does_not_power_off(tmp_path: Path
                                                                      ) -> None:
    service, domains = _service(tmp_path, {"a": "running", "stubborn": "running"})
    service.set_policy(_change(on_shutdown="shutdown", shutdown_timeout=5))
    assert asyncio.run(service.on_daemon_stop()) == ["a"]
    assert ("destroy", "stubborn") in domains.calls and ("destroy", "a") not in domains.calls


def test_an_unreadable_policy_keeps_guests_running(tmp_path: Path) -> None:
    service, domains = _service(tmp_path, {"a": "running"})
    (tmp_path / "guests.conf").write_text("ON_SHUTDOWN=explode\n")
    assert asyncio.run(service.on_daemon_stop()) == []
    assert domains.calls == []


def test_host_shutdown_reports_each_guest_and_records_them(tmp_path: Path) -> None:
    service, _domains = _service(tmp_path, {"a": "running", "broken": "running",
                                           "c": "shutoff"})
    lines: list[tuple[str, str]] = []
    result = asyncio.run(service.host_shutdown(lambda n, m: lines.append((n, m))))
    assert result.handled == [] and lines == [
        ("", "ON_SHUTDOWN=ignore: the guests keep running (nothing to do)")]
    service.set_policy(_change(on_shutdown="managedsave"))
    lines.clear()
    result = asyncio.run(service.host_shutdown(lambda n, m: lines.append((n, m))))
    assert (result.handled, result.failed) == (["a"], ["broken"])
    assert lines[:2] == [("a", "saving its memory (managedsave)"),
                         ("a", "saved (managedsave): the next start resumes it")]
    assert lines[2][0] == "broken" and lines[3][1].startswith("managedsave failed")
    assert service.status().pending == ["a"]  # started again at the next daemon start
    # the daemon's own stop afterwards finds only what failed, the record keeps 'a'
    asyncio.run(service.on_daemon_stop())
    assert service.status().pending == ["a"]


def test_host_shutdown_with_the_shutdown_policy(tmp_path: Path) -> None:
    service, _domains = _service(tmp_path, {"a": "running", "stubborn": "running"})
    service.set_policy(_change(on_shutdown="shutdown", shutdown_timeout=7))
    lines: list[tuple[str, str]] = []
    result = asyncio.run(service.host_shutdown(lambda n, m: lines.append((n, m))))
    assert result.handled == ["a"] and result.failed == ["stubborn"]
    assert ("a", "shutting down (up to 7s)") in lines and ("a", "shut down") in lines
    assert ("stubborn", "did not power off within 7s; destroying it") in lines


def test_cli_host_shutdown_guests_needs_no_daemon() -> None:
    args = build_parser().parse_args(["host", "shutdown-guests"])
    assert args.daemon_optional is True  # never starts a daemon at host shutdown
    assert args.func(None, args) == 0


def test_cli_flags_of_managedsave_start_list_undefine() -> None:
    parser = build_parser()
    args = parser.parse_args(["managedsave", "vm", "--paused", "--bypass-cache", "--verbose"])
    assert (args.paused, args.bypass_cache, args.verbose) == (True, True, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["managedsave", "vm", "--paused", "--running"])
    assert parser.parse_args(["start", "vm", "--force-boot"]).force_boot
    assert parser.parse_args(["undefine", "vm", "--managed-save"]).managed_save
    args = parser.parse_args(["list", "--all", "--managed-save", "--with-managed-save"])
    assert args.managed_save and args.with_managed_save
    args = parser.parse_args(["host", "guests", "--on-shutdown", "shutdown",
                              "--shutdown-timeout", "30", "--on-boot", "ignore"])
    assert (args.on_shutdown, args.shutdown_timeout, args.on_boot) == ("shutdown", 30, "ignore")


def test_a_policy_change_is_typed_and_checked() -> None:
    """The API's body is the service's input model: a value outside the policy's words
    or range is refused before the service runs (PUT /v1/host/guests answers 400)."""
    with pytest.raises(ValidationError):
        GuestsPolicyChange.model_validate({"on_shutdown": "hibernate"})
    with pytest.raises(ValidationError):
        GuestsPolicyChange.model_validate({"shutdown_timeout": 10**9})
    assert GuestsPolicyChange.model_validate({"on_boot": "ignore"}).on_shutdown is None
