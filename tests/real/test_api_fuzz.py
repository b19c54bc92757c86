"""Fuzz a real virtkitd from its own OpenAPI document (schemathesis generates the cases,
valid and invalid, from GET /v1/openapi.json) plus hand-made broken requests.

Every answer must come within a timeout and must not be a 5xx: a request the daemon
cannot serve gets a 4xx naming the problem.  **Every operation** of the document is
sent:

* reads, and changes to the daemon's own records (:data:`ALLOWED`), with generated
  names and on objects that exist;
* streams and WebSockets (:data:`STREAMS`) with a bounded read: only the status line
  is awaited (a stream that never ends is a pass when its status is not a 5xx);
* slow host probes (:data:`SLOW`) with fewer examples;
* operations that could act on the host (:data:`HOSTILE`: start QEMU, install, restore,
  migrations, TLS setup, KSM, imports, descriptor passing, web login) in schemathesis'
  negative mode, where every answer must be a 4xx, and in positive mode with names
  that name nothing; the daemon has its own state root (TLS setup writes there), the
  KSM setting is restored afterwards, and no QEMU may be left running.

The totals (inputs tried, 4xx refused, 2xx, 5xx) are printed per operation group.
Afterwards the daemon must still answer /v1/version.

CI (``CI`` set) sends the same requests every run, so a red CI can be replayed; a
developer's run draws new ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.real.conftest import DaemonHandle
from virtkit.unixsock import connect_unix

REQUEST_TIMEOUT = 10.0
EXAMPLES = 35  # per plain operation and generation mode: 6,000+ requests in all

#: (method, path template) the fuzzer may send: reads, and changes to the daemon's own
#: records only (a domain that a fuzzed define made is never started)
ALLOWED = {
    ("POST", "/v1/domains"), ("PUT", "/v1/domains/{ref}"), ("DELETE", "/v1/domains/{ref}"),
    ("PUT", "/v1/domains/{ref}/autostart"),
    ("POST", "/v1/networks"), ("DELETE", "/v1/networks/{net}"),
    ("POST", "/v1/pools"), ("DELETE", "/v1/pools/{pool}"),
}
#: streams and WebSockets: only the status line is read
STREAMS = {"/v1/events", "/v1/domains/{ref}/console", "/metrics",
           "/v1/pools/{pool}/volumes/{volume}/download", "/v1/domains/{ref}/vnc/websocket"}
#: the WebSockets among them: sent with a handshake (101 when it is accepted)
WEBSOCKETS = {"/v1/events", "/v1/domains/{ref}/console", "/v1/domains/{ref}/vnc/websocket"}
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
#: slow host probes: a few examples
SLOW = {"/v1/host/check", "/v1/host"}
STREAM_EXAMPLES, SLOW_EXAMPLES, HOSTILE_EXAMPLES = 8, 3, 15
#: they could change the host (KSM, a TLS certificate, the guests' ON_SHUTDOWN policy
#: applied now), run a generated spec or install
#: (QEMU, disks), take the caller's own file descriptors, or end the session: negative
#: cases (all 4xx) and positive ones naming nothing
HOSTILE = {("PUT", "/v1/host/ksm"), ("POST", "/v1/tls/setup"), ("POST", "/v1/install"),
         ("POST", "/v1/migrations/incoming"), ("POST", "/v1/migrations/offline"),
         ("POST", "/v1/domains/create"), ("POST", "/v1/domains/restore"),
         ("POST", "/v1/pools/{pool}/volumes/{volume}/upload-fd"),
         ("POST", "/v1/pools/{pool}/volumes/{volume}/download-fd"),
         ("POST", "/v1/pools/{pool}/import"), ("POST", "/web/logout"), ("POST", "/web/login"),
         ("POST", "/v1/cluster/init"), ("POST", "/v1/cluster/join"),
         ("POST", "/v1/cluster/admit"), ("POST", "/v1/cluster/leave"),
         ("POST", "/v1/host/guests/shutdown")}


def send(sock_path: Path, method: str, target: str, body: bytes | None,
         headers: dict[str, str] | None = None, *, stream: bool = False
         ) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body).  Times out loudly.  With
    ``stream``: only until the status line is in (a stream or WebSocket may never end)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
    if "Connection" not in (headers or {}):
        head += "Connection: close\r\n"
    for key, value in (headers or {}).items():
        head += f"{key}: {value}\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    sock = connect_unix(sock_path, timeout=REQUEST_TIMEOUT)
    try:
        sock.sendall(head.encode("utf-8", "surrogateescape") + b"\r\n" + (body or b""))
        answer = b""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while chunk := sock.recv(65536):
            answer += chunk
            if stream and b"\r\n" in answer:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {target}: answer took over {REQUEST_TIMEOUT}s")
    finally:
        sock.close()
    first, _, rest = answer.partition(b"\r\n")
    return int(first.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


def _target(kwargs: dict[str, Any]) -> str:
    url = urlsplit(kwargs["url"])
    query = urlencode(kwargs.get("params") or {}, doseq=True)
    return url.path + (f"?{query}" if query else "")


def _body(kwargs: dict[str, Any]) -> tuple[bytes | None, dict[str, str]]:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode(), {"Content-Type": "application/json"}
    data = kwargs.get("data")
    if data is None:
        return None, {}
    raw = data if isinstance(data, bytes) else str(data).encode()
    return raw, {"Content-Type": kwargs.get("headers", {}).get("Content-Type",
                                                               "application/octet-stream")}


def group_of(method: str, path: str) -> str:
    """How an operation is fuzzed: stream, slow, hostile or plain."""
    if path in STREAMS:
        return "stream"
    if path in SLOW:
        return "slow"
    if (method.upper(), path) in HOSTILE:
        return "hostile"
    return "plain"


def _operations() -> list[tuple[Any, bool]]:
    """(operation, on existing objects too) for every operation of the document: each
    is sent with generated names (which name nothing: the body and query are parsed,
    and refused or answered 404, before anything is looked up); plain reads and
    :data:`ALLOWED` changes are also sent to objects that exist."""
    from virtkit.api.openapi import openapi_document

    schema = schemathesis.openapi.from_dict(openapi_document())
    chosen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        sent_there = group_of(*key) in ("plain", "stream")
        chosen.append((operation, sent_there and (key in ALLOWED or key[0] == "GET")))
    return chosen


@dataclass
class Tally:
    """Requests per operation group: tried, refused (4xx), 2xx, 5xx."""

    tried: int = 0
    refused: int = 0
    ok: int = 0
    failed: int = 0
    #: hostile operations that acted (2xx) and were undone by the test
    undone: int = 0

    def add(self, status: int) -> None:
        self.tried += 1
        self.refused += 400 <= status < 500
        self.ok += 200 <= status < 300 or status == 101  # 101: a WebSocket accepted
        self.failed += status >= 500


#: hostile operations that can succeed on a generated body, and how the test undoes it
_UNDO_DOMAIN = {"/v1/domains/create", "/v1/install", "/v1/domains/restore"}
_UNDO_MIGRATION = {"/v1/migrations/incoming", "/v1/migrations/offline"}


def _undo(sock_path: Path, path: str, answer: bytes) -> int:
    """Undo what a hostile operation's 2xx did (a started domain is destroyed and
    undefined, an incoming migration removed); 1 when something was undone."""
    try:
        data = json.loads(answer)
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    if path in ("/v1/cluster/init", "/v1/cluster/join"):  # an etcd member may run now
        send(sock_path, "POST", "/v1/cluster/leave", b"{}",
             {"Content-Type": "application/json"})
        return 1
    if path in _UNDO_MIGRATION and isinstance(data.get("id"), str):
        send(sock_path, "DELETE", f"/v1/migrations/{data['id']}", None)
        return 1
    domain = data.get("domain") if isinstance(data.get("domain"), dict) else data
    uuid = domain.get("uuid")
    if path in _UNDO_DOMAIN and isinstance(uuid, str):
        send(sock_path, "POST", f"/v1/domains/{uuid}/destroy", b"{}",
             {"Content-Type": "application/json"})
        send(sock_path, "DELETE", f"/v1/domains/{uuid}", None)
        return 1
    return 0


def _ksm_settings() -> dict[str, str]:
    folder = Path("/sys/kernel/mm/ksm")
    return {name: (folder / name).read_text() for name in ("run",)
            if (folder / name).exists()}


def _restore_ksm(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        path = Path("/sys/kernel/mm/ksm") / name
        if path.read_text() != value:
            path.write_text(value)


def test_fuzz_the_api_from_its_openapi_document(daemon: DaemonHandle) -> None:
    sock_path = daemon.root / "virtkitd.sock"
    served = json.loads(send(sock_path, "GET", "/v1/openapi.json", None)[1])
    assert served["paths"], "the daemon serves its OpenAPI document"
    daemon.define("fuzzed")  # a defined (never started) domain for the second pass
    failures: list[str] = []
    count = 0
    tallies: dict[str, Tally] = {}
    ksm = _ksm_settings()
    try:
        count = _fuzz_all(sock_path, failures, tallies)
    finally:
        _restore_ksm(ksm)
    groups: dict[str, list[Tally]] = {}
    for key, tally in sorted(tallies.items()):
        print(f"fuzz {key}: {tally.tried} tried, {tally.refused} 4xx, {tally.ok} 2xx, "
              f"{tally.failed} 5xx")
        groups.setdefault(key.split(" ", 1)[0], []).append(tally)
    groups["total"] = list(tallies.values())
    for group, members in groups.items():
        total = Tally(*(sum(getattr(t, f) for t in members)
                        for f in ("tried", "refused", "ok", "failed", "undone")))
        undone = f" ({total.undone} acted and were undone)" if group == "hostile" else ""
        print(f"fuzz {group}: {len(members)} operations, {total.tried} inputs tried, "
              f"{total.refused} refused (4xx), {total.ok} 2xx{undone}, {total.failed} 5xx")
    assert len(tallies) == len(_operations()), "every operation is fuzzed"
    assert count >= 1000, f"only {count} requests were generated"
    assert not failures, "\n".join(failures[:20])
    assert json.loads(send(sock_path, "GET", "/v1/version", None)[1])["version"]
    assert daemon.qemu_pids() == [], "a fuzzed request left a QEMU running"


def _fuzz_all(sock_path: Path, failures: list[str], tallies: dict[str, Tally]) -> int:
    count = 0

    def run(operation: Any, mode: GenerationMode, path_parameters: dict[str, str],
            examples: int) -> None:
        group = group_of(operation.method, operation.path)
        tally = tallies.setdefault(f"{group} {operation.method.upper()} {operation.path}",
                                   Tally())
        @settings(max_examples=examples, deadline=None, database=None,
                  derandomize=bool(os.environ.get("CI")), phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def exercise(case: Any) -> None:
            nonlocal count
            kwargs = case.as_transport_kwargs(base_url="http://localhost")
            target = _target(kwargs)
            body, headers = _body(kwargs)
            if operation.path in WEBSOCKETS:
                headers = {**headers, **UPGRADE}
            status, answer = send(sock_path, kwargs["method"], target, body, headers,
                                  stream=group == "stream")
            count += 1
            tally.add(status)
            if group == "hostile" and 200 <= status < 300:
                tally.undone += _undo(sock_path, operation.path, answer)
            wrong = status >= 500 or (group == "hostile" and mode is GenerationMode.NEGATIVE
                                      and not 400 <= status < 500)
            if wrong:
                failures.append(f"{status} {kwargs['method']} {target} "
                                f"{(body or b'')[:300]!r} -> {answer[:300]!r}")

        try:
            exercise()
        except Unsatisfiable:  # nothing to make invalid: an operation without inputs
            assert mode is GenerationMode.NEGATIVE

    existing = {"ref": "fuzzed", "pool": "default"}
    examples = {"stream": STREAM_EXAMPLES, "slow": SLOW_EXAMPLES,
                "hostile": HOSTILE_EXAMPLES, "plain": EXAMPLES}
    for operation, on_existing in _operations():
        names = {p.name for p in operation.path_parameters}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # random names: mostly 404s and 400s (changes without path names are
            # ALLOWED ones, or harmless: a token, the daemon's own TLS files, KSM
            # restored afterwards)
            run(operation, mode, {}, examples[group_of(operation.method, operation.path)])
        if on_existing and names and names <= set(existing) \
                and operation.method.upper() != "DELETE":
            # the same operation on objects that exist: reaches the service layer
            run(operation, GenerationMode.POSITIVE, {k: existing[k] for k in names}, 10)
    # the event stream itself: a WebSocket that never ends (only the status is read)
    status, _ = send(sock_path, "GET", "/v1/events", None, UPGRADE, stream=True)
    tallies.setdefault("stream GET /v1/events", Tally()).add(status)
    count += 1
    if status != 101:
        failures.append(f"{status} GET /v1/events (the stream itself)")
    return count


BROKEN_BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"spec"', b"\xff\xfe", b'{"spec": []}',
    b'{"spec": {"name": 1}}', b'{"yaml": 5}', b'{"yaml": "- a\\n- b"}', b'{"xml": 5}',
    b'{"xml": "<domain>"}', b'{"xml": "<!DOCTYPE x [<!ENTITY a \\"b\\">]><domain/>"}',
    b'{"spec": {"name": "x", "memory": "12Q"}}', b'{"spec": {"name": "x", "memory": 1e400}}',
    b'[' * 10000 + b']' * 10000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"spec": {"name": "x", "memory": 128, "vcpus": 99999999999999999999999}}',
    json.dumps({"yaml": "[" * 5000 + "]" * 5000}).encode(),
    json.dumps({"yaml": "a: " + "{b: " * 3000 + "1" + "}" * 3000}).encode(),
]


BAD_QUERIES = ["port=abc", "port=-1", "port=²", "port=" + "9" * 5000, "tail=x", "tail=-5",
               "since=x", "since=²", "limit=0", "limit=x", "all=%00", "groups=nope",
               "domain=%FF", "filter=" + "a" * 10000]


def test_bad_query_parameters_get_a_4xx_not_a_crash(daemon: DaemonHandle) -> None:
    daemon.define("fuzzq")
    sock_path = daemon.root / "virtkitd.sock"
    for path in ["/v1/domains/fuzzq/console/log", "/v1/audit", "/v1/domains", "/v1/domstats",
                 "/v1/osinfo", "/v1/networks", "/v1/pools"]:
        for query in BAD_QUERIES:
            status, answer = send(sock_path, "GET", f"{path}?{query}", None)
            assert status < 500, f"GET {path}?{query[:60]}: {status} {answer[:300]!r}"


@pytest.mark.parametrize("target", ["/v1/domains", "/v1/domains/x", "/v1/networks",
                                    "/v1/pools", "/v1/domains/x/autostart"])
def test_broken_bodies_get_a_4xx(daemon: DaemonHandle, target: str) -> None:
    sock_path = daemon.root / "virtkitd.sock"
    method = "PUT" if target.count("/") > 2 else "POST"
    for body in BROKEN_BODIES:
        for content_type in ("application/json", "text/plain"):
            status, answer = send(sock_path, method, target, body,
                                  {"Content-Type": content_type})
            assert 400 <= status < 500, f"{method} {target} {body[:80]!r}: {status} {answer!r}"
    assert json.loads(send(sock_path, "GET", "/v1/version", None)[1])["version"]
