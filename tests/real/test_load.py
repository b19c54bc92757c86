"""Load: 200 mixed API calls from 8 concurrent clients against one real daemon.

Each client is a thread with its own connections (the CLI's stdlib client, one
connection per call). The mix: ``list``, ``dominfo``, define/undefine of the
client's own tiny VMs, define/undefine of a few names every client fights over,
and start/destroy of two tiny VMs (at most two QEMUs run at once: two cores).

Asserted afterwards: every call ended in success or a clean refusal (400/404/409
with the project's JSON error body), never a 5xx or a hang; the defined domains are
exactly what the successful calls imply (no lost update); every domain the API calls
running has a live QEMU whose command line names its uuid, and no QEMU of a domain
of this daemon runs that the API does not report.  ``list`` latency is printed.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import threading
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, qemu_processes
from virtkit.cli.client import ApiError, Client
from virtkit.paths import state_paths

pytestmark = pytest.mark.qemu

CLIENTS = 8
CALLS = 200
SHARED = ("shared0", "shared1", "shared2")
RUNNERS = ("run0", "run1")
CLEAN_REFUSALS = {400, 404, 409}
STORM_TIMEOUT = 300.0


@dataclass
class Tally:
    """What one client did and saw."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    own: set[str] = field(default_factory=set)  # own domains it defined and kept
    created: Counter[str] = field(default_factory=Counter)  # shared names: creations
    removed: Counter[str] = field(default_factory=Counter)  # shared names: removals


class LoadClient:
    """One of the concurrent clients: ``calls`` random operations, each recorded."""

    def __init__(self, number: int, daemon: DaemonHandle, calls: int, seed: int) -> None:
        self.number = number
        self.d = daemon
        self.calls = calls
        self.rng = random.Random(seed * 100 + number)
        self.client = Client(state_paths(daemon.root), timeout=120)
        self.tally = Tally()
        self.serial = itertools.count()

    def run(self) -> None:
        for _ in range(self.calls):
            op, call = self.pick()
            began = time.monotonic()
            try:
                call()
                self.tally.outcomes[f"{op} ok"] += 1
            except ApiError as exc:
                if exc.http_status in CLEAN_REFUSALS and exc.code not in ("error", "internal"):
                    self.tally.outcomes[f"{op} {exc.http_status}"] += 1
                else:
                    self.tally.failures.append(f"{op}: HTTP {exc.http_status} {exc}")
            except Exception as exc:  # a reset or a timeout: never acceptable
                self.tally.failures.append(f"{op}: {exc!r}")
            self.tally.latencies.setdefault(op, []).append(time.monotonic() - began)

    def pick(self) -> tuple[str, Any]:
        roll = self.rng.random()
        if roll < 0.35:
            return "list", lambda: self.client.get("/v1/domains")
        if roll < 0.55:
            name = self.rng.choice([*self.tally.own, *SHARED, *RUNNERS, "missing"])
            return "dominfo", lambda: self.client.get(f"/v1/domains/{name}")
        if roll < 0.70:
            return "define", self.define_own
        if roll < 0.78:
            return "undefine", self.undefine_own
        if roll < 0.90:
            name = self.rng.choice(SHARED)
            if self.rng.random() < 0.5:
                return "define-shared", lambda: self.define_shared(name)
            return "undefine-shared", lambda: self.undefine_shared(name)
        name = self.rng.choice(RUNNERS)
        if self.rng.random() < 0.5:
            return "start", lambda: self.client.post(f"/v1/domains/{name}/start")
        return "destroy", lambda: self.client.post(f"/v1/domains/{name}/destroy")

    def define_own(self) -> None:
        name = f"c{self.number}-{next(self.serial)}"
        self.client.post("/v1/domains", {"spec": self.d.spec(name)})
        self.tally.own.add(name)

    def undefine_own(self) -> None:
        if not self.tally.own:
            self.client.request("DELETE", f"/v1/domains/c{self.number}-none")  # a clean 404
            return
        name = self.rng.choice(sorted(self.tally.own))
        self.client.request("DELETE", f"/v1/domains/{name}")
        self.tally.own.discard(name)

    def define_shared(self, name: str) -> None:
        """With a fresh uuid, so a define never silently updates another client's domain:
        it creates the domain, or is refused with 409."""
        self.client.post("/v1/domains",
                         {"spec": self.d.spec(name, uuid=str(uuidlib.uuid4()))})
        self.tally.created[name] += 1

    def undefine_shared(self, name: str) -> None:
        self.client.request("DELETE", f"/v1/domains/{name}")
        self.tally.removed[name] += 1


def _qemu_uuids() -> dict[str, int]:
    """uuid -> pid of every live qemu-system process on the host."""
    found = {}
    for pid, argv in qemu_processes():
        for key, value in itertools.pairwise(argv):
            if key == b"-uuid":
                found[value.decode()] = pid
    return found


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_200_concurrent_mixed_calls(daemon: DaemonHandle) -> None:
    seed = int(os.environ.get("VIRTKIT_LOAD_SEED", time.time_ns() % 100_000))
    print(f"seed {seed} (VIRTKIT_LOAD_SEED to repeat)")
    for name in RUNNERS:
        daemon.define(name, memory=128)
    clients = [LoadClient(n, daemon, CALLS // CLIENTS, seed) for n in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, STORM_TIMEOUT - (time.monotonic() - began)))
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), f"calls hung for over {STORM_TIMEOUT} s"

    failures = [f for c in clients for f in c.tally.failures]
    outcomes = sum((c.tally.outcomes for c in clients), Counter())
    print(f"{CALLS} calls from {CLIENTS} clients in {elapsed:.1f} s:", dict(sorted(
        outcomes.items())))
    assert not failures, failures
    assert sum(outcomes.values()) == CALLS

    # no lost update: own names are each client's serial story; a shared name exists
    # exactly when its creations outnumber its removals (by one at most)
    domains = {d["name"]: d for d in daemon.client.get("/v1/domains")}
    own = set().union(*(c.tally.own for c in clients))
    defined_own = {n for n in domains if n.startswith("c")}
    assert defined_own == own, f"lost or phantom domains: {defined_own ^ own}"
    for name in SHARED:
        created = sum(c.tally.created[name] for c in clients)
        removed = sum(c.tally.removed[name] for c in clients)
        assert created - removed == (1 if name in domains else 0), \
            f"{name}: {created} creations, {removed} removals, defined: {name in domains}"

    # processes agree with the API
    qemus = _qemu_uuids()
    for name, dom in domains.items():
        if dom["state"] in ("running", "paused"):
            assert dom["pid"] and qemus.get(dom["uuid"]) == dom["pid"], \
                f"{name} is {dom['state']} but QEMU pid {dom['pid']} is not its QEMU"
        else:
            assert dom["uuid"] not in qemus, f"{name} is {dom['state']} but a QEMU runs"

    latencies = [x for c in clients for x in c.tally.latencies.get("list", [])]
    print(f"list under load: {len(latencies)} calls, p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p99 "
          f"{_percentile(latencies, 0.99) * 1000:.1f} ms")
    for name in RUNNERS:
        if domains[name]["state"] != "shutoff":
            daemon.client.post(f"/v1/domains/{name}/destroy")
