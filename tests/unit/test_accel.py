"""Accelerator verdicts against fake host trees, with the KVM benchmark injected.

The fake trees model the four hosts that matter: Intel with kvm_intel, AMD
with kvm_amd, a PVM host like the development machine (kvm_pvm, no vmx/svm,
the "hypervisor" flag), and a host without /dev/kvm.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from virtkit.errors import HostError, InvalidSpec
from virtkit.host import accel, kvmprobe
from virtkit.host.accel import (
    CACHE_FILE,
    AccelVerdict,
    HostPaths,
    ProbeOutcome,
    collect_signals,
    decide_accelerator,
    run_kvm_probe,
)

HOSTS = {
    # kind: (cpu flags, kernel modules, has /dev/kvm)
    "intel": ("vmx", ("kvm", "kvm_intel"), True),
    "amd": ("svm", ("kvm", "kvm_amd"), True),
    "pvm": ("hypervisor", ("kvm", "kvm_pvm"), True),
    "nokvm": ("", (), False),
}


def make_host(root: Path, kind: str, boot_id: str = "boot-1") -> Path:
    """A fake sysroot with /proc/cpuinfo, /sys/module, /dev/kvm and the boot key."""
    flags, modules, has_kvm = HOSTS[kind]
    cpu = "".join(f"processor\t: {n}\nflags\t\t: fpu pae lm {flags}\n\n" for n in range(2))
    files = {
        "proc/cpuinfo": cpu,
        "proc/sys/kernel/osrelease": "6.1.0-test-amd64\n",
        "proc/sys/kernel/random/boot_id": boot_id + "\n",
    }
    if has_kvm:
        files["dev/kvm"] = ""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for module in modules:
        (root / "sys/module" / module / "parameters").mkdir(parents=True)
    return root


class CountingProbe:
    """An injected benchmark that returns a fixed result and counts its calls."""

    def __init__(self, result: ProbeOutcome | float | None) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> ProbeOutcome | float | None:
        self.calls += 1
        return self.result


def never_called() -> float:
    raise AssertionError("the benchmark must not run here")


# --- signals ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [
    ("intel", {"cpu_vmx": True, "kvm_intel": True, "kvm_pvm": False, "kvm_usable": True}),
    ("amd", {"cpu_svm": True, "kvm_amd": True, "kvm_intel": False, "kvm_usable": True}),
    ("pvm", {"cpu_vmx": False, "cpu_svm": False, "cpu_hypervisor": True, "kvm_pvm": True}),
    ("nokvm", {"kvm_device": False, "kvm_usable": False, "kvm": False}),
])
def test_signals_reflect_the_fake_host(tmp_path: Path, kind: str,
                                       expected: dict[str, bool]) -> None:
    signals = collect_signals(HostPaths(make_host(tmp_path, kind)))
    assert {k: signals[k] for k in expected} == expected


# --- verdict logic ------------------------------------------------------------------


def test_tcg_request_is_always_tcg_and_never_probes(tmp_path: Path) -> None:
    verdict = decide_accelerator("tcg", sysroot=make_host(tmp_path, "intel"), probe=never_called)
    assert verdict.accel == "tcg"
    assert verdict.ns_per_iter is None
    assert "requested" in verdict.reason


@pytest.mark.parametrize(("kind", "module"), [("intel", "kvm_intel"), ("amd", "kvm_amd")])
def test_auto_picks_kvm_on_native_hosts(tmp_path: Path, kind: str, module: str) -> None:
    verdict = decide_accelerator(sysroot=make_host(tmp_path, kind), probe=lambda: 0.4)
    assert verdict.accel == "kvm"
    assert verdict.ns_per_iter == 0.4
    assert module in verdict.reason
    assert "0.4 ns" in verdict.reason


def test_auto_picks_tcg_on_pvm_and_says_why(tmp_path: Path) -> None:
    verdict = decide_accelerator(sysroot=make_host(tmp_path, "pvm"),
                                 probe=lambda: ProbeOutcome(1100.0, mode="long"))
    assert verdict.accel == "tcg"
    assert verdict.ns_per_iter == 1100.0
    assert "kvm_pvm" in verdict.reason
    assert "1,100 ns" in verdict.reason
    assert verdict.signals["probe_mode"] == "long"


def test_benchmark_overrules_signals_when_slow(tmp_path: Path) -> None:
    """kvm_intel loaded, yet guest code crawls (e.g. emulated nesting): TCG."""
    verdict = decide_accelerator(sysroot=make_host(tmp_path, "intel"), probe=lambda: 450.0)
    assert verdict.accel == "tcg"
    assert "far below native" in verdict.reason


def test_benchmark_overrules_signals_when_fast(tmp_path: Path) -> None:
    """kvm_pvm loaded but guest code runs natively: the measurement decides."""
    verdict = decide_accelerator(sysroot=make_host(tmp_path, "pvm"), probe=lambda: 0.9)
    assert verdict.accel == "kvm"


def test_threshold_is_twenty_ns(tmp_path: Path) -> None:
    root = make_host(tmp_path, "intel")
    assert decide_accelerator(sysroot=root, probe=lambda: 19.9).accel == "kvm"
    assert decide_accelerator(sysroot=root, probe=lambda: 20.0).accel == "tcg"


@pytest.mark.parametrize("result", [None, ProbeOutcome(None, error="KVM_RUN failed: boom")])
def test_failed_probe_means_tcg(tmp_path: Path, result: ProbeOutcome | None) -> None:
    verdict = decide_accelerator(sysroot=make_host(tmp_path, "intel"), probe=lambda: result)
    assert verdict.accel == "tcg"
    assert verdict.ns_per_iter is None
    assert "self-test" in verdict.reason
    if result is not None:
        assert "KVM_RUN failed: boom" in verdict.reason


def test_auto_without_dev_kvm_is_tcg_without_probing(tmp_path: Path) -> None:
    verdict = decide_accelerator(sysroot=make_host(tmp_path, "nokvm"), probe=never_called)
    assert verdict.accel == "tcg"
    assert "/dev/kvm does not exist" in verdict.reason
    assert "VT-x/AMD-V" in verdict.reason


def test_auto_with_vmx_but_no_module_names_the_module_gap(tmp_path: Path) -> None:
    root = make_host(tmp_path, "intel")
    (root / "dev/kvm").unlink()
    verdict = decide_accelerator(sysroot=root, probe=never_called)
    assert verdict.accel == "tcg"
    assert "no KVM module is loaded" in verdict.reason


def _make_kvm_unopenable(root: Path) -> None:
    """Root may open any file, so make /dev/kvm a directory: it exists, O_RDWR fails."""
    (root / "dev/kvm").unlink()
    (root / "dev/kvm").mkdir()


def test_auto_with_unopenable_dev_kvm_is_tcg(tmp_path: Path) -> None:
    root = make_host(tmp_path, "intel")
    _make_kvm_unopenable(root)
    verdict = decide_accelerator(sysroot=root, probe=never_called)
    assert verdict.accel == "tcg"
    assert "cannot open it read-write" in verdict.reason


@pytest.mark.parametrize(("kind", "fix"), [
    ("nokvm", "enable VT-x/AMD-V in the firmware settings"),
    ("intel-nodev", "modprobe kvm_intel"),
    ("amd-nodev", "modprobe kvm_amd"),
    ("pvm-unopenable", "kvm group"),
])
def test_forced_kvm_without_usable_device_raises_with_fix(tmp_path: Path, kind: str,
                                                          fix: str) -> None:
    base, _, damage = kind.partition("-")
    root = make_host(tmp_path, base)
    if damage == "nodev":
        (root / "dev/kvm").unlink()
    elif damage == "unopenable":
        _make_kvm_unopenable(root)
    with pytest.raises(HostError) as caught:
        decide_accelerator("kvm", sysroot=root, probe=never_called)
    assert caught.value.fix is not None
    assert fix in caught.value.fix
    assert "/dev/kvm" in caught.value.message


def test_forced_kvm_on_pvm_is_allowed_with_a_warning(tmp_path: Path) -> None:
    verdict = decide_accelerator("kvm", sysroot=make_host(tmp_path, "pvm"), probe=never_called)
    assert verdict.accel == "kvm"
    assert "kvm_pvm" in verdict.reason
    assert "never finish booting" in verdict.reason


def test_forced_kvm_on_intel_is_plain(tmp_path: Path) -> None:
    verdict = decide_accelerator("KVM", sysroot=make_host(tmp_path, "intel"), probe=never_called)
    assert verdict.accel == "kvm"
    assert verdict.reason == "KVM was requested explicitly (kvm_intel is loaded)."


def test_forced_kvm_warns_from_a_cached_slow_measurement(tmp_path: Path) -> None:
    root, cache = make_host(tmp_path / "root", "intel"), tmp_path / "cache"
    decide_accelerator("auto", cache, sysroot=root, probe=lambda: 300.0)
    verdict = decide_accelerator("kvm", cache, sysroot=root, probe=never_called)
    assert verdict.accel == "kvm"
    assert verdict.ns_per_iter == 300.0
    assert "guests will be slow" in verdict.reason


def test_unknown_request_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        decide_accelerator("hvf", sysroot=make_host(tmp_path, "intel"))
    assert caught.value.field == "accel"


# --- cache --------------------------------------------------------------------------


@pytest.fixture
def pvm_host(tmp_path: Path) -> tuple[Path, Path]:
    return make_host(tmp_path / "root", "pvm"), tmp_path / "cache"


def test_auto_verdict_is_cached_for_this_boot(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    probe = CountingProbe(1100.0)
    first = decide_accelerator("auto", cache, sysroot=root, probe=probe)
    second = decide_accelerator("auto", cache, sysroot=root, probe=probe)
    assert probe.calls == 1
    assert second == first
    stored = json.loads((cache / CACHE_FILE).read_text())
    assert stored["key"] == {"kernel": "6.1.0-test-amd64", "boot_id": "boot-1"}
    assert stored["verdict"]["accel"] == "tcg"


def test_new_boot_id_forces_a_new_probe(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    decide_accelerator("auto", cache, sysroot=root, probe=CountingProbe(1100.0))
    (root / "proc/sys/kernel/random/boot_id").write_text("boot-2\n")
    probe = CountingProbe(0.5)
    verdict = decide_accelerator("auto", cache, sysroot=root, probe=probe)
    assert probe.calls == 1
    assert verdict.accel == "kvm"
    assert json.loads((cache / CACHE_FILE).read_text())["key"]["boot_id"] == "boot-2"


def test_new_kernel_forces_a_new_probe(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    decide_accelerator("auto", cache, sysroot=root, probe=CountingProbe(1100.0))
    (root / "proc/sys/kernel/osrelease").write_text("6.2.0-other\n")
    probe = CountingProbe(1100.0)
    decide_accelerator("auto", cache, sysroot=root, probe=probe)
    assert probe.calls == 1


def test_refresh_reprobes(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    decide_accelerator("auto", cache, sysroot=root, probe=CountingProbe(1100.0))
    probe = CountingProbe(1200.0)
    verdict = decide_accelerator("auto", cache, sysroot=root, probe=probe, refresh=True)
    assert probe.calls == 1
    assert verdict.ns_per_iter == 1200.0


@pytest.mark.parametrize("content", [
    b"\x00\xffnot json",
    b"{\"format\": 1, \"key\": ",
    b"[1, 2, 3]",
    b"{\"format\": 99, \"key\": {}, \"verdict\": {}}",
    b"{\"format\": 1, \"key\": {\"kernel\": \"6.1.0-test-amd64\", \"boot_id\": \"boot-1\"},"
    b" \"verdict\": {\"accel\": \"warp\", \"reason\": \"x\", \"ns_per_iter\": 1}}",
    b"{\"format\": 1, \"key\": {\"kernel\": \"6.1.0-test-amd64\", \"boot_id\": \"boot-1\"},"
    b" \"verdict\": {\"accel\": \"kvm\", \"reason\": \"x\", \"ns_per_iter\": \"fast\"}}",
])
def test_corrupt_cache_is_ignored_and_rewritten(pvm_host: tuple[Path, Path],
                                                content: bytes) -> None:
    root, cache = pvm_host
    cache.mkdir()
    (cache / CACHE_FILE).write_bytes(content)
    probe = CountingProbe(1100.0)
    verdict = decide_accelerator("auto", cache, sysroot=root, probe=probe)
    assert probe.calls == 1
    assert verdict.accel == "tcg"
    assert json.loads((cache / CACHE_FILE).read_text())["verdict"]["ns_per_iter"] == 1100.0


def test_no_boot_id_means_no_cache(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    (root / "proc/sys/kernel/random/boot_id").unlink()
    probe = CountingProbe(1100.0)
    decide_accelerator("auto", cache, sysroot=root, probe=probe)
    decide_accelerator("auto", cache, sysroot=root, probe=probe)
    assert probe.calls == 2
    assert not (cache / CACHE_FILE).exists()


def test_unwritable_cache_dir_costs_only_a_reprobe(tmp_path: Path) -> None:
    root = make_host(tmp_path / "root", "pvm")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    verdict = decide_accelerator("auto", blocker / "cache", sysroot=root, probe=lambda: 1100.0)
    assert verdict.accel == "tcg"


def test_cached_verdict_is_not_used_once_dev_kvm_is_gone(pvm_host: tuple[Path, Path]) -> None:
    root, cache = pvm_host
    decide_accelerator("auto", cache, sysroot=root, probe=lambda: 0.5)
    (root / "dev/kvm").unlink()
    verdict = decide_accelerator("auto", cache, sysroot=root, probe=never_called)
    assert verdict.accel == "tcg"


def test_verdict_round_trips_through_dict() -> None:
    verdict = AccelVerdict("kvm", "why", 0.5, {"kvm_intel": True})
    assert AccelVerdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict


# --- the probe subprocess -----------------------------------------------------------


@pytest.mark.parametrize(("stdout", "ns", "error"), [
    ('{"ns_per_iter": 1150.5, "mode": "long", "iterations": 2048}\n', 1150.5, None),
    ('{"error": "cannot open /dev/kvm: Permission denied"}\n', None, "Permission denied"),
    ("Traceback (most recent call last):\n", None, "unreadable probe output"),
    ("", None, "unreadable probe output"),
    ('{"ns_per_iter": -3}\n', None, "no valid ns_per_iter"),
    ('{"ns_per_iter": true}\n', None, "no valid ns_per_iter"),
    ('{"ns_per_iter": NaN}\n', None, "no valid ns_per_iter"),
])
def test_probe_output_parsing(stdout: str, ns: float | None, error: str | None) -> None:
    outcome = accel._parse_probe_output(stdout)
    assert outcome.ns_per_iter == ns
    if error is None:
        assert outcome.error is None
        assert outcome.mode == "long"
    else:
        assert outcome.error is not None
        assert error in outcome.error


def test_real_probe_reports_an_unopenable_device(tmp_path: Path) -> None:
    """The real probe script, in a real subprocess, on a device that is not there."""
    outcome = run_kvm_probe(timeout=30, device=str(tmp_path / "no-kvm"))
    assert outcome.ns_per_iter is None
    assert outcome.error is not None
    assert outcome.error.startswith("cannot open")


def test_hung_probe_is_killed_at_the_timeout(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe stuck forever (like a wedged KVM_RUN) must not hang the caller."""
    fake_python = tmp_path / "python"
    pid_file = tmp_path / "pid"
    fake_python.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    started = time.monotonic()
    outcome = run_kvm_probe(timeout=0.5)
    assert time.monotonic() - started < 10
    assert outcome.ns_per_iter is None
    assert outcome.error == "the KVM probe did not finish within 0.5 s"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_probe_speed_is_none_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    fail: Callable[..., ProbeOutcome] = lambda *a, **k: ProbeOutcome(None, error="x")  # noqa: E731
    monkeypatch.setattr(accel, "run_kvm_probe", fail)
    assert accel.probe_kvm_speed() is None


