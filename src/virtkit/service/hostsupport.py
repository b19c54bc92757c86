"""What virt-install options ask of the host that only the host can answer.

``--host-device`` needs an IOMMU, ``--security type=selinux|apparmor`` a running
SELinux or AppArmor, ``--numatune`` the NUMA nodes it names.  Where the host lacks
them the error says so (and how to get them); where it has them but virtkit cannot
use them yet (security labels), the error says that instead; a single-node host asked
to keep memory on node 0 gets a note.  Host devices and NUMA nodes are then in the
spec (``hostdevs``, ``numatune``) and checked again at define and start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.model.domain import parse_cpuset

SYS = Path("/sys")


def check(asked: dict[str, Any], sys_root: Path = SYS) -> list[str]:
    """Raise InvalidSpec for what cannot be done here; return notes for the rest."""
    notes: list[str] = []
    if asked.get("host_devices"):
        _host_devices(list(asked["host_devices"]), sys_root)
    if asked.get("security"):
        _security(str(asked["security"]), sys_root)
    if asked.get("numatune"):
        notes += _numatune(str(asked["numatune"]), sys_root)
    return notes


def _host_devices(devices: list[str], sys_root: Path) -> None:
    groups = sys_root / "kernel" / "iommu_groups"
    if not groups.is_dir() or not any(groups.iterdir()):
        raise InvalidSpec(
            f"--host-device {devices[0]}: this host has no IOMMU (nothing under "
            f"{groups}), so no device can be passed through to a guest",
            fix="enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on "
                "(Intel), or drop --host-device")
    # the spec's hostdevs are checked device by device at define and start


def _active_lsms(sys_root: Path) -> set[str]:
    try:
        return set((sys_root / "kernel" / "security" / "lsm").read_text().strip().split(","))
    except OSError:
        found = set()
        if (sys_root / "fs" / "selinux" / "enforce").exists():
            found.add("selinux")
        try:
            enabled = (sys_root / "module" / "apparmor" / "parameters" / "enabled").read_text()
        except OSError:
            enabled = ""
        if enabled.strip() == "Y":
            found.add("apparmor")
        return found


def _security(model: str, sys_root: Path) -> None:
    if model not in _active_lsms(sys_root):
        raise InvalidSpec(f"--security {model}: this host does not run {model}, so there "
                          "is nothing to label the VM with",
                          fix="drop --security (or write --security type=none)")
    raise InvalidSpec(f"--security {model}: virtkit does not apply {model} labels to QEMU "
                      "yet", fix="drop --security (or write --security type=none)")


def _numatune(nodeset: str, sys_root: Path) -> list[str]:
    try:
        wanted = parse_cpuset(nodeset)
    except ValueError:
        raise InvalidSpec(f"--numatune {nodeset}: cannot read the node set",
                          fix="write e.g. --numatune 0 or --numatune nodeset=0-1") from None
    nodes = {int(path.name[4:]) for path in (sys_root / "devices" / "system" / "node")
             .glob("node[0-9]*")} or {0}
    missing = wanted - nodes
    if missing:
        raise InvalidSpec(f"--numatune {nodeset}: this host has no NUMA node "
                          f"{sorted(missing)} (it has {sorted(nodes)})",
                          fix=f"pick from {sorted(nodes)}, or drop --numatune")
    if len(nodes) == 1:
        return [f"--numatune {nodeset}: this host has one NUMA node; all guest memory is "
                "on it already"]
    return []
