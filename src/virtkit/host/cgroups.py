"""One control group per confined QEMU: memory and pids limits, the devices it may open.

Both layouts are handled:

- **v2** (unified; ``/sys/fs/cgroup/cgroup.controllers`` exists): one folder
  ``/sys/fs/cgroup/virtkit/<name>`` with ``memory.max``, ``pids.max``, ``cpu.weight``;
  the controllers are enabled in the parents' ``cgroup.subtree_control``.  The device
  allow-list needs a BPF program under v2 and is not done (docs/security.md).
- **v1** (legacy or hybrid): one folder per controller, ``<mnt>/<controller>/virtkit/<name>``
  for ``memory`` (``memory.limit_in_bytes``), ``pids``, ``cpu`` (``cpu.shares``),
  ``devices`` (``devices.deny a`` then one ``devices.allow`` line per device) and ``blkio``
  (blkiotune: weights and throttles, written by runtime/cgtune.py).

Where ``/sys/fs/cgroup`` has no cgroup file system -- ``ip netns exec`` remounts
``/sys`` for the network namespace and the cgroup mounts under it are gone -- the daemon
mounts the hierarchies its process belongs to (``/proc/self/cgroup``) itself, in a folder
of its state root (``find_root``; only its mount namespace sees them).  Where nothing is
writable (a container, a read-only ``/sys``) the caller gets a ``HostError`` and the start
is refused, unless the daemon runs with ``--no-cgroup`` (runtime/confine.py).
Path computation is pure (``group_dirs``), so it is unit-tested on fake trees.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import HostError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "devices", "blkio")
V2_CONTROLLERS = ("memory", "pids", "cpu", "io")
PARENT = "virtkit"

#: character devices any QEMU may open: null, zero, full, random, urandom, tty, ptmx,
#: the pty slaves, the tun clone device, kvm, vhost-net, vhost-vsock
BASE_DEVICES = (
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
    "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm", "c 10:232 rwm", "c 10:238 rwm",
    "c 10:241 rwm",
)


def cgroup_version(root: Path = CGROUP_ROOT) -> str | None:
    """``v2`` for a unified hierarchy, ``v1`` when controllers are mounted one by one,
    None when there is no cgroup file system at all."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "memory").is_dir() or (root / "pids").is_dir():
        return "v1"
    return None


def hierarchies(proc_cgroup: str = "/proc/self/cgroup") -> list[tuple[str, ...]]:
    """The cgroup hierarchies this process is in: the controller set of each v1 one
    (``("cpu", "cpuacct")``), ``()`` for the v2 unified one."""
    found: list[tuple[str, ...]] = []
    with contextlib.suppress(OSError), open(proc_cgroup) as handle:
        for line in handle:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3 and not parts[1].startswith("name="):
                found.append(tuple(c for c in parts[1].split(",") if c))
    return found


