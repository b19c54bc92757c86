"""Overcommit accounting: what the domains ask of the host, and the start admission rule.

Allocated vCPUs and memory are summed over running domains (what the host
carries now) and over all defined domains (what it would carry if all ran).
``start`` is refused when the running domains plus the new one would exceed
the host's capacity times a ratio: ``VIRTKIT_CPU_RATIO`` (default 16 vCPUs per
host CPU, like OpenStack's default) and ``VIRTKIT_MEMORY_RATIO`` (default 1.5 x
host RAM; above 1 relies on KSM, the balloon and idle guests).  The daemon
reads them from its environment (systemd: ``Environment=`` in the unit).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from virtkit.errors import Conflict, InvalidSpec
from virtkit.model.domain import Domain
from virtkit.runtime.preflight import host_memory_mib

DEFAULT_CPU_RATIO = 16.0
DEFAULT_MEMORY_RATIO = 1.5
CPU_ENV, MEMORY_ENV = "VIRTKIT_CPU_RATIO", "VIRTKIT_MEMORY_RATIO"


def ratios(env: Mapping[str, str]) -> tuple[float, float]:
    """(cpu ratio, memory ratio) from the environment, refusing unreadable values."""
    result = []
    for name, default in ((CPU_ENV, DEFAULT_CPU_RATIO), (MEMORY_ENV, DEFAULT_MEMORY_RATIO)):
        text = env.get(name)
        try:
            value = float(text) if text else default
        except ValueError:
            value = -1.0
        if value <= 0:
            raise InvalidSpec(f"{name}={text!r} is not a positive number",
                              fix=f"set {name} to e.g. {default} in virtkitd's environment")
        result.append(value)
    return result[0], result[1]


def _totals(domains: Iterable[Domain]) -> tuple[int, int]:
    vcpus = memory = 0
    for domain in domains:
        vcpus += domain.vcpus.current
        memory += domain.memory.current
    return vcpus, memory


def report(running: list[Domain], defined: list[Domain], env: Mapping[str, str],
           host_cpus: int | None = None, host_mib: int | None = None) -> dict[str, Any]:
    """Host capacity, the limits the ratios give, and what is allocated."""
    cpus = host_cpus or len(os.sched_getaffinity(0))
    memory = host_mib or host_memory_mib()
    cpu_ratio, memory_ratio = ratios(env)
    run_vcpus, run_mib = _totals(running)
    all_vcpus, all_mib = _totals(defined)
    return {
        "host": {"cpus": cpus, "memory_mib": memory},
        "ratios": {"cpu": cpu_ratio, "memory": memory_ratio},
        "limits": {"vcpus": int(cpus * cpu_ratio), "memory_mib": int(memory * memory_ratio)},
        "running": {"domains": len(running), "vcpus": run_vcpus, "memory_mib": run_mib},
        "defined": {"domains": len(defined), "vcpus": all_vcpus, "memory_mib": all_mib},
    }


def check_start(domain: Domain, running: list[Domain], env: Mapping[str, str],
                host_cpus: int | None = None, host_mib: int | None = None) -> None:
    """Refuse to start ``domain`` when it would take the host past its overcommit limits."""
    info = report(running, running, env, host_cpus, host_mib)
    limits, used = info["limits"], info["running"]
    vcpus = used["vcpus"] + domain.vcpus.current
    if vcpus > limits["vcpus"]:
        raise Conflict(
            f"cannot start '{domain.name}': running domains would have {vcpus} vCPUs, above "
            f"the limit of {limits['vcpus']} ({info['host']['cpus']} host CPUs x CPU ratio "
            f"{info['ratios']['cpu']:g})",
            fix=f"stop a domain, give '{domain.name}' fewer vCPUs, or raise {CPU_ENV} "
                "in virtkitd's environment")
    memory = used["memory_mib"] + domain.memory.current
    if memory > limits["memory_mib"]:
        raise Conflict(
            f"cannot start '{domain.name}': running domains would have {memory} MiB of "
            f"memory, above the limit of {limits['memory_mib']} MiB "
            f"({info['host']['memory_mib']} MiB host RAM x memory ratio "
            f"{info['ratios']['memory']:g})",
            fix=f"stop a domain, give '{domain.name}' less memory, or raise {MEMORY_ENV} "
                "in virtkitd's environment")
