"""Disk images on a network server that QEMU opens itself (no kernel mount).

``nfs://SERVER/EXPORT/PATH``: an image on an NFS export, through QEMU's libnfs driver
(qemu-block-extra).  Such a URL may stand where a disk path stands; everything that
treats disk paths as host files (the path policy, ownership grants, stat and probes)
leaves these out, and the argv builder gives QEMU an ``nfs`` blockdev.  The rule is
strict: a host name or IP address, an absolute path without ``..``, no query (QEMU
would read one as options) and no fragment.
"""

from __future__ import annotations

import re

_NFS_URL = re.compile(
    r"nfs://(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?P<path>/[A-Za-z0-9_.+\-/@%=,~]*)")


def is_network_path(value: str | None) -> bool:
    """Whether a disk path is a network URL (QEMU opens it; it is no host file)."""
    return value is not None and value.startswith("nfs://")


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
