"""The one path policy for every host file or folder a guest is given.

A disk, CD medium, kernel, initrd, backing file, serial or parallel log file, shared
folder or channel socket names a host path.  A confined QEMU is *granted* what it names
(runtime/ownership.py: a chown or an ACL entry), so naming a path is asking the daemon,
which runs as root, to hand that file to a guest.  Every such path passes this policy
first -- at define, at every start (files change between the two) and before any grant
is applied.  The rules, each with its reason (docs/security.md §7):

1. **Symbolic links are resolved first**: the rules apply to the real path, so a link in
   a pool folder to ``/etc/passwd`` is ``/etc/passwd``.
2. **File type**: where a file is expected, only a regular file or a block device; never
   a FIFO (opening it blocks), a socket, or a character device (``/dev/null`` chowned to a
   VM breaks the host).  A folder only for a shared folder.  A block device that is
   mounted on the host is refused (the guest would write under a live file system).
3. **Never the daemon's own state** (``<root>``: its database, TLS keys, run folders,
   journals, other VMs' NVRAM), except its image folders (pool targets) and the
   installer cache it makes itself.  A shared folder may not contain the state root.
4. **Never system trees**: ``/etc``, ``/boot``, ``/proc``, ``/sys``, ``/run``, ``/dev``
   (block devices excepted), ``/usr``, ``/bin``, ``/sbin``, ``/lib*``, ``/var/lib``
   (other services' state; ``/var/lib/libvirt/images`` and ``/var/lib/libvirt/boot``
   are allowed, for people coming from libvirt), ``/var/log``, ``/var/spool``,
   ``/var/cache``, ``/var/mail``, ``/var/backups``, and any ``.ssh`` or ``.gnupg``
   folder.  A shared folder may not contain one (sharing ``/`` or ``/var`` is refused).
5. **Remote callers** (a token over TLS, a web console session) may name pool volumes
   only -- files inside a pool's folder, or ``pool``/``volume`` disks (Proxmox's API
   does the same) -- and files in the administrator's allowed folders; local callers
   (the unix socket: root and the ``virtkit`` group) may name other paths that pass 1-4.

An administrator allows a folder with ``virtkitd --allow-path DIR`` (repeatable) or one
absolute path per line in ``<root>/allowed-paths``: rule 4 does not refuse it and remote
callers may name files in it.  Rules 1-3 always hold.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import Forbidden, InvalidSpec

#: system trees no guest is given anything from (rule 4)
SYSTEM_TREES = (
    "/etc", "/boot", "/proc", "/sys", "/run", "/var/run", "/dev", "/usr", "/bin", "/sbin",
    "/lib", "/lib32", "/lib64", "/libx32", "/var/lib", "/var/log", "/var/spool",
    "/var/cache", "/var/mail", "/var/backups", "/root/.ssh",
)
#: folders inside SYSTEM_TREES that are allowed by default
DEFAULT_ALLOWED = ("/var/lib/libvirt/images", "/var/lib/libvirt/boot")
#: a path with one of these components is refused anywhere (keys, credentials)
SECRET_COMPONENTS = (".ssh", ".gnupg")
#: the file in the state root where an administrator lists allowed directories
ALLOWED_FILE = "allowed-paths"

#: "file": a file QEMU opens (regular file or block device); "dir": a shared folder;
#: "new": a file the daemon creates if missing (a serial log); "socket": a unix socket
#: the daemon binds (a channel) -- for the last two the folder is what is checked
KINDS = ("file", "dir", "new", "socket")

_remote: contextvars.ContextVar[bool] = contextvars.ContextVar("virtkit_remote_caller",
                                                                default=False)
_pool_admin: contextvars.ContextVar[bool] = contextvars.ContextVar("virtkit_remote_pool_admin",
                                                                  default=False)


def remote_caller() -> bool:
    """True while serving a request that came over the network (TLS, web session)."""
    return _remote.get()


def remote_may_define_pools() -> bool:
    """True while serving a remote caller who may define pools: a web console session
    of a local administrator account (root or the virtkit group, logged in through
    PAM), as virt-manager's users can; never an API token."""
    return _pool_admin.get()


