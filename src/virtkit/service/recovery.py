"""What the daemon repairs at start-up after a crash, and the report of it.

A daemon killed with SIGKILL may leave: intents of multi-step operations (see
:mod:`virtkit.service.provision`), hidden ``.NAME.partial`` temps of volumes that
were being written, runtime records of QEMU processes that ended, and network
parts (bridges, dnsmasq).  The daemon runs :meth:`RecoveryService.recover` before
it serves anything but reads, adds the notes of the other reconcilers (QEMU
reattach, networks), logs each note, and keeps the list for
``GET /v1/host/repairs`` (``virtkit repairs``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from virtkit.errors import VirtkitError
from virtkit.model.naming import grandfather, naming_problem
from virtkit.service.domains import UNDEFINE_STORAGE
from virtkit.service.provision import DEFINE_NEW_DISKS, remove_volumes
from virtkit.service.storage import StorageService
from virtkit.store.db import IntentRow, Store

log = logging.getLogger("virtkitd")


class RecoveryService:
    """Rolls half-done operations back or forward and remembers what it did."""

    def __init__(self, store: Store, storage: StorageService) -> None:
        self._store = store
        self._storage = storage
        self._repairs: list[dict[str, Any]] = []
        self._unsettled: list[str] = []
        self._naming: list[dict[str, str]] = []
        self._started = time.time()

    def note(self, area: str, text: str) -> None:
        """Record (and log) one repair made at start-up."""
        log.warning("repaired (%s): %s", area, text)
        self._repairs.append({"area": area, "repair": text, "time": time.time()})

    def report(self) -> dict[str, Any]:
        """The repairs of this daemon's start-up (empty after a clean stop)."""
        return {"daemon_started": self._started, "repairs": list(self._repairs),
                "unsettled": list(self._unsettled), "naming": list(self._naming)}

    def check_names(self) -> list[dict[str, str]]:
        """Objects a store from before the naming rule (model/naming.py) holds under a
        name the rule refuses (UUID-shaped, starting with '-'): logged, and reported by
        ``virtkit repairs``.  Nothing is renamed behind the owner's back; each stays
        reachable by its UUID (a UUID-shaped ref is always resolved as a UUID)."""
        rows: list[tuple[str, str, str, str]] = [
            ("domain", row.name, row.uuid, f"virtkit edit {row.uuid}")
            for row in self._store.list_domains()]
        rows += [(kind, row.name, row.uuid, "undefine it by UUID and define it anew")
                 for kind in ("pool", "network") for row in self._store.list_objects(kind)]
        self._naming = []
        for kind, name, uuid, fix in rows:
            problem = naming_problem(name)
            if problem:
                grandfather(name, uuid)
                log.warning("naming: %s %s (uuid %s) breaks the naming rule: %s; it stays "
                            "reachable by its uuid (fix: %s)", kind, name, uuid, problem, fix)
                self._naming.append({"kind": kind, "name": name, "uuid": uuid,
                                     "problem": problem, "fix": f"rename it: {fix}"})
        return list(self._naming)

    def pending(self) -> list[IntentRow]:
        """The intents a previous daemon left (read before this one serves requests,
        so an operation of this daemon is never taken for a crashed one)."""
        return self._store.list_intents()

    def recover(self, intents: list[IntentRow]) -> None:
        """Finish or undo each of ``intents``, then remove stale volume temps.

        Runs in a worker thread at start-up, once the pools are started (volumes
        are reached through their backends)."""
        for intent in intents:
            try:
                self._settle(intent)
            except VirtkitError as exc:  # e.g. its pool is inactive now: try next start
                self.note("intents", f"{intent.kind} of {intent.object} left pending: {exc}")
                self._unsettled.append(f"{intent.kind} of {intent.object}")
                continue
            self._store.finish_intent(intent.id)
        for pool, names in self._storage.remove_stale_partials().items():
            for name in names:
                self.note("storage", f"pool {pool}: removed the unfinished volume temp {name}")

    def _settle(self, intent: IntentRow) -> None:
        name = intent.detail.get("name") or intent.object
        volumes = [list(map(str, v)) for v in intent.detail.get("volumes", [])]
        defined = self._store.find_domain(intent.object) is not None
        if intent.kind == DEFINE_NEW_DISKS:
            if defined:  # the row went in: the define completed (intent removed with it)
                self.note("intents", f"define of {name}: completed before the crash")
                return
            users = self._used_paths()
            existing = [v for v in volumes if self._path_of(v[0], v[1]) not in users]
            removed, kept = remove_volumes(
                self._storage, [[p, n, ""] for p, n in existing
                                if self._path_of(p, n) is not None])
            self.note("intents", f"define of {name} interrupted: rolled back (volumes removed: "
                      f"{', '.join(removed) or 'none'}{_kept(kept)})")
        elif intent.kind == UNDEFINE_STORAGE:
            removed, kept = remove_volumes(self._storage, volumes)
            self.note("intents", f"undefine of {name} with storage interrupted: completed "
                      f"(volumes removed: {', '.join(removed) or 'none'}{_kept(kept)})")
        else:
            self.note("intents", f"unknown intent {intent.kind} of {name} dropped")

    def _path_of(self, pool: str, volume: str) -> str | None:
        try:
            return self._storage.volume_info(pool, volume).path
        except VirtkitError:
            return None

    def _used_paths(self) -> set[str]:
        return {d["path"] for row in self._store.list_domains()
                for d in row.spec.get("disks", []) if d.get("path")}


def _kept(kept: list[str]) -> str:
    return f"; kept: {', '.join(kept)}" if kept else ""


__all__ = ["RecoveryService"]
