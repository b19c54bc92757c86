"""Parsing of human sizes ("512M", "2G", "1GiB") into MiB.

A bare integer means MiB, as in virsh's ``--memory`` and virt-install's
``--memory``.  Units follow QEMU and libvirt: K/M/G/T are powers of 1024
(``KiB``/``MiB``... and ``KB``/``MB``... are accepted as the same, like
``qemu-img``).
"""

from __future__ import annotations

import re

_UNIT_TO_KIB = {"k": 1, "m": 1024, "g": 1024**2, "t": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?\s*$", re.IGNORECASE)


def parse_mib(value: int | str, *, field: str) -> int:
    """Return ``value`` in MiB; raise ``ValueError`` naming ``field`` when unreadable."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a size such as 512 (MiB) or '2G', not {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(
            f"{field}: cannot read size {value!r}; write e.g. 512 (MiB), '512M' or '2G'")
    number, unit = float(match.group(1)), (match.group(2) or "m").lower()
    kib = number * _UNIT_TO_KIB[unit]
    mib = kib / 1024
    if mib != int(mib):
        raise ValueError(f"{field}: {value!r} is not a whole number of MiB")
    return int(mib)


def format_mib(mib: int) -> str:
    """Render MiB the way people read it: '512 MiB', '2 GiB', '1.5 GiB'."""
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024} GiB"
    if mib >= 1024 and (mib * 10) % 1024 == 0:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib} MiB"
