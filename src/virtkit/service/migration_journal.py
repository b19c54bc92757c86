"""What a daemon must know about its unfinished migrations after a crash.

One small JSON file per migration under ``ROOT/migrations``: ``in-UUID.json`` on the
destination (the images it created for the copy, by device and inode, and whether
the migration came into a definition that was here before), ``out-UUID.json`` on the
source (whether ``finish`` may have been sent).  A daemon killed mid-way reads them
at its next start (:meth:`MigrationService.recover`) and removes what an unfinished
migration left, so nothing is stranded (docs/migration.md).  Written with
``os.replace``: a file is either the old or the new version.  No fsync: these only
have to survive the daemon's death, not the host's (a host crash kills the QEMUs
too, and the images' removal is then an ordinary leftover).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    """``ROOT/migrations/{kind}-{uuid}.json`` records (kind ``in`` or ``out``)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, kind: str, uuid: str) -> Path:
        return self._folder / f"{kind}-{uuid}.json"

    def write(self, kind: str, uuid: str, record: dict[str, Any]) -> None:
        self._folder.mkdir(mode=0o700, exist_ok=True)
        path = self._path(kind, uuid)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(record))
        os.replace(temp, path)

    def remove(self, kind: str, uuid: str) -> None:
        self._path(kind, uuid).unlink(missing_ok=True)

    def entries(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind`` by uuid (a damaged one is logged and skipped)."""
        found: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self._folder.glob(f"{kind}-*.json")):
                uuid = path.stem.removeprefix(f"{kind}-")
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    log.error("unreadable migration record %s: %s", path, exc)
                    continue
                if isinstance(record, dict):
                    found[uuid] = record
        return found
