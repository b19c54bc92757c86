"""libvirt's connection URIs (what ``virsh -c`` takes) as aliases of virtkit's."""

from __future__ import annotations

import pytest

from virtkit.cli.transport import SYSTEM_ROOT, SYSTEM_SOCKET, local_root, parse_uri
from virtkit.errors import InvalidSpec


def test_qemu_system_is_the_root_daemon() -> None:
    uri = parse_uri("qemu:///system")
    assert uri.scheme == "virtkit" and not uri.remote
    assert local_root(uri) == SYSTEM_ROOT
    assert uri.text == "qemu:///system"  # `virtkit uri` prints what the user gave
    assert local_root(parse_uri("qemu+unix:///system")) == SYSTEM_ROOT


def test_qemu_session_is_the_per_user_daemon() -> None:
    root = local_root(parse_uri("qemu:///session"))
    assert root == local_root(parse_uri("virtkit:///session"))
    assert root is not None and root.name == "virtkit"


def test_qemu_ssh_maps_to_virtkit_ssh() -> None:
    uri = parse_uri("qemu+ssh://alice@host.example:2222/system?keyfile=/k")
    assert (uri.scheme, uri.host, uri.port, uri.user) == ("virtkit+ssh", "host.example", 2222,
                                                          "alice")
    assert uri.socket == str(SYSTEM_SOCKET) and uri.query == {"keyfile": "/k"}
    assert parse_uri("qemu+ssh://host/system").user is None


def test_qemu_tls_maps_to_virtkit_tls() -> None:
    uri = parse_uri("qemu+tls://host.example/system")
    assert (uri.scheme, uri.host, uri.port) == ("virtkit+tls", "host.example", 16515)
    assert parse_uri("QEMU+TLS://h:9999/system").port == 9999


@pytest.mark.parametrize(("text", "why"), [
    ("qemu:///embed?root=/x", "takes the path /system or /session"),
    ("qemu://", "takes the path /system or /session"),
    ("qemu+ssh://host/session", "takes the path /system"),
    ("qemu+ssh://host/", "takes the path /system"),
    ("qemu+tls://host/session", "takes the path /system"),
    ("qemu://host/system", "a local URI has no host"),
    ("xen:///system", "unknown scheme 'xen'"),
])
def test_libvirt_uris_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidSpec, match=why):
        parse_uri(text)
