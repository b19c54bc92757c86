"""Hostile input against a real virtkitd: names and paths through the API, the audit
log, the request-size limit, slow clients, and one real boot from a disk whose path
carries a comma and '=' (see docs/security.md).  The OpenAPI fuzzer is
tests/real/test_api_fuzz.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.real.conftest import DaemonHandle, raw_request, running_daemon, wait_for
from tests.unit.test_hostile_input import HOSTILE
from virtkit.cli.client import ApiError
from virtkit.cli.streaming import send_file
from virtkit.images.tinyguest import TinyGuest
from virtkit.unixsock import connect_unix


def test_hostile_names_and_paths_round_trip_through_the_api(daemon: DaemonHandle,
                                                            tmp_path: Path) -> None:
    for (case, value, name_refused, path_refused) in HOSTILE:
        path = f"{tmp_path}/{value.replace('/', '_')[:200]}.img"
        if not path_refused:  # the daemon checks that a disk image exists
            Path(path).write_bytes(b"")
        spec = {"name": value, "memory": 128, "disks": [{"path": path, "format": "raw"}]}
        try:
            daemon.client.post("/v1/domains", {"spec": spec})
        except ApiError as exc:
            assert name_refused or path_refused, f"{case}: refused a value that works: {exc}"
            # the text rule (NUL, lone surrogates) names the field from the body's top
            assert exc.http_status == 400 and exc.details.get("field") in (
                "name", "disks[0].path", "spec.name", "spec.disks[0].path"), \
                f"{case}: {exc} {exc.details}"
            continue
        assert not (name_refused or path_refused), f"{case}: accepted {value!r}"
        info = daemon.info(value)
        assert info["name"] == value, case
        spec_back = daemon.client.get(daemon.client.domain_path(value, "/spec"))
        assert yaml.safe_load(spec_back["yaml"])["disks"][0]["path"] == path, case
        by_list = {d["name"] for d in daemon.client.get("/v1/domains")}
        assert value in by_list, case
        daemon.client.request("DELETE", daemon.client.domain_path(value))


def test_hostile_volume_and_pool_names_through_the_api(daemon: DaemonHandle,
                                                      tmp_path: Path) -> None:
    images = daemon.root / "images"
    before = set(daemon.root.rglob("*"))
    for (case, value, _name_refused, path_refused) in HOSTILE:
        # volume names become file names in the pool: only a strict pattern passes
        try:
            daemon.client.post("/v1/pools/default/volumes",
                               {"name": value, "capacity": "1M", "format": "raw"})
        except ApiError as exc:
            assert exc.http_status == 400, f"{case}: {exc}"
        else:
            assert (images / value).is_file(), case
            assert (images / value).parent == images, case
        # pool names and targets: a literal, or refused naming the field
        target = tmp_path / f"pool-{len(case)}-{case}"
        try:
            daemon.client.post("/v1/pools", {"spec": {"name": value, "type": "dir",
                                                       "target": f"{target}/{value}"}})
        except ApiError as exc:
            assert exc.http_status == 400 and exc.details.get("field") in (
                "name", "target", "spec", "spec.name", "spec.target"), \
                f"{case}: {exc} {exc.details}"
            continue
        assert not path_refused, f"{case}: a pool target with {value!r} was accepted"
        pool = daemon.client.get(f"/v1/pools/{quote(value, safe='')}")
        assert pool["name"] == value, case
        daemon.client.request("DELETE", f"/v1/pools/{quote(value, safe='')}")
        # network names go into dnsmasq's config only as a repr() comment; defined only
        net = daemon.client.post("/v1/networks", {"spec": {"name": value, "mode": "isolated"}})
        assert net["name"] == value, case
        assert daemon.client.get(f"/v1/networks/{quote(value, safe='')}")["name"] == value
        daemon.client.request("DELETE", f"/v1/networks/{quote(value, safe='')}")
    made = set(daemon.root.rglob("*")) - before - {daemon.root / "log" / "audit.log"}
    assert all(p.parent == images for p in made), made  # nothing outside the pool


def test_mutating_calls_are_audited_with_the_peer_credentials(daemon: DaemonHandle) -> None:
    daemon.define("audited")
    with pytest.raises(ApiError):
        daemon.client.post("/v1/domains", {"spec": {"name": "bad\nname", "memory": 128}})
    daemon.client.request("PUT", daemon.client.domain_path("audited", "/autostart"),
                          {"enabled": False})
    daemon.client.get("/v1/domains")  # reads are not audited
    daemon.client.request("DELETE", daemon.client.domain_path("audited"))
    log = daemon.root / "log" / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/v1/domains", 201), ("POST", "/v1/domains", 400),
        ("PUT", "/v1/domains/audited/autostart", 200), ("DELETE", "/v1/domains/audited", 200)]
    assert [r["object"] for r in records] == ["audited", None, "audited", "audited"]
    for record in records:
        assert (record["uid"], record["gid"], record["pid"]) == (os.getuid(), os.getgid(),
                                                                 os.getpid())
        assert record["time"].endswith("Z") and record["ms"] >= 0
    result = daemon.cli("audit", "--json")
    assert [r["status"] for r in json.loads(result.stdout)] == [201, 400, 200, 200]
    assert "DELETE" in daemon.cli("audit").stdout


def test_big_json_bodies_are_refused_and_uploads_still_stream(daemon: DaemonHandle,
                                                              tmp_path: Path) -> None:
    body = json.dumps({"spec": {"name": "big", "memory": 128,
                                "description": "x" * (5 * 1024 * 1024)}}).encode()
    head = (f"POST /v1/domains HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    status, _ = raw_request(daemon.root / "virtkitd.sock", head + body)
    assert status == 413
    payload = tmp_path / "up.raw"
    payload.write_bytes(os.urandom(1024 * 1024) * 6)  # 6 MiB, past the 4 MiB body limit
    with open(payload, "rb") as source:
        result = send_file(daemon.client, "PUT", "/v1/pools/default/volumes/up.raw/upload",
                           source, payload.stat().st_size, lambda _sent: None)
    assert result["uploaded"] == payload.stat().st_size
    assert (daemon.root / "images" / "up.raw").read_bytes() == payload.read_bytes()
    records = [json.loads(line) for line in
               (daemon.root / "log" / "audit.log").read_text().splitlines()]
    summary = [(r["method"], r["object"], r["status"]) for r in records]
    assert ("POST", None, 413) in summary  # refusals are audited too
    assert ("PUT", "up.raw", 200) in summary


@pytest.fixture
def quick_idle_daemon(tiny_guest: TinyGuest,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonHandle]:
    monkeypatch.setenv("VIRTKIT_IDLE_TIMEOUT", "2")
    with running_daemon(tiny_guest) as handle:
        yield handle


def test_slow_clients_neither_block_others_nor_stay_forever(
        quick_idle_daemon: DaemonHandle) -> None:
    daemon = quick_idle_daemon
    sock_path = daemon.root / "virtkitd.sock"
    slow = []
    for _ in range(40):  # slow-loris: headers started, never finished
        sock = connect_unix(sock_path, timeout=10)
        sock.sendall(b"GET /v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        slow.append(sock)
    try:
        for _ in range(5):
            started = time.monotonic()
            assert daemon.client.get("/v1/version")["version"]
            assert time.monotonic() - started < 1.0
            for sock in slow:
                sock.sendall(b"a")  # trickle: a byte now and then does not buy more time
            time.sleep(0.3)
        # the idle timeout (2 s here) closes them: recv sees the end of the stream
        deadline = time.monotonic() + 10
        for sock in slow:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(100) == b"", "a slow client was not disconnected"
    finally:
        for sock in slow:
            sock.close()


def test_pipelined_requests_on_one_connection_are_answered_in_order(
        daemon: DaemonHandle) -> None:
    request = b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v1/domains/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock = connect_unix(daemon.root / "virtkitd.sock", timeout=10)
    try:
        sock.sendall(request * 20 + last)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    assert answer.count(b"HTTP/1.1 200 OK") == 20
    assert answer.count(b"HTTP/1.1 404") == 1 and answer.rstrip().endswith(b"}")


@pytest.mark.parametrize("head", [
    b"GET /v1/version HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /v1/version HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-H{i}: 1\r\n".encode() for i in range(200)) + b"\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_oversized_request_heads_are_refused(daemon: DaemonHandle, head: bytes) -> None:
    status, _ = raw_request(daemon.root / "virtkitd.sock", head)
    assert status in (400, 413, 414, 431)
    assert daemon.client.get("/v1/version")["version"]


@pytest.mark.qemu
def test_a_guest_boots_from_a_disk_whose_path_has_a_comma_and_equals(
        daemon: DaemonHandle) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vk-a,file.driver=ssh,x=", dir="/tmp"))
    try:
        disk = folder / "d,isk=1.img"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
        daemon.define("commapath", disks=[{"path": str(disk), "format": "raw"}])
        daemon.client.post(daemon.client.domain_path("commapath", "/start"), {})
        daemon.wait_booted("commapath")
        qemu_pid = daemon.qemu_pids()[0]
        argv = Path(f"/proc/{qemu_pid}/cmdline").read_bytes().decode().split("\0")
        blockdevs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
        assert str(disk) in [b.get("filename") for b in blockdevs]
        holders = wait_for(lambda: [os.readlink(f"/proc/{qemu_pid}/fd/{fd}")
                                    for fd in os.listdir(f"/proc/{qemu_pid}/fd")
                                    if _is_link(f"/proc/{qemu_pid}/fd/{fd}")], 5, "fds")
        assert str(disk) in holders, "QEMU did not open the literal path"
        daemon.client.post(daemon.client.domain_path("commapath", "/destroy"), {})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _is_link(path: str) -> bool:
    try:
        os.readlink(path)
    except OSError:
        return False
    return True