@contextlib.contextmanager
def as_remote_caller(remote: bool = True, *, may_define_pools: bool = False) -> Iterator[None]:
    """Mark the current request (its task, and the threads it starts) as remote;
    ``may_define_pools`` for a web console administrator's session."""
    token = _remote.set(remote)
    admin = _pool_admin.set(may_define_pools)
    try:
        yield
    finally:
        _pool_admin.reset(admin)
        _remote.reset(token)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def mounted_devices(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """``MAJ:MIN`` of every block device mounted in this mount namespace."""
    found: set[str] = set()
    with contextlib.suppress(OSError), open(mountinfo) as handle:
        for line in handle:
            parts = line.split()
            if len(parts) > 2:
                found.add(parts[2])
    return found


def read_allowed_file(path: Path) -> list[str]:
    """The administrator's list: one absolute path per line, ``#`` comments."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if not line.startswith("/"):
                raise InvalidSpec(f"{path}: {line!r} is not an absolute path",
                                  fix="list one absolute folder per line")
            found.append(line)
    return found


@dataclass
class PathPolicy:
    """The policy of one daemon: its state root, its pools, the administrator's list."""

    state_root: str
    allowed: tuple[str, ...] = ()
    #: the folders of the defined pools (dir and iso pools), asked at every check
    pool_dirs: Callable[[], Iterable[str]] = field(default=lambda: ())
    #: folders below the state root the daemon fills itself (installer media)
    own_dirs: tuple[str, ...] = ()
    mountinfo: str = "/proc/self/mountinfo"

    def __post_init__(self) -> None:
        self.state_root = os.path.realpath(self.state_root)
        self.allowed = tuple(os.path.realpath(p) for p in self.allowed)
        self.own_dirs = tuple(os.path.realpath(p) for p in self.own_dirs)

    @classmethod
    def for_root(cls, root: str | Path, *, allowed: Iterable[str] = (),
                 pool_dirs: Callable[[], Iterable[str]] | None = None) -> PathPolicy:
        """The policy of the daemon at ``root``: ``allowed`` plus ``<root>/allowed-paths``."""
        extra = read_allowed_file(Path(root) / ALLOWED_FILE)
        return cls(str(root), tuple([*allowed, *extra]),
                   pool_dirs or (lambda: [str(Path(root) / "images")]),
                   own_dirs=(str(Path(root) / "cache" / "install"),))

    def pools(self) -> list[str]:
        return [os.path.realpath(p) for p in self.pool_dirs()]

    # -- the checks ------------------------------------------------------------------

    def check(self, path: str, *, field: str, kind: str = "file",
              remote: bool | None = None) -> str:
        """The real path of ``path`` if a guest may be given it; else InvalidSpec (rules
        1-4) or Forbidden (rule 5) naming the path, the rule and the fix.  A missing
        file passes (the caller reports it in its own words)."""
        if kind not in KINDS:
            raise ValueError(f"unknown path kind {kind!r}")
        if not path.startswith("/"):
            raise InvalidSpec(f"{field}: {path!r} is not an absolute path", field=field,
                              fix="give the full path, starting with /")
        real = os.path.realpath(path)
        shown = path if real == path else f"{path} (a link to {real})"
        try:
            st: os.stat_result | None = os.stat(real)
        except OSError:
            st = None
        self._check_type(real, st, shown, field, kind)
        self._check_place(real, shown, field, kind,
                          block=st is not None and stat.S_ISBLK(st.st_mode))
        if remote_caller() if remote is None else remote:
            self._check_remote(real, shown, field)
        return real

    def _check_type(self, real: str, st: os.stat_result | None, shown: str, field: str,
                    kind: str) -> None:
        if st is None:
            return
        mode = st.st_mode
        if kind == "dir":
            if not stat.S_ISDIR(mode):
                raise InvalidSpec(f"{field}: {shown} is not a folder", field=field,
                                  fix="share an existing folder")
            return
        if kind in ("new", "socket"):
            if kind == "new" and not stat.S_ISREG(mode):
                raise InvalidSpec(f"{field}: {shown} exists and is not a regular file "
                                  f"({_type_name(mode)})", field=field,
                                  fix="name a new file, or a regular file to append to")
            return
        if stat.S_ISDIR(mode):
            raise InvalidSpec(f"{field}: {shown} is a folder, not a file", field=field,
                              fix="name the image file itself")
        if stat.S_ISBLK(mode):
            dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            if dev in mounted_devices(self.mountinfo):
                raise InvalidSpec(f"{field}: block device {shown} is mounted on the host",
                                  field=field, fix="unmount it first, or use another device")
            return
        if not stat.S_ISREG(mode):
            raise InvalidSpec(
                f"{field}: {shown} is a {_type_name(mode)}; a guest is given only regular "
                "files and block devices", field=field,
                fix="name an image file or a block device")

    def _check_place(self, real: str, shown: str, field: str, kind: str, *,
                     block: bool) -> None:
        place = real if kind in ("file", "dir") else os.path.dirname(real)
        pools = self.pools()
        if _inside(place, self.state_root) and not any(
                _inside(place, d) for d in (*pools, *self.own_dirs)):
            raise InvalidSpec(
                f"{field}: {shown} is inside the daemon's state folder {self.state_root}; "
                "a guest is never given the daemon's own files (database, keys, other "
                "VMs' state)", field=field,
                fix="use a volume of a storage pool (virtkit vol-list default)")
        secret = next((c for c in SECRET_COMPONENTS if c in real.split("/")), None)
        if secret is not None:
            raise InvalidSpec(f"{field}: {shown} is inside a {secret} folder (keys)",
                              field=field, fix="copy the file somewhere else first")
        allowed = any(_inside(place, d) for d in (*DEFAULT_ALLOWED, *self.allowed, *pools))
        tree = next((t for t in SYSTEM_TREES if _inside(place, t)), None)
        if tree is not None and not allowed and not (block and tree == "/dev"):
            raise InvalidSpec(
                f"{field}: {shown} is in the system tree {tree}; a guest is never given "
                "system files", field=field,
                fix="copy the file into a storage pool, or have the administrator allow "
                    "the folder (virtkitd --allow-path DIR; docs/security.md)")
        if kind == "dir":  # the state root always counts; system trees unless allowed
            inner = [t for t in (self.state_root, *([] if allowed else SYSTEM_TREES))
                     if _inside(t, real)]
            if inner:
                raise InvalidSpec(
                    f"{field}: sharing {shown} would give the guest {inner[0]}", field=field,
                    fix="share a folder that holds only what the guest should see")

    def _check_remote(self, real: str, shown: str, field: str) -> None:
        if any(_inside(real, d) and real != d for d in (*self.pools(), *self.allowed)):
            return
        raise Forbidden(
            f"{field}: {shown} is not a volume of a storage pool; remote callers may name "
            "pool volumes only (and files in folders the administrator allowed with "
            "--allow-path)", field=field,
            fix="upload the file as a volume (virtkit vol-upload) and name the pool and "
                "volume, or define this on the daemon's host")

    def check_pool_target(self, target: str, *, remote: bool | None = None,
                          folder: bool = True) -> str:
        """A dir/iso pool's folder (``folder``; a logical pool's is a volume group): its
        files become volumes any caller may name, so it follows the rules of a shared
        folder; remote callers do not define pools."""
        if (remote_caller() if remote is None else remote) and not remote_may_define_pools():
            raise Forbidden("storage pools are defined only on the daemon's host (their "
                            "folders decide what remote callers may name)", field="target",
                            fix="define the pool there, or over virtkit+ssh://")
        if not folder:
            return target
        real = os.path.realpath(target)
        if any(_inside(real, d) for d in (*self.pools(), *self.allowed)):
            return real
        if _inside(real, self.state_root):
            raise InvalidSpec(f"target: {target} is inside the daemon's state folder",
                              field="target", fix="use a folder outside it")
        self._check_place(real, target, "target", "dir", block=False)
        return real


def _type_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"
