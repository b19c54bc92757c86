"""Disk images on a network server that QEMU opens itself (no kernel mount).

``nfs://SERVER/EXPORT/PATH``: an image on an NFS export, through QEMU's libnfs driver
(qemu-block-extra).  Such a URL may stand where a disk path stands; everything that
treats disk paths as host files (the path policy, ownership grants, stat and probes)
leaves these out, and the argv builder gives QEMU an ``nfs`` blockdev.  The rule is
strict: a host name or IP address, an absolute path without ``..``, no query (QEMU
would read one as options) and no fragment.

``rbd://[USER@]MON[:PORT][,MON[:PORT]...]/POOL/IMAGE``: an image of a Ceph pool,
through QEMU's librbd driver.  The monitors are the ones the rbd pool names; a user
means cephx (its key from Ceph's keyring files on the host), no user means a cluster
without authentication (``auth_client_required = none``, as libvirt does without
``<auth>``).  Parsed into separate JSON members (:func:`rbd_blockdev`), never into
librados' ``key=value`` option string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NFS_URL = re.compile(
    r"nfs://(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?P<path>/[A-Za-z0-9_.+\-/@%=,~]*)")


def is_network_path(value: str | None) -> bool:
    """Whether a disk path is a network URL (QEMU opens it; it is no host file)."""
    return value is not None and value.startswith(("nfs://", "rbd://"))


def check_network_path(value: str) -> str:
    """``value`` if it is a valid nfs:// or rbd:// image URL; ValueError otherwise."""
    if is_rbd_path(value):
        if parse_rbd_url(value).image is None:
            raise ValueError(f"disk path {value!r} names a Ceph pool, not an image")
    else:
        parse_nfs_url(value)
    return value


def parse_nfs_url(value: str) -> tuple[str, str]:
    """(server, path) of an ``nfs://`` URL; ValueError naming the rule otherwise."""
    found = _NFS_URL.fullmatch(value)
    if found is None or "/../" in found["path"] + "/" or "//" in found["path"]:
        raise ValueError(f"{value!r} is not an nfs://SERVER/EXPORT/PATH URL (a host name or "
                         "IP address, an absolute path without '..', '//', a query or "
                         "spaces)")
    return found["host"].strip("[]"), found["path"]


def nfs_url(server: str, path: str) -> str:
    host = f"[{server}]" if ":" in server else server
    return f"nfs://{host}{path}"


_RBD_HOST = r"(?:[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
_RBD_URL = re.compile(
    rf"rbd://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,63}})@)?"
    rf"(?P<hosts>{_RBD_HOST}(?:,{_RBD_HOST}){{0,8}})"
    r"/(?P<pool>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})"
    r"(?:/(?P<image>[A-Za-z0-9_+.][A-Za-z0-9_.+\-]{0,200}))?")
RBD_DEFAULT_PORT = 6789


@dataclass(frozen=True)
class RbdRef:
    """Where an rbd image (or, without ``image``, a Ceph pool) is."""

    monitors: tuple[tuple[str, int], ...]
    pool: str
    image: str | None = None
    user: str | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.monitors)
        user = f"{self.user}@" if self.user else ""
        image = f"/{self.image}" if self.image else ""
        return f"rbd://{user}{hosts}/{self.pool}{image}"

    def with_image(self, image: str) -> RbdRef:
        return RbdRef(self.monitors, self.pool, image, self.user)


def is_rbd_path(value: str | None) -> bool:
    return value is not None and value.startswith("rbd://")


def parse_monitor(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port); ValueError otherwise."""
    found = re.fullmatch(_RBD_HOST, text.strip())
    if found is None:
        raise ValueError(f"monitor {text!r} is not HOST or HOST:PORT (a host name or IP "
                         "address; IPv6 in brackets)")
    text = text.strip()
    host, port = text, RBD_DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest[1:])
    elif ":" in text:
        host, _, number = text.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"monitor {text!r}: port {port} is out of range")
    return host, port


def parse_rbd_url(value: str) -> RbdRef:
    """The parts of an ``rbd://`` URL; ValueError naming the rule otherwise."""
    found = _RBD_URL.fullmatch(value)
    if found is None or ".." in (found["image"] or ""):
        raise ValueError(f"{value!r} is not an rbd://[USER@]MON[:PORT][,MON...]/POOL/IMAGE "
                         "URL (host names or IP addresses, a Ceph pool and image name of "
                         "letters, digits, '.', '_', '-')")
    monitors = tuple(parse_monitor(h) for h in _split_hosts(found["hosts"]))
    return RbdRef(monitors, found["pool"], found["image"], found["user"])


def _split_hosts(hosts: str) -> list[str]:
    return [h for h in re.split(r",(?![^\[]*\])", hosts) if h]


def rbd_blockdev(ref: RbdRef) -> dict[str, Any]:
    """QEMU's ``rbd`` blockdev options for an image (without node name or cache):
    monitors as a server list, cephx only when a user is named."""
    if ref.image is None:
        raise ValueError(f"{ref.url} names a Ceph pool, not an image")
    options: dict[str, Any] = {
        "driver": "rbd", "pool": ref.pool, "image": ref.image,
        "server": [{"host": host, "port": str(port)} for host, port in ref.monitors],
        "auth-client-required": ["cephx"] if ref.user else ["none"]}
    if ref.user:
        options["user"] = ref.user
    return options
