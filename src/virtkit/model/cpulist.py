"""CPU and NUMA node lists in libvirt's syntax: ``'0-3,6,^2'`` <-> ``{0, 1, 3, 6}``.

Used for host CPU sets (``vcpus.cpuset``, ``cputune``), guest vCPU lists of NUMA
cells, and host NUMA node sets (``numatune``).  Pure functions, no I/O.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\^?)(\d+)(?:-(\d+))?")


def parse_cpulist(text: str) -> set[int]:
    """'0-3,6,^2' -> {0, 1, 3, 6}: ranges, single numbers, and ^N to exclude."""
    chosen: set[int] = set()
    excluded: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        match = _PART.fullmatch(part)
        if not match or (match.group(3) and int(match.group(3)) < int(match.group(2))):
            raise ValueError(f"cpuset {text!r}: cannot read {part!r}; write e.g. '0-3,6'")
        first, last = int(match.group(2)), int(match.group(3) or match.group(2))
        if last - first > 65536:
            raise ValueError(f"cpuset {text!r}: range {part!r} is implausibly large")
        (excluded if match.group(1) else chosen).update(range(first, last + 1))
    if not chosen - excluded:
        raise ValueError(f"cpuset {text!r} names no CPU")
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
