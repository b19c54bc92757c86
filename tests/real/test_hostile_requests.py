"""Hostile requests, round 2, against a real virtkitd over its sockets (docs/security.md
"Hostile input"): every finding reproduced as a request, each answered with a 4xx that
names the field, and nothing changed (the victim is still there, with its name).

Every request goes through :func:`attempt`, which counts what was tried, refused and
failed; the module's last test prints the tally (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, raw_request, running_daemon
from tests.unit.test_hostile_input import HOSTILE_TEXT
from virtkit.images.tinyguest import TinyGuest
from virtkit.store.db import Store

TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def hd(tiny_guest: TinyGuest) -> Iterator[DaemonHandle]:
    with running_daemon(tiny_guest) as handle:
        yield handle


def attempt(d: DaemonHandle, method: str, path: str, body: dict[str, Any] | None = None,
            *, sock: str = "virtkitd.sock") -> tuple[int, Any]:
    """Send one request; (status, decoded answer).  Never a 5xx (asserted here)."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n\r\n")
    status, data = raw_request(d.root / sock, head.encode() + payload, timeout=60)
    TALLY["tried"] += 1
    TALLY[f"{status // 100}xx"] += 1
    assert status < 500, f"{method} {path} {body!r:.200}: {status} {data[:400]!r}"
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode(errors="replace")


def refused(d: DaemonHandle, method: str, path: str, body: dict[str, Any] | None = None,
            *, field: str | None = None, status: int = 400,
            sock: str = "virtkitd.sock") -> dict[str, Any]:
    """Send one request that must be refused with ``status`` naming ``field``."""
    got, answer = attempt(d, method, path, body, sock=sock)
    assert got == status, f"{method} {path} {body!r:.200}: {got} {answer!r:.300}"
    assert isinstance(answer, dict) and answer.get("message"), answer
    if field is not None:
        named = answer.get("details", {}).get("field") or ""
        assert field in named or field in answer["message"], (field, answer)
    return answer


def _uuid(d: DaemonHandle, path: str) -> str:
    return str(d.client.get(path)["uuid"])


# -- 1. a name equal to another object's UUID takes nothing over ---------------------------

def test_no_define_takes_over_another_domain(hd: DaemonHandle) -> None:
    victim = hd.define("victim")
    uuid = victim["uuid"]
    for name in (uuid, uuid.upper(), uuid.replace("-", ""), f"{{{uuid}}}"):
        refused(hd, "POST", "/v1/domains", {"spec": {"name": name, "memory": 256}},
                field="name")
    answer = refused(hd, "POST", "/v1/domains",
                     {"spec": {"name": "x", "uuid": uuid, "memory": 256}}, status=409)
    assert "victim" in answer["message"] and uuid in answer["message"]
    other = hd.define("other")
    answer = refused(hd, "POST", "/v1/domains",
                     {"spec": {"name": "victim", "uuid": other["uuid"], "memory": 256}},
                     status=409)
    assert f"'victim' already exists with uuid {uuid}" in answer["message"]
    for name in ("-victim", "--help", "-"):
        refused(hd, "POST", "/v1/domains", {"spec": {"name": name, "memory": 256}},
                field="name")
    assert hd.info("victim")["uuid"] == uuid
    assert hd.info(uuid)["name"] == "victim"
    assert hd.info("other")["uuid"] == other["uuid"]
    # a piece of a uuid is no reference
    refused(hd, "GET", f"/v1/domains/{uuid[:8]}", status=404)


def test_no_define_takes_over_a_pool_or_network(hd: DaemonHandle, tmp_path: Path) -> None:
    pool_uuid = _uuid(hd, "/v1/pools/default")
    refused(hd, "POST", "/v1/pools", {"spec": {"name": pool_uuid, "type": "dir",
                                               "target": str(tmp_path / "p")}}, field="name")
    answer = refused(hd, "POST", "/v1/pools", {"spec": {
        "name": "p2", "uuid": pool_uuid, "type": "dir", "target": str(tmp_path / "p2")}},
        status=409)
    assert "default" in answer["message"]
    assert hd.client.get(f"/v1/pools/{pool_uuid}")["name"] == "default"
    net = hd.client.post("/v1/networks", {"spec": {"name": "net1", "mode": "isolated"}})
    refused(hd, "POST", "/v1/networks", {"spec": {"name": net["uuid"], "mode": "isolated"}},
            field="name")
    refused(hd, "POST", "/v1/networks", {"spec": {"name": "-net", "mode": "isolated"}},
            field="name")
    answer = refused(hd, "POST", "/v1/networks", {"spec": {
        "name": "net2", "uuid": net["uuid"], "mode": "isolated"}}, status=409)
    assert "net1" in answer["message"]
    assert hd.client.get(f"/v1/networks/{net['uuid']}")["name"] == "net1"
    assert {n["name"] for n in hd.client.get("/v1/networks")} == {"net1"}