def mount_plan(found: list[tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """(folder, fstype, options) to mount for ``hierarchies()``: every v1 hierarchy with a
    controller virtkit uses (named after that controller), else the v2 one at ``.``."""
    plan: list[tuple[str, str, str]] = []
    for controllers in found:
        wanted = [c for c in V1_CONTROLLERS if c in controllers]
        if wanted:
            plan.append((wanted[0], "cgroup", ",".join(controllers)))
    if not plan and () in found:
        plan.append((".", "cgroup2", ""))
    return plan


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0,
                  options.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def find_root(fallback: Path, root: Path = CGROUP_ROOT) -> Path:
    """Where the cgroup file systems are: ``root`` when it has them, else ``fallback``
    with the daemon's own hierarchies mounted there (after ``ip netns exec``, whose
    fresh ``/sys`` has no cgroup mounts).  ``root`` when neither works (the start then
    fails, naming it)."""
    if cgroup_version(root) is not None or os.geteuid() != 0:
        return root
    if cgroup_version(fallback) is not None:
        return fallback
    plan = mount_plan(hierarchies())
    try:
        for folder, fstype, options in plan:
            target = fallback / folder
            target.mkdir(parents=True, exist_ok=True, mode=0o755)
            _mount(fstype, target, fstype, options)
            if fstype == "cgroup":  # the other names of a combined hierarchy (cpuacct)
                for other in options.split(","):
                    link = fallback / other
                    if other != folder and other in V1_CONTROLLERS and not link.exists():
                        link.symlink_to(folder)
    except OSError as exc:
        log.error("no cgroup file system at %s, and mounting one at %s failed: %s",
                  root, fallback, exc)
        return root
    log.info("cgroup file systems were not mounted at %s; mounted them at %s", root,
             fallback)
    return fallback if cgroup_version(fallback) is not None else root


def group_dirs(root: Path, version: str, name: str) -> dict[str, Path]:
    """The folder of group ``name`` for each controller (``""`` for the v2 folder)."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad cgroup name {name!r}")
    if version == "v2":
        return {"": root / PARENT / name}
    return {c: root / c / PARENT / name for c in V1_CONTROLLERS if (root / c).is_dir()}


@dataclass(frozen=True)
class Limits:
    """What a VM's group allows."""

    memory_bytes: int | None = None
    pids_max: int | None = None
    cpu_weight: int | None = None  # 1-10000, v2 scale (100 = default)
    devices: tuple[str, ...] = BASE_DEVICES


def memory_limit(guest_mib: int, tcg: bool) -> int:
    """A generous hard limit for one QEMU: guest RAM + 25 % + 512 MiB for QEMU itself,
    and 1 GiB more under TCG (its translated-code buffer).  Too tight would OOM-kill
    the VM; this only stops a runaway QEMU from taking the host."""
    mib = guest_mib + guest_mib // 4 + 512 + (1024 if tcg else 0)
    return mib * 1024 * 1024


def block_device_rule(path: str) -> str | None:
    """``b MAJ:MIN rw`` for a block device path, None for anything else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"b {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} rw"


@dataclass
class Cgroup:
    """The group of one QEMU process (created, joined, removed)."""

    version: str
    dirs: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, limits: Limits, root: Path = CGROUP_ROOT) -> Cgroup:
        """Make the group and set its limits; HostError when cgroups are not writable."""
        version = cgroup_version(root)
        if version is None:
            raise HostError(f"no cgroup file system at {root}")
        group = cls(version, group_dirs(root, version, name))
        try:
            if version == "v2":
                group._create_v2(root, limits)
            else:
                group._create_v1(limits)
        except OSError as exc:
            group.remove()
            raise HostError(f"cannot create cgroup {name}: {exc.strerror}",
                            fix="run virtkitd where /sys/fs/cgroup is writable") from exc
        return group

    def _create_v2(self, root: Path, limits: Limits) -> None:
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS
                          if c in (root / "cgroup.controllers").read_text().split())
        (root / PARENT).mkdir(exist_ok=True)
        for parent in (root, root / PARENT):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(enable)
        folder = self.dirs[""]
        folder.mkdir(exist_ok=True)
        self._try(folder / "memory.max", limits.memory_bytes)
        self._try(folder / "pids.max", limits.pids_max)
        self._try(folder / "cpu.weight", limits.cpu_weight)
        self.notes.append("device allow-list not enforced (cgroup v2 needs BPF)")

    def _create_v1(self, limits: Limits) -> None:
        for controller, folder in self.dirs.items():
            folder.mkdir(parents=True, exist_ok=True)
            if controller == "memory":
                self._try(folder / "memory.limit_in_bytes", limits.memory_bytes)
            elif controller == "pids":
                self._try(folder / "pids.max", limits.pids_max)
            elif controller == "cpu" and limits.cpu_weight is not None:
                self._try(folder / "cpu.shares", limits.cpu_weight * 1024 // 100)
            elif controller == "devices":
                (folder / "devices.deny").write_text("a")
                for rule in limits.devices:
                    (folder / "devices.allow").write_text(rule)

    def _try(self, path: Path, value: int | None) -> None:
        if value is None:
            return
        try:
            path.write_text(str(value))
        except OSError as exc:
            self.notes.append(f"{path.name}: {exc.strerror}")

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid into to join."""
        return [str(folder / "cgroup.procs") for folder in self.dirs.values()]

    def add(self, pid: int) -> None:
        """Move ``pid`` into the group (idempotent)."""
        for procs in self.procs_files:
            with open(procs, "w") as handle:
                handle.write(str(pid))

    def contains(self, pid: int) -> bool:
        """Whether ``pid`` is a member in every controller."""
        return all(str(pid) in _read_lines(Path(p)) for p in self.procs_files)

    def remove(self, attempts: int = 20) -> bool:
        """Remove the folders once their processes are gone; False if one stayed busy."""
        removed = True
        for folder in self.dirs.values():
            removed = _rmdir(folder, attempts) and removed
        return removed

    def paths(self) -> list[str]:
        return [str(folder) for folder in self.dirs.values()]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _rmdir(folder: Path, attempts: int) -> bool:
    for _ in range(attempts):
        try:
            folder.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
            time.sleep(0.05)  # the last task is still leaving the group
    return False


def remove_paths(paths: Iterable[str]) -> bool:
    """Remove group folders recorded earlier (reconcile after a daemon crash)."""
    ok = True
    for folder in paths:
        ok = _rmdir(Path(folder), 5) and ok
    return ok


def writable(root: Path = CGROUP_ROOT) -> tuple[bool, str]:
    """Whether a group can be made here (for ``host check``), and why not."""
    version = cgroup_version(root)
    if version is None:
        return False, f"no cgroup file system at {root}"
    probe = root / ("" if version == "v2" else "memory") / PARENT
    try:
        probe.mkdir(exist_ok=True)
    except OSError as exc:
        return False, f"{probe}: {exc.strerror}"
    return os.access(probe, os.W_OK), f"cgroup {version} at {root}"
