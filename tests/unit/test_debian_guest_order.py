"""The tests that share the Debian guest (tests/real/debianguest.py) run as one group, so
one boot serves them all: where the first of them is, the ones that change the guest for
good after the others, the ones that power it off last; every other test keeps its place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.real.conftest import pytest_collection_modifyitems


@dataclass
class FakeItem:
    name: str
    fixturenames: tuple[str, ...] = ()
    marks: dict[str, Any] = field(default_factory=dict)

    def get_closest_marker(self, name: str) -> Any:
        return self.marks.get(name)


def _item(name: str, shared: bool = False, change: Any = None) -> FakeItem:
    marks = {"changes_debian_guest": change.mark} if change is not None else {}
    return FakeItem(name, ("tmp_path", "debian_vm") if shared else ("daemon",), marks)


def test_the_shared_guest_users_run_together_changes_last_power_off_at_the_end() -> None:
    changes, powers_off = pytest.mark.changes_debian_guest, \
        pytest.mark.changes_debian_guest(powers_off=True)
    items = [_item("a"), _item("agent1", True), _item("agent_off", True, powers_off),
             _item("agent2", True), _item("b"), _item("hot_vcpu", True, changes),
             _item("hot1", True), _item("c"), _item("snap_quiesce", True), _item("d")]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.name for i in items] == [
        "a", "agent1", "agent2", "hot1", "snap_quiesce", "hot_vcpu", "agent_off",
        "b", "c", "d"]


def test_a_run_without_them_keeps_its_order() -> None:
    items = [_item("a"), _item("b"), _item("c")]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["a", "b", "c"]


def test_a_guest_that_did_not_boot_fails_the_next_tests_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.real import debianguest

    shared = debianguest.SharedDebian()
    boots: list[int] = []

    def no_boot(self: object, tiny_guest: object) -> object:
        boots.append(1)
        raise AssertionError("timed out after 240.0s waiting for the agent")

    monkeypatch.setattr(debianguest.SharedDebian, "_boot", no_boot)
    with pytest.raises(AssertionError, match="timed out"):
        shared.ready(None)  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception, match="did not boot: timed out"):
        shared.ready(None)  # type: ignore[arg-type]
    assert len(boots) == 1


def test_broken_guests_are_replaced_at_most_max_boots_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.real import debianguest

    shared = debianguest.SharedDebian()
    made: list[object] = []

    def boot(self: debianguest.SharedDebian, tiny_guest: object) -> object:
        self._vm = object()  # type: ignore[assignment]
        made.append(self._vm)
        self.broken = False
        return self._vm

    monkeypatch.setattr(debianguest.SharedDebian, "_boot", boot)
    monkeypatch.setattr(debianguest.SharedDebian, "_healthy", staticmethod(lambda vm: True))
    first = shared.ready(None)  # type: ignore[arg-type]
    assert shared.ready(None) is first  # type: ignore[arg-type]  # healthy: kept
    for _ in range(10):
        shared.broken = True  # a test failed
        shared.ready(None)  # type: ignore[arg-type]
    assert len(made) == debianguest.MAX_BOOTS
