"""A small asyncio client of etcd's v3 JSON gateway (``/v3/kv/*``, ``/v3/lease/*``,
``/v3/watch``, ``/v3/cluster/*``, ``/v3/maintenance/status``).

Why not a library (docs/architecture.md, "The cluster"): ``etcd3`` 0.12 fails with
current protobuf, ``aetcd`` has no TLS and takes one endpoint, ``etcd3gw`` is
synchronous with one endpoint.  The gateway is part of every etcd 3.4+ server; aiohttp
is already a dependency; what virtkit needs is a few hundred lines.

Keys and values are bytes on the wire as base64; int64 fields arrive as JSON strings
and fields at their default value are left out (``succeeded: false`` is absent).

Failover: requests go to the endpoint that answered last; a failed connection moves
on to the next one, round the list, until ``deadline`` seconds have passed (a leader
election takes ~1-2 s).  A request that was sent but got no answer (timeout, dropped
connection) is retried too, except a txn: it may have been applied, so ``txn`` raises
:class:`OutcomeUnknown`, and ``create``/``swap`` retry it themselves, recognising
their own earlier write by its value.  An answer from etcd (even an error) is not
retried, except "no leader" ones (nothing was applied).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from virtkit.errors import HostError, InvalidSpec, VirtkitError

log = logging.getLogger(__name__)

#: one request to one endpoint: a follower drops a proposal made while it has no
#: leader and never answers it, so a short wait here is what makes failover fast
REQUEST_TIMEOUT = 1.0
#: how long a request keeps trying other endpoints before giving up
DEADLINE = 8.0


class EtcdUnavailable(HostError):
    """No endpoint answered within the deadline."""


class OutcomeUnknown(EtcdUnavailable):
    """A write reached an endpoint that did not answer: it may have been applied."""


class EtcdError(VirtkitError):
    """etcd answered with an error (its gRPC message is kept)."""

    http_status = 502


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes | str) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def json(self) -> Any:
        return json.loads(self.value)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KeyValue:
        return cls(key=_unb64(raw.get("key")).decode(errors="replace"),
                   value=_unb64(raw.get("value")),
                   create_revision=int(raw.get("create_revision", 0)),
                   mod_revision=int(raw.get("mod_revision", 0)),
                   version=int(raw.get("version", 0)), lease=int(raw.get("lease", 0)))


@dataclass(frozen=True)
class Compare:
    """One condition of a txn: ``Compare.version("k", "=", 0)`` (the key is absent)."""

    key: str
    target: Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
    operand: int | bytes
    #: compare every key from ``key`` up to this one (a prefix's :func:`prefix_end`)
    range_end: bytes | None = None

    _RESULTS = {"=": "EQUAL", ">": "GREATER", "<": "LESS", "!=": "NOT_EQUAL"}
    _FIELDS = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
               "VALUE": "value", "LEASE": "lease"}

    @classmethod
    def version(cls, key: str, op: str, value: int) -> Compare:
        return cls(key, "VERSION", cls._RESULTS[op], value)  # type: ignore[arg-type]

    @classmethod
    def mod_revision(cls, key: str, op: str, value: int) -> Compare:
        return cls(key, "MOD", cls._RESULTS[op], value)  # type: ignore[arg-type]

    @classmethod
    def mod_revision_all(cls, prefix: str, op: str, value: int) -> Compare:
        """Every key under ``prefix`` (``"<", rev + 1``: none was made or changed after
        revision ``rev``; deletes are not seen)."""
        return cls(prefix, "MOD", cls._RESULTS[op], value,  # type: ignore[arg-type]
                   prefix_end(prefix))

    @classmethod
    def value(cls, key: str, op: str, value: bytes) -> Compare:
        return cls(key, "VALUE", cls._RESULTS[op], value)  # type: ignore[arg-type]

    @classmethod
    def lease(cls, key: str, op: str, value: int) -> Compare:
        return cls(key, "LEASE", cls._RESULTS[op], value)  # type: ignore[arg-type]

    def body(self) -> dict[str, Any]:
        name = self._FIELDS[self.target]
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        body = {"key": _b64(self.key), "target": self.target, "result": self.result,
                name: operand}
        if self.range_end is not None:
            body["range_end"] = _b64(self.range_end)
        return body


@dataclass(frozen=True)
class Op:
    """One operation of a txn."""

    body: dict[str, Any]

    @classmethod
    def put(cls, key: str, value: bytes | str, lease: int = 0) -> Op:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return cls({"request_put": put})

    @classmethod
    def delete(cls, key: str, *, prefix: bool = False) -> Op:
        request = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(prefix_end(key))
        return cls({"request_delete_range": request})

    @classmethod
    def get(cls, key: str, *, prefix: bool = False) -> Op:
        request = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(prefix_end(key))
        return cls({"request_range": request})


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    #: the key-values read by the branch that ran (its ``Op.get``s), in order
    ranges: list[list[KeyValue]] = field(default_factory=list)


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    revision: int


@dataclass(frozen=True)
class Tls:
    """Files of a TLS client: the CA to trust and, for client-cert auth, cert + key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


