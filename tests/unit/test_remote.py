"""Remote connections without a network: URIs, the ssh command, tokens, TLS names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from virtkit.api.tlslisten import DEFAULT_PORT, parse_address
from virtkit.cli.main import _split_install
from virtkit.cli.transport import (
    SYSTEM_ROOT,
    TLS_PORT,
    local_root,
    normalize_fingerprint,
    parse_uri,
    ssh_command,
    tls_transport,
)
from virtkit.errors import Conflict, DaemonUnreachable, InvalidSpec, NotFound, Unauthorized
from virtkit.service import tokens
from virtkit.service.tls import san_entries
from virtkit.store.db import Store, TokenRow

# -- URIs ----------------------------------------------------------------------------------

def test_local_uris() -> None:
    assert local_root(parse_uri("virtkit:///system")) == SYSTEM_ROOT
    assert local_root(parse_uri("virtkit:///")) is None
    assert local_root(parse_uri("virtkit://")) is None
    assert str(local_root(parse_uri("virtkit:///session"))).endswith("virtkit")
    assert not parse_uri("virtkit:///system").remote


def test_ssh_uris() -> None:
    uri = parse_uri("virtkit+ssh://root@host.example:2222/srv/vk/virtkitd.sock")
    assert (uri.scheme, uri.user, uri.host, uri.port, uri.socket) == (
        "virtkit+ssh", "root", "host.example", 2222, "/srv/vk/virtkitd.sock")
    assert uri.remote
    plain = parse_uri("virtkit+ssh://host")
    assert (plain.user, plain.port, plain.socket) == (None, None, "/var/lib/virtkit/virtkitd.sock")
    assert parse_uri("virtkit+ssh://h/system").socket == "/var/lib/virtkit/virtkitd.sock"
    query = parse_uri("virtkit+ssh://h?keyfile=/k&known_hosts=/kh&no_verify=1").query
    assert query == {"keyfile": "/k", "known_hosts": "/kh", "no_verify": "1"}
    assert parse_uri("virtkit+ssh://[::1]:22/s.sock").host == "::1"


def test_tls_uris() -> None:
    uri = parse_uri("virtkit+tls://host.example")
    assert (uri.host, uri.port) == ("host.example", TLS_PORT)
    assert parse_uri("virtkit+tls://10.0.0.1:9999/").port == 9999


@pytest.mark.parametrize(("text", "why"), [
    ("xen+ssh://host/system", "unknown scheme"),
    ("host.example", "no scheme"),
    ("virtkit://host/system", "a local URI has no host"),
    ("virtkit:///elsewhere", "unknown local path"),
    ("virtkit:///system?x=1", "takes no ?options"),
    ("virtkit+ssh:///system", "no host name"),
    ("virtkit+ssh://-oProxyCommand=x/", "starts with '-'"),
    ("virtkit+ssh://h/relative:path", "not an absolute socket path"),
    ("virtkit+ssh://h?command=/bin/sh", "unknown option"),
    ("virtkit+ssh://u:pw@h/", "no passwords"),
    ("virtkit+ssh://h:notaport/", "Port could not be cast"),
    ("virtkit+tls://", "no host name"),
    ("virtkit+tls://user@h", "API token, not a user name"),
    ("virtkit+tls://h/some/path", "takes no path"),
    ("virtkit+tls://h?ca=/x", "takes no ?options"),
    ("virtkit+tls://h:70000", "out of range"),
    ("virtkit+tls://h#frag", "no #fragment"),
])
def test_bad_uris(text: str, why: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_uri(text)
    assert why in info.value.message
    assert "bad connection URI" in info.value.message and info.value.fix


def test_ssh_command() -> None:
    uri = parse_uri("virtkit+ssh://admin@h.example:2200/run/vk.sock"
                    "?keyfile=/keys/id&known_hosts=/keys/kh&no_verify=1")
    argv = ssh_command(uri, Path("/tmp/x/virtkitd.sock"))
    assert argv[:2] == ["ssh", "-N"]
    assert argv[-2:] == ["--", "h.example"]  # nothing after '--' can be an option
    for pair in (["-o", "BatchMode=yes"], ["-o", "ExitOnForwardFailure=yes"],
                 ["-L", "/tmp/x/virtkitd.sock:/run/vk.sock"], ["-p", "2200"],
                 ["-l", "admin"], ["-i", "/keys/id"], ["-o", "UserKnownHostsFile=/keys/kh"],
                 ["-o", "StrictHostKeyChecking=no"], ["-o", "StreamLocalBindMask=0177"]):
        assert any(argv[i:i + 2] == pair for i in range(len(argv))), pair
    bare = ssh_command(parse_uri("virtkit+ssh://h"), Path("/l.sock"))
    assert "-p" not in bare and "-l" not in bare and "-i" not in bare
    assert "StrictHostKeyChecking=no" not in bare


def test_tls_transport_needs_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("VIRTKIT_TOKEN", "VIRTKIT_TOKEN_FILE", "VIRTKIT_TLS_CA",
                 "VIRTKIT_TLS_FINGERPRINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    uri = parse_uri("virtkit+tls://h.example")
    with pytest.raises(DaemonUnreachable) as info:
        tls_transport(uri)
    assert "no API token" in info.value.message and "virtkit token create" in str(info.value.fix)
    (tmp_path / "virtkit" / "tokens").mkdir(parents=True)
    (tmp_path / "virtkit" / "tokens" / "h.example").write_text("vkt_x\n")
    (tmp_path / "virtkit" / "tls" / "h.example").mkdir(parents=True)
    (tmp_path / "virtkit" / "tls" / "h.example" / "ca.pem").write_text("x")
    transport = tls_transport(uri)  # the per-host defaults
    assert transport.token == "vkt_x"
    assert transport.ca == tmp_path / "virtkit" / "tls" / "h.example" / "ca.pem"
    assert transport.headers() == {"Authorization": "Bearer vkt_x"}
    monkeypatch.setenv("VIRTKIT_TOKEN", "vkt_env")
    assert tls_transport(uri).token == "vkt_env"
    assert tls_transport(uri, token="vkt_opt").token == "vkt_opt"
    with pytest.raises(DaemonUnreachable, match="does not exist"):
        tls_transport(uri, ca=tmp_path / "missing.pem")


def test_fingerprints() -> None:
    digits = "ab" * 32
    assert normalize_fingerprint(digits) == ":".join(["AB"] * 32)
    assert normalize_fingerprint(":".join(["ab"] * 32)) == ":".join(["AB"] * 32)
    assert normalize_fingerprint("SHA256=" + digits) == ":".join(["AB"] * 32)
    with pytest.raises(InvalidSpec):
        normalize_fingerprint("abcd")


def test_global_options_before_install() -> None:
    options, words = _split_install(["-c", "virtkit+tls://h", "--token-file=/t", "install",
                                     "--name", "x"]) or ({}, [])
    assert options == {"connect": "virtkit+tls://h", "token_file": "/t"}
    assert words == ["--name", "x"]
    assert _split_install(["-c", "virtkit+tls://h", "list"]) is None


# -- tokens ------------------------------------------------------------------------------

def test_token_format_and_hash() -> None:
    token_id, token, digest = tokens.new_token()
    assert token.startswith(f"vkt_{token_id}_")
    parts = tokens.split_token(token)
    assert parts is not None and parts[0] == token_id
    assert digest == tokens.hash_secret(parts[1]) and len(digest) == 64
    assert parts[1] not in digest
    assert tokens.split_token("vkt_short_x") is None
    assert tokens.new_token()[1] != token


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    ("", None), (None, None),
])
def test_bearer_header(header: str | None, expected: str | None) -> None:
    assert tokens.bearer_token(header) == expected


def test_check_token_states() -> None:
    now = time.time()
    row = TokenRow("0" * 12, "ci", tokens.hash_secret("s3cret"), now, now + 60, None, None)
    assert tokens.check_token(row, "s3cret", now) is row
    for candidate, secret, message in (
            (row, "wrong", "is not valid"), (None, "s3cret", "is not valid"),
            (TokenRow(row.id, row.name, row.hash, row.created, now - 1, None, None),
             "s3cret", "expired"),
            (TokenRow(row.id, row.name, row.hash, row.created, None, None, now),
             "s3cret", "was revoked")):
        with pytest.raises(Unauthorized) as info:
            tokens.check_token(candidate, secret, now)
        assert message in info.value.message and info.value.fix
    # the state of a token is told only to a holder of its secret
    revoked = TokenRow(row.id, row.name, row.hash, row.created, None, None, now)
    with pytest.raises(Unauthorized, match="is not valid"):
        tokens.check_token(revoked, "wrong", now)


def test_token_service(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        service = tokens.TokenService(store)
        created = service.create("ci", 1)
        token = created.token
        assert token is not None
        assert created.expires is not None and created.expires > created.created
        assert token not in str(service.list()) and "hash" not in service.list()[0].wire()
        row = service.authenticate(f"Bearer {token}")
        assert row.name == "ci" and store.find_token(row.id).last_used is not None  # type: ignore[union-attr]
        for header in (None, "Bearer nonsense", f"Bearer {token[:-1]}x"):
            with pytest.raises(Unauthorized):
                service.authenticate(header)
        with pytest.raises(Conflict):
            service.create("ci")
        with pytest.raises(InvalidSpec):
            service.create("bad name!")
        with pytest.raises(InvalidSpec):
            service.create("x", 0)
        assert service.revoke("ci").status == "revoked"
        with pytest.raises(Unauthorized, match="revoked"):
            service.authenticate(f"Bearer {token}")
        with pytest.raises(NotFound):
            service.revoke("ci")
        again = service.create("ci")  # a revoked token's name is free again
        assert service.authenticate(f"Bearer {again.token}").name == "ci"
        unnamed = service.create()
        assert unnamed.name.startswith("token-")
    finally:
        store.close()


# -- TLS names and the listener address -------------------------------------------------------

def test_san_entries() -> None:
    assert san_entries(["Host.Example", "10.0.0.1", "::1", "host.example"]) == [
        "DNS:host.example", "IP:10.0.0.1", "IP:::1"]
    for bad in ("a,b", "x\nsubjectAltName=DNS:evil", "", "a b"):
        with pytest.raises(InvalidSpec):
            san_entries([bad])


def test_listen_address() -> None:
    assert parse_address("0.0.0.0:1234") == ("0.0.0.0", 1234)
    assert parse_address("[::]:1234") == ("::", 1234)
    assert parse_address("host") == ("host", DEFAULT_PORT)
    for bad in ("", ":123", "h:0", "h:x", "h:70000"):
        with pytest.raises(InvalidSpec):
            parse_address(bad)
