"""``virtkit host check`` against fake host trees and fake QEMU binaries.

Each fake host is a sysroot directory with the /proc, /sys and /dev entries
the checks read, plus a bin directory holding shell-script stand-ins for
qemu-system-x86_64 and qemu-img that answer the questions virtkit asks.
The KVM benchmark is injected.  The QEMU output parsers are tested here too,
on the real text QEMU 7.2 prints.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import HostError
from virtkit.host import checks, qemubin
from virtkit.host.accel import HostPaths
from virtkit.host.checks import Check, run_host_checks

ORDER = ["hardware virtualization", "kvm modules", "/dev/kvm", "qemu-system-x86_64",
         "qemu-img", "/dev/net/tun", "/dev/vhost-net", "cgroup v2", "QEMU confinement", "KSM",
         "IOMMU", "UEFI firmware", "accelerator"]

MACHINE_HELP = """\
Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
pc-i440fx-1.4        Standard PC (i440FX + PIIX, 1996) (deprecated)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
isapc                ISA-only PC
none                 empty machine
"""
ACCEL_HELP = "Accelerators supported in QEMU binary:\ntcg\nkvm\n"
VERSION = ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
           "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n")
SANDBOX_HELP = "-sandbox on[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]\n"

FAKE_QEMU = """#!/bin/sh
case "$*" in
  --version) cat <<'EOF'
{version}EOF
  ;;
  "-machine help") cat <<'EOF'
{machines}EOF
  ;;
  "-accel help") cat <<'EOF'
{accels}EOF
  ;;
  -help) cat <<'EOF'
-machine [type=]name[,prop[=value][,...]]
{sandbox}EOF
  ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""

FULL_HOST_EXTRAS = {
    "dev/net/tun": "",
    "dev/vhost-net": "",
    "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
    "sys/kernel/mm/ksm/run": "1\n",
    "sys/class/iommu/dmar0/uevent": "",
    "sys/kernel/iommu_groups/0/type": "DMA\n",
    "usr/share/OVMF/OVMF_CODE_4M.fd": "code",
    "usr/share/OVMF/OVMF_VARS_4M.fd": "vars",
}

HOSTS = {
    # kind: (cpu flags, kernel modules, has /dev/kvm, has the extras above)
    "intel": ("vmx", ("kvm", "kvm_intel"), True, True),
    "amd": ("svm", ("kvm", "kvm_amd"), True, True),
    "pvm": ("hypervisor", ("kvm", "kvm_pvm"), True, False),
    "nokvm": ("", (), False, False),
}


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def make_host(root: Path, kind: str) -> Path:
    """A fake sysroot for one of the HOSTS kinds."""
    flags, modules, has_kvm, extras = HOSTS[kind]
    cpu = "".join(f"processor\t: {n}\nflags\t\t: fpu pae lm {flags}\n\n" for n in range(2))
    files = {
        "proc/cpuinfo": cpu,
        "proc/sys/kernel/osrelease": "6.1.0-test-amd64\n",
        "proc/sys/kernel/random/boot_id": "boot-1\n",
        # what this development machine has: a hybrid cgroup tree, KSM off
        "sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
        "sys/kernel/mm/ksm/run": "0\n",
    }
    if has_kvm:
        files["dev/kvm"] = ""
    if extras:
        files.update(FULL_HOST_EXTRAS)
    write_files(root, files)
    for module in modules:
        (root / "sys/module" / module / "parameters").mkdir(parents=True)
    return root


