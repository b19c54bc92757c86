"""Placement's filter and weigh (cluster/placement.py) over fake host records."""

from __future__ import annotations

from typing import Any

import pytest

from virtkit.cluster.placement import Candidate, Need, candidates, choose, refusal, weigh
from virtkit.errors import Conflict


def _record(cpus: int = 4, memory: int = 4096, **extra: Any) -> dict[str, Any]:
    return {"capacity": {"cpus": cpus, "memory_mib": memory, "free_mib": memory},
            "networks": ["default"], "pools": ["default"], "accelerators": ["tcg"], **extra}


def _entry(host: str, memory: int, vcpus: int = 1, group: str | None = None) -> dict[str, Any]:
    return {"name": f"vm-{host}-{memory}", "uuid": "u", "host": host, "memory_mib": memory,
            "vcpus": vcpus, "group": group}


def test_candidates_sum_the_ledger_per_up_host() -> None:
    hosts = candidates({"a": _record(), "b": _record(memory=2048)},
                       [_entry("a", 512), _entry("a", 256, 2, "web"), _entry("b", 1024),
                        _entry("gone", 4096)])  # a host that is down is no candidate
    by = {h.name: h for h in hosts}
    assert set(by) == {"a", "b"}
    assert (by["a"].committed_mib, by["a"].committed_vcpus, by["a"].groups) == (768, 3, {"web"})
    assert by["b"].free_mib == 1024


def test_the_least_committed_host_wins() -> None:
    hosts = candidates({"a": _record(), "b": _record(), "c": _record()},
                       [_entry("a", 1024), _entry("b", 256), _entry("c", 512)])
    assert choose(hosts, Need(memory_mib=128)).name == "b"
    # ties: fewer vCPUs committed, then the name
    tied = [Candidate("y", 4, 4096, committed_mib=100, committed_vcpus=1),
            Candidate("x", 4, 4096, committed_mib=100, committed_vcpus=1),
            Candidate("w", 4, 4096, committed_mib=100, committed_vcpus=4)]
    assert [h.name for h in weigh(tied)] == ["x", "y", "w"]


@pytest.mark.parametrize(("need", "record", "why"), [
    (Need(memory_mib=4097), _record(), "4096 MiB uncommitted, the VM needs 4097"),
    (Need(memory_mib=64, vcpus=8), _record(cpus=4), "4 CPUs, the VM has 8 vCPUs"),
    (Need(memory_mib=64, pools=frozenset({"shared"})), _record(), "no pool shared"),
    (Need(memory_mib=64, networks=frozenset({"lan"})), _record(), "no network lan"),
    (Need(memory_mib=64, accelerator="kvm"), _record(), "no kvm"),
    (Need(memory_mib=64), _record(maintenance=True), "in maintenance"),
    (Need(memory_mib=64, group="web"), _record(), "anti-affinity group 'web'"),
])
def test_filter_refusals(need: Need, record: dict[str, Any], why: str) -> None:
    host = candidates({"a": record}, [_entry("a", 0, 0, "web")])[0]
    assert why in (refusal(host, need) or "")


def test_filter_passes_what_fits() -> None:
    host = candidates({"a": _record(accelerators=["tcg", "kvm"])}, [_entry("a", 1024)])[0]
    need = Need(memory_mib=3072, vcpus=4, networks=frozenset({"default"}),
                pools=frozenset({"default"}), accelerator="kvm", group="db")
    assert refusal(host, need) is None


def test_anti_affinity_spreads_a_group() -> None:
    records = {"a": _record(), "b": _record()}
    hosts = candidates(records, [_entry("a", 0, 0, "web")])
    assert choose(hosts, Need(memory_mib=64, group="web")).name == "b"
    hosts = candidates(records, [_entry("a", 0, 0, "web"), _entry("b", 0, 0, "web")])
    with pytest.raises(Conflict) as refused:
        choose(hosts, Need(memory_mib=64, group="web"))
    assert "a: already runs a VM of anti-affinity group 'web'" in str(refused.value)
    assert "--host" in str(refused.value)


def test_need_of_a_spec() -> None:
    spec = {"name": "x", "memory": {"current": 256}, "vcpus": {"current": 2},
            "nics": [{"network": "default"}, {"bridge": "br0"}],
            "disks": [{"pool": "shared", "volume": "x.qcow2"}, {"path": "/x.iso"}],
            "accelerator": "kvm", "anti_affinity": "web"}
    assert Need.of(spec) == Need(256, 2, frozenset({"default"}), frozenset({"shared"}),
                                 "kvm", "web")


def test_no_host_up_is_said() -> None:
    with pytest.raises(Conflict, match="no host is up"):
        choose([], Need(memory_mib=64))
