"""Confined QEMU (sVirt's job, by DAC): a per-VM uid/gid, no capabilities, a cgroup.

When the daemon runs as root, each QEMU runs as its own uid and gid from a reserved
range (``BASE_UID`` + a hash of the state root and the domain's uuid, moved on while
that uid is in use), with no supplementary groups (``kvm`` only when KVM is used), an
empty capability set (bounding set included), ``PR_SET_NO_NEW_PRIVS``, QEMU's seccomp
sandbox, and in its own cgroup (host/cgroups.py).  What QEMU gets is handed to it:
the monitor, serial and agent sockets and the taps are descriptors the daemon opened;
the files it must open by path are granted for the VM's life (runtime/ownership.py)
and taken back when it ends.  Every grant is written to a per-VM journal
(``<root>/confine/<uuid>.json``) *before* it is applied, so a daemon killed at any
point restores ownership on its next start (``Confiner.reconcile``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, HostError, VirtkitError
from virtkit.host import cgroups
from virtkit.host.pathpolicy import PathPolicy
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps
from virtkit.paths import StatePaths
from virtkit.runtime import ownership, preflight
from virtkit.runtime.ownership import Grant

log = logging.getLogger(__name__)

BASE_UID = 6_500_000
UID_SPAN = 1_000_000
SECURITY_MODEL = "virtkit-dac"
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def uid_candidate(root: str, uuid: str, attempt: int = 0) -> int:
    """The uid a domain of the instance at ``root`` tries first (stable across starts,
    different per instance so two daemons on one host do not share uids)."""
    digest = hashlib.sha256(f"{root}\0{uuid}".encode()).digest()
    return BASE_UID + (int.from_bytes(digest[:8], "big") + attempt) % UID_SPAN


def pick_uid(root: str, uuid: str, taken: Callable[[int], bool]) -> int:
    """The first candidate uid that ``taken`` does not claim."""
    for attempt in range(UID_SPAN):
        uid = uid_candidate(root, uuid, attempt)
        if not taken(uid):
            return uid
    raise VirtkitError("no free uid left in the confinement range")


def uids_in_use(proc: Path = Path("/proc")) -> set[int]:
    """Real uids of every process on the host (read at every confined start, so with
    plain system calls: the ``Uid:`` line is in the first bytes of ``status``)."""
    found: set[int] = set()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"{proc}/{name}/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # ended meanwhile
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        at = data.find(b"\nUid:")
        with contextlib.suppress(ValueError, IndexError):
            if at >= 0:
                found.add(int(data[at + 5:].split(None, 1)[0]))
    return found


def _known_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def cgroup_name(root: str, uuid: str) -> str:
    """The group of a domain's QEMU: ``<uuid>-<instance tag>`` under ``virtkit/``."""
    tag = hashlib.sha256(root.encode()).hexdigest()[:8]
    return f"{uuid}-{tag}"


