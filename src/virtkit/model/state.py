"""Domain lifecycle states and the one table of allowed transitions.

Every lifecycle request names an :class:`Action`.  :func:`check_action` looks
it up in :data:`ACTIONS` and raises :class:`StateError` naming both the
current state and the states the action needs; :func:`allows` answers the same
question for a caller that words its own refusal (migrate, clone, snapshot, block
jobs, the guest agent ...).  No module outside this one lists states by hand.
Runtime code moves a domain between states only through :func:`check_transition`,
so a state the table does not allow can never be stored.
"""

from __future__ import annotations

from enum import StrEnum

from virtkit.errors import StateError


class State(StrEnum):
    """What a domain is doing now (libvirt's names, where they exist)."""

    SHUTOFF = "shutoff"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "in shutdown"
    CRASHED = "crashed"


class Action(StrEnum):
    """A lifecycle request a user can make."""

    START = "start"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    RESET = "reset"
    DESTROY = "destroy"
    SUSPEND = "suspend"
    RESUME = "resume"
    SAVE = "save"
    RESTORE = "restore"
    UNDEFINE = "undefine"
    #: live migration (the shut-off one is --offline and needs no state)
    MIGRATE = "migrate"
    #: a clone whose disks hold still while they are copied (a running guest's need
    #: --force: the guest agent freezes its file systems); LINKED_CLONE: its image
    #: becomes the shared base
    CLONE = "clone"
    LINKED_CLONE = "linked clone"
    SNAPSHOT = "snapshot"
    REVERT = "revert"
    #: a change of the running QEMU's devices or tuning (hotplug, --live)
    LIVE_CHANGE = "live change"
    #: a block job (blockcommit, blockpull, blockcopy, blockresize) on a live disk
    BLOCK_JOB = "block job"
    #: a guest agent command: the guest's vCPUs must run to answer
    AGENT = "agent"


S = State

#: action -> the states it may be requested in.
ACTIONS: dict[Action, frozenset[State]] = {
    Action.START: frozenset({S.SHUTOFF, S.CRASHED}),
    Action.SHUTDOWN: frozenset({S.RUNNING, S.SHUTTING_DOWN}),
    Action.REBOOT: frozenset({S.RUNNING}),
    Action.RESET: frozenset({S.RUNNING, S.PAUSED}),
    Action.DESTROY: frozenset({S.RUNNING, S.PAUSED, S.SHUTTING_DOWN, S.CRASHED}),
    Action.SUSPEND: frozenset({S.RUNNING}),
    Action.RESUME: frozenset({S.PAUSED}),
    Action.SAVE: frozenset({S.RUNNING, S.PAUSED}),
    Action.RESTORE: frozenset({S.SHUTOFF, S.CRASHED}),
    Action.UNDEFINE: frozenset({S.SHUTOFF, S.CRASHED}),
    Action.MIGRATE: frozenset({S.RUNNING, S.PAUSED}),
    Action.CLONE: frozenset({S.SHUTOFF, S.CRASHED, S.PAUSED}),
    Action.LINKED_CLONE: frozenset({S.SHUTOFF, S.CRASHED}),
    Action.SNAPSHOT: frozenset({S.RUNNING, S.PAUSED, S.SHUTOFF}),
    Action.REVERT: frozenset({S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Action.LIVE_CHANGE: frozenset({S.RUNNING, S.PAUSED, S.SHUTTING_DOWN}),
    Action.BLOCK_JOB: frozenset({S.RUNNING, S.PAUSED}),
    Action.AGENT: frozenset({S.RUNNING, S.SHUTTING_DOWN}),
}

#: state -> the states it may move to.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.SHUTOFF: frozenset({S.RUNNING, S.PAUSED}),
    S.RUNNING: frozenset({S.PAUSED, S.SHUTTING_DOWN, S.SHUTOFF, S.CRASHED}),
    S.PAUSED: frozenset({S.RUNNING, S.SHUTOFF, S.CRASHED}),
    S.SHUTTING_DOWN: frozenset({S.RUNNING, S.SHUTOFF, S.CRASHED}),
    S.CRASHED: frozenset({S.RUNNING, S.PAUSED, S.SHUTOFF}),
}

#: states in which a QEMU process may exist for the domain.
ACTIVE_STATES = frozenset({S.RUNNING, S.PAUSED, S.SHUTTING_DOWN})
#: states with no QEMU (a crashed one kept for inspection aside): the domain may start
INACTIVE_STATES = frozenset(State) - ACTIVE_STATES
#: states in which the guest's vCPUs run (its disks change under a copy)
GUEST_RUNS = frozenset({S.RUNNING, S.SHUTTING_DOWN})

_FIXES: dict[tuple[Action, State], str] = {
    (Action.START, S.RUNNING): "it is already running; 'virtkit destroy' stops it",
    (Action.START, S.PAUSED): "use 'virtkit resume'",
    (Action.UNDEFINE, S.RUNNING): "stop it first with 'virtkit shutdown' or 'virtkit destroy'",
    (Action.UNDEFINE, S.PAUSED): "stop it first with 'virtkit destroy'",
    (Action.SHUTDOWN, S.PAUSED): "resume it first, or use 'virtkit destroy'",
    (Action.SUSPEND, S.PAUSED): "it is already paused",
    (Action.RESUME, S.RUNNING): "it is not paused",
}


def _describe(states: frozenset[State]) -> str:
    names = sorted(state.value for state in states)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def allows(action: Action, current: State) -> bool:
    """Whether ``action`` may be requested in state ``current`` (the caller words its
    own refusal; :func:`check_action` raises the table's)."""
    return current in ACTIONS[action]


def check_action(action: Action, current: State, name: str) -> None:
    """Raise StateError unless ``action`` may be requested while ``name`` is ``current``."""
    allowed = ACTIONS[action]
    if current in allowed:
        return
    fix = _FIXES.get((action, current))
    if fix is None:
        fix = f"{action.value} needs the domain to be {_describe(allowed)}"
    raise StateError(
        f"cannot {action.value} domain '{name}': it is {current.value}",
        current=current.value,
        requested=action.value,
        fix=fix,
    )


def check_transition(current: State, target: State, name: str) -> None:
    """Raise StateError unless the table allows moving ``name`` from ``current`` to ``target``."""
    if current == target or target in TRANSITIONS[current]:
        return
    raise StateError(
        f"domain '{name}' cannot go from {current.value} to {target.value}",
        current=current.value,
        requested=target.value,
    )
