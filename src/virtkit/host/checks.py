"""``virtkit host check``: is this host ready to run guests, and how well?

Like ``virt-host-validate``, but ending with the verdict that matters most:
which accelerator guests will really get, and why.  Each check yields one
:class:`Check` with a one-line ``fix`` whenever it is not PASS.

Statuses mean: PASS -- fine; WARN -- virtkit works but something is slower
or unavailable (no KVM means TCG, no /dev/vhost-net means slower virtio-net,
no OVMF means no UEFI guests); FAIL -- virtkit cannot run guests or manage
them (no QEMU, daemon down).

Every host file is read through :class:`~virtkit.host.accel.HostPaths`, so
tests run the whole list against a fake ``/proc``/``/sys``/``/dev`` tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from virtkit.errors import HostError
from virtkit.host import cgroups, qemubin
from virtkit.host.accel import HW_MODULE_FOR_FLAG, HostPaths, ProbeFn, decide_accelerator

log = logging.getLogger(__name__)

Status = Literal["PASS", "WARN", "FAIL"]
CGROUP_CONTROLLERS = ("cpu", "memory", "cpuset", "io")


@dataclass(frozen=True)
class Check:
    """One line of the host report: what was checked, the outcome, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    #: the value found, where a script wants it (the accelerator check: kvm or tcg)
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return asdict(self)


def _enable_virt_fix(paths: HostPaths) -> str:
    """How to get hardware virtualization: firmware switch, or nesting inside a VM."""
    if "hypervisor" in paths.cpu_flags():
        return "enable nested virtualization (VT-x/AMD-V) on the outer hypervisor"
    return "enable VT-x/AMD-V in the firmware (BIOS/UEFI) settings"


def _modprobe_fix(paths: HostPaths) -> str:
    """The modprobe line for this CPU's hardware KVM module."""
    flags = paths.cpu_flags()
    for flag, module in HW_MODULE_FOR_FLAG.items():
        if flag in flags:
            return f"modprobe {module}"
    return _enable_virt_fix(paths) + ", then modprobe kvm_intel or kvm_amd"


def check_cpu_flags(paths: HostPaths) -> Check:
    """vmx (Intel VT-x) or svm (AMD-V) in /proc/cpuinfo."""
    name = "hardware virtualization"
    flags = paths.cpu_flags()
    if "vmx" in flags:
        return Check(name, "PASS", "CPU has Intel VT-x (vmx)")
    if "svm" in flags:
        return Check(name, "PASS", "CPU has AMD-V (svm)")
    return Check(name, "WARN", "CPU shows no vmx/svm flag: guests cannot run natively",
                 _enable_virt_fix(paths))


