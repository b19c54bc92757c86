"""The real KVM probe and host checks on the machine the tests run on.

On a PVM host (``kvm_pvm``, like the development machine) the probe must
measure emulation speed -- far above 100 ns per loop iteration -- and the
verdict must be TCG.  On a native host (``kvm_intel``/``kvm_amd`` with a
usable /dev/kvm) it must be KVM at under 20 ns.  Elsewhere those tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virtkit.host import kvmprobe, qemubin
from virtkit.host.accel import decide_accelerator, probe_kvm_speed, run_kvm_probe
from virtkit.host.checks import run_host_checks

IS_PVM = Path("/sys/module/kvm_pvm").exists()
KVM_USABLE = os.access("/dev/kvm", os.R_OK | os.W_OK)
IS_NATIVE = KVM_USABLE and not IS_PVM and any(
    Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))

pvm_only = pytest.mark.skipif(not (IS_PVM and KVM_USABLE),
                              reason="needs a usable /dev/kvm backed by kvm_pvm")
native_only = pytest.mark.skipif(not IS_NATIVE,
                                 reason="needs /dev/kvm backed by kvm_intel or kvm_amd")


@pvm_only
def test_probe_module_prints_one_json_line_on_pvm() -> None:
    done = subprocess.run([sys.executable, "-m", "virtkit.host.kvmprobe"],
                          capture_output=True, text=True, timeout=30, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["mode"] == "long"  # long mode works under PVM
    assert result["ns_per_iter"] > 100
    print(f"\nkvmprobe on PVM: {result}")


@pvm_only
def test_pvm_host_verdict_is_tcg(tmp_path: Path) -> None:
    verdict = decide_accelerator("auto", tmp_path)
    assert verdict.accel == "tcg"
    assert verdict.ns_per_iter is not None and verdict.ns_per_iter > 100
    assert verdict.signals["kvm_pvm"] is True
    assert "kvm_pvm" in verdict.reason
    assert (tmp_path / "accel.json").is_file()
    print(f"\nverdict: {verdict.reason}")


@pvm_only
def test_pvm_probe_speed_is_emulation_speed() -> None:
    ns = probe_kvm_speed()
    assert ns is not None and ns > 100


@pvm_only
def test_pvm_host_checks_end_with_a_tcg_warning(tmp_path: Path) -> None:
    results = run_host_checks(cache_dir=tmp_path)
    assert results[-1].name == "accelerator"
    assert results[-1].status == "WARN"
    assert "Using TCG" in results[-1].detail
    by_name = {c.name: c for c in results}
    assert by_name["kvm modules"].status == "WARN"
    assert "kvm_pvm" in by_name["kvm modules"].detail


@native_only
def test_native_host_verdict_is_kvm(tmp_path: Path) -> None:
    outcome = run_kvm_probe()
    assert outcome.error is None
    assert outcome.ns_per_iter is not None and outcome.ns_per_iter < 20
    verdict = decide_accelerator("auto", tmp_path, refresh=True)
    assert verdict.accel == "kvm"
    results = run_host_checks(cache_dir=tmp_path)
    assert (results[-1].name, results[-1].status) == ("accelerator", "PASS")


@pytest.mark.qemu
@pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(), reason="needs QEMU")
def test_real_qemu_capabilities() -> None:
    info = qemubin.qemu_info()
    assert info.version >= (4, 0, 0)
    assert "tcg" in info.accelerators
    assert info.resolve_machine("q35").startswith("pc-q35-")
    assert info.resolve_machine("pc").startswith("pc-i440fx-")
    assert info.default_machine is not None


@pvm_only
@pytest.mark.parametrize("mode", kvmprobe.MODES, ids=lambda m: m.name)
def test_every_probe_mode_runs_under_pvm(mode: kvmprobe.GuestMode) -> None:
    """Long mode is used; the fallbacks must work too, should a kernel refuse long mode."""
    result = kvmprobe.measure_mode(mode)
    assert result.mode == mode.name
    assert result.ns_per_iter > 100