def test_snapshot_names_follow_the_naming_rule(hd: DaemonHandle) -> None:
    hd.define("snapvm")
    refused(hd, "POST", "/v1/domains/snapvm/snapshots",
            {"name": "65707b9d-22e8-4cf0-92df-46a47793fcd8"}, field="name")
    refused(hd, "POST", "/v1/domains/snapvm/snapshots", {"name": "-s"}, field="name")
    assert hd.client.get("/v1/domains/snapvm/snapshots") == []


# -- 2. no 500s: lone surrogates, deep XML, odd volume sizes -------------------------------

SURROGATES = ["a\udc80b", "\ud800", "x\udfff", "a\x00b"]


def test_lone_surrogates_and_nul_are_refused_by_field(hd: DaemonHandle) -> None:
    before = {d["name"] for d in hd.client.get("/v1/domains")}
    for bad in SURROGATES:
        for key in ("name", "title", "description"):
            spec = {"name": "sur", "memory": 256, key: bad}
            refused(hd, "POST", "/v1/domains", {"spec": spec}, field=key)
            refused(hd, "POST", "/v1/domains/create", {"spec": spec}, field=key)
        refused(hd, "POST", "/v1/domains", {"xml": f"<domain><name>{bad}</name></domain>"},
                field="xml")
        refused(hd, "POST", "/v1/pools", {"spec": {"name": bad, "type": "dir",
                                                   "target": "/tmp/x"}}, field="name")
        refused(hd, "POST", "/v1/networks", {"spec": {"name": bad, "mode": "isolated"}},
                field="name")
        refused(hd, "POST", "/v1/pools/default/volumes", {"name": bad, "capacity": "1M"},
                field="name")
        refused(hd, "POST", "/v1/domains", {"spec": {"name": "k", "memory": 256},
                                            bad: 1})
    assert {d["name"] for d in hd.client.get("/v1/domains")} == before


def _deep(depth: int) -> str:
    return "<x>" * depth + "</x>" * depth


def test_deeply_nested_xml_is_a_400_everywhere(hd: DaemonHandle) -> None:
    hd.define("xmlvm")
    deep = _deep(3000)
    cases = [
        ("/v1/domains", f"<domain type='kvm'><name>d</name><memory>1</memory>"
                        f"<devices>{deep}</devices></domain>"),
        ("/v1/domains/create", f"<domain type='kvm'><name>d</name>{deep}</domain>"),
        ("/v1/networks", f"<network><name>n</name>{deep}</network>"),
        ("/v1/pools", f"<pool type='dir'><name>p</name>{deep}</pool>"),
        ("/v1/domains/xmlvm/devices/attach", f"<disk type='file'>{deep}</disk>"),
        ("/v1/domains/xmlvm/devices/detach", f"<interface>{deep}</interface>"),
        ("/v1/domains/xmlvm/devices/attach", f"<hostdev>{deep}</hostdev>"),
        ("/v1/domains", "<domain>" + "<x/>" * 60000 + "</domain>"),
    ]
    for path, text in cases:
        answer = refused(hd, "POST", path, {"xml": text}, field="xml")
        assert len(json.dumps(answer)) < 1000


def test_volume_resize_rounds_up_to_whole_sectors(hd: DaemonHandle) -> None:
    for fmt in ("raw", "qcow2"):
        name = f"odd.{fmt}"
        hd.client.post("/v1/pools/default/volumes",
                       {"name": name, "capacity": 1000, "format": fmt})
        for size, expected in ((3001, 3072), (4096, 4096), (5000, 5120)):
            status, info = attempt(hd, "POST", f"/v1/pools/default/volumes/{name}/resize",
                                   {"capacity": size})
            assert status == 200 and info["capacity"] == expected, (fmt, size, info)
        refused(hd, "POST", f"/v1/pools/default/volumes/{name}/resize",
                {"capacity": "lots"}, field="capacity")
        refused(hd, "POST", f"/v1/pools/default/volumes/{name}/resize",
                {"capacity": 1024}, field="capacity")  # a shrink without shrink: true


# -- 3. loose parsing ----------------------------------------------------------------------