def check_kvm_modules(paths: HostPaths) -> Check:
    """Which KVM modules are in the kernel: kvm plus kvm_intel, kvm_amd or kvm_pvm."""
    name = "kvm modules"
    loaded = [m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm") if paths.module_present(m)]
    listed = ", ".join(loaded)
    if "kvm_intel" in loaded or "kvm_amd" in loaded:
        return Check(name, "PASS", f"loaded: {listed}")
    if "kvm_pvm" in loaded:
        return Check(name, "WARN",
                     f"loaded: {listed}; kvm_pvm emulates every instruction of a stock guest",
                     "on hardware with VT-x/AMD-V, load kvm_intel or kvm_amd instead of kvm_pvm")
    detail = f"only {listed} loaded, no CPU-specific module" if loaded else "no KVM module loaded"
    return Check(name, "WARN", detail, _modprobe_fix(paths))


def check_kvm_device(paths: HostPaths) -> Check:
    """/dev/kvm exists and this process can open it read-write, as QEMU must."""
    name = "/dev/kvm"
    if not paths.exists("/dev/kvm"):
        return Check(name, "WARN", "/dev/kvm does not exist: KVM unavailable",
                     _modprobe_fix(paths))
    if not paths.can_open_rw("/dev/kvm"):
        return Check(name, "WARN", "/dev/kvm exists but cannot be opened read-write",
                     "run virtkitd as root or add its user to the kvm group (usermod -aG kvm USER)")
    return Check(name, "PASS", "/dev/kvm is present and usable")


def check_qemu_system(env: Mapping[str, str] | None, paths: HostPaths) -> Check:
    """qemu-system-x86_64 found and answering ``--version`` and ``-machine help``."""
    name = qemubin.QEMU_SYSTEM
    try:
        info = qemubin.qemu_info(env, paths.root)
    except HostError as err:
        return Check(name, "FAIL", err.message, err.fix or qemubin.INSTALL_QEMU)
    accels = ", ".join(sorted(info.accelerators)) or "none"
    return Check(name, "PASS", f"{info.path} version {info.version_text} (accelerators: {accels})")


def check_qemu_img(env: Mapping[str, str] | None) -> Check:
    """qemu-img found and answering ``--version`` (storage volumes need it)."""
    name = qemubin.QEMU_IMG
    try:
        tool = qemubin.qemu_img_info(env)
    except HostError as err:
        return Check(name, "FAIL", err.message, err.fix or qemubin.INSTALL_QEMU_IMG)
    return Check(name, "PASS", f"{tool.path} version {tool.version_text}")


def check_daemon(reachable: bool) -> Check:
    """Whether the CLI reached virtkitd (the caller knows; this only reports it)."""
    if reachable:
        return Check("daemon", "PASS", "virtkitd is reachable")
    return Check("daemon", "FAIL", "virtkitd is not reachable",
                 "start virtkitd (systemctl start virtkitd, or run virtkitd)")


def check_tun(paths: HostPaths) -> Check:
    """/dev/net/tun, needed for tap NICs on bridged and NAT networks."""
    if paths.exists("/dev/net/tun"):
        return Check("/dev/net/tun", "PASS", "tap devices available")
    return Check("/dev/net/tun", "WARN", "/dev/net/tun missing: guests cannot get tap NICs",
                 "modprobe tun")


def check_vhost_net(paths: HostPaths) -> Check:
    """/dev/vhost-net, which moves virtio-net packet work into the kernel."""
    if paths.exists("/dev/vhost-net"):
        return Check("/dev/vhost-net", "PASS", "in-kernel virtio-net acceleration available")
    return Check("/dev/vhost-net", "WARN",
                 "/dev/vhost-net missing: virtio-net runs without vhost (slower networking)",
                 "modprobe vhost_net")


def check_cgroups(paths: HostPaths) -> Check:
    """cgroup v2 at /sys/fs/cgroup with the controllers per-VM limits use."""
    name = "cgroup v2"
    text = paths.read_text("/sys/fs/cgroup/cgroup.controllers")
    if text is None:
        hybrid = paths.exists("/sys/fs/cgroup/unified/cgroup.controllers")
        layout = "a hybrid v1/v2 hierarchy" if hybrid else "cgroup v1 or no cgroups"
        return Check(name, "WARN",
                     f"/sys/fs/cgroup is {layout}: per-VM CPU/memory/IO limits unavailable",
                     "boot with systemd.unified_cgroup_hierarchy=1 to use cgroup v2")
    missing = [c for c in CGROUP_CONTROLLERS if c not in text.split()]
    if missing:
        plus = " ".join(f"+{c}" for c in missing)
        return Check(name, "WARN", f"controllers missing: {', '.join(missing)}",
                     f"echo '{plus}' > /sys/fs/cgroup/cgroup.subtree_control")
    return Check(name, "PASS", f"controllers: {', '.join(CGROUP_CONTROLLERS)}")


def check_confinement(paths: HostPaths) -> Check:
    """Whether a root daemon can put each QEMU in its own cgroup (docs/security.md):
    without, QEMU still runs as its own uid with no capabilities, but unlimited."""
    name = "QEMU confinement"
    if os.geteuid() != 0:
        return Check(name, "WARN", "not root: QEMU runs as this user, without a per-VM uid "
                     "or cgroup", "run the system daemon (virtkitd as root)")
    ok, detail = cgroups.writable(paths.path("/sys/fs/cgroup"))
    if not ok:
        return Check(name, "WARN", f"per-VM uid and seccomp, but no per-VM cgroup: {detail}",
                     "run virtkitd where /sys/fs/cgroup is writable (not in a container)")
    return Check(name, "PASS", f"per-VM uid/gid, no capabilities, seccomp, {detail}")


def check_ksm(paths: HostPaths) -> Check:
    """Kernel samepage merging: shares identical guest pages to save host memory."""
    state = paths.read_line("/sys/kernel/mm/ksm/run")
    if state is None:
        return Check("KSM", "WARN", "kernel has no KSM: identical guest pages are not shared",
                     "use a kernel built with CONFIG_KSM=y")
    if state == "1":
        return Check("KSM", "PASS", "KSM is merging identical guest pages")
    return Check("KSM", "WARN", f"KSM is off (run={state}): identical guest pages are not shared",
                 "echo 1 > /sys/kernel/mm/ksm/run")


def check_iommu(paths: HostPaths) -> Check:
    """An active IOMMU, required for PCI device passthrough (VFIO)."""
    units = paths.list_dir("/sys/class/iommu")
    groups = paths.list_dir("/sys/kernel/iommu_groups")
    if units or groups:
        return Check("IOMMU", "PASS",
                     f"{len(units)} IOMMU unit(s), {len(groups)} group(s): passthrough possible")
    return Check("IOMMU", "WARN", "no IOMMU active: PCI device passthrough unavailable",
                 "enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on)")


def check_ovmf(paths: HostPaths) -> Check:
    """OVMF (UEFI firmware for guests); without it only BIOS guests can boot."""
    firmware = qemubin.find_ovmf(paths.root)
    plain = qemubin.select_firmware(firmware)
    if not firmware:
        return Check("UEFI firmware", "WARN", "no OVMF firmware found: UEFI guests unavailable",
                     qemubin.INSTALL_OVMF)
    chosen = plain or firmware[0]
    extra = f" (+{len(firmware) - 1} more)" if len(firmware) > 1 else ""
    return Check("UEFI firmware", "PASS", f"OVMF: {chosen.code}{extra}")


def check_accelerator(paths: HostPaths, cache_dir: Path | None, probe: ProbeFn | None) -> Check:
    """The accelerator guests will really get (``auto``), with the reason."""
    try:
        verdict = decide_accelerator("auto", cache_dir, sysroot=paths.root, probe=probe)
    except HostError as err:
        return Check("accelerator", "FAIL", err.message, err.fix)
    if verdict.accel == "kvm":
        return Check("accelerator", "PASS", verdict.reason, value=verdict.accel)
    if verdict.signals.get("kvm_usable"):
        fix = "run on a host with VT-x/AMD-V and kvm_intel/kvm_amd for native speed"
    else:
        fix = _modprobe_fix(paths)
    return Check("accelerator", "WARN", verdict.reason, fix, value=verdict.accel)


def verdict_of(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """``host check --json``: the overall verdict (the worst status; WARN is not a
    failure, as in virt-host-validate), the accelerator guests get and why, and every
    check."""
    statuses = {check["status"] for check in checks}
    worst = next((s for s in ("FAIL", "WARN") if s in statuses), "PASS")
    accel = next((c for c in checks if c["name"] == "accelerator"), None)
    return {"verdict": worst, "ok": worst != "FAIL",
            "accelerator": accel.get("value") if accel else None,
            "accelerator_reason": accel["detail"] if accel else None, "checks": checks}


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    """Run one check; an unexpected crash becomes a FAIL line instead of killing the report."""
    try:
        return run()
    except Exception as err:  # a diagnostic command must always finish
        log.exception("host check %r crashed", name)
        return Check(name, "FAIL", f"check crashed: {err!r}", "report this as a virtkit bug")


def run_host_checks(*, daemon_reachable: bool | None = None, cache_dir: Path | None = None,
                    sysroot: Path = Path("/"), env: Mapping[str, str] | None = None,
                    probe: ProbeFn | None = None) -> list[Check]:
    """Every host check in report order; the accelerator verdict is always last.

    ``daemon_reachable`` adds the daemon line when the caller knows (the CLI
    does, the daemon itself does not).  ``cache_dir`` is where the measured
    accelerator verdict is cached.  ``sysroot``, ``env`` (for locating QEMU)
    and ``probe`` (the KVM benchmark) exist so tests can fake the host.
    """
    paths = HostPaths(sysroot)
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("hardware virtualization", lambda: check_cpu_flags(paths)),
        ("kvm modules", lambda: check_kvm_modules(paths)),
        ("/dev/kvm", lambda: check_kvm_device(paths)),
        (qemubin.QEMU_SYSTEM, lambda: check_qemu_system(env, paths)),
        (qemubin.QEMU_IMG, lambda: check_qemu_img(env)),
    ]
    if daemon_reachable is not None:
        steps.append(("daemon", lambda: check_daemon(daemon_reachable)))
    steps += [
        ("/dev/net/tun", lambda: check_tun(paths)),
        ("/dev/vhost-net", lambda: check_vhost_net(paths)),
        ("cgroup v2", lambda: check_cgroups(paths)),
        ("QEMU confinement", lambda: check_confinement(paths)),
        ("KSM", lambda: check_ksm(paths)),
        ("IOMMU", lambda: check_iommu(paths)),
        ("UEFI firmware", lambda: check_ovmf(paths)),
        ("accelerator", lambda: check_accelerator(paths, cache_dir, probe)),
    ]
    return [_guarded(name, run) for name, run in steps]
