"""CPU and NUMA node lists in libvirt's syntax: ``'0-3,6,^2'`` <-> ``{0, 1, 3, 6}``.

Used for host CPU sets (``vcpus.cpuset``, ``cputune``), guest vCPU lists of NUMA
cells, and host NUMA node sets (``numatune``).  Pure functions, no I/O.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\^?)(\d{1,5})(?:-(\d{1,5}))?")
#: CPU numbers are below this: Linux's largest CONFIG_NR_CPUS (MAXSMP) is 8192.  Whether
#: the host has the CPU is checked where the host is known (runtime/preflight.py).
MAX_CPU = 8192
#: the longest list read: '0,2,4,...' of every even CPU up to 1,000 is ~2,900 characters
MAX_LENGTH = 4096


def _quote(text: str) -> str:
    """``text`` for an error message: quoted, and cut to 40 characters."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_cpulist(text: str) -> set[int]:
    """'0-3,6,^2' -> {0, 1, 3, 6}: ranges, single numbers, and ^N to exclude.

    Bounded: at most :data:`MAX_LENGTH` characters and CPU numbers below
    :data:`MAX_CPU`, so the work (and the set) stays small, and errors stay short."""
    text = str(text)
    if len(text) > MAX_LENGTH:
        raise ValueError(f"cpuset is {len(text)} characters long; the limit is {MAX_LENGTH}")
    chosen: set[int] = set()
    excluded: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _PART.fullmatch(part)
        if not match or (match.group(3) and int(match.group(3)) < int(match.group(2))):
            raise ValueError(f"cpuset {_quote(text)}: cannot read {_quote(part)}; "
                             "write e.g. '0-3,6'")
        first, last = int(match.group(2)), int(match.group(3) or match.group(2))
        if last >= MAX_CPU:
            raise ValueError(f"cpuset {_quote(text)}: CPU {last} is above the largest "
                             f"possible CPU number {MAX_CPU - 1}")
        (excluded if match.group(1) else chosen).update(range(first, last + 1))
    if not chosen - excluded:
        raise ValueError(f"cpuset {_quote(text)} names no CPU")
    return chosen - excluded


def format_cpulist(cpus: set[int] | list[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5' (the kernel's Cpus_allowed_list form); '' for none."""
    ordered = sorted(set(cpus))
    if not ordered:
        return ""
    ranges: list[str] = []
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


def cpulist_ranges(cpus: set[int]) -> list[tuple[int, int]]:
    """{0, 1, 2, 5} -> [(0, 2), (5, 5)]: the ranges QEMU's ``-numa node,cpus=`` takes."""
    text = format_cpulist(cpus)
    result = []
    for part in text.split(",") if text else []:
        first, _, last = part.partition("-")
        result.append((int(first), int(last or first)))
    return result
