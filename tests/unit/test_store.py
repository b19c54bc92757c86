"""The SQLite store on a temporary database: migrations, optimistic versions, runtime, events."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import Conflict, NotFound, StaleVersion
from virtkit.store.db import MIGRATIONS, Store

UUID_A = "0b6c3a4e-8d2f-4a57-9f1e-3c2d1b0a9e8f"
UUID_B = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"
SPEC_A = {"name": "alpha", "memory": {"current": 512}}
SPEC_B = {"name": "beta", "memory": {"current": 1024}}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store(db_path)
    yield opened
    opened.close()


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


# -- migrations -------------------------------------------------------------------------------

def test_new_database_is_migrated_to_the_latest_schema(store: Store, db_path: Path) -> None:
    assert store.schema_version == len(MIGRATIONS)
    assert _user_version(db_path) == len(MIGRATIONS)
    assert {"domains", "runtime", "events"} <= _tables(db_path)


def test_reopening_is_idempotent(db_path: Path) -> None:
    first = Store(db_path)
    first.insert_domain(UUID_A, "alpha", SPEC_A)
    first.close()
    for _ in range(2):
        again = Store(db_path)
        assert again.schema_version == len(MIGRATIONS)
        assert [row.name for row in again.list_domains()] == ["alpha"]
        again.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(Conflict) as info:
        Store(db_path)
    assert f"schema {len(MIGRATIONS) + 1}" in info.value.message
    assert str(db_path) in info.value.message
    assert info.value.fix
    assert _user_version(db_path) == len(MIGRATIONS) + 1  # left as it was


def test_migration_from_v1(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO domains (uuid, name, spec, version, created, updated) "
               "VALUES (?, 'old', '{}', 3, 0, 0)", (UUID_A,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    assert "events" not in _tables(db_path)

    store = Store(db_path)
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert "events" in _tables(db_path)
        assert store.get_domain("old").version == 3  # existing rows survive
        event_id = store.append_event("defined", UUID_A, {"type": "defined"})
        assert store.events_since(0) == [{"id": event_id, "type": "defined"}]
    finally:
        store.close()


# -- domains ----------------------------------------------------------------------------------

def test_insert_and_find(store: Store) -> None:
    row = store.insert_domain(UUID_A, "alpha", SPEC_A)
    assert (row.uuid, row.name, row.spec, row.version) == (UUID_A, "alpha", SPEC_A, 1)
    assert row.created == row.updated
    assert store.find_domain("alpha") == row
    assert store.find_domain(UUID_A) == row
    assert store.find_domain(UUID_A.upper()) == row
    assert store.find_domain("gamma") is None
    with pytest.raises(NotFound, match="domain 'gamma' not found"):
        store.get_domain("gamma")
    assert store.get_runtime(UUID_A).state == "shutoff"


def test_a_uuid_shaped_ref_is_a_uuid_and_a_name_never_is(store: Store) -> None:
    """The naming rule (model/naming.py): a UUID-shaped ref means the object with that
    UUID, even when a store from before the rule holds a domain named like it; that one
    stays reachable by its own UUID.  A ref that is not UUID-shaped is only a name."""
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    store.insert_domain(UUID_B, UUID_A, SPEC_B)  # a legacy domain named like another's uuid
    assert store.get_domain(UUID_A).uuid == UUID_A
    assert store.get_domain(UUID_B).name == UUID_A
    assert store.find_domain(UUID_A.replace("-", "")).uuid == UUID_A
    store.insert_domain("1" * 8 + UUID_A[8:], "beta", SPEC_B)
    assert store.find_domain(UUID_A[:8]) is None  # a piece of a uuid is no reference


def test_list_is_sorted_by_name(store: Store) -> None:
    store.insert_domain(UUID_B, "beta", SPEC_B)
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    assert [row.name for row in store.list_domains()] == ["alpha", "beta"]


@pytest.mark.parametrize(("uuid", "name"), [(UUID_B, "alpha"), (UUID_A, "other")])
def test_duplicate_name_or_uuid_is_a_conflict(store: Store, uuid: str, name: str) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    with pytest.raises(Conflict) as info:
        store.insert_domain(uuid, name, SPEC_B)
    assert not isinstance(info.value, StaleVersion)
    # the refusal names the domain that holds the name or uuid, with its uuid
    assert f"domain 'alpha' already exists with uuid {UUID_A}" in info.value.message
    assert len(store.list_domains()) == 1
    assert store.get_domain(UUID_A).spec == SPEC_A


def test_update_bumps_version(store: Store) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    new_spec = {**SPEC_A, "memory": {"current": 2048}}
    row = store.update_domain(UUID_A, "alpha", new_spec, expected_version=1)
    assert (row.version, row.spec) == (2, new_spec)
    assert row.updated >= row.created
    row = store.update_domain(UUID_A, "alpha-renamed", SPEC_A, expected_version=2)
    assert (row.version, row.name) == (3, "alpha-renamed")
    assert store.find_domain("alpha") is None
    row = store.update_domain(UUID_A, "alpha-renamed", SPEC_B, expected_version=None)
    assert (row.version, row.spec) == (4, SPEC_B)


def test_stale_update_is_refused_and_changes_nothing(store: Store) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    store.update_domain(UUID_A, "alpha", SPEC_B, expected_version=1)
    with pytest.raises(StaleVersion) as info:
        store.update_domain(UUID_A, "renamed", {"stale": True}, expected_version=1)
    assert "your version 1, stored version 2" in info.value.message
    assert isinstance(info.value, Conflict)
    row = store.get_domain(UUID_A)
    assert (row.name, row.spec, row.version) == ("alpha", SPEC_B, 2)


def test_rename_onto_an_existing_name_is_a_conflict(store: Store) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    store.insert_domain(UUID_B, "beta", SPEC_B)
    with pytest.raises(Conflict, match="already named 'alpha'"):
        store.update_domain(UUID_B, "alpha", SPEC_B, expected_version=1)
    row = store.get_domain(UUID_B)
    assert (row.name, row.version) == ("beta", 1)


def test_update_of_a_missing_domain(store: Store) -> None:
    with pytest.raises(NotFound):
        store.update_domain(UUID_A, "alpha", SPEC_A, expected_version=None)


def test_delete_cascades_runtime(store: Store, db_path: Path) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    store.insert_domain(UUID_B, "beta", SPEC_B)
    store.set_runtime(UUID_A, state="running", pid=1234, pid_start=99, started=1.0)
    store.delete_domain(UUID_A)
    assert store.find_domain(UUID_A) is None
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT uuid FROM runtime").fetchall()
    assert rows == [(UUID_B,)]
    assert set(store.all_runtime()) == {UUID_B}


def test_runtime_round_trip(store: Store) -> None:
    store.insert_domain(UUID_A, "alpha", SPEC_A)
    store.set_runtime(UUID_A, state="running", reason="booted", pid=4321, pid_start=777,
                      started=1700000000.5, extra={"accel": "tcg", "vnc": {"port": 5900}})
    rt = store.get_runtime(UUID_A)
    assert (rt.uuid, rt.state, rt.reason, rt.pid, rt.pid_start, rt.started) == (
        UUID_A, "running", "booted", 4321, 777, 1700000000.5)
    assert rt.extra == {"accel": "tcg", "vnc": {"port": 5900}}
    store.set_runtime(UUID_A, state="shutoff", reason="destroyed")
    rt = store.get_runtime(UUID_A)
    assert (rt.state, rt.reason, rt.pid, rt.pid_start, rt.started, rt.extra) == (
        "shutoff", "destroyed", None, None, None, {})
    assert store.all_runtime() == {UUID_A: rt}


def test_runtime_of_an_unknown_domain(store: Store) -> None:
    rt = store.get_runtime(UUID_B)
    assert (rt.state, rt.pid) == ("shutoff", None)
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are on
        store.set_runtime(UUID_B, state="running")


def test_failed_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as db:  # noqa: PT012 - the
        # statements inside are the transaction that must roll back when it raises
        db.execute("INSERT INTO domains (uuid, name, spec, version, created, updated) "
                   "VALUES (?, 'ghost', '{}', 1, 0, 0)", (UUID_B,))
        raise RuntimeError("boom")
    assert store.find_domain("ghost") is None
    store.insert_domain(UUID_A, "alpha", SPEC_A)  # the connection is usable again


# -- events -----------------------------------------------------------------------------------

def test_events_journal(store: Store) -> None:
    ids = [store.append_event("started", UUID_A, {"type": "started", "time": 10.0 + n, "n": n})
           for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    everything = store.events_since(0)
    assert [event["id"] for event in everything] == ids
    assert [event["n"] for event in everything] == [0, 1, 2, 3, 4]
    assert everything[0] == {"id": ids[0], "type": "started", "time": 10.0, "n": 0}
    assert [event["n"] for event in store.events_since(ids[2])] == [3, 4]
    assert store.events_since(ids[-1]) == []
    assert [event["n"] for event in store.events_since(0, limit=2)] == [0, 1]


def test_events_survive_reopening(db_path: Path) -> None:
    store = Store(db_path)
    first = store.append_event("defined", UUID_A, {"type": "defined"})
    store.close()
    store = Store(db_path)
    try:
        second = store.append_event("started", UUID_A, {"type": "started"})
        assert second > first
        assert [e["type"] for e in store.events_since(0)] == ["defined", "started"]
    finally:
        store.close()


def test_journal_is_pruned_every_thousand_events(store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("virtkit.store.db.EVENT_JOURNAL_LIMIT", 5)
    with store.transaction() as db:
        db.executemany("INSERT INTO events (id, time, kind, object, detail) "
                       "VALUES (?, 0, 'x', 'o', '{}')", [(n,) for n in range(990, 1000)])
    assert store.append_event("started", UUID_A, {"type": "started"}) == 1000
    assert [event["id"] for event in store.events_since(0)] == [996, 997, 998, 999, 1000]
