"""What a host publishes in its live cluster record for placement, evacuate and
start --place: the shared pools by folder (a disk on one of them is seen by the other
hosts too) and, once QEMU was asked, its machine types."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from virtkit.cluster import placement
from virtkit.service import clustervms
from virtkit.store.db import ObjectRow


def _pool(name: str, kind: str, target: str, state: str = "active") -> ObjectRow:
    return ObjectRow(uuid=name, name=name, spec={"type": kind, "target": target},
                     version=1, state=state, runtime={})


def _cluster(tmp_path: Path, pools: list[ObjectRow]) -> Any:
    store = SimpleNamespace(list_pools=lambda: pools, list_objects=lambda kind: [],
                            list_domains=lambda: [])
    return SimpleNamespace(store=store, folder=tmp_path / "cluster",
                           api=SimpleNamespace(url=lambda: None))


def test_the_record_names_the_active_shared_pools_by_folder(tmp_path: Path) -> None:
    facts = clustervms.host_facts(_cluster(tmp_path, [
        _pool("shd", "shared-dir", "/mnt/shared"), _pool("nfs1", "netfs", "nfs://s/e"),
        _pool("default", "dir", "/var/lib/virtkit/images"),
        _pool("off", "shared-dir", "/mnt/off", state="inactive")]))
    assert facts["shared_pools"] == {"shd": "/mnt/shared", "nfs1": "nfs://s/e"}
    assert facts["pools"] == ["default", "nfs1", "shd"]
    spec = {"disks": [{"pool": "shd", "volume": "a.raw"}, {"pool": "default", "volume": "b"},
                      {"path": "/mnt/shared/c.qcow2"}]}
    # what evacuate decides from it: only the dir pool's disk is this host's alone
    assert placement.local_disks(spec, facts["shared_pools"]) == ["disk 1 (pool default)"]


def test_machine_types_are_published_once_qemu_was_asked(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    monkeypatch.setattr(clustervms, "_found_machines", None)
    assert "machines" not in clustervms.host_facts(_cluster(tmp_path, []))
    monkeypatch.setattr(clustervms, "_machines", lambda: ("q35", "pc"))
    asyncio.run(clustervms.learn_machines())
    assert clustervms.host_facts(_cluster(tmp_path, []))["machines"] == ["q35", "pc"]
