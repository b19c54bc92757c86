"""Host membership in etcd: who is in the cluster, and who is alive.

Keys (values are JSON):

- ``/virtkit/cluster``: the cluster itself (name, created, CA fingerprint); made once by
  ``cluster init`` with a compare-and-swap on version 0.
- ``/virtkit/members/<host>``: a member host (address, role ``voter``/``client``, etcd
  member id); no lease: it stays while the host is down, until ``cluster leave``.
- ``/virtkit/hosts/<host>``: the host's live record (state, capacity, VMs, heartbeat)
  on the host's lease (TTL 5 s, renewed every second by :class:`HostAgent`).  When a
  host stops renewing, etcd deletes the record when the lease expires: every other
  host sees the DELETE on its watch.

Every write is a txn: a record is created only if absent (version 0) and changed only
if nobody changed it since it was read (mod_revision).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.cluster.etcd import Compare, Etcd, EtcdUnavailable, KeyValue, Op
from virtkit.errors import Conflict, VirtkitError

log = logging.getLogger(__name__)

PREFIX = "/virtkit/"
CLUSTER_KEY = PREFIX + "cluster"
MEMBERS = PREFIX + "members/"
HOSTS = PREFIX + "hosts/"
#: ``/virtkit/vms/<host>``: the host's VMs (name, uuid, state) on its lease
VMS = PREFIX + "vms/"
#: the host lease: a host that has not renewed it for this long is gone
LEASE_TTL = 5
#: keepalive period: a tenth of the TTL, so that an etcd leader election (1 to 2 s
#: without writes) ends well before the fence deadline (cluster/fence.py: TTL - 2 s)
KEEPALIVE = 0.5
#: how often the live record is rewritten (heartbeat, capacity, VMs)
REFRESH = 2.0


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class HostAgent:
    """Keeps this host's lease alive and its live record current.

    ``report()`` gives the record's changing part (state, capacity, VMs).  The lease id
    is saved in ``lease_file``, so a restarted daemon takes its record back while the
    old lease still lives instead of seeing its own name as taken.
    """

    def __init__(self, etcd: Etcd, name: str, report: Callable[[], dict[str, Any]],
                 lease_file: Path, *, ttl: int = LEASE_TTL, keepalive: float = KEEPALIVE,
                 refresh: float = REFRESH,
                 domains: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.etcd = etcd
        self.name = name
        self.key = HOSTS + name
        self.report = report
        self.lease_file = lease_file
        self.ttl = ttl
        self.keepalive = keepalive
        self.refresh = refresh
        self.lease = 0
        #: CLOCK_MONOTONIC send time of the last successful renewal: the lease cannot
        #: expire before ``renewed + ttl`` (cluster/fence.py counts from it)
        self.renewed = 0.0
        self._revision = 0  # mod_revision of our record as we last wrote it
        self._written = 0.0
        self.domains = domains
        self._published: bytes | None = None  # the VM summary as last written
        self._task: asyncio.Task[None] | None = None

    def _record(self) -> bytes:
        return encode({"name": self.name, "heartbeat": time.time(), "lease": self.lease,
                       **self.report()})

    def _saved_lease(self) -> int:
        try:
            return int(self.lease_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    async def register(self) -> None:
        """Take a lease (our saved one if it still lives) and write the live record;
        Conflict when another live host holds the name."""
        saved = self._saved_lease()
        asked = time.monotonic()
        left = await self.etcd.lease_ttl(saved) if saved else 0
        if left > 0:  # it expires ``left`` (rounded down) seconds after we asked
            self.lease = saved
            self.renewed = max(self.renewed, asked + left - self.ttl)
        else:
            asked = time.monotonic()
            self.lease = await self.etcd.lease_grant(self.ttl)
            self.lease_file.write_text(f"{self.lease}\n")
            self.renewed = asked
        record = self._record()
        done = await self.etcd.txn(
            [Compare.version(self.key, "=", 0)], [Op.put(self.key, record, self.lease)],
            [Op.get(self.key)])
        self._published = None
        if done.succeeded:
            self._revision, self._written = done.revision, time.monotonic()
            await self._publish()
            return
        current = done.ranges[0][0] if done.ranges and done.ranges[0] else None
        if current is not None and current.lease == self.lease:  # ours, from before
            await self._rewrite(current)
            return
        raise Conflict(f"a live host named {self.name!r} is already in the cluster",
                       fix="give this host another name, or stop the other one first")

    async def _rewrite(self, current: KeyValue | None = None) -> None:
        """Rewrite the record if it is still the one we wrote (CAS on mod_revision)."""
        revision = current.mod_revision if current is not None else self._revision
        record = self._record()
        done = await self.etcd.txn([Compare.mod_revision(self.key, "=", revision),
                                    Compare.lease(self.key, "=", self.lease)],
                                   [Op.put(self.key, record, self.lease)], [Op.get(self.key)])
        if done.succeeded:
            self._revision, self._written = done.revision, time.monotonic()
            await self._publish()
            return
        now = done.ranges[0][0] if done.ranges and done.ranges[0] else None
        if now is None:  # gone (expired while we were cut off): make it again
            await self.register()
        elif now.lease == self.lease:  # someone else wrote our record: take theirs as base
            self._revision = now.mod_revision
            await self._rewrite(now)
        else:
            raise Conflict(f"host record {self.name!r} is held by another lease")

    async def _publish(self) -> None:
        """Write the VM summary when it changed, while our record is on our lease."""
        if self.domains is None:
            return
        summary = encode({"host": self.name, "domains": self.domains()})
        if summary == self._published:
            return
        done = await self.etcd.txn([Compare.lease(self.key, "=", self.lease)],
                                   [Op.put(VMS + self.name, summary, self.lease)])
        if done.succeeded:
            self._published = summary

    async def beat(self) -> None:
        """One renewal; the record is rewritten every ``refresh`` seconds."""
        if not self.lease:  # registering failed at start (etcd away): again now
            await self.register()
            return
        sent = time.monotonic()
        ttl = await self.etcd.lease_keepalive(self.lease)
        if ttl <= 0:
            log.warning("cluster: host lease %x had expired; registering again", self.lease)
            self.lease_file.unlink(missing_ok=True)
            await self.register()
            return
        self.renewed = sent
        if time.monotonic() - self._written >= self.refresh:
            await self._rewrite()
        else:
            await self._publish()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive)
            try:
                await self.beat()
            except EtcdUnavailable as exc:
                log.warning("cluster: cannot renew the host lease: %s", exc)
            except VirtkitError as exc:
                log.error("cluster: host record: %s", exc)
            except Exception:
                log.exception("cluster: host agent failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self, *, revoke: bool = False) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self.lease:
            await self.etcd.txn([Compare.lease(self.key, "=", self.lease)],
                                [Op.delete(self.key), Op.delete(VMS + self.name)])
            await self.etcd.lease_revoke(self.lease)
            self.lease_file.unlink(missing_ok=True)


async def host_table(etcd: Etcd, lost: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Every member host with its live record: state ``down`` where the record is gone
    (``down_since``: when this host's watch saw it go, if it did)."""
    members = {kv.key.removeprefix(MEMBERS): kv.json() for kv in await etcd.range(MEMBERS)}
    live = {kv.key.removeprefix(HOSTS): kv.json() for kv in await etcd.range(HOSTS)}
    rows = []
    for name in sorted(set(members) | set(live)):
        member, record = members.get(name, {}), live.get(name)
        row = {"name": name, "address": member.get("address"), "role": member.get("role"),
               "etcd_member": member.get("etcd_id"), "joined": member.get("joined")}
        if record is None:
            row.update(state="down", capacity=None, vms=None, heartbeat=None, api=None,
                       down_since=(lost or {}).get(name))
        else:
            api = record.get("api")
            row.update(state=record.get("state", "up"), capacity=record.get("capacity"),
                       vms=record.get("vms"), heartbeat=record.get("heartbeat"),
                       version=record.get("version"),
                       api=api.get("url") if isinstance(api, dict) else None)
        rows.append(row)
    return rows


async def cluster_domains(etcd: Etcd) -> dict[str, list[dict[str, Any]]]:
    """host -> the VM summary it published (hosts that are down have none)."""
    found = {}
    for kv in await etcd.range(VMS):
        value = kv.json()
        found[kv.key.removeprefix(VMS)] = list(value.get("domains") or [])
    return found
