"""SQLite state: desired specs and a small runtime record per domain.

The store keeps what the user asked for (the spec, as canonical JSON) and a
few facts the daemon needs to find a running VM again after a restart (pid,
process start time, state).  It never stores a QEMU command line: argv is
rebuilt from the spec at every start.

Every spec row has a ``version`` that grows on each change; an update names
the version it was based on and is refused with :class:`StaleVersion` when
someone else changed the row in between (optimistic concurrency).

Schema changes are numbered migrations in :data:`MIGRATIONS`, applied in one
transaction each and recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from virtkit.errors import Conflict, NotFound, StaleVersion
from virtkit.model.naming import is_uuid_shaped

MIGRATIONS: list[str] = [
    # 1: domains and their runtime records.
    """
    CREATE TABLE domains (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE runtime (
        uuid TEXT PRIMARY KEY REFERENCES domains(uuid) ON DELETE CASCADE,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        pid_start INTEGER,
        started REAL,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: an event journal, so clients can catch up on what happened while away.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_time ON events(time);
    """,
    # 3: storage pools (their volumes live in the pools themselves and are listed live).
    """
    CREATE TABLE pools (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL DEFAULT 'inactive',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 4: virtual networks; pools get the same runtime column.
    """
    CREATE TABLE networks (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL DEFAULT 'inactive',
        runtime TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    ALTER TABLE pools ADD COLUMN runtime TEXT NOT NULL DEFAULT '{}';
    """,
    # 5: snapshots, one row each; gone with their domain (undefine --snapshots-metadata).
    """
    CREATE TABLE snapshots (
        domain TEXT NOT NULL REFERENCES domains(uuid) ON DELETE CASCADE,
        name TEXT NOT NULL,
        parent TEXT,
        created REAL NOT NULL,
        kind TEXT NOT NULL,
        memory INTEGER NOT NULL,
        state TEXT NOT NULL,
        current INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL,
        PRIMARY KEY (domain, name)
    );
    """,
    # 6: API tokens for the TLS listener: only a hash of each secret is kept.  A revoked
    # token keeps its row (so a client is told it was revoked); names are unique among
    # the tokens not revoked.
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        last_used REAL,
        revoked REAL
    );
    CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked IS NULL;
    """,
    # 7: intents of multi-step operations (define with new disks, undefine with storage):
    # written before the first step, removed after the last; a row found at start-up is
    # an operation a killed daemon left half done, rolled back or forward (service/recovery)
    """
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
]

EVENT_JOURNAL_LIMIT = 10_000


@dataclass(frozen=True)
class IntentRow:
    """A multi-step operation in progress (or left half done by a killed daemon)."""

    id: int
    kind: str
    object: str
    detail: dict[str, Any]
    created: float


@dataclass(frozen=True)
class DomainRow:
    uuid: str
    name: str
    spec: dict[str, Any]
    version: int
    created: float
    updated: float


@dataclass(frozen=True)
class ObjectRow:
    """A pool or a network: its spec, version, state and small runtime facts."""

    uuid: str
    name: str
    spec: dict[str, Any]
    version: int
    state: str
    runtime: dict[str, Any]


PoolRow = ObjectRow


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot of a domain; ``record`` holds the spec at the time and its disks."""

    domain: str
    name: str
    parent: str | None
    created: float
    kind: str
    memory: bool
    state: str
    current: bool
    record: dict[str, Any]


@dataclass(frozen=True)
class TokenRow:
    """An API token: ``hash`` is the SHA-256 of its secret, never the secret itself."""

    id: str
    name: str
    hash: str
    created: float
    expires: float | None
    last_used: float | None
    revoked: float | None


@dataclass(frozen=True)
class RuntimeRow:
    uuid: str
    state: str
    reason: str
    pid: int | None
    pid_start: int | None
    started: float | None
    extra: dict[str, Any]


class Store:
    """The daemon's SQLite database (WAL mode; one connection, used from the event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        path.chmod(0o600)  # specs name disks and may carry VNC passwords
        self._db.row_factory = sqlite3.Row
        # one connection serves the event loop and the worker threads of storage calls:
        # a transaction must not interleave with another thread's BEGIN ... COMMIT
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        try:
            self.migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply the migrations this database has not seen yet, each atomically."""
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise Conflict(
                f"the state database {self.path} has schema {current}, newer than this "
                f"virtkit understands ({len(MIGRATIONS)})",
                fix="upgrade virtkit, or point VIRTKIT_ROOT at another state folder",
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        Held under a lock: the connection is shared with worker threads, and a second
        BEGIN on it while a transaction is open fails ("cannot start a transaction
        within a transaction")."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def integrity_check(self) -> list[str]:
        """SQLite's own consistency check: ``["ok"]`` for a sound database."""
        with self._lock:
            return [str(row[0]) for row in self._db.execute("PRAGMA integrity_check")]

    # -- domains -----------------------------------------------------------

    @staticmethod
    def _domain(row: sqlite3.Row) -> DomainRow:
        return DomainRow(row["uuid"], row["name"], json.loads(row["spec"]), row["version"],
                         row["created"], row["updated"])

    def list_domains(self) -> list[DomainRow]:
        rows = self._db.execute("SELECT * FROM domains ORDER BY name").fetchall()
        return [self._domain(row) for row in rows]

    def _lookup(self, table: str, ref: str) -> sqlite3.Row | None:
        """A row of ``table`` (domains, pools, networks): a UUID-shaped ``ref`` is a
        UUID (model/naming.py: names never are UUID-shaped), any other ref a name.

        A name never matches another object's UUID, so no name can shadow or take over
        the object with that UUID.  A store from before the naming rule may hold a
        UUID-shaped name: it is still found by that name when no object has it as its
        UUID (and always by its own UUID)."""
        if is_uuid_shaped(ref):
            row = self._by_uuid(table, ref)
            if row is not None:
                return row
        return self.lookup_name(table, ref)

    def _by_uuid(self, table: str, ref: str) -> sqlite3.Row | None:
        try:
            canonical = str(uuidlib.UUID(ref.strip()))
        except ValueError:
            canonical = ref  # a row's own uuid column, as written (tests use 'u1')
        cursor = self._db.execute(f"SELECT * FROM {table} WHERE uuid = ?", (canonical,))
        return cast("sqlite3.Row | None", cursor.fetchone())

    def lookup_name(self, table: str, name: str) -> sqlite3.Row | None:
        """A row of ``table`` by its exact name only (never by UUID)."""
        cursor = self._db.execute(f"SELECT * FROM {table} WHERE name = ?", (name,))
        return cast("sqlite3.Row | None", cursor.fetchone())

    def _domain_row(self, uuid: str) -> DomainRow:
        row = self._by_uuid("domains", uuid)
        if row is None:
            raise NotFound(f"domain {uuid} not found", fix="see 'virtkit list --all'")
        return self._domain(row)

    def _object_row(self, kind: str, uuid: str) -> ObjectRow:
        row = self._by_uuid(self._TABLES[kind][0], uuid)
        if row is None:
            raise NotFound(f"{kind} {uuid} not found",
                           fix=f"see 'virtkit {self._TABLES[kind][1]}'")
        return self._object(row)

    def find_domain_named(self, name: str) -> DomainRow | None:
        """The domain named exactly ``name`` (what a define with that name would replace)."""
        row = self.lookup_name("domains", name)
        return self._domain(row) if row else None

    def find_domain_uuid(self, uuid: str) -> DomainRow | None:
        """The domain with exactly this UUID (None when ``uuid`` is not a UUID)."""
        row = self._by_uuid("domains", uuid)
        return self._domain(row) if row else None

    def find_object_named(self, kind: str, name: str) -> ObjectRow | None:
        row = self.lookup_name(self._TABLES[kind][0], name)
        return self._object(row) if row else None

    def find_object_uuid(self, kind: str, uuid: str) -> ObjectRow | None:
        row = self._by_uuid(self._TABLES[kind][0], uuid)
        return self._object(row) if row else None

    def find_domain(self, ref: str) -> DomainRow | None:
        """Look a domain up by name, then by UUID."""
        row = self._lookup("domains", ref)
        return self._domain(row) if row else None

    def get_domain(self, ref: str) -> DomainRow:
        row = self.find_domain(ref)
        if row is None:
            raise NotFound(f"domain '{ref}' not found", fix="see 'virtkit list --all'")
        return row

    def insert_domain(self, uuid: str, name: str, spec: dict[str, Any], *,
                      finish_intent: int | None = None) -> DomainRow:
        """Add a domain; ``finish_intent`` is removed in the same transaction (the last
        step of a define that created disks first)."""
        now = time.time()
        try:
            with self.transaction() as db:
                if finish_intent is not None:
                    db.execute("DELETE FROM intents WHERE id = ?", (finish_intent,))
                db.execute(
                    "INSERT INTO domains (uuid, name, spec, version, created, updated) "
                    "VALUES (?, ?, ?, 1, ?, ?)",
                    (uuid, name, json.dumps(spec), now, now),
                )
                db.execute("INSERT INTO runtime (uuid, state) VALUES (?, 'shutoff')", (uuid,))
        except sqlite3.IntegrityError:
            other = self.find_domain_uuid(uuid)
            if other is not None and other.name != name:
                raise Conflict(f"domain '{other.name}' already exists with uuid {uuid}",
                               fix="leave uuid out to get a new one") from None
            other = self.find_domain_named(name)
            raise Conflict(f"domain '{name}' already exists"
                           + (f" with uuid {other.uuid}" if other else ""),
                           fix="choose another name, or undefine the existing domain") from None
        return self._domain_row(uuid)

    def update_domain(self, uuid: str, name: str, spec: dict[str, Any],
                      expected_version: int | None) -> DomainRow:
        """Replace the spec; refuse when ``expected_version`` is not the stored version."""
        with self.transaction() as db:
            row = db.execute("SELECT version, name FROM domains WHERE uuid = ?", (uuid,)).fetchone()
            if row is None:
                raise NotFound(f"domain {uuid} not found")
            if expected_version is not None and row["version"] != expected_version:
                raise StaleVersion(
                    f"domain '{row['name']}' changed since you read it (your version "
                    f"{expected_version}, stored version {row['version']})",
                    fix="read it again and reapply your change",
                )
            try:
                db.execute(
                    "UPDATE domains SET name = ?, spec = ?, version = version + 1, updated = ? "
                    "WHERE uuid = ?",
                    (name, json.dumps(spec), time.time(), uuid),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"another domain is already named '{name}'",
                               fix="choose another name") from None
        return self._domain_row(uuid)

    def delete_domain(self, uuid: str, *, intent: tuple[str, dict[str, Any]] | None = None
                      ) -> int | None:
        """Remove a domain; with ``intent`` (kind, detail), record in the same transaction
        what is still to be done after it (see :meth:`add_intent`) and return its id."""
        with self.transaction() as db:
            db.execute("DELETE FROM domains WHERE uuid = ?", (uuid,))
            if intent is None:
                return None
            return self._insert_intent(db, intent[0], uuid, intent[1])

    # -- intents of multi-step operations -------------------------------------

    @staticmethod
    def _insert_intent(db: sqlite3.Connection, kind: str, obj: str,
                       detail: dict[str, Any]) -> int:
        cursor = db.execute(
            "INSERT INTO intents (kind, object, detail, created) VALUES (?, ?, ?, ?)",
            (kind, obj, json.dumps(detail), time.time()))
        return int(cursor.lastrowid or 0)

    def add_intent(self, kind: str, obj: str, detail: dict[str, Any]) -> int:
        """Record, before its first step, what a multi-step operation is about to do."""
        with self.transaction() as db:
            return self._insert_intent(db, kind, obj, detail)

    def finish_intent(self, intent_id: int) -> None:
        """The operation completed (or was undone): forget its intent."""
        with self.transaction() as db:
            db.execute("DELETE FROM intents WHERE id = ?", (intent_id,))

    def list_intents(self) -> list[IntentRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM intents ORDER BY id").fetchall()
        return [IntentRow(row["id"], row["kind"], row["object"], json.loads(row["detail"]),
                          row["created"]) for row in rows]

    # -- runtime records ------------------------------------------------------

    def get_runtime(self, uuid: str) -> RuntimeRow:
        row = self._db.execute("SELECT * FROM runtime WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return RuntimeRow(uuid, "shutoff", "", None, None, None, {})
        return RuntimeRow(row["uuid"], row["state"], row["reason"], row["pid"], row["pid_start"],
                          row["started"], json.loads(row["extra"]))

    def all_runtime(self) -> dict[str, RuntimeRow]:
        rows = self._db.execute("SELECT * FROM runtime").fetchall()
        return {
            row["uuid"]: RuntimeRow(row["uuid"], row["state"], row["reason"], row["pid"],
                                    row["pid_start"], row["started"], json.loads(row["extra"]))
            for row in rows
        }

    def set_runtime(self, uuid: str, *, state: str, reason: str = "", pid: int | None = None,
                    pid_start: int | None = None, started: float | None = None,
                    extra: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runtime (uuid, state, reason, pid, pid_start, started, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uuid) DO UPDATE SET "
                "state = excluded.state, reason = excluded.reason, pid = excluded.pid, "
                "pid_start = excluded.pid_start, started = excluded.started, "
                "extra = excluded.extra",
                (uuid, state, reason, pid, pid_start, started, json.dumps(extra or {})),
            )

    # -- pools and networks ------------------------------------------------------
    #
    # Both are named objects with a spec, a version and a state; ``kind`` picks
    # the table ("pool" -> pools, "network" -> networks) and the words of errors.

    _TABLES = {"pool": ("pools", "pool-list --all"), "network": ("networks", "net-list --all")}

    @staticmethod
    def _object(row: sqlite3.Row) -> ObjectRow:
        return ObjectRow(row["uuid"], row["name"], json.loads(row["spec"]), row["version"],
                         row["state"], json.loads(row["runtime"]))

    def list_objects(self, kind: str) -> list[ObjectRow]:
        table = self._TABLES[kind][0]
        return [self._object(r) for r in self._db.execute(f"SELECT * FROM {table} ORDER BY name")]

    def find_object(self, kind: str, ref: str) -> ObjectRow | None:
        row = self._lookup(self._TABLES[kind][0], ref)
        return self._object(row) if row else None

    def get_object(self, kind: str, ref: str) -> ObjectRow:
        row = self.find_object(kind, ref)
        if row is None:
            raise NotFound(f"{kind} '{ref}' not found",
                           fix=f"see 'virtkit {self._TABLES[kind][1]}'")
        return row

    def insert_object(self, kind: str, uuid: str, name: str, spec: dict[str, Any]) -> ObjectRow:
        table = self._TABLES[kind][0]
        now = time.time()
        try:
            with self.transaction() as db:
                db.execute(f"INSERT INTO {table} (uuid, name, spec, created, updated) "
                           "VALUES (?, ?, ?, ?, ?)", (uuid, name, json.dumps(spec), now, now))
        except sqlite3.IntegrityError:
            other = self.find_object_uuid(kind, uuid)
            if other is not None and other.name != name:
                raise Conflict(f"{kind} '{other.name}' already exists with uuid {uuid}",
                               fix="leave uuid out to get a new one") from None
            other = self.find_object_named(kind, name)
            raise Conflict(f"{kind} '{name}' already exists"
                           + (f" with uuid {other.uuid}" if other else ""),
                           fix="choose another name, or undefine the existing one") from None
        return self._object_row(kind, uuid)

    def update_object(self, kind: str, uuid: str, *, spec: dict[str, Any] | None = None,
                      state: str | None = None, runtime: dict[str, Any] | None = None
                      ) -> ObjectRow:
        table = self._TABLES[kind][0]
        with self.transaction() as db:
            if spec is not None:
                db.execute(f"UPDATE {table} SET spec = ?, version = version + 1, updated = ? "
                           "WHERE uuid = ?", (json.dumps(spec), time.time(), uuid))
            if state is not None:
                db.execute(f"UPDATE {table} SET state = ? WHERE uuid = ?", (state, uuid))
            if runtime is not None:
                db.execute(f"UPDATE {table} SET runtime = ? WHERE uuid = ?",
                           (json.dumps(runtime), uuid))
        return self._object_row(kind, uuid)

    def delete_object(self, kind: str, uuid: str) -> None:
        with self.transaction() as db:
            db.execute(f"DELETE FROM {self._TABLES[kind][0]} WHERE uuid = ?", (uuid,))

    def list_pools(self) -> list[ObjectRow]:
        return self.list_objects("pool")

    def find_pool(self, ref: str) -> ObjectRow | None:
        return self.find_object("pool", ref)

    def get_pool(self, ref: str) -> ObjectRow:
        return self.get_object("pool", ref)

    def insert_pool(self, uuid: str, name: str, spec: dict[str, Any]) -> ObjectRow:
        return self.insert_object("pool", uuid, name, spec)

    def update_pool(self, uuid: str, *, spec: dict[str, Any] | None = None,
                    state: str | None = None) -> ObjectRow:
        return self.update_object("pool", uuid, spec=spec, state=state)

    def delete_pool(self, uuid: str) -> None:
        self.delete_object("pool", uuid)

    # -- snapshots ---------------------------------------------------------------

    @staticmethod
    def _snapshot(row: sqlite3.Row) -> SnapshotRow:
        return SnapshotRow(row["domain"], row["name"], row["parent"], row["created"],
                           row["kind"], bool(row["memory"]), row["state"], bool(row["current"]),
                           json.loads(row["record"]))

    def list_snapshots(self, domain: str) -> list[SnapshotRow]:
        """The snapshots of one domain (by uuid), oldest first."""
        rows = self._db.execute("SELECT * FROM snapshots WHERE domain = ? ORDER BY created, name",
                                (domain,))
        return [self._snapshot(row) for row in rows]

    def find_snapshot(self, domain: str, name: str) -> SnapshotRow | None:
        row = self._db.execute("SELECT * FROM snapshots WHERE domain = ? AND name = ?",
                               (domain, name)).fetchone()
        return self._snapshot(row) if row else None

    def insert_snapshot(self, snap: SnapshotRow) -> None:
        """Store a new snapshot; it becomes the domain's current one when ``snap.current``."""
        try:
            with self.transaction() as db:
                if snap.current:
                    db.execute("UPDATE snapshots SET current = 0 WHERE domain = ?", (snap.domain,))
                db.execute(
                    "INSERT INTO snapshots (domain, name, parent, created, kind, memory, state, "
                    "current, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (snap.domain, snap.name, snap.parent, snap.created, snap.kind,
                     int(snap.memory), snap.state, int(snap.current), json.dumps(snap.record)))
        except sqlite3.IntegrityError:
            raise Conflict(f"a snapshot named '{snap.name}' already exists",
                           fix="choose another name, or delete the existing snapshot") from None

    def update_snapshot(self, domain: str, name: str, *, parent: str | None = None,
                        set_parent: bool = False, record: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            if set_parent:
                db.execute("UPDATE snapshots SET parent = ? WHERE domain = ? AND name = ?",
                           (parent, domain, name))
            if record is not None:
                db.execute("UPDATE snapshots SET record = ? WHERE domain = ? AND name = ?",
                           (json.dumps(record), domain, name))

    def set_current_snapshot(self, domain: str, name: str | None) -> None:
        """Mark ``name`` as the domain's current snapshot (None: no current one)."""
        with self.transaction() as db:
            db.execute("UPDATE snapshots SET current = coalesce(name = ?, 0) WHERE domain = ?",
                       (name, domain))

    def delete_snapshot(self, domain: str, name: str) -> None:
        """Remove one snapshot row; its children are re-parented to its parent."""
        with self.transaction() as db:
            row = db.execute("SELECT parent FROM snapshots WHERE domain = ? AND name = ?",
                             (domain, name)).fetchone()
            if row is None:
                return
            db.execute("UPDATE snapshots SET parent = ? WHERE domain = ? AND parent = ?",
                       (row["parent"], domain, name))
            db.execute("DELETE FROM snapshots WHERE domain = ? AND name = ?", (domain, name))

    # -- API tokens --------------------------------------------------------------

    @staticmethod
    def _token(row: sqlite3.Row) -> TokenRow:
        return TokenRow(row["id"], row["name"], row["hash"], row["created"], row["expires"],
                        row["last_used"], row["revoked"])

    def insert_token(self, token: TokenRow) -> None:
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO tokens (id, name, hash, created, expires) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (token.id, token.name, token.hash, token.created, token.expires))
        except sqlite3.IntegrityError:
            raise Conflict(f"a token named '{token.name}' already exists",
                           fix="choose another --name, or revoke the existing token") from None

    def list_tokens(self) -> list[TokenRow]:
        rows = self._db.execute("SELECT * FROM tokens ORDER BY created, name")
        return [self._token(row) for row in rows]

    def find_token(self, token_id: str) -> TokenRow | None:
        row = self._db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return self._token(row) if row else None

    def revoke_token(self, name: str) -> TokenRow:
        """Mark the active token ``name`` revoked (its row stays, to say so to its user)."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM tokens WHERE name = ? AND revoked IS NULL",
                             (name,)).fetchone()
            if row is None:
                raise NotFound(f"no active token named '{name}'", fix="see 'virtkit token list'")
            db.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (time.time(), row["id"]))
        found = self.find_token(row["id"])
        assert found is not None
        return found

    def touch_token(self, token_id: str, when: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (when, token_id))

    # -- event journal -------------------------------------------------------

    def append_event(self, kind: str, obj: str, detail: dict[str, Any]) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO events (time, kind, object, detail) VALUES (?, ?, ?, ?)",
                (detail.get("time", time.time()), kind, obj, json.dumps(detail)),
            )
            event_id = int(cursor.lastrowid or 0)
            if event_id % 1000 == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (event_id - EVENT_JOURNAL_LIMIT,))
        return event_id

    def events_since(self, event_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, detail FROM events WHERE id > ? ORDER BY id LIMIT ?", (event_id, limit)
        ).fetchall()
        return [{"id": row["id"], **json.loads(row["detail"])} for row in rows]
