"""Asking a guest to power off or reboot: by ACPI or through its agent (virsh's
``--mode``), and QEMU's reaction to a guest power-off (``set-action``), which an
in-place reboot switches to "pause" for its duration (runtime/lifecycle.py)."""

from __future__ import annotations

import contextlib

from virtkit.errors import AgentUnavailable, VirtkitError
from virtkit.runtime.launcher import Running


async def request_shutdown(name: str, running: Running, modes: tuple[str, ...],
                           reboot: bool) -> str:
    """Ask the guest to go down (or, through the agent, to reboot itself when
    ``reboot``) by the first of ``modes`` that works; return its name."""
    failure: VirtkitError | None = None
    for mode in modes:
        try:
            if mode == "acpi":
                await running.monitor.system_powerdown()
            elif running.agent is None or running.agent_open is False:
                raise AgentUnavailable(
                    f"domain '{name}' has no connected guest agent to shut it down",
                    fix="use --mode acpi, or start qemu-guest-agent in the guest")
            else:  # the guest agent: the guest's own clean shutdown, no ACPI needed
                await running.agent.shutdown("reboot" if reboot else "powerdown")
            return mode
        except VirtkitError as exc:
            failure = exc
    assert failure is not None
    raise failure


async def pause_on_power_off(running: Running) -> None:
    """A guest power-off now pauses QEMU instead of ending it (to reset it in place)."""
    await running.monitor.set_action(shutdown="pause")


async def restore_power_off(running: Running) -> None:
    """Back to QEMU's default: a guest power-off ends the process."""
    with contextlib.suppress(VirtkitError):
        await running.monitor.set_action(shutdown="poweroff")
