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