def test_strings_are_never_booleans_and_unknown_fields_are_refused(hd: DaemonHandle) -> None:
    hd.define("strict")
    for value in ("false", "true", 0, 1, None, [], {}):
        refused(hd, "PUT", "/v1/domains/strict/autostart", {"enabled": value},
                field="enabled")
        refused(hd, "POST", "/v1/domains/strict/start", {"paused": value}, field="paused")
        refused(hd, "PUT", "/v1/pools/default/autostart", {"enabled": value},
                field="enabled")
    assert hd.info("strict")["autostart"] is False
    assert hd.info("strict")["state"] == "shutoff"
    refused(hd, "POST", "/v1/domains", {"spec": hd.spec("strict2"), "bogus": 1},
            field="bogus")
    refused(hd, "POST", "/v1/pools/default/volumes",
            {"name": "typo", "capacity": "1M", "prealloc_typo": True}, field="prealloc_typo")
    refused(hd, "POST", "/v1/domains/strict/shutdown", {"timeout": "5"}, field="timeout")
    refused(hd, "POST", "/v1/domains/strict/destroy", {"force": True}, field="force")
    refused(hd, "POST", "/v1/domains/strict/snapshots", {"disk_only": "yes"},
            field="disk_only")
    refused(hd, "PUT", "/v1/domains/strict/vcpus", {"count": "2"}, field="count")
    refused(hd, "POST", "/v1/domains/strict/clone", {"name": "c", "auto": "true"},
            field="auto")
    refused(hd, "PUT", "/v1/host/ksm", {"action": "maybe"}, field="action")
    # an install with "method": 5 used to boot the VM; bad new_disks were a 500
    install = {"domain": hd.spec("inst"), "method": "import"}
    refused(hd, "POST", "/v1/install", {**install, "method": 5}, field="method")
    refused(hd, "POST", "/v1/install", {**install, "dry_run": "false"}, field="dry_run")
    refused(hd, "POST", "/v1/install", {**install, "new_disks": [{"bogus": 1}]},
            field="new_disks[0]")
    refused(hd, "POST", "/v1/install", {**install, "new_disks": "x"}, field="new_disks")
    assert "inst" not in {d["name"] for d in hd.client.get("/v1/domains")}
    names = {d["name"] for d in hd.client.get("/v1/domains")}
    assert "strict2" not in names and "c" not in names
    assert "typo" not in {v["name"] for v in hd.client.get("/v1/pools/default/volumes")}


def test_one_query_flag_parser_for_the_whole_api(hd: DaemonHandle) -> None:
    hd.define("flags")
    def names(target: str) -> list[tuple[str, str]]:
        """Which objects a listing names (a pool's free bytes move with the host's disk
        use, so the rows themselves are not compared)."""
        return sorted((o["name"], o["state"]) for o in hd.client.get(target))

    for path in ("/v1/domains", "/v1/networks", "/v1/pools"):
        everything = names(path)
        for word in ("1", "true", "yes", "TRUE"):
            assert names(f"{path}?all={word}") == everything, (path, word)
        active = hd.client.get(f"{path}?all=0")
        for word in ("false", "no", "NO"):
            assert names(f"{path}?all={word}") == sorted(
                (o["name"], o["state"]) for o in active), (path, word)
        assert all(o["state"] in ("running", "paused", "active") for o in active)
        for word in ("maybe", "", "2", "on"):
            refused(hd, "GET", f"{path}?all={word}", field="all")
        refused(hd, "GET", f"{path}?bogus=1", field="bogus")
    assert "flags" not in {d["name"] for d in hd.client.get("/v1/domains?all=no")}
    refused(hd, "DELETE", "/v1/domains/flags?nvram=perhaps", field="nvram")
    refused(hd, "GET", "/v1/domains/flags/console/log?tail=-1", field="tail")
    assert hd.info("flags")["name"] == "flags"


# -- 4. bounded cpusets --------------------------------------------------------------------

def test_a_huge_cpuset_is_refused_at_once_with_a_short_answer(hd: DaemonHandle) -> None:
    cpuset = ",".join(["0-65535"] * 2000)
    for spec in ({"name": "cpus", "memory": 256, "vcpus": {"current": 1, "cpuset": cpuset}},
                 {"name": "cpus", "memory": 256, "vcpus": {"current": 1, "cpuset": "0-8191"}}):
        start = time.monotonic()
        answer = refused(hd, "POST", "/v1/domains", {"spec": spec}, field="vcpus.cpuset")
        assert time.monotonic() - start < 5  # was 13 s
        assert len(json.dumps(answer)) < 800  # was 447 KB


# -- 5. secrets ----------------------------------------------------------------------------

