"""The store's intents (crash-consistent multi-step operations) and its
transaction lock (the connection is shared with worker threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from virtkit.errors import Conflict
from virtkit.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "virtkit.db")


def test_an_intent_is_listed_until_finished(store: Store) -> None:
    first = store.add_intent("define-new-disks", "u1", {"volumes": [["default", "a"]]})
    store.add_intent("undefine-storage", "u2", {})
    assert [(i.kind, i.object) for i in store.list_intents()] == [
        ("define-new-disks", "u1"), ("undefine-storage", "u2")]
    assert store.list_intents()[0].detail == {"volumes": [["default", "a"]]}
    store.finish_intent(first)
    assert [i.object for i in store.list_intents()] == ["u2"]


def test_insert_domain_removes_its_intent_in_the_same_transaction(store: Store) -> None:
    intent = store.add_intent("define-new-disks", "u1", {})
    store.insert_domain("u1", "vm", {"name": "vm"}, finish_intent=intent)
    assert store.list_intents() == []
    again = store.add_intent("define-new-disks", "u2", {})
    with pytest.raises(Conflict):  # the name is taken: nothing of the transaction stays
        store.insert_domain("u2", "vm", {"name": "vm"}, finish_intent=again)
    assert [i.id for i in store.list_intents()] == [again]


def test_delete_domain_records_its_intent_atomically(store: Store) -> None:
    store.insert_domain("u1", "vm", {"name": "vm"})
    intent = store.delete_domain("u1", intent=("undefine-storage", {"volumes": [["p", "v"]]}))
    assert store.find_domain("u1") is None
    assert [(i.id, i.kind, i.object) for i in store.list_intents()] == [
        (intent, "undefine-storage", "u1")]
    assert store.delete_domain("nothing") is None


def test_transactions_from_threads_do_not_interleave(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                store.append_event("test", f"{n}-{i}", {"n": n})
        except BaseException as exc:  # "cannot start a transaction within a transaction"
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.events_since(0, limit=10_000)) == 800
    assert store.integrity_check() == ["ok"]
