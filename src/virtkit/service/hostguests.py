"""What happens to guests when the daemon stops and starts: libvirt-guests' job.

The policy lives in ``<root>/guests.conf`` in libvirt-guests' own syntax
(``/etc/default/libvirt-guests``)::

    ON_SHUTDOWN=managedsave     # ignore (default) | shutdown | managedsave (alias: suspend)
    SHUTDOWN_TIMEOUT=300        # seconds the guests get to power off (shutdown)
    ON_BOOT=start               # start (default) | ignore

``ON_SHUTDOWN`` acts when virtkitd is told to stop (SIGTERM: ``systemctl stop``,
host shutdown).  With ``ignore`` the guests keep running and the next daemon
reattaches them (a daemon restart or upgrade); ``managedsave`` writes each
running guest's memory to its managed save image (the next ``start`` resumes it);
``shutdown`` asks them all to power off at once and waits up to
``SHUTDOWN_TIMEOUT`` seconds, then stops the ones still running (logged).  The
domains handled are recorded in ``<root>/guests-at-shutdown.json``; at the next
daemon start, ``ON_BOOT=start`` starts them again (restoring their managed save
images), ``ignore`` leaves them off (their images stay for a later ``start``).
Autostart domains start in either case, as before.

At host shutdown under systemd, ``virtkit-guests.service`` (contrib/) runs the policy
first, through the running daemon (:meth:`HostGuestsService.host_shutdown`, ``virtkit
host shutdown-guests`` or ``virtkitd --on-host-shutdown``), while the network and
storage are still up; the daemon's own stop then finds no guest left to handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from virtkit.errors import InvalidSpec, VirtkitError
from virtkit.model.state import INACTIVE_STATES, Action, State, allows
from virtkit.service.domains import DomainService
from virtkit.service.managedsave import ManagedSaveService
from virtkit.service.models.hostguests import (
    MAX_TIMEOUT,
    GuestsHandled,
    GuestsPolicy,
    GuestsPolicyChange,
    GuestsStatus,
)

log = logging.getLogger(__name__)

ON_SHUTDOWN = ("ignore", "shutdown", "managedsave")
ON_BOOT = ("start", "ignore")
DEFAULTS = GuestsPolicy(on_shutdown="ignore", shutdown_timeout=300, on_boot="start")
_KEYS = {"ON_SHUTDOWN": "on_shutdown", "SHUTDOWN_TIMEOUT": "shutdown_timeout",
         "ON_BOOT": "on_boot"}
__all__ = ["MAX_TIMEOUT", "HostGuestsService", "check_policy", "parse_policy"]

#: told each step of the policy: (guest name or "", what happens)
Report = Callable[[str, str], None]


def _log_report(name: str, message: str) -> None:
    failed = "failed" in message or "did not" in message
    log.log(logging.ERROR if failed else logging.INFO, "guests: %s: %s", name, message)


def parse_policy(text: str, source: str = "guests.conf") -> GuestsPolicy:
    """libvirt-guests' KEY=VALUE lines (comments, quotes and unknown keys allowed)."""
    policy: dict[str, object] = dict(DEFAULTS.wire())
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidSpec(f"{source} line {number}: {raw.strip()!r} is not KEY=VALUE")
        if key.strip() in _KEYS:
            policy[_KEYS[key.strip()]] = value.strip().strip("'\"")
    return check_policy(policy, source)


def check_policy(policy: Mapping[str, object], source: str = "policy") -> GuestsPolicy:
    """The policy of ``policy``'s values as written (text from guests.conf, or a
    request's values): known values only; 'suspend' is libvirt-guests' managedsave."""
    on_shutdown = str(policy["on_shutdown"]).lower()
    on_shutdown = "managedsave" if on_shutdown == "suspend" else on_shutdown
    if on_shutdown not in ON_SHUTDOWN:
        raise InvalidSpec(f"{source}: ON_SHUTDOWN={policy['on_shutdown']!r} is unknown",
                          field="on_shutdown", fix="use ignore, shutdown or managedsave")
    on_boot = str(policy["on_boot"]).lower()
    if on_boot not in ON_BOOT:
        raise InvalidSpec(f"{source}: ON_BOOT={policy['on_boot']!r} is unknown",
                          field="on_boot", fix="use start or ignore")
    try:
        timeout = int(str(policy["shutdown_timeout"]))
    except (TypeError, ValueError):
        timeout = -1
    if not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidSpec(f"{source}: SHUTDOWN_TIMEOUT={policy['shutdown_timeout']!r} must "
                          f"be whole seconds from 1 to {MAX_TIMEOUT}",
                          field="shutdown_timeout")
    return GuestsPolicy.model_validate({"on_shutdown": on_shutdown,
                                        "shutdown_timeout": timeout, "on_boot": on_boot})


def format_policy(policy: GuestsPolicy) -> str:
    return ("# virtkit host guests policy (libvirt-guests syntax); see docs/running-guests.md\n"
            f"ON_SHUTDOWN={policy.on_shutdown}\n"
            f"SHUTDOWN_TIMEOUT={policy.shutdown_timeout}\n"
            f"ON_BOOT={policy.on_boot}\n")