def test_secrets_never_on_the_read_only_socket_and_only_when_asked(hd: DaemonHandle) -> None:
    hd.define("secret", graphics={"type": "vnc", "password": "s3cret"})
    paths = ("/v1/domains/secret", "/v1/domains/secret/spec", "/v1/domains/secret/xml",
             "/v1/domains")
    for path in paths:
        for sock in ("virtkitd.sock", "virtkitd-ro.sock"):
            status, answer = attempt(hd, "GET", path, sock=sock)
            assert status == 200 and "s3cret" not in json.dumps(answer), (path, sock)
    for path in paths[:3]:
        refused(hd, "GET", f"{path}?security_info=1", sock="virtkitd-ro.sock", status=403)
        status, answer = attempt(hd, "GET", f"{path}?security_info=true")
        assert status == 200 and "s3cret" in json.dumps(answer), path
    assert "passwd='s3cret'" in hd.cli("dumpxml", "--security-info", "secret").stdout
    assert "s3cret" not in hd.cli("dumpxml", "secret").stdout
    assert "s3cret" not in hd.cli("dominfo", "--json", "secret").stdout
    assert "s3cret" in hd.cli("dominfo", "--json", "--security-info", "secret").stdout
    result = hd.cli("-r", "dumpxml", "--security-info", "secret", check=False)
    assert result.returncode == 1 and "read-only" in result.stderr
    # saving an edit keeps the password: edit reads the spec with its secrets
    result = hd.cli("edit", "secret", env={"EDITOR": "sed -i s/title:.*/title:\\ t/"})
    assert "passwd='s3cret'" in hd.cli("dumpxml", "--security-info", "secret").stdout


# -- 6 and 7. the CLI: '--', and no control or bidi character printed raw ------------------

def test_the_cli_prints_no_control_or_bidi_character(hd: DaemonHandle) -> None:
    import re

    unsafe = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                        "\u202a-\u202e\u2066-\u2069\ufeff]")
    names = []
    for index, text in enumerate(HOSTILE_TEXT):
        name = f"cli{index}-" + "".join(c for c in text if c.isprintable() or ord(c) > 0x9f)
        hd.define(name, title=text, description=text)
        names.append(name)
    outputs = [hd.cli("list", "--all").stdout, hd.cli("list", "--all", "--name").stdout]
    for name in names:
        outputs.append(hd.cli("dominfo", name).stdout)
        outputs.append(hd.cli("dominfo", "--", name).stdout)
        outputs.append(hd.cli("domstate", "--", name).stdout)
        missing = hd.cli("dominfo", name + "\u202e", check=False)
        assert missing.returncode == 1
        outputs.append(missing.stderr)
    for output in outputs:
        assert not unsafe.search(output.replace("\n", "")), repr(output)
    data = json.loads(hd.cli("dominfo", "--json", names[0]).stdout)
    assert data["title"] == HOSTILE_TEXT[0]  # JSON stays JSON, the text exact


# -- a store from before the naming rule ---------------------------------------------------

def test_names_from_before_the_rule_are_reported_and_stay_reachable(
        tiny_guest: TinyGuest, tmp_path: Path) -> None:
    import tempfile

    from tests.real.conftest import cleanup, start_daemon
    from virtkit.cli.client import Client
    from virtkit.model import naming
    from virtkit.model.load import dump_domain, load_domain
    from virtkit.paths import state_paths

    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    first = "0b6c3a4e-8d2f-4a57-9f1e-3c2d1b0a9e8f"
    second = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"
    third = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
    store = Store(root / "virtkit.db")
    store.migrate()
    for uuid, name in ((first, "alpha"), (second, first), (third, "-dash")):
        naming.grandfather(name, uuid)  # to write the spec as an older virtkit did
        store.insert_domain(uuid, name, dump_domain(load_domain(
            {"name": name, "uuid": uuid, "memory": 256})))
    store.close()
    process = start_daemon(root)
    handle = DaemonHandle(root, process, Client(state_paths(root), timeout=60), tiny_guest)
    try:
        report = handle.client.get("/v1/host/repairs")
        flagged = {(n["name"], n["uuid"]) for n in report["naming"]}
        assert flagged == {(first, second), ("-dash", third)}
        assert handle.client.get(f"/v1/domains/{first}")["name"] == "alpha"  # uuid wins
        assert handle.client.get(f"/v1/domains/{second}")["name"] == first
        assert handle.client.get(f"/v1/domains/{third}")["name"] == "-dash"
        printed = handle.cli("repairs").stdout
        assert "naming: domain '-dash'" in printed and third in printed
        assert handle.cli("dominfo", "--", "-dash").stdout.count("-dash") >= 1
        # renaming (edit, PUT) brings it under the rule; a define cannot take its uuid
        row = handle.client.get(f"/v1/domains/{third}/spec")
        spec_text = row["yaml"].replace("name: -dash", "name: dash-fixed")
        handle.client.request("PUT", f"/v1/domains/{third}",
                              {"yaml": spec_text, "version": row["version"]})
        assert handle.client.get("/v1/domains/dash-fixed")["uuid"] == third
        refused(handle, "POST", "/v1/domains", {"spec": {"name": "-dash", "memory": 256}},
                field="name")
    finally:
        cleanup(handle)


def test_zz_tally(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nhostile requests: {TALLY['tried']} tried, "
              f"{TALLY['4xx']} refused (4xx), {TALLY['5xx']} 5xx, "
              f"{TALLY['2xx']} accepted (2xx)")
    assert TALLY["5xx"] == 0