def make_qemu(bin_dir: Path, *, sandbox: bool = True, name: str = "qemu-system-x86_64") -> Path:
    """A shell script that answers like QEMU 7.2."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(FAKE_QEMU.format(version=VERSION, machines=MACHINE_HELP,
                                       accels=ACCEL_HELP, sandbox=SANDBOX_HELP if sandbox else ""))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture(autouse=True)
def _fresh_qemu_cache() -> Iterator[None]:
    qemubin.clear_cache()
    yield
    qemubin.clear_cache()


@pytest.fixture
def qemu_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    make_qemu(bin_dir)
    make_qemu(bin_dir, name="qemu-img")
    return {"PATH": str(bin_dir)}


def by_name(results: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in results}


def run(tmp_path: Path, kind: str, env: dict[str, str], ns: float | None = 0.4,
        daemon_reachable: bool | None = None) -> list[Check]:
    """All checks on a fresh fake host of ``kind`` whose benchmark reports ``ns``."""
    root = make_host(tmp_path / kind, kind)
    return run_host_checks(sysroot=root, env=env, probe=lambda: ns,
                           daemon_reachable=daemon_reachable)


# --- whole reports per host ------------------------------------------------------------


@pytest.mark.parametrize(("kind", "module", "flag"), [("intel", "kvm_intel", "vmx"),
                                                      ("amd", "kvm_amd", "svm")])
def test_native_host_passes_everything(tmp_path: Path, qemu_env: dict[str, str], kind: str,
                                       module: str, flag: str) -> None:
    results = run(tmp_path, kind, qemu_env)
    assert [c.name for c in results] == ORDER
    assert {c.name: c.status for c in results} == dict.fromkeys(ORDER, "PASS")
    assert all(c.fix is None for c in results)
    named = by_name(results)
    assert flag in named["hardware virtualization"].detail
    assert named["kvm modules"].detail == f"loaded: kvm, {module}"
    assert "7.2.22" in named["qemu-system-x86_64"].detail
    assert named["UEFI firmware"].detail == "OVMF: /usr/share/OVMF/OVMF_CODE_4M.fd"
    assert module in named["accelerator"].detail


def test_pvm_host_reports_like_this_machine(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    named = by_name(run(tmp_path, "pvm", qemu_env, ns=1100.0))
    cpu = named["hardware virtualization"]
    assert (cpu.status, cpu.fix) == (
        "WARN", "enable nested virtualization (VT-x/AMD-V) on the outer hypervisor")
    assert named["kvm modules"].status == "WARN"
    assert named["kvm modules"].detail.startswith("loaded: kvm, kvm_pvm")
    assert named["/dev/kvm"].status == "PASS"
    assert named["/dev/vhost-net"].fix == "modprobe vhost_net"
    assert "hybrid" in named["cgroup v2"].detail
    assert named["KSM"].fix == "echo 1 > /sys/kernel/mm/ksm/run"
    assert named["IOMMU"].status == "WARN"
    assert (named["UEFI firmware"].status, named["UEFI firmware"].fix) == (
        "WARN", "apt-get install ovmf")
    verdict = named["accelerator"]
    assert verdict.status == "WARN"
    assert "Using TCG" in verdict.detail
    assert "kvm_pvm" in verdict.detail
    assert verdict.fix is not None and "kvm_intel/kvm_amd" in verdict.fix


def test_host_without_kvm(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    root = make_host(tmp_path / "h", "nokvm")

    def probe() -> float:
        raise AssertionError("no /dev/kvm: nothing to benchmark")

    named = by_name(run_host_checks(sysroot=root, env=qemu_env, probe=probe))
    assert named["hardware virtualization"].fix == (
        "enable VT-x/AMD-V in the firmware (BIOS/UEFI) settings")
    assert named["kvm modules"].detail == "no KVM module loaded"
    assert named["/dev/kvm"].status == "WARN"
    assert named["/dev/kvm"].fix is not None and "modprobe kvm_intel or kvm_amd" in (
        named["/dev/kvm"].fix)
    assert named["accelerator"].status == "WARN"
    assert "/dev/kvm does not exist" in named["accelerator"].detail


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_every_problem_comes_with_a_one_line_fix(tmp_path: Path, qemu_env: dict[str, str],
                                                 kind: str) -> None:
    for check in run(tmp_path, kind, qemu_env, ns=1100.0, daemon_reachable=False):
        assert check.status in ("PASS", "WARN", "FAIL")
        if check.status != "PASS":
            assert check.fix, check
            assert "\n" not in check.fix


def test_daemon_line_only_when_known(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    assert "daemon" not in by_name(run(tmp_path, "intel", qemu_env))
    up = run(tmp_path / "up", "intel", qemu_env, daemon_reachable=True)
    assert [c.name for c in up][5] == "daemon"
    assert up[5].status == "PASS"
    down = by_name(run(tmp_path / "down", "intel", qemu_env, daemon_reachable=False))
    assert down["daemon"].status == "FAIL"
    assert down["daemon"].fix is not None


def test_accelerator_is_always_last(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    results = run(tmp_path, "pvm", qemu_env, ns=1100.0, daemon_reachable=True)
    assert results[-1].name == "accelerator"


# --- single checks ----------------------------------------------------------------------


def test_missing_qemu_fails_with_install_hints(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    named = by_name(run(tmp_path, "intel", {"PATH": str(empty)}))
    assert named["qemu-system-x86_64"].status == "FAIL"
    assert named["qemu-system-x86_64"].fix == "apt-get install qemu-system-x86"
    assert named["qemu-img"].status == "FAIL"
    assert named["qemu-img"].fix == "apt-get install qemu-utils"


def test_unopenable_dev_kvm(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    root = make_host(tmp_path / "h", "intel")
    (root / "dev/kvm").unlink()
    (root / "dev/kvm").mkdir()  # exists, but O_RDWR fails even for root
    named = by_name(run_host_checks(sysroot=root, env=qemu_env, probe=lambda: 0.4))
    assert named["/dev/kvm"].status == "WARN"
    assert named["/dev/kvm"].fix is not None and "kvm group" in named["/dev/kvm"].fix
    assert named["accelerator"].status == "WARN"


def test_cpu_module_without_kvm_device_suggests_modprobe(tmp_path: Path) -> None:
    root = make_host(tmp_path, "amd")
    (root / "dev/kvm").unlink()
    check = checks.check_kvm_device(HostPaths(root))
    assert (check.status, check.fix) == ("WARN", "modprobe kvm_amd")


def test_cgroup_controllers_missing(tmp_path: Path) -> None:
    root = make_host(tmp_path, "intel")
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpu memory pids\n")
    check = checks.check_cgroups(HostPaths(root))
    assert check.status == "WARN"
    assert check.detail == "controllers missing: cpuset, io"
    assert check.fix == "echo '+cpuset +io' > /sys/fs/cgroup/cgroup.subtree_control"


def test_kernel_without_ksm(tmp_path: Path) -> None:
    root = make_host(tmp_path, "intel")
    (root / "sys/kernel/mm/ksm/run").unlink()
    check = checks.check_ksm(HostPaths(root))
    assert check.status == "WARN"
    assert check.fix == "use a kernel built with CONFIG_KSM=y"


def test_iommu_groups_alone_count(tmp_path: Path) -> None:
    root = make_host(tmp_path, "pvm")
    (root / "sys/kernel/iommu_groups/3").mkdir(parents=True)
    assert checks.check_iommu(HostPaths(root)).status == "PASS"


def test_a_crashing_check_becomes_a_fail_line(tmp_path: Path, qemu_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(paths: HostPaths) -> Check:
        raise RuntimeError("unexpected sysfs layout")

    monkeypatch.setattr(checks, "check_ksm", boom)
    results = run(tmp_path, "intel", qemu_env)
    assert [c.name for c in results] == ORDER
    ksm = by_name(results)["KSM"]
    assert ksm.status == "FAIL"
    assert "unexpected sysfs layout" in ksm.detail


# --- qemubin: locating and parsing -----------------------------------------------------


def test_parse_version() -> None:
    version, text = qemubin.parse_version(VERSION)
    assert version == (7, 2, 22)
    assert text == "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert qemubin.parse_version("qemu-img version 8.1\n")[0] == (8, 1, 0)
    with pytest.raises(HostError):
        qemubin.parse_version("no digits here")


def test_parse_machine_help_resolves_aliases() -> None:
    machines = {m.name: m for m in qemubin.parse_machine_help(MACHINE_HELP)}
    assert machines["q35"].alias_of == "pc-q35-7.2"
    assert machines["pc"].alias_of == "pc-i440fx-7.2"
    assert machines["pc-i440fx-7.2"].is_default
    assert machines["pc-i440fx-1.4"].deprecated
    assert machines["pc-q35-7.2"].description == "Standard PC (Q35 + ICH9, 2009)"
    assert machines["microvm"].alias_of is None
    assert "Supported" not in machines


def test_qemu_info_from_fake_binary(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    info = qemubin.qemu_info(qemu_env, sysroot=make_host(tmp_path / "h", "intel"))
    assert info.version == (7, 2, 22)
    assert info.accelerators == frozenset({"tcg", "kvm"})
    assert info.sandbox is True
    assert info.default_machine == "pc-i440fx-7.2"
    assert info.resolve_machine("q35") == "pc-q35-7.2"
    assert info.resolve_machine("pc-q35-7.2") == "pc-q35-7.2"
    assert [fw.code for fw in info.firmware] == [Path("/usr/share/OVMF/OVMF_CODE_4M.fd")]
    with pytest.raises(HostError):
        info.resolve_machine("virt")


def test_qemu_without_sandbox(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    make_qemu(bin_dir, sandbox=False)
    assert qemubin.qemu_info({"PATH": str(bin_dir)}, sysroot=tmp_path).sandbox is False


def test_capabilities_are_cached_until_the_binary_changes(tmp_path: Path,
                                                          qemu_env: dict[str, str]) -> None:
    first = qemubin.qemu_info(qemu_env, sysroot=tmp_path)
    assert qemubin.qemu_info(qemu_env, sysroot=tmp_path).machines is first.machines
    binary = Path(qemu_env["PATH"]) / "qemu-system-x86_64"
    binary.write_text(binary.read_text().replace("7.2.22", "8.0.4"))
    assert qemubin.qemu_info(qemu_env, sysroot=tmp_path).version == (8, 0, 4)


def test_env_override_wins_and_is_validated(tmp_path: Path, qemu_env: dict[str, str]) -> None:
    custom = make_qemu(tmp_path / "custom")
    env = {**qemu_env, "VIRTKIT_QEMU": str(custom)}
    assert qemubin.find_qemu_system(env) == custom
    with pytest.raises(HostError) as caught:
        qemubin.find_qemu_system({**qemu_env, "VIRTKIT_QEMU": str(tmp_path / "nope")})
    assert "VIRTKIT_QEMU" in caught.value.message


def test_broken_qemu_is_a_host_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "qemu-system-x86_64"
    broken.write_text("#!/bin/sh\necho 'libfoo.so: cannot open' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(HostError) as caught:
        qemubin.qemu_info({"PATH": str(bin_dir)}, sysroot=tmp_path)
    assert "libfoo.so" in caught.value.message


def _descriptor(code: str, vars_: str, features: list[str]) -> str:
    return json.dumps({
        "description": "test", "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": code, "format": "raw"},
                    "nvram-template": {"filename": vars_, "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": features, "tags": [],
    })


def test_firmware_descriptors_rule_and_etc_overrides(tmp_path: Path) -> None:
    code, secure = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    write_files(tmp_path, {
        code.lstrip("/"): "", secure.lstrip("/"): "",
        "usr/share/qemu/firmware/50-secure.json": _descriptor(
            secure, "/usr/share/OVMF/OVMF_VARS_4M.fd", ["secure-boot", "requires-smm"]),
        "usr/share/qemu/firmware/60-plain.json": _descriptor(
            code, "/usr/share/OVMF/OVMF_VARS_4M.fd", []),
        "usr/share/qemu/firmware/70-missing.json": _descriptor(
            "/usr/share/OVMF/gone.fd", "/x", []),
        "usr/share/qemu/firmware/80-broken.json": "{not json",
    })
    found = qemubin.find_ovmf(tmp_path)
    assert [(fw.code, fw.secure_boot) for fw in found] == [(Path(secure), True),
                                                           (Path(code), False)]
    assert found[0].descriptor == Path("/usr/share/qemu/firmware/50-secure.json")
    plain = qemubin.select_firmware(found)
    assert plain is not None and plain.code == Path(code)
    # an empty file of the same name in /etc masks the distribution's descriptor
    write_files(tmp_path, {"etc/qemu/firmware/50-secure.json": ""})
    assert [fw.code for fw in qemubin.find_ovmf(tmp_path)] == [Path(code)]


def test_firmware_by_debian_file_names(tmp_path: Path) -> None:
    write_files(tmp_path, {f"usr/share/OVMF/{name}": "" for name in (
        "OVMF_CODE_4M.fd", "OVMF_CODE_4M.ms.fd", "OVMF_CODE_4M.secboot.fd",
        "OVMF_VARS_4M.fd", "OVMF_VARS_4M.ms.fd")})
    found = {fw.code.name: fw for fw in qemubin.find_ovmf(tmp_path)}
    assert found["OVMF_CODE_4M.fd"].vars_template == Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert found["OVMF_CODE_4M.ms.fd"].vars_template == Path(
        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    assert found["OVMF_CODE_4M.ms.fd"].enrolled_keys
    assert found["OVMF_CODE_4M.secboot.fd"].vars_template == Path(
        "/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert found["OVMF_CODE_4M.secboot.fd"].secure_boot
    assert next(iter(found)) == "OVMF_CODE_4M.fd"  # plain image first


def test_unexecutable_qemu_is_a_host_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    junk = bin_dir / "qemu-system-x86_64"
    junk.write_bytes(b"\x7fELF-truncated")
    junk.chmod(0o755)
    with pytest.raises(HostError) as caught:
        qemubin.qemu_info({"PATH": str(bin_dir)}, sysroot=tmp_path)
    assert caught.value.message.startswith(f"cannot run {junk}")
    assert caught.value.fix is not None and "qemu-system-x86" in caught.value.fix


def test_confinement_check_needs_root_and_a_writable_cgroup_tree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks.os, "geteuid", lambda: 1000)
    assert checks.check_confinement(HostPaths(tmp_path)).status == "WARN"
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)
    check = checks.check_confinement(HostPaths(tmp_path))
    assert check.status == "WARN" and "no cgroup file system" in check.detail
    (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
    check = checks.check_confinement(HostPaths(tmp_path))
    assert check.status == "PASS" and "cgroup v1" in check.detail


def test_the_json_verdict_names_the_accelerator_and_warn_is_no_failure() -> None:
    lines = [Check("/dev/kvm", "WARN", "no kvm").to_dict(),
              Check("accelerator", "WARN", "TCG: no usable KVM", "load kvm", value="tcg").to_dict()]
    report = checks.verdict_of(lines)
    assert (report["verdict"], report["ok"], report["accelerator"]) == ("WARN", True, "tcg")
    assert report["accelerator_reason"] == "TCG: no usable KVM" and report["checks"] == lines
    failed = checks.verdict_of([*lines, Check("qemu-img", "FAIL", "missing").to_dict()])
    assert (failed["verdict"], failed["ok"]) == ("FAIL", False)