def test_default_probe_uses_the_sysroot_device(tmp_path: Path) -> None:
    """Without an injected probe the real one runs, on <sysroot>/dev/kvm -- here a plain
    file, so the KVM ioctls fail and the verdict is TCG; the real /dev/kvm is untouched."""
    verdict = decide_accelerator("auto", sysroot=make_host(tmp_path, "intel"))
    assert verdict.accel == "tcg"
    assert "KVM_GET_API_VERSION failed" in verdict.reason
    assert verdict.signals["probe_error"].startswith("KVM_GET_API_VERSION failed")


def test_probe_falls_back_only_on_mode_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long mode refused -> protected mode is measured; /dev/kvm broken -> no fallback."""
    tried: list[str] = []

    def refuse_long(mode: kvmprobe.GuestMode, device: str = "/dev/kvm") -> kvmprobe.ProbeResult:
        tried.append(mode.name)
        if mode.name == "long":
            raise kvmprobe.ProbeFailed("KVM_SET_SREGS failed: Invalid argument")
        return kvmprobe.ProbeResult(ns_per_iter=0.5, mode=mode.name, iterations=1 << 22)

    monkeypatch.setattr(kvmprobe, "measure_mode", refuse_long)
    assert kvmprobe.measure().mode == "protected"
    assert tried == ["long", "protected"]

    def broken_device(mode: kvmprobe.GuestMode, device: str = "/dev/kvm") -> kvmprobe.ProbeResult:
        tried.append(mode.name)
        raise kvmprobe.KvmUnusable("KVM_CREATE_VM failed: Cannot allocate memory")

    tried.clear()
    monkeypatch.setattr(kvmprobe, "measure_mode", broken_device)
    with pytest.raises(kvmprobe.KvmUnusable):
        kvmprobe.measure()
    assert tried == ["long"]


def test_probe_reports_every_mode_when_none_works(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(mode: kvmprobe.GuestMode, device: str = "/dev/kvm") -> kvmprobe.ProbeResult:
        raise kvmprobe.ProbeFailed(f"{mode.name} refused")

    monkeypatch.setattr(kvmprobe, "measure_mode", refuse)
    assert kvmprobe.main([]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error == ("long mode: long refused; protected mode: protected refused; "
                     "real mode: real refused")
