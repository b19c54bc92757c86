"""Placement: which host takes a new VM (docs/cluster.md, "Placement").

Pure functions over the hosts' live records (``/virtkit/hosts/<host>``: capacity,
networks, pools, accelerators, maintenance) and the name ledger
(``/virtkit/names/``: memory and vCPUs committed per host, anti-affinity groups).
First *filter* (a host must have every pool and network the VM uses, the accelerator
it asks for, room for its memory, as many CPUs as it has vCPUs, no VM of its
anti-affinity group, and not be in maintenance), then *weigh*: the least memory
committed wins (ties: fewer vCPUs committed, then the name).  The caller claims the
choice by compare-and-swap (cluster/vms.py :func:`reserve`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import Conflict


@dataclass(frozen=True)
class Need:
    """What a VM asks of its host."""

    memory_mib: int
    vcpus: int = 1
    networks: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    accelerator: str = "auto"  # "kvm" needs /dev/kvm; "tcg" and "auto" run anywhere
    group: str | None = None  # anti-affinity: no two VMs of a group on one host
    machine: str | None = None  # q35, pc, microvm: the host's QEMU must have it

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Need:
        """From a validated spec (model/domain.py's dump)."""
        memory, vcpus = spec.get("memory") or {}, spec.get("vcpus") or {}
        return cls(memory_mib=int(memory.get("current", 0)),
                   vcpus=int(vcpus.get("current", 1)),
                   networks=frozenset(n["network"] for n in spec.get("nics") or []
                                      if n.get("network")),
                   pools=frozenset(d["pool"] for d in spec.get("disks") or []
                                   if d.get("pool")),
                   accelerator=str(spec.get("accelerator") or "auto"),
                   group=spec.get("anti_affinity"),
                   machine=str(spec["machine"]) if spec.get("machine") else None)


@dataclass
class Candidate:
    """One host as placement sees it."""

    name: str
    cpus: int
    memory_mib: int
    networks: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    accelerators: frozenset[str] = frozenset({"tcg"})
    #: the machine types its QEMU has (None: an older host that does not say)
    machines: frozenset[str] | None = None
    maintenance: bool = False
    committed_mib: int = 0
    committed_vcpus: int = 0
    groups: set[str] = field(default_factory=set)

    @property
    def free_mib(self) -> int:
        return self.memory_mib - self.committed_mib


def candidates(records: dict[str, dict[str, Any]],
               ledger: Iterable[dict[str, Any]]) -> list[Candidate]:
    """The up hosts (those with a live record) with what the ledger commits on each."""
    found = {}
    for name, record in records.items():
        capacity = record.get("capacity") or {}
        found[name] = Candidate(
            name=name, cpus=int(capacity.get("cpus", 1)),
            memory_mib=int(capacity.get("memory_mib", 0)),
            networks=frozenset(record.get("networks") or ()),
            pools=frozenset(record.get("pools") or ()),
            accelerators=frozenset(record.get("accelerators") or ("tcg",)),
            machines=frozenset(record["machines"]) if isinstance(
                record.get("machines"), list) else None,
            maintenance=bool(record.get("maintenance")))
    for entry in ledger:
        host = found.get(str(entry.get("host")))
        if host is None:
            continue
        host.committed_mib += int(entry.get("memory_mib") or 0)
        host.committed_vcpus += int(entry.get("vcpus") or 0)
        if entry.get("group"):
            host.groups.add(str(entry["group"]))
    return sorted(found.values(), key=lambda c: c.name)


def refusal(host: Candidate, need: Need) -> str | None:
    """Why ``host`` cannot take the VM (None: it can)."""
    if host.maintenance:
        return "in maintenance"
    if need.pools - host.pools:
        return "no pool " + ", ".join(sorted(need.pools - host.pools))
    if need.networks - host.networks:
        return "no network " + ", ".join(sorted(need.networks - host.networks))
    if need.accelerator not in ("auto", "tcg") and need.accelerator not in host.accelerators:
        return f"no {need.accelerator}"
    if need.machine is not None and host.machines is not None \
            and need.machine not in host.machines:
        return f"its QEMU has no machine type {need.machine}"
    if need.vcpus > host.cpus:
        return f"{host.cpus} CPUs, the VM has {need.vcpus} vCPUs"
    if need.memory_mib > host.free_mib:
        return f"{host.free_mib} MiB uncommitted, the VM needs {need.memory_mib} MiB"
    if need.group is not None and need.group in host.groups:
        return f"already runs a VM of anti-affinity group {need.group!r}"
    return None


def check_pinned(host: str, hosts: list[Candidate], need: Need) -> Candidate:
    """``--host NAME``: the pinned host must be up and pass the filter; else Conflict
    saying why (and that placement may choose instead)."""
    found = next((c for c in hosts if c.name == host), None)
    if found is None:
        raise Conflict(f"host {host} is not up in the cluster",
                       fix="see 'virtkit cluster list', or leave --host out to let "
                           "placement choose", host=host)
    why = refusal(found, need)
    if why is not None:
        raise Conflict(f"host {host} cannot take this VM: {why}",
                       fix="choose another host, or leave --host out to let placement "
                           "choose", host=host)
    return found


def local_disks(spec: dict[str, Any], shared: dict[str, str]) -> list[str]:
    """The writable disks of ``spec`` that are not on a shared pool (``shared``: pool
    name -> folder, of the host that has them): what only that host sees.  Named as
    ``vda (pool default)`` or by path."""
    found = []
    for index, disk in enumerate(spec.get("disks") or []):
        if disk.get("device", "disk") != "disk" or disk.get("readonly"):
            continue
        pool, path = disk.get("pool"), disk.get("path")
        if pool is not None and pool in shared:
            continue
        if pool is None and isinstance(path, str) and any(
                folder and path.startswith(folder.rstrip("/") + "/")
                for folder in shared.values()):
            continue
        target = disk.get("target") or f"disk {index}"
        found.append(f"{target} (pool {pool})" if pool else f"{target} ({path})")
    return found


def weigh(hosts: Iterable[Candidate]) -> list[Candidate]:
    """Best first: least memory committed, then fewest vCPUs, then the name."""
    return sorted(hosts, key=lambda c: (c.committed_mib, c.committed_vcpus, c.name))


def choose(hosts: list[Candidate], need: Need) -> Candidate:
    """The host that takes the VM; Conflict saying why each host cannot."""
    refused = {host.name: refusal(host, need) for host in hosts}
    fitting = [host for host in hosts if refused[host.name] is None]
    if not fitting:
        why = "; ".join(f"{name}: {reason}" for name, reason in refused.items()) \
            or "no host is up"
        raise Conflict(f"no cluster host can take this VM ({why})",
                       fix="free room on a host, add a host, or pin one with --host NAME")
    return weigh(fitting)[0]
