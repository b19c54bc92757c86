"""Prometheus text exposition format 0.0.4 of domain stats and host capacity.

Pure: :func:`exposition` turns what ``domstats`` returns into the text a
Prometheus server scrapes from ``GET /metrics``.  Counters end in ``_total``;
label values are escaped (backslash, double quote, newline) as the format says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

STATES = ("running", "paused", "in shutdown", "shutoff", "crashed")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Family:
    """One metric family: HELP, TYPE and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            text = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels.items())
            yield f"{self.name}{{{text}}} {_number(value)}" if text else \
                f"{self.name} {_number(value)}"


_DOMAIN_FAMILIES = [
    ("virtkit_domain_state", "gauge", "1 for the state the domain is in (label state)"),
    ("virtkit_domain_cpu_seconds_total", "counter", "CPU time used by the QEMU process"),
    ("virtkit_domain_vcpus", "gauge", "vCPUs of the running domain"),
    ("virtkit_domain_vcpu_seconds_total", "counter", "CPU time of each vCPU thread"),
    ("virtkit_domain_memory_bytes", "gauge", "guest memory (balloon actual)"),
    ("virtkit_domain_memory_max_bytes", "gauge", "maximum guest memory"),
    ("virtkit_domain_memory_rss_bytes", "gauge", "resident memory of the QEMU process"),
    ("virtkit_domain_memory_unused_bytes", "gauge", "free memory the guest reports"),
    ("virtkit_domain_memory_available_bytes", "gauge", "memory available in the guest"),
    ("virtkit_domain_block_read_bytes_total", "counter", "bytes read from a disk"),
    ("virtkit_domain_block_write_bytes_total", "counter", "bytes written to a disk"),
    ("virtkit_domain_block_read_requests_total", "counter", "read requests of a disk"),
    ("virtkit_domain_block_write_requests_total", "counter", "write requests of a disk"),
    ("virtkit_domain_net_receive_bytes_total", "counter", "bytes the guest received"),
    ("virtkit_domain_net_transmit_bytes_total", "counter", "bytes the guest sent"),
    ("virtkit_domain_net_receive_packets_total", "counter", "packets the guest received"),
    ("virtkit_domain_net_transmit_packets_total", "counter", "packets the guest sent"),
]


def _domain_samples(families: dict[str, _Family], stats: dict[str, Any]) -> None:
    dom = {"domain": stats["name"]}
    state = stats.get("state", {}).get("state")
    for name in STATES:
        families["virtkit_domain_state"].add({**dom, "state": name}, int(state == name))
    cpu = stats.get("cpu") or {}
    families["virtkit_domain_cpu_seconds_total"].add(dom, cpu.get("time"))
    vcpu = stats.get("vcpu") or {}
    if vcpu:
        families["virtkit_domain_vcpus"].add(dom, vcpu.get("current"))
    for item in vcpu.get("vcpus", []):
        families["virtkit_domain_vcpu_seconds_total"].add({**dom, "vcpu": str(item["id"])},
                                                          item.get("time"))
    balloon = stats.get("balloon") or {}
    for key, family in (("current", "memory_bytes"), ("maximum", "memory_max_bytes"),
                        ("rss", "memory_rss_bytes"), ("unused", "memory_unused_bytes"),
                        ("available", "memory_available_bytes")):
        if balloon.get(key) is not None:
            families[f"virtkit_domain_{family}"].add(dom, balloon[key] * 1024)
    for disk in stats.get("block") or []:
        labels = {**dom, "disk": disk["name"]}
        for key, family in (("rd_bytes", "read_bytes"), ("wr_bytes", "write_bytes"),
                            ("rd_reqs", "read_requests"), ("wr_reqs", "write_requests")):
            families[f"virtkit_domain_block_{family}_total"].add(labels, disk.get(key))
    for nic in stats.get("net") or []:
        labels = {**dom, "interface": nic["name"]}
        for key, family in (("rx_bytes", "receive_bytes"), ("tx_bytes", "transmit_bytes"),
                            ("rx_packets", "receive_packets"),
                            ("tx_packets", "transmit_packets")):
            families[f"virtkit_domain_net_{family}_total"].add(labels, nic.get(key))


def exposition(domains: list[dict[str, Any]], capacity: dict[str, Any], now: float) -> str:
    """The whole /metrics page."""
    families = {name: _Family(name, kind, text) for name, kind, text in _DOMAIN_FAMILIES}
    for stats in domains:
        _domain_samples(families, stats)
    host = [
        _Family("virtkit_host_cpus", "gauge", "host CPUs virtkit may use"),
        _Family("virtkit_host_memory_bytes", "gauge", "host RAM"),
        _Family("virtkit_host_allocated_vcpus", "gauge", "vCPUs of running domains"),
        _Family("virtkit_host_allocated_memory_bytes", "gauge", "memory of running domains"),
        _Family("virtkit_host_domains", "gauge", "domains by kind (running, defined)"),
        _Family("virtkit_scrape_timestamp_seconds", "gauge", "when this page was made"),
    ]
    host[0].add({}, capacity["host"]["cpus"])
    host[1].add({}, capacity["host"]["memory_mib"] * 2**20)
    host[2].add({}, capacity["running"]["vcpus"])
    host[3].add({}, capacity["running"]["memory_mib"] * 2**20)
    host[4].add({"kind": "running"}, capacity["running"]["domains"])
    host[4].add({"kind": "defined"}, capacity["defined"]["domains"])
    host[5].add({}, round(now, 3))
    lines = [line for family in [*families.values(), *host] for line in family.lines()]
    return "\n".join(lines) + "\n"


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A small parser of the text format (for tests and the CLI): {name: [(labels, value)]}."""
    result: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            body, _, value = rest.rpartition("} ")
            labels = _parse_labels(body)
        else:
            name, _, value = line.partition(" ")
            labels = {}
        result.setdefault(name, []).append((labels, float(value.split()[0])))
    return result


def _parse_labels(body: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    index = 0
    while index < len(body):
        equals = body.index("=", index)
        key = body[index:equals].strip().lstrip(",").strip()
        if body[equals + 1] != "\"":
            raise ValueError(f"label {key} has no quoted value")
        value, index = [], equals + 2
        while body[index] != "\"":
            if body[index] == "\\":
                index += 1
                value.append({"n": "\n"}.get(body[index], body[index]))
            else:
                value.append(body[index])
            index += 1
        labels[key] = "".join(value)
        index += 1
    return labels