class HostGuestsService:
    """The host's guest policy: read, set, and acted on at daemon stop and start."""

    def __init__(self, domains: DomainService, managed: ManagedSaveService, root: Path) -> None:
        self._domains = domains
        self._managed = managed
        self._conf = root / "guests.conf"
        self._record = root / "guests-at-shutdown.json"

    def policy(self) -> GuestsPolicy:
        try:
            text = self._conf.read_text()
        except FileNotFoundError:
            return DEFAULTS.model_copy()
        return parse_policy(text, str(self._conf))

    def status(self) -> GuestsStatus:
        """The policy, where it is kept, and the guests waiting from the last stop."""
        return GuestsStatus(**self.policy().wire(), file=str(self._conf),
                            pending=self._pending())

    def set_policy(self, changes: GuestsPolicyChange) -> GuestsStatus:
        """Change the fields ``changes`` gives; the others keep their value."""
        policy = check_policy({**self.policy().wire(),
                               **changes.model_dump(exclude_none=True)})
        partial = self._conf.with_name(".guests.conf.partial")
        partial.write_text(format_policy(policy))
        os.replace(partial, self._conf)
        return self.status()

    def _pending(self) -> list[str]:
        try:
            names = json.loads(self._record.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [str(name) for name in names] if isinstance(names, list) else []

    def _active(self) -> list[str]:
        return [row.name for row in self._domains.list_domains(include_inactive=False)
                if allows(Action.SAVE, State(row.state))]  # what can be saved is handled

    async def on_daemon_stop(self) -> list[str]:
        """Apply ON_SHUTDOWN to the running guests; the names handled, recorded."""
        try:
            policy = self.policy()
        except VirtkitError as exc:
            log.error("guests policy unreadable, guests keep running: %s", exc)
            return []
        return await self.stop_guests(policy)

    async def host_shutdown(self, report: Report) -> GuestsHandled:
        """``virtkit host shutdown-guests`` (the unit's ExecStop at host shutdown): the
        ON_SHUTDOWN policy applied now, while the daemon keeps serving; ``report(name,
        message)`` is told each step.  The guests handled are recorded for the next
        daemon start (ON_BOOT), as at a daemon stop."""
        policy = self.policy()  # an unreadable policy is the caller's error here
        if policy.on_shutdown == "ignore":
            report("", "ON_SHUTDOWN=ignore: the guests keep running (nothing to do)")
            return GuestsHandled(**policy.wire(), handled=[], failed=[])
        names = self._active()
        if not names:
            report("", "no guest is running")
        handled = await self.stop_guests(policy, report)
        return GuestsHandled(**policy.wire(), handled=handled,
                             failed=[name for name in names if name not in handled])

    async def stop_guests(self, policy: GuestsPolicy, report: Report | None = None
                          ) -> list[str]:
        """ON_SHUTDOWN on every running or paused guest; the names handled, recorded."""
        if policy.on_shutdown == "ignore":
            return []
        tell = report or _log_report
        names = self._active()
        if policy.on_shutdown == "managedsave":
            handled = await self._save_all(names, tell)
        else:
            handled = await self._shutdown_all(names, policy.shutdown_timeout, tell)
        self._record.write_text(json.dumps(sorted(set(self._pending()) | set(handled))))
        return handled

    async def _save_all(self, names: list[str], tell: Report) -> list[str]:
        done = []
        for name in names:  # one at a time, as libvirt-guests: the disk is the limit
            tell(name, "saving its memory (managedsave)")
            try:
                await self._managed.save(name, reason="host shutdown")
                done.append(name)
                tell(name, "saved (managedsave): the next start resumes it")
            except VirtkitError as exc:
                tell(name, f"managedsave failed: {exc}")
        return done

    async def _shutdown_all(self, names: list[str], timeout: int, tell: Report) -> list[str]:
        async def one(name: str) -> str | None:
            tell(name, f"shutting down (up to {timeout}s)")
            try:
                await self._domains.shutdown(name, timeout=timeout, wait=True)
            except VirtkitError as exc:
                tell(name, f"shutdown failed: {exc}")
            info = self._domains.summary(name)
            if info.state in INACTIVE_STATES:
                tell(name, "shut down")
                return name
            tell(name, f"did not power off within {timeout}s; destroying it")
            with contextlib.suppress(VirtkitError):
                await self._domains.simple(name, "destroy")
            return None

        results = await asyncio.gather(*(one(name) for name in names))
        return [name for name in results if name is not None]

    async def on_daemon_start(self) -> list[str]:
        """ON_BOOT=start: start the guests the last stop handled (managed saves are
        restored by start itself); the record goes either way."""
        pending = self._pending()
        if not pending:
            return []
        try:
            policy = self.policy()
        except VirtkitError as exc:
            log.error("guests policy unreadable, guests stay off: %s", exc)
            return []
        started = []
        if policy.on_boot == "start":
            for name in pending:
                try:
                    if self._domains.summary(name).state in INACTIVE_STATES:
                        await self._domains.start(name)
                        started.append(name)
                except VirtkitError as exc:
                    log.error("guests: starting %s failed: %s", name, exc)
        self._record.unlink(missing_ok=True)
        return started
