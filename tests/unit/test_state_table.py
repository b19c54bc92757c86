"""The lifecycle tables: every (action, state) and (state, state) pair against check_*."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from virtkit.errors import StateError
from virtkit.model.state import (
    ACTIONS,
    ACTIVE_STATES,
    GUEST_RUNS,
    INACTIVE_STATES,
    TRANSITIONS,
    Action,
    State,
    allows,
    check_action,
    check_transition,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "virtkit"

#: where each action leaves the domain when it succeeds (None: it stays where it is).
ACTION_TARGETS: dict[Action, frozenset[State] | None] = {
    Action.START: frozenset({State.RUNNING, State.PAUSED}),  # --paused
    Action.SHUTDOWN: frozenset({State.SHUTTING_DOWN, State.SHUTOFF}),
    Action.REBOOT: frozenset({State.SHUTTING_DOWN}),
    Action.RESET: None,
    Action.DESTROY: frozenset({State.SHUTOFF}),
    Action.SUSPEND: frozenset({State.PAUSED}),
    Action.RESUME: frozenset({State.RUNNING}),
    Action.SAVE: frozenset({State.SHUTOFF}),
    Action.RESTORE: frozenset({State.RUNNING, State.PAUSED}),
    Action.UNDEFINE: None,
    Action.MIGRATE: frozenset({State.PAUSED, State.SHUTOFF}),  # switch-over, handed over
    Action.CLONE: None,
    Action.LINKED_CLONE: None,
    Action.SNAPSHOT: None,
    Action.REVERT: frozenset({State.RUNNING, State.PAUSED, State.SHUTOFF}),
    Action.LIVE_CHANGE: None,
    Action.BLOCK_JOB: None,
    Action.AGENT: None,
}


@pytest.mark.parametrize(("action", "state"), list(itertools.product(Action, State)),
                         ids=lambda v: v.name)
def test_check_action_follows_the_table(action: Action, state: State) -> None:
    if state in ACTIONS[action]:
        check_action(action, state, "web")
        return
    with pytest.raises(StateError) as info:
        check_action(action, state, "web")
    exc = info.value
    assert f"cannot {action.value} domain 'web'" in exc.message
    assert f"it is {state.value}" in exc.message
    assert (exc.current, exc.requested) == (state.value, action.value)
    assert exc.details == {"current": state.value, "requested": action.value}
    assert exc.fix  # every refusal says what to do
    assert exc.http_status == 409


@pytest.mark.parametrize(("current", "target"), list(itertools.product(State, State)),
                         ids=lambda v: v.name)
def test_check_transition_follows_the_table(current: State, target: State) -> None:
    if current == target or target in TRANSITIONS[current]:
        check_transition(current, target, "web")
        return
    with pytest.raises(StateError) as info:
        check_transition(current, target, "web")
    exc = info.value
    assert f"domain 'web' cannot go from {current.value} to {target.value}" == exc.message
    assert (exc.current, exc.requested) == (current.value, target.value)


def test_tables_cover_every_state_and_action() -> None:
    assert set(TRANSITIONS) == set(State)
    assert set(ACTIONS) == set(Action)
    for action, states in ACTIONS.items():
        assert states, f"{action} is allowed in no state"
        assert states <= set(State)
    for state, targets in TRANSITIONS.items():
        assert state not in targets, f"{state} lists itself; self-moves are implicit"
        assert targets <= set(State)


def test_every_state_is_reachable_and_left() -> None:
    reachable = set().union(*TRANSITIONS.values())
    assert reachable == set(State)
    assert all(TRANSITIONS[state] for state in State)


def test_active_states() -> None:
    assert set(State) >= ACTIVE_STATES
    assert State.SHUTOFF not in ACTIVE_STATES
    assert {State.RUNNING, State.PAUSED, State.SHUTTING_DOWN} <= ACTIVE_STATES
    # a process may exist only in an active state: what needs none must not need one
    for action in (Action.START, Action.RESTORE, Action.UNDEFINE):
        assert ACTIONS[action] <= INACTIVE_STATES, action
    # ... and what talks to QEMU needs one
    for action in (Action.SHUTDOWN, Action.REBOOT, Action.RESET, Action.SUSPEND,
                   Action.RESUME, Action.SAVE, Action.MIGRATE, Action.LIVE_CHANGE,
                   Action.BLOCK_JOB, Action.AGENT):
        assert ACTIONS[action] <= ACTIVE_STATES, action
    # destroy works in every active state; every inactive state can be started
    assert ACTIONS[Action.DESTROY] >= ACTIVE_STATES
    assert ACTIONS[Action.START] == INACTIVE_STATES


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name)
def test_action_outcomes_are_allowed_transitions(action: Action) -> None:
    """What an allowed action does must be a move the transition table allows."""
    targets = ACTION_TARGETS[action]
    for state in ACTIONS[action]:
        for target in targets or ():
            check_transition(state, target, "web")


def test_fixes_are_specific_where_given() -> None:
    with pytest.raises(StateError) as info:
        check_action(Action.START, State.RUNNING, "web")
    assert "already running" in (info.value.fix or "")
    with pytest.raises(StateError) as info:
        check_action(Action.RESUME, State.SHUTOFF, "web")
    assert info.value.fix == "resume needs the domain to be paused"
    with pytest.raises(StateError) as info:
        check_action(Action.SAVE, State.SHUTOFF, "web")
    assert info.value.fix == "save needs the domain to be paused or running"


@pytest.mark.parametrize(("action", "state"), list(itertools.product(Action, State)),
                         ids=lambda v: v.name)
def test_allows_is_the_table(action: Action, state: State) -> None:
    assert allows(action, state) is (state in ACTIONS[action])


def test_the_table_says_what_the_ad_hoc_checks_said() -> None:
    """The rules that were spelled as ``state in (...)`` across runtime and service."""
    assert ACTIONS[Action.MIGRATE] == {State.RUNNING, State.PAUSED}
    assert ACTIONS[Action.BLOCK_JOB] == {State.RUNNING, State.PAUSED}
    assert ACTIONS[Action.LIVE_CHANGE] == ACTIVE_STATES
    assert ACTIONS[Action.AGENT] == GUEST_RUNS == {State.RUNNING, State.SHUTTING_DOWN}
    assert ACTIONS[Action.LINKED_CLONE] == INACTIVE_STATES == {State.SHUTOFF, State.CRASHED}
    assert frozenset(State) - ACTIONS[Action.CLONE] == GUEST_RUNS  # those need --force
    assert ACTIONS[Action.SNAPSHOT] == {State.RUNNING, State.PAUSED, State.SHUTOFF}
    assert ACTIONS[Action.REVERT] == frozenset(State) - {State.SHUTTING_DOWN}


def _state_sets(tree: ast.AST) -> list[int]:
    """Lines of tuple/list/set literals of two or more ``State.X`` members."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(elt, ast.Attribute) and isinstance(elt.value, ast.Name)
                and elt.value.id in ("State", "S") for elt in node.elts):
            lines.append(node.lineno)
    return lines


def test_no_state_lists_outside_the_table() -> None:
    """A state rule lives in model/state.py (as Cloud Hypervisor routes every change
    through one valid_transition): no other module lists domain states by hand."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "model" / "state.py":
            continue
        for line in _state_sets(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(SRC)}:{line}")
    assert not found, f"states listed outside model/state.py (add an Action): {found}"