def make_preexec(uid: int, gid: int, groups: list[int], procs: list[str]) -> Callable[[], None]:
    """What the forked child runs before exec'ing QEMU: join the cgroup (while still
    root), drop the bounding set, set no-new-privs, become uid/gid, clear the rest.

    Only system calls happen here (no locks, no imports): the daemon has threads."""
    pid_procs = list(procs)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()

    def child() -> None:
        for procs_file in pid_procs:
            try:
                fd = os.open(procs_file, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            except OSError:
                pass  # checked and reported by the parent (Confinement.joined)
        for cap in range(64):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if _libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")

    return child


#: run by /bin/sh as root in the new process: join each cgroup named before ``--``
#: (writing 0 to ``cgroup.procs`` moves the writer; a failure is left to
#: Confinement.joined, as in make_preexec), then exec the rest of the words
_JOIN_CGROUPS = ('while [ "$1" != -- ]; do { echo 0 >"$1"; } 2>/dev/null; shift; done; '
                 'shift; exec "$@"')


@functools.cache
def setpriv() -> str | None:
    """util-linux's setpriv, which drops privileges and execs a command, or None."""
    return shutil.which("setpriv")


def confining_wrapper(uid: int, gid: int, groups: list[int],
                      procs: list[str]) -> list[str] | None:
    """What make_preexec does, as a command that execs QEMU's argv in the same process
    (None without setpriv): /bin/sh joins the cgroup while still root, then setpriv
    empties the bounding and inheritable sets, sets no-new-privs, the groups and the
    uid/gid (the kernel clears the permitted and effective sets at that change, and
    exec makes the saved ids the new ones).  A command keeps Python's vfork spawn: a
    ``preexec_fn`` forks the whole daemon (3-6 ms on the event loop for a 60 MiB
    daemon, and more under load; docs/benchmarks.md)."""
    tool = setpriv()
    if tool is None:
        return None
    privs = [tool, f"--reuid={uid}", f"--regid={gid}",
             f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    if not procs:
        return privs
    return ["/bin/sh", "-c", _JOIN_CGROUPS, "virtkit-confine", *procs, "--", *privs]


@dataclass
class Confinement:
    """The security context of one QEMU run and everything granted to it."""

    uuid: str
    uid: int
    gid: int
    groups: list[int]
    journal: Path
    cgroup: cgroups.Cgroup | None = None
    sandbox: bool = True
    grants: list[Grant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    #: the path policy every later grant passes (hotplug); None: not checked
    policy: PathPolicy | None = field(default=None, repr=False, compare=False)
    #: grants other VMs of this daemon hold now: {real path: [(vm, kind)]}
    others: Callable[[], dict[str, list[tuple[str, str]]]] | None = field(
        default=None, repr=False, compare=False)
    #: held from the check against the other VMs' grants to the journalled grant, so two
    #: starts (worker threads) on one file cannot both pass the check
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    # -- grants ------------------------------------------------------------------

    def grant(self, paths: Iterable[tuple[str, str]]) -> None:
        """Grant each (path, kind), and traversal of the folders above it; the journal
        is written before anything changes on disk.

        Folder grants held already are applied again (idempotent): a ``chmod`` of a
        folder since (pytest does it to its base folder) resets the ACL mask and with
        it the VM's traversal right."""
        planned: list[Grant] = []
        again: list[Grant] = []
        have = {(g.path, g.kind) for g in self.grants}
        for path, kind in paths:
            given = os.path.abspath(path)  # QEMU opens this name ...
            path = os.path.realpath(path)  # ... the grant is on the file (and released there)
            if not os.path.exists(path):
                continue  # QEMU reports a missing file in its own words
            wanted = ownership.traverse_grants(path, self.uid, self.gid)
            if given != path:  # a link: QEMU must reach it too
                wanted += [g for g in ownership.traverse_grants(given, self.uid, self.gid)
                           if g not in wanted]
            if kind != "read" or ownership.needs_read_grant(path, self.uid):
                wanted.append(ownership.plan(path, self.uid, self.gid, kind))
            for grant in wanted:
                if (grant.path, grant.kind) not in have:
                    have.add((grant.path, grant.kind))
                    planned.append(grant)
                elif grant.kind == "exec":
                    again.append(grant)
        if planned:
            self.grants += planned
            self.save()
        for grant in [*again, *planned]:
            log.debug("granting %s (%s) to uid %d", grant.path, grant.kind, self.uid)
            ownership.apply(grant)

    def grant_image(self, path: str, *, readonly: bool, fmt: str | None,
                    field_name: str = "disk") -> None:
        """A disk image and its backing chain: the top owned (or read when read-only),
        every backing file read (shared by linked clones: never chowned).  The image and
        every backing file pass the path policy, and none may be held by another VM in a
        way that conflicts, before anything is granted."""
        real = os.path.realpath(path)
        check = None
        if self.policy is not None:
            policy = self.policy
            real = policy.check(path, field=field_name, kind="file", remote=False)

            def check(name: str) -> str:
                return policy.check(name, field=f"{field_name} (backing file)", kind="file",
                                    remote=False)

        chain = preflight.backing_files(real, fmt, check) if os.path.isfile(real) else []
        wanted = [(real, "read" if readonly else "own"), *((layer, "read") for layer in chain)]
        with self.lock:
            self.refuse_shared(wanted)
            self.grant([(path, wanted[0][1]), *wanted[1:]])  # QEMU opens ``path``

    def refuse_shared(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Conflict when another VM of this daemon holds a grant on a file this one wants
        in a way that cannot be shared: a file written (``own``) by one VM is neither
        written nor read by another.  Nothing is changed, so the other VM's file keeps
        its owner (release restores only what a grant changed)."""
        if self.others is None:
            return
        held = self.others()
        for path, kind in wanted:
            for other, other_kind in held.get(os.path.realpath(path), []):
                if "own" in (kind, other_kind):
                    raise Conflict(
                        f"{path} is in use by VM {other} (it "
                        f"{'writes' if other_kind == 'own' else 'reads'} it)",
                        path=path, vm=other,
                        fix=f"stop {other} first, or give this VM its own copy "
                            "(virtkit vol-clone)")

    def grant_writable(self, path: str) -> None:
        """A file QEMU must now write (a block-commit target, a new overlay)."""
        self.grant([(path, "own")])

    def release_path(self, path: str) -> None:
        """Take back what was granted on ``path`` (an unplugged disk); folders stay
        traversable until the VM ends."""
        names = {os.path.abspath(path), os.path.realpath(path)}  # grants hold real paths
        mine = [g for g in self.grants if g.path in names]
        for grant in mine:
            ownership.release(grant)
        self.grants = [g for g in self.grants if g.path not in names]
        self.save()

    def release_all(self) -> None:
        """Restore every file, remove the cgroup, drop the journal (QEMU has ended)."""
        for grant in reversed(self.grants):
            ownership.release(grant)
        if self.cgroup is not None and not self.cgroup.remove():
            log.warning("cgroup of %s is still busy: %s", self.uuid, self.cgroup.paths())
        self.journal.unlink(missing_ok=True)
        self.grants = []

    # -- the process ---------------------------------------------------------------

    def preexec(self) -> Callable[[], None]:
        procs = self.cgroup.procs_files if self.cgroup is not None else []
        return make_preexec(self.uid, self.gid, self.groups, procs)

    def spawn_options(self) -> dict[str, Any]:
        """QemuProcess.spawn's way into this confinement: the setpriv wrapper, else the
        preexec function."""
        procs = self.cgroup.procs_files if self.cgroup is not None else []
        wrapper = confining_wrapper(self.uid, self.gid, self.groups, procs)
        return {"preexec": self.preexec()} if wrapper is None else {"wrapper": wrapper}

    def joined(self, pid: int) -> None:
        """After the QMP handshake: make sure QEMU is in its cgroup (it is still paused,
        -S); its confining wrapper or preexec joined it before exec, unless that failed."""
        if self.cgroup is None or self.cgroup.contains(pid):
            return
        try:
            self.cgroup.add(pid)
        except OSError as exc:
            self.notes.append(f"QEMU not in its cgroup: {exc.strerror}")
            log.warning("cannot move QEMU %d of %s into its cgroup: %s", pid, self.uuid, exc)

    # -- records -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "uid": self.uid, "gid": self.gid,
                "groups": self.groups,
                "cgroup": self.cgroup.paths() if self.cgroup else [],
                "cgroup_version": self.cgroup.version if self.cgroup else None,
                "sandbox": self.sandbox, "notes": self.notes,
                "grants": [g.to_json() for g in self.grants]}

    def save(self) -> None:
        partial = self.journal.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.journal)

    @classmethod
    def load(cls, journal: Path) -> Confinement:
        data = json.loads(journal.read_text())
        group = None
        if data.get("cgroup"):
            dirs = {str(i): Path(p) for i, p in enumerate(data["cgroup"])}
            group = cgroups.Cgroup(str(data.get("cgroup_version") or "v1"), dirs)
        return cls(str(data["uuid"]), int(data["uid"]), int(data["gid"]),
                   [int(g) for g in data.get("groups", [])], journal, group,
                   bool(data.get("sandbox", True)),
                   [Grant.from_json(g) for g in data.get("grants", [])],
                   list(data.get("notes", [])), str(data.get("name") or ""))

    def describe(self) -> dict[str, Any]:
        """What ``dominfo`` shows (virsh's Security model / DOI / label lines)."""
        return {"model": SECURITY_MODEL, "doi": "0", "label": f"+{self.uid}:+{self.gid}",
                "uid": self.uid, "gid": self.gid,
                "cgroup": self.cgroup.paths() if self.cgroup else [],
                "sandbox": self.sandbox, "notes": self.notes}


def unconfined_reason(domain: Domain) -> str | None:
    """Why a domain cannot run confined (None: it can)."""
    if domain.hostdevs:
        return ("PCI passthrough: handing /dev/vfio/<group> to a per-VM uid is not done "
                "yet (docs/security.md)")
    for fs in domain.filesystems:
        if fs.driver == "9p" and fs.accessmode == "passthrough":
            return (f"the 9p share {fs.target!r} uses accessmode passthrough, which needs "
                    "QEMU to run as root (use mapped or squash, or virtiofs)")
    return None


UNPRIVILEGED_USERFAULTFD = "/proc/sys/vm/unprivileged_userfaultfd"


class Confiner:
    """Decides whether and how each QEMU is confined, and reconciles after a crash."""

    def __init__(self, paths: StatePaths, *, enabled: bool | None = None,
                 cgroup_root: Path | None = None, policy: PathPolicy | None = None,
                 cgroup_required: bool = True, allowed_paths: Iterable[str] = (),
                 pool_dirs: Callable[[], Iterable[str]] | None = None) -> None:
        self.paths = paths
        self.enabled = (os.geteuid() == 0) if enabled is None else enabled
        #: where the cgroup file systems are; None: found (or mounted) when first needed
        self._cgroup_root = cgroup_root
        #: False only with ``virtkitd --no-cgroup``: a QEMU may then start without a
        #: cgroup (loudly: dominfo and host check say so); otherwise that start fails
        self.cgroup_required = cgroup_required
        #: the one path policy (host/pathpolicy.py): every path a guest is given passes it
        self.policy = policy or PathPolicy.for_root(paths.root, allowed=allowed_paths,
                                                    pool_dirs=pool_dirs)
        self.journals = paths.root / "confine"
        self._active: dict[str, int] = {}
        self._choosing = threading.Lock()  # starts run in worker threads
        self._granting = threading.RLock()
        if self.enabled:
            self._harden()

    @property
    def cgroup_root(self) -> Path:
        with self._granting:  # two starts in worker threads must not mount twice
            if self._cgroup_root is None:
                self._cgroup_root = cgroups.find_root(self.paths.run / "cgroup")
            return self._cgroup_root

    def cgroup_status(self) -> tuple[bool, str]:
        """(usable, what) of the cgroups QEMUs are put in (``host check``)."""
        if not self.enabled:
            return True, "confinement off (--no-confine): QEMU runs as the daemon's user"
        ok, what = cgroups.writable(self.cgroup_root)
        if not ok and not self.cgroup_required:
            return False, f"{what}; --no-cgroup: QEMUs start WITHOUT a cgroup (no memory, " \
                          "pids or device limits)"
        return ok, what

    def userfaultfd_refused(self) -> bool:
        """True when a confined QEMU cannot use userfaultfd, which post-copy migration
        needs on the destination: QEMU 7.2 calls userfaultfd(2), which the kernel allows
        an unprivileged process only with ``vm.unprivileged_userfaultfd=1``."""
        if not self.enabled:
            return False
        try:
            return Path(UNPRIVILEGED_USERFAULTFD).read_text().strip() == "0"
        except OSError:
            return False

    def _harden(self) -> None:
        """The state a confined QEMU must not read: the database private to root, the
        run folder traversable (each VM's own folder inside is 0700)."""
        self.journals.mkdir(mode=0o700, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        self.paths.run.chmod(0o711)
        for suffix in ("", "-wal", "-shm"):
            db = Path(f"{self.paths.database}{suffix}")
            with contextlib.suppress(OSError):
                db.chmod(0o600)

    def journal(self, uuid: str) -> Path:
        return self.journals / f"{uuid}.json"

    def prepare(self, domain: Domain, caps: HostCaps, *, run_dir: Path, log_dir: Path,
                nvram: str | None) -> Confinement | None:
        """Check every path against the path policy and the other VMs' grants, then
        choose the uid, make the cgroup and grant every file QEMU opens by path.  None
        when confinement is off (or impossible for this domain: logged).  Nothing is
        chowned or given an ACL before every check passed."""
        if not self.enabled:
            return None
        reason = unconfined_reason(domain)
        if reason is not None:
            log.warning("%s runs unconfined: %s", domain.name, reason)
            return None
        wanted = self._wanted(domain)
        root = str(self.paths.root)
        with self._choosing:
            busy = uids_in_use() | set(self._active.values())
            uid = pick_uid(root, domain.uuid, lambda u: u in busy or _known_user(u))
            self._active[domain.uuid] = uid
        conf = Confinement(domain.uuid, uid, uid, _groups(caps), self.journal(domain.uuid),
                           sandbox=caps.sandbox, name=domain.name)
        self._attach(conf)
        with self._granting:  # the check and the journalled grants, one start at a time
            try:
                conf.refuse_shared((real, access) for _given, real, access in wanted
                                   if access in ("own", "read"))
            except BaseException:
                self._forget(conf)
                raise
            conf.save()  # before the cgroup exists: a crash right after still finds it
            try:
                conf.cgroup = self._make_cgroup(domain, caps, root)
            except VirtkitError as exc:
                if self.cgroup_required:
                    self.release(conf)
                    raise HostError(f"cannot confine {domain.name}: no cgroup for its QEMU "
                                    f"({exc})", fix="run virtkitd where the cgroup file "
                                    "systems are mounted and writable, or start it with "
                                    "--no-cgroup to run QEMUs without one") from exc
                conf.notes.append(f"NO CGROUP (--no-cgroup): {exc}")
                log.warning("%s starts WITHOUT a cgroup (--no-cgroup): %s", domain.name, exc)
            if conf.cgroup is not None:
                conf.notes += conf.cgroup.notes
            try:
                for _given, real, access in wanted:
                    if access == "new":
                        _touch(real)  # a log file QEMU appends to, made by root first
                # one grant, so one journal write (an fsync each) for the whole start: the
                # run folder (journals the cgroup too), the user's paths, QEMU's own files
                conf.grant([(str(run_dir), "own"),
                            *((given, "own" if access == "new" else access)
                              for given, _real, access in wanted),
                            *_launch_files(domain, caps, log_dir, nvram)])
            except BaseException:
                self.release(conf)
                raise
        return conf

    def _wanted(self, domain: Domain) -> list[tuple[str, str, str]]:
        """(path as named, real path, access) of every user path QEMU opens, after the
        path policy, in the order granted; ``new``: a file to create first.  Raises on
        a refusal."""
        wanted: list[tuple[str, str, str]] = []
        shares = {f"filesystems[{i}].source": fs for i, fs in enumerate(domain.filesystems)}
        for item, real in preflight.check_paths(domain, self.policy, remote=False):
            if item.kind == "socket":
                continue  # bound by the daemon, handed over as a descriptor
            if item.kind == "dir":
                if shares[item.field].driver == "9p":
                    wanted.append((item.path, real, item.access))
                continue
            wanted.append((item.path, real, "new" if item.kind == "new" else item.access))
        return wanted

    def _attach(self, conf: Confinement) -> None:
        conf.policy = self.policy
        conf.lock = self._granting
        conf.others = lambda: self.held_by_others(conf.uuid)

    def _forget(self, conf: Confinement) -> None:
        if self._active.get(conf.uuid) == conf.uid:
            del self._active[conf.uuid]

    def held_by_others(self, uuid: str) -> dict[str, list[tuple[str, str]]]:
        """What the other VMs' journals hold: {path: [(vm, kind)]} (files only)."""
        held: dict[str, list[tuple[str, str]]] = {}
        if not self.journals.is_dir():
            return held
        for journal in self.journals.glob("*.json"):
            if journal.stem == uuid:
                continue
            try:
                other = Confinement.load(journal)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for grant in other.grants:
                if grant.kind in ("own", "read"):
                    held.setdefault(grant.path, []).append((other.name or other.uuid,
                                                            grant.kind))
        return held

    def _make_cgroup(self, domain: Domain, caps: HostCaps, root: str) -> cgroups.Cgroup:
        devices = list(cgroups.BASE_DEVICES)
        for disk in domain.disks:
            rule = cgroups.block_device_rule(disk.path) if disk.path else None
            if rule is not None:
                devices.append(rule)
        limits = cgroups.Limits(memory_bytes=cgroups.memory_limit(
            domain.memory.max or domain.memory.current, caps.accel == "tcg"),
                                pids_max=4096, cpu_weight=100, devices=tuple(devices))
        return cgroups.Cgroup.create(cgroup_name(root, domain.uuid), limits, self.cgroup_root)

    def release(self, conf: Confinement | None) -> None:
        """Take everything back from a QEMU that has ended (or never started)."""
        if conf is None:
            return
        conf.release_all()
        self._forget(conf)

    def adopt(self, uuid: str) -> Confinement | None:
        """The confinement of a QEMU an earlier daemon started (from its journal)."""
        journal = self.journal(uuid)
        if not journal.exists():
            return None
        try:
            conf = Confinement.load(journal)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read %s: %s", journal, exc)
            return None
        self._active[uuid] = conf.uid
        self._attach(conf)
        return conf

    def reconcile(self, alive: set[str]) -> list[str]:
        """Restore what was granted to QEMUs that ended while no daemon watched."""
        notes: list[str] = []
        if not self.journals.is_dir():
            return notes
        for journal in sorted(self.journals.glob("*.json")):
            uuid = journal.stem
            if uuid in alive:
                continue
            try:
                conf = Confinement.load(journal)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                notes.append(f"{journal.name}: unreadable ({exc}); removed")
                journal.unlink(missing_ok=True)
                continue
            conf.release_all()
            self._remove_group(uuid)
            notes.append(f"{uuid}: restored {len(conf.grants) or 'the'} files of uid "
                         f"{conf.uid}")
        return notes


    def _remove_group(self, uuid: str) -> None:
        """The group's folders by their computed name (a crash may have come between
        making the group and journalling it)."""
        version = cgroups.cgroup_version(self.cgroup_root)
        if version is None:
            return
        name = cgroup_name(str(self.paths.root), uuid)
        cgroups.remove_paths(str(p) for p in
                             cgroups.group_dirs(self.cgroup_root, version, name).values())


def _groups(caps: HostCaps) -> list[int]:
    """Supplementary groups: only what opens /dev/kvm, and only when KVM is used."""
    if caps.accel != "kvm":
        return []
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return []
    return [] if st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IWOTH else [st.st_gid]


def _launch_files(domain: Domain, caps: HostCaps, log_dir: Path,
                  nvram: str | None) -> list[tuple[str, str]]:
    """Every other file QEMU opens by path, with what it needs of it."""
    files: list[tuple[str, str]] = []
    if domain.boot.kernel:
        files.append((domain.boot.kernel, "read"))
    if domain.boot.initrd:
        files.append((domain.boot.initrd, "read"))
    if nvram is not None:
        files.append((nvram, "own"))
        if caps.ovmf_code:
            files.append((caps.ovmf_code, "read"))
    for index, serial in enumerate(domain.serials):
        if serial.log and not serial.log_path:  # user-named logs are in Confiner._wanted
            files.append((_touch(str(log_dir / f"serial{index}.log")), "own"))
    return files


def _touch(path: str) -> str:
    """Create a file QEMU appends to (as root, so it can then be handed over)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o600)
    os.close(fd)
    return path
