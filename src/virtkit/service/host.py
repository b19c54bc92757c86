"""The host command API: ``host check`` and the facts the overview pages show."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from virtkit.host.accel import decide_accelerator
from virtkit.host.checks import run_host_checks
from virtkit.host.qemubin import qemu_info
from virtkit.runtime.preflight import host_memory_mib


class HostService:
    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir

    def check(self, *, daemon_reachable: bool | None = True) -> list[dict[str, Any]]:
        """The host check lines (PASS/WARN/FAIL with a fix), accelerator verdict last."""
        checks = run_host_checks(daemon_reachable=daemon_reachable, cache_dir=self._cache_dir)
        return [asdict(check) for check in checks]

    def info(self) -> dict[str, Any]:
        verdict = decide_accelerator("auto", self._cache_dir)
        qemu = qemu_info()
        return {
            "hostname": os.uname().nodename,
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "memory_mib": host_memory_mib(),
            "accelerator": verdict.accel,
            "accelerator_reason": verdict.reason,
            "qemu": {"path": str(qemu.path), "version": ".".join(map(str, qemu.version))},
        }