def endpoint_url(text: str) -> str:
    """``text`` as an etcd client URL (``https://host:port``, ``http://`` without TLS),
    or an InvalidSpec naming what is wrong with it."""
    fix = "give URLs such as https://10.0.0.1:2379"
    if not text.isascii() or not text.isprintable() or len(text) > 255:
        raise InvalidSpec(f"etcd endpoint {text[:60]!r} is not a URL", field="etcd_endpoints",
                          fix=fix)
    try:
        url = urlsplit(text.rstrip("/"))
        port = url.port
    except ValueError:
        url, port = None, None
    if url is None or url.scheme not in ("http", "https") or not url.hostname \
            or port is None or url.path or url.query or url.fragment or url.username:
        raise InvalidSpec(f"etcd endpoint {text!r} is not http(s)://HOST:PORT",
                          field="etcd_endpoints", fix=fix)
    return text.rstrip("/")


class Etcd:
    """A client of one etcd cluster through any of its ``endpoints``
    (``https://10.0.0.1:2379``; ``http://`` without TLS)."""

    def __init__(self, endpoints: Sequence[str], *, tls: Tls | None = None,
                 timeout: float = REQUEST_TIMEOUT, deadline: float = DEADLINE) -> None:
        if not endpoints:
            raise VirtkitError("no etcd endpoint given")
        self.endpoints = [endpoint_url(e) for e in endpoints]
        self._current = 0
        self._tls = tls
        self._timeout = timeout
        self._deadline = deadline
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = self._tls.context() if self._tls is not None else None
            connector = aiohttp.TCPConnector(ssl=context if context is not None else False,
                                             limit=32)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- transport ---------------------------------------------------------------------

    async def _post_to(self, endpoint: str, path: str, body: dict[str, Any],
                       timeout: float | None = None) -> dict[str, Any]:
        async with self.session.post(
                endpoint + path, json=body,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout)) as reply:
            data = await reply.json(content_type=None)
            if reply.status >= 400 or (isinstance(data, dict) and "error" in data
                                       and "code" in data):
                message = data.get("message") or data.get("error") if isinstance(data, dict) \
                    else str(data)
                raise EtcdError(f"etcd {path}: {message}", status=reply.status,
                                endpoint=endpoint)
            return data if isinstance(data, dict) else {}

    async def call(self, path: str, body: dict[str, Any], *,
                   idempotent: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers."""
        deadline = time.monotonic() + self._deadline
        errors: dict[str, str] = {}
        attempt = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                result = await self._post_to(endpoint, path, body)
            except aiohttp.ClientConnectorError as exc:  # never delivered
                errors[endpoint] = str(exc) or type(exc).__name__
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                    OSError) as exc:
                errors[endpoint] = str(exc) or type(exc).__name__
                if not idempotent:
                    self._current = (self._current + 1) % len(self.endpoints)
                    raise OutcomeUnknown(f"etcd {endpoint} did not answer {path}: "
                                         f"{errors[endpoint]}; it may have been applied",
                                         fix="read the keys again before retrying") from exc
            except EtcdError as exc:
                # no leader yet (an election runs): the request was not applied; try again
                if "no leader" not in str(exc) and "leader changed" not in str(exc):
                    raise
                errors[endpoint] = str(exc)
            else:
                return result
            self._current = (self._current + 1) % len(self.endpoints)
            attempt += 1
            if time.monotonic() > deadline:
                raise EtcdUnavailable(
                    f"no etcd endpoint answered within {self._deadline:g} s: "
                    + "; ".join(f"{e}: {m}" for e, m in errors.items()),
                    fix="check the etcd members run and are reachable "
                        "('virtkit cluster status')")
            if attempt % len(self.endpoints) == 0:
                await asyncio.sleep(0.2)

    # -- keys ----------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        found = await self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = found.get("kvs") or []
        return KeyValue.parse(kvs[0]) if kvs else None

    async def range(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, in key order."""
        found = await self.call("/v3/kv/range", {"key": _b64(prefix),
                                                 "range_end": _b64(prefix_end(prefix))})
        return [KeyValue.parse(kv) for kv in found.get("kvs") or []]

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` unconditionally; the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        done = await self.call("/v3/kv/put", body)
        return int(done.get("header", {}).get("revision", 0))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        done = await self.call("/v3/kv/deleterange", body)
        return int(done.get("deleted", 0))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """If every ``compare`` holds, run ``success``, else ``failure``: atomically."""
        done = await self.call("/v3/kv/txn", {
            "compare": [c.body() for c in compare], "success": [o.body for o in success],
            "failure": [o.body for o in failure]}, idempotent=False)
        ranges = [[KeyValue.parse(kv) for kv in r["response_range"].get("kvs") or []]
                  for r in done.get("responses") or [] if "response_range" in r]
        return TxnResult(bool(done.get("succeeded", False)),
                         int(done.get("header", {}).get("revision", 0)), ranges)

    async def _cas(self, compare: Compare, key: str, value: bytes | str, lease: int) -> bool:
        """One compare-and-put; retried when its outcome is unknown: a retry that fails
        because the key already holds exactly our value and lease is our first write."""
        raw = value.encode() if isinstance(value, str) else value
        deadline = time.monotonic() + self._deadline
        ambiguous = False
        while True:
            try:
                done = await self.txn([compare], [Op.put(key, raw, lease)], [Op.get(key)])
            except OutcomeUnknown:
                if time.monotonic() > deadline:
                    raise
                ambiguous = True
                continue
            if done.succeeded or not ambiguous:
                return done.succeeded
            now = done.ranges[0][0] if done.ranges and done.ranges[0] else None
            return now is not None and now.value == raw and now.lease == lease

    async def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (compare-and-swap on version 0)."""
        return await self._cas(Compare.version(key, "=", 0), key, value, lease)

    async def swap(self, key: str, mod_revision: int, value: bytes | str,
                   lease: int = 0) -> bool:
        """Put ``key`` only if nobody changed it since ``mod_revision``."""
        return await self._cas(Compare.mod_revision(key, "=", mod_revision), key, value,
                               lease)

    # -- leases --------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        done = await self.call("/v3/lease/grant", {"TTL": str(ttl)})  # a lost one expires
        return int(done["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL now, 0 when it had already expired."""
        done = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(done.get("result", done).get("TTL", 0))

    async def lease_ttl(self, lease: int) -> int:
        """Seconds left, -1 when the lease does not exist (expired or revoked)."""
        done = await self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(done.get("TTL", -1))

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- watch ---------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """The changes of every key under ``prefix`` after ``start_revision`` (0: from
        now), as they happen.  Reconnects to the next endpoint when the stream breaks,
        resuming after the last revision seen, so no event is lost or repeated."""
        after = start_revision - 1 if start_revision else 0
        while True:
            request: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
            if after:
                request["start_revision"] = str(after + 1)
            endpoint = self.endpoints[self._current]
            try:
                async with self.session.post(
                        endpoint + "/v3/watch", json={"create_request": request},
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
                ) as reply:
                    async for line in reply.content:
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result", {})
                        if result.get("canceled"):
                            after = _resume_after_cancel(prefix, after, result)
                            break
                        revision = int(result.get("header", {}).get("revision", 0))
                        if not after and revision:
                            after = revision  # "from now" is pinned at the first answer
                        for raw in result.get("events") or []:
                            event = WatchEvent(raw.get("type", "PUT"),
                                               KeyValue.parse(raw["kv"]),
                                               int(raw["kv"].get("mod_revision", 0)))
                            after = max(after, event.revision)
                            yield event
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            self._current = (self._current + 1) % len(self.endpoints)
            await asyncio.sleep(0.2)

    # -- cluster and maintenance ---------------------------------------------------------

    async def members(self) -> list[dict[str, Any]]:
        """``[{"ID": int, "name": str, "peerURLs": [...], "clientURLs": [...],
        "isLearner": bool}]`` (a member added but not started yet has no name)."""
        done = await self.call("/v3/cluster/member/list", {})
        return [{**m, "ID": int(m["ID"]), "name": m.get("name", ""),
                 "peerURLs": m.get("peerURLs", []), "clientURLs": m.get("clientURLs", []),
                 "isLearner": bool(m.get("isLearner", False))}
                for m in done.get("members") or []]

    async def sync_endpoints(self) -> list[str]:
        """Use every started member's client URLs from now on (the one that answered
        last stays first): a client made with one member's address reaches the others
        when that member is down, as etcd's own clients do with ``--endpoints``
        auto-sync.  The endpoints now in use."""
        urls = sorted({endpoint_url(u) for m in await self.members()
                       if m["name"] and not m["isLearner"] for u in m["clientURLs"]})
        if urls:
            current = self.endpoints[self._current]
            self.endpoints = [current, *(u for u in urls if u != current)] \
                if current in urls else urls
            self._current = 0
        return list(self.endpoints)

    async def member_add(self, peer_urls: list[str]) -> int:
        done = await self.call("/v3/cluster/member/add", {"peerURLs": peer_urls},
                               idempotent=False)
        return int(done["member"]["ID"])

    async def member_remove(self, member_id: int) -> None:
        await self.call("/v3/cluster/member/remove", {"ID": str(member_id)})

    async def endpoint_status(self, endpoint: str) -> dict[str, Any]:
        """One endpoint's own status (member id, leader id, raft index), no failover."""
        done = await self._post_to(endpoint.rstrip("/"), "/v3/maintenance/status", {})
        return {"member_id": int(done.get("header", {}).get("member_id", 0)),
                "leader": int(done.get("leader", 0)), "version": done.get("version", ""),
                "raft_index": int(done.get("raftIndex", 0)),
                "db_size": int(done.get("dbSize", 0))}


def _resume_after_cancel(prefix: str, after: int, result: dict[str, Any]) -> int:
    """Where a watch etcd cancelled resumes.  A watch that asked for history older than
    the members keep (``compact_revision``: auto-compaction ran while the stream was
    away) cannot replay it: it goes on from now (0), and the caller's periodic full look
    covers the gap.  Any other cancel resumes where it was."""
    compacted = int(result.get("compact_revision", 0) or 0)
    if compacted:
        log.warning("etcd: the watch of %s missed revisions up to %d (compacted); "
                    "it goes on from now", prefix, compacted)
        return 0
    log.warning("etcd: the watch of %s was cancelled: %s", prefix,
                result.get("cancel_reason", "no reason given"))
    return after
