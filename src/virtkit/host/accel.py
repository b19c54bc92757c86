"""Which accelerator guests get: KVM when the host runs guest code natively, else TCG.

``/dev/kvm`` existing is not enough.  On a host whose KVM is ``kvm_pvm`` every
instruction of an unmodified guest is emulated (a stock kernel never finishes
booting), and QEMU's TCG binary translation is the faster choice.  So the
``auto`` decision rests on a measurement: :mod:`virtkit.host.kvmprobe` runs a
``dec rcx; jnz`` loop inside a tiny KVM guest in a subprocess (so a wedged
``KVM_RUN`` cannot hang the caller) and reports nanoseconds per iteration.
Native hardware needs about one cycle (< 20 ns); PVM about a microsecond.
Host signals -- ``/dev/kvm``, the loaded KVM modules, vmx/svm CPU flags --
explain the verdict to the user and short-cut it when KVM is plainly absent.

A measured ``auto`` verdict is cached as JSON (``accel.json`` in the cache
directory) keyed by kernel release and boot id, so it is re-measured after a
reboot or kernel change and never otherwise.  A corrupt cache is ignored.

Every host file is read through :class:`HostPaths`, whose root tests point at
a fake ``/proc``/``/sys``/``/dev`` tree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from virtkit.errors import HostError, InvalidSpec

log = logging.getLogger(__name__)

Accel = Literal["kvm", "tcg"]
REQUESTS = ("auto", "kvm", "tcg")

NATIVE_NS_PER_ITER = 20.0
"""A probe faster than this means guest code runs natively (VT-x/AMD-V)."""

PROBE_TIMEOUT = 5.0
CACHE_FILE = "accel.json"
CACHE_FORMAT = 1
KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
HW_MODULE_FOR_FLAG = {"vmx": "kvm_intel", "svm": "kvm_amd"}


@dataclass(frozen=True)
class HostPaths:
    """Reads host files under ``root`` ("/" in production, a fake tree in tests)."""

    root: Path = Path("/")

    def path(self, absolute: str) -> Path:
        """The real location of a host path such as ``/proc/cpuinfo``."""
        return self.root / absolute.lstrip("/")

    def exists(self, absolute: str) -> bool:
        """Whether a host path exists."""
        return self.path(absolute).exists()

    def read_text(self, absolute: str) -> str | None:
        """The file's text, or None when it is missing or unreadable."""
        try:
            return self.path(absolute).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def read_line(self, absolute: str) -> str | None:
        """A one-value /proc or /sys file's content, stripped; None when unreadable."""
        text = self.read_text(absolute)
        return text.strip() if text is not None else None

    def can_open_rw(self, absolute: str) -> bool:
        """Whether this process may open the path read-write (what QEMU needs of /dev/kvm)."""
        try:
            fd = os.open(self.path(absolute), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        os.close(fd)
        return True

    def list_dir(self, absolute: str) -> list[str]:
        """Entry names of a directory, sorted; empty when it is missing."""
        try:
            return sorted(os.listdir(self.path(absolute)))
        except OSError:
            return []

    def cpu_flags(self) -> frozenset[str]:
        """The union of the ``flags`` fields of /proc/cpuinfo."""
        flags: set[str] = set()
        for line in (self.read_text("/proc/cpuinfo") or "").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "flags":
                flags.update(value.split())
        return frozenset(flags)

    def module_present(self, name: str) -> bool:
        """Whether a kernel module is loaded or built in (it has a /sys/module entry)."""
        return self.exists(f"/sys/module/{name}")

    def boot_key(self) -> dict[str, str] | None:
        """Kernel release + boot id: what a cached verdict is valid for (None if unknown)."""
        kernel = self.read_line("/proc/sys/kernel/osrelease")
        boot_id = self.read_line("/proc/sys/kernel/random/boot_id")
        if not kernel or not boot_id:
            return None
        return {"kernel": kernel, "boot_id": boot_id}


def collect_signals(paths: HostPaths) -> dict[str, Any]:
    """The host facts that explain an accelerator verdict (no benchmark)."""
    flags = paths.cpu_flags()
    signals: dict[str, Any] = {
        "kvm_device": paths.exists("/dev/kvm"),
        "kvm_usable": paths.can_open_rw("/dev/kvm"),
        "cpu_vmx": "vmx" in flags,
        "cpu_svm": "svm" in flags,
        "cpu_hypervisor": "hypervisor" in flags,
    }
    for module in ("kvm", *KVM_MODULES):
        signals[module] = paths.module_present(module)
    return signals


@dataclass(frozen=True)
class AccelVerdict:
    """The accelerator guests will use and, in one sentence, why."""

    accel: Accel
    reason: str
    ns_per_iter: float | None
    signals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (API responses, the cache file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> AccelVerdict:
        """Rebuild a verdict from :meth:`to_dict` output; ValueError when malformed."""
        if not isinstance(data, dict):
            raise ValueError("verdict is not an object")
        accel, reason = data.get("accel"), data.get("reason")
        ns, signals = data.get("ns_per_iter"), data.get("signals", {})
        if accel not in ("kvm", "tcg") or not isinstance(reason, str):
            raise ValueError("verdict lacks accel or reason")
        if ns is not None and (isinstance(ns, bool) or not isinstance(ns, int | float)):
            raise ValueError("ns_per_iter is not a number")
        if not isinstance(signals, dict):
            raise ValueError("signals is not an object")
        return cls(cast(Accel, accel), reason, None if ns is None else float(ns), signals)


@dataclass(frozen=True)
class ProbeOutcome:
    """What the probe subprocess reported: a speed, or why there is none."""

    ns_per_iter: float | None
    mode: str | None = None
    error: str | None = None


ProbeFn = Callable[[], ProbeOutcome | float | None]


def _parse_probe_output(stdout: str) -> ProbeOutcome:
    """Read the probe's one JSON line; malformed output becomes an error outcome."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return ProbeOutcome(None, error=f"unreadable probe output {stdout.strip()[:200]!r}")
    if "error" in data:
        return ProbeOutcome(None, error=str(data["error"]))
    ns = data.get("ns_per_iter")
    if isinstance(ns, bool) or not isinstance(ns, int | float) or not math.isfinite(ns) or ns < 0:
        return ProbeOutcome(None, error=f"probe reported no valid ns_per_iter: {data!r}")
    mode = data.get("mode")
    return ProbeOutcome(float(ns), mode=mode if isinstance(mode, str) else None)


def run_kvm_probe(timeout: float = PROBE_TIMEOUT, device: str = "/dev/kvm") -> ProbeOutcome:
    """Run the /dev/kvm micro-benchmark in a subprocess, killing it after ``timeout`` s.

    The probe file is started by path in isolated mode (``python -I``): it
    needs only the stdlib, so it neither pays for nor depends on virtkit's
    imports.  A probe that ignores SIGKILL (stuck in the kernel) is left
    behind with a warning rather than waited for forever.
    """
    script = Path(__file__).with_name("kvmprobe.py")
    try:
        proc = subprocess.Popen([sys.executable, "-I", str(script), device],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except OSError as err:
        return ProbeOutcome(None, error=f"cannot start the KVM probe: {err}")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.warning("KVM probe pid %d did not die after SIGKILL; abandoning it", proc.pid)
        return ProbeOutcome(None, error=f"the KVM probe did not finish within {timeout:g} s")
    outcome = _parse_probe_output(stdout)
    if outcome.error and stderr.strip():
        log.debug("KVM probe stderr: %s", stderr.strip())
    return outcome


def probe_kvm_speed(timeout: float = PROBE_TIMEOUT) -> float | None:
    """Nanoseconds per guest loop iteration through /dev/kvm, or None if the probe failed."""
    outcome = run_kvm_probe(timeout)
    if outcome.error:
        log.info("KVM probe failed: %s", outcome.error)
    return outcome.ns_per_iter


def _as_outcome(result: ProbeOutcome | float | None) -> ProbeOutcome:
    if isinstance(result, ProbeOutcome):
        return result
    if result is None:
        return ProbeOutcome(None, error="the KVM probe returned no result")
    return ProbeOutcome(float(result))


# --- cache -----------------------------------------------------------------------


def _load_cached(cache_dir: Path | None, key: dict[str, str] | None) -> AccelVerdict | None:
    """The cached auto verdict if it was made on this boot of this kernel, else None."""
    if cache_dir is None or key is None:
        return None
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError("unknown cache format")
        if data.get("key") != key:
            return None
        return AccelVerdict.from_dict(data.get("verdict"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unusable accelerator cache %s: %s", cache_dir / CACHE_FILE, err)
        return None


def _store_cached(cache_dir: Path | None, key: dict[str, str] | None,
                  verdict: AccelVerdict) -> None:
    """Write the verdict atomically (temp file + rename); failures only cost a re-probe."""
    if cache_dir is None or key is None:
        return
    target = cache_dir / CACHE_FILE
    temp = target.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
    body = {"format": CACHE_FORMAT, "key": key, "verdict": verdict.to_dict()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        os.replace(temp, target)
    except OSError as err:
        log.warning("cannot write accelerator cache %s: %s", target, err)
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


# --- reasons -----------------------------------------------------------------------


def _fmt_ns(ns: float) -> str:
    """1,099 for slow hosts, 0.4 for native ones: precision where it means something."""
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def _hw_module(signals: dict[str, Any]) -> str | None:
    return next((m for m in ("kvm_intel", "kvm_amd") if signals.get(m)), None)


def _kvm_unavailable_reason(signals: dict[str, Any]) -> str:
    """Why /dev/kvm cannot be used, as the tail of a sentence."""
    if signals["kvm_device"]:
        return "/dev/kvm exists but this user cannot open it read-write"
    if not (signals["cpu_vmx"] or signals["cpu_svm"]):
        return "/dev/kvm does not exist and the CPU offers no VT-x/AMD-V"
    return "/dev/kvm does not exist (no KVM module is loaded)"


def _kvm_fix(signals: dict[str, Any]) -> str:
    """One line telling the user how to make /dev/kvm usable."""
    if signals["kvm_device"]:
        return "run virtkitd as root or add its user to the kvm group (usermod -aG kvm USER)"
    for flag, module in HW_MODULE_FOR_FLAG.items():
        if signals[f"cpu_{flag}"]:
            return f"modprobe {module}"
    if signals.get("cpu_hypervisor"):
        return "enable nested virtualization on the outer hypervisor, then modprobe kvm_intel"
    return "enable VT-x/AMD-V in the firmware settings, then modprobe kvm_intel or kvm_amd"


def _measured_reason(ns: float, signals: dict[str, Any]) -> tuple[Accel, str]:
    """Turn a benchmark result into the auto verdict; the benchmark decides, signals explain."""
    speed = f"{_fmt_ns(ns)} ns per guest loop iteration"
    if ns < NATIVE_NS_PER_ITER:
        via = _hw_module(signals) or ("kvm_pvm" if signals.get("kvm_pvm") else "KVM")
        return "kvm", f"Using KVM: guest code runs natively through {via} ({speed})."
    if signals.get("kvm_pvm"):
        return "tcg", (f"Using TCG: /dev/kvm is backed by kvm_pvm, which emulates every guest "
                       f"instruction ({speed}; native is under {NATIVE_NS_PER_ITER:g}), "
                       f"so QEMU's binary translation is faster.")
    return "tcg", (f"Using TCG: KVM runs guest code far below native speed ({speed}; "
                   f"native is under {NATIVE_NS_PER_ITER:g}), so QEMU's binary "
                   f"translation is faster.")


def _forced_kvm(signals: dict[str, Any], cached: AccelVerdict | None) -> AccelVerdict:
    """The verdict for an explicit ``kvm`` request; HostError when /dev/kvm is unusable."""
    if not signals["kvm_usable"]:
        raise HostError(f"KVM was requested but {_kvm_unavailable_reason(signals)}",
                        fix=_kvm_fix(signals))
    ns = cached.ns_per_iter if cached else None
    if signals.get("kvm_pvm") and not (ns is not None and ns < NATIVE_NS_PER_ITER):
        reason = ("KVM was requested, but /dev/kvm is backed by kvm_pvm, which emulates every "
                  "guest instruction: stock guest kernels will crawl or never finish booting.")
    elif ns is not None and ns >= NATIVE_NS_PER_ITER:
        reason = (f"KVM was requested, although the self-test measured {_fmt_ns(ns)} ns per "
                  f"guest loop iteration (native is under {NATIVE_NS_PER_ITER:g}): "
                  f"guests will be slow.")
    else:
        via = _hw_module(signals)
        reason = "KVM was requested explicitly" + (f" ({via} is loaded)." if via else ".")
    return AccelVerdict("kvm", reason, ns, signals)


def _auto(paths: HostPaths, signals: dict[str, Any], probe: ProbeFn | None,
          cache_dir: Path | None) -> AccelVerdict:
    """Measure and decide; only measured verdicts are cached (the rest are cheap)."""
    if not signals["kvm_usable"]:
        return AccelVerdict("tcg", f"Using TCG: {_kvm_unavailable_reason(signals)}.",
                            None, signals)
    if probe is None:
        outcome = run_kvm_probe(device=str(paths.path("/dev/kvm")))
    else:
        outcome = _as_outcome(probe())
    if outcome.ns_per_iter is None:
        signals = {**signals, "probe_error": outcome.error}
        verdict = AccelVerdict(
            "tcg", f"Using TCG: the KVM self-test through /dev/kvm failed ({outcome.error}).",
            None, signals)
    else:
        signals = {**signals, "probe_mode": outcome.mode}
        accel, reason = _measured_reason(outcome.ns_per_iter, signals)
        verdict = AccelVerdict(accel, reason, outcome.ns_per_iter, signals)
    _store_cached(cache_dir, paths.boot_key(), verdict)
    return verdict


def decide_accelerator(requested: str = "auto", cache_dir: Path | None = None, *,
                       sysroot: Path = Path("/"), probe: ProbeFn | None = None,
                       refresh: bool = False) -> AccelVerdict:
    """Decide which accelerator QEMU gets.

    ``requested``: ``auto`` measures KVM (see the module doc) and picks KVM
    only when guest code runs natively, else TCG; ``tcg`` always gives TCG;
    ``kvm`` gives KVM whenever /dev/kvm is usable -- with a warning in the
    reason on PVM or a measured-slow host -- and raises HostError with a fix
    when it is not.  ``cache_dir`` holds the measured auto verdict across
    calls; ``refresh`` re-measures anyway.  ``sysroot`` and ``probe`` (returns
    a ProbeOutcome or ns/iteration) exist for tests; without ``probe`` the
    real benchmark runs against ``<sysroot>/dev/kvm``.
    """
    choice = requested.strip().lower()
    if choice not in REQUESTS:
        raise InvalidSpec(f"unknown accelerator {requested!r}", field="accel",
                          fix="use one of: " + ", ".join(REQUESTS))
    paths = HostPaths(sysroot)
    signals = collect_signals(paths)
    if choice == "tcg":
        return AccelVerdict("tcg", "TCG (QEMU binary translation) was requested explicitly.",
                            None, signals)
    cached = None if refresh else _load_cached(cache_dir, paths.boot_key())
    if choice == "kvm":
        return _forced_kvm(signals, cached)
    if cached is not None and signals["kvm_usable"]:
        return cached
    return _auto(paths, signals, probe, cache_dir)
