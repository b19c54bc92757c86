"""Dynamic ownership: hand a confined QEMU the files it opens itself, and take them back.

A confined QEMU runs as a per-VM uid/gid (runtime/confine.py), so every file it opens by
path must be reachable by that uid for the VM's life, and no longer:

- ``own``: a file QEMU writes (a writable disk image, the NVRAM variables, a serial log)
  is chowned to the VM's uid:gid with mode 0600, so no other VM's uid can read it.  The
  original owner and mode are remembered twice: in the grant record (the per-VM journal,
  so a daemon killed with ``-9`` restores them on reconcile) and in the file's own
  ``trusted.virtkit.dac`` xattr, written only by the *first* grant.  Release restores
  them only while the file is still owned by this VM's uid: when a migration's
  destination (another VM uid) took the file over, the source leaves it alone and the
  destination's release restores the true original from the xattr (libvirt's
  "remember owner" xattrs do the same).
- ``read``: a file QEMU only reads and that may be shared (ISOs, backing files of linked
  clones, kernels): a POSIX ACL entry ``user:<uid>:r--`` is added, never a chown, so
  several VMs can read it at once and each release removes only its own entry.
- ``exec``: every folder on the way to a granted file that "others" cannot traverse gets
  ``user:<uid>:--x``.
- ``rwx``: a folder QEMU creates files in (a 9p share).

Every change (chown, chmod, ACL, xattr, and their restore) acts through a descriptor,
never through a path that could be re-resolved: :func:`pinned` opens the grant's real
path one component at a time with ``O_PATH|O_NOFOLLOW`` (a symbolic link anywhere on
the way is refused, not followed), then checks the descriptor with ``fstat``: the file
type the grant allows (a regular file, block device or folder; never a FIFO, socket or
character device), and the same ``st_dev``/``st_ino`` the grant was planned on (at
start, right after the path policy passed).  A link or another file swapped in between
the check and the change is refused and nothing is changed (docs/security.md §7).

ACLs are written as the kernel's ``system.posix_acl_access`` xattr directly (the format
is a small fixed binary layout), so no ``setfacl`` is needed.  When the last named entry
goes, the xattr is removed and the mode's group bits are set back from the ACL's group
entry, so the file ends exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.errors import HostError

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
OWNER_XATTR = "trusted.virtkit.dac"
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1

KINDS = ("own", "read", "exec", "rx", "rwx")
#: host-wide lock so two daemons never interleave a read-modify-write of one ACL
LOCK_FILE = "/run/virtkit-ownership.lock"
_thread_lock = threading.Lock()


@dataclass(frozen=True, order=True)
class AclEntry:
    """One entry of a POSIX access ACL: tag, id (only for USER/GROUP), permission bits."""

    tag: int
    id: int
    perm: int


def decode_acl(raw: bytes) -> list[AclEntry]:
    """Parse the ``system.posix_acl_access`` xattr value."""
    if len(raw) < 4 or (len(raw) - 4) % 8:
        raise ValueError(f"malformed POSIX ACL ({len(raw)} bytes)")
    (version,) = struct.unpack_from("<I", raw)
    if version != ACL_VERSION:
        raise ValueError(f"unknown POSIX ACL version {version}")
    entries = []
    for offset in range(4, len(raw), 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
        entries.append(AclEntry(tag, ident, perm))
    return entries


def encode_acl(entries: Iterable[AclEntry]) -> bytes:
    """The xattr value for ``entries`` (the kernel wants them sorted by tag, then id)."""
    ordered = sorted(entries, key=lambda e: (e.tag, e.id))
    return struct.pack("<I", ACL_VERSION) + b"".join(
        struct.pack("<HHI", e.tag, e.perm, e.id) for e in ordered)


def acl_from_mode(mode: int) -> list[AclEntry]:
    """The minimal ACL a file without an ACL xattr has: owner, group, other."""
    return [AclEntry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7),
            AclEntry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
            AclEntry(OTHER, UNDEFINED_ID, mode & 7)]


def _named(entries: Iterable[AclEntry]) -> list[AclEntry]:
    return [e for e in entries if e.tag in (USER, GROUP)]


def with_user(entries: list[AclEntry], uid: int, perm: int) -> list[AclEntry]:
    """``entries`` with ``user:<uid>`` holding at least ``perm``; the mask is recomputed
    as the union of the group class (as ``setfacl`` does)."""
    current = next((e.perm for e in entries if e.tag == USER and e.id == uid), 0)
    kept = [e for e in entries if e.tag != MASK and not (e.tag == USER and e.id == uid)]
    kept.append(AclEntry(USER, uid, current | perm))
    return _with_mask(kept)


def without_user(entries: list[AclEntry], uid: int) -> list[AclEntry]:
    """``entries`` without ``user:<uid>``; the mask goes when no named entry is left."""
    kept = [e for e in entries if e.tag != MASK and not (e.tag == USER and e.id == uid)]
    return _with_mask(kept) if _named(kept) else kept


def _with_mask(entries: list[AclEntry]) -> list[AclEntry]:
    group_class = [e.perm for e in entries if e.tag in (USER, GROUP, GROUP_OBJ)]
    mask = 0
    for perm in group_class:
        mask |= perm
    return [*entries, AclEntry(MASK, UNDEFINED_ID, mask)]


def mode_after_acl_removal(mode: int, entries: list[AclEntry]) -> int:
    """The permission bits a file should have once its (minimal) ACL xattr is dropped:
    the group bits come from the group entry again, not from the mask."""
    group = next(e.perm for e in entries if e.tag == GROUP_OBJ)
    return (mode & 0o7707) | (group << 3)


@contextlib.contextmanager
def _acl_lock() -> Iterator[None]:
    """Serialise ACL edits in this process and against other virtkit daemons."""
    with _thread_lock:
        try:
            handle = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)


def read_acl(path: str) -> list[AclEntry]:
    try:
        return decode_acl(os.getxattr(path, ACL_XATTR, follow_symlinks=True))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        return acl_from_mode(os.stat(path).st_mode)


def write_acl(path: str, entries: list[AclEntry]) -> None:
    """Store ``entries``; a minimal ACL removes the xattr and restores the group bits."""
    if _named(entries):
        os.setxattr(path, ACL_XATTR, encode_acl(entries))
        return
    with contextlib.suppress(OSError):
        os.removexattr(path, ACL_XATTR)
    mode = os.stat(path).st_mode
    wanted = mode_after_acl_removal(stat.S_IMODE(mode), entries)
    if wanted != stat.S_IMODE(mode):
        os.chmod(path, wanted)


@dataclass
class Grant:
    """One file or folder handed to a VM uid: what was done and what to restore."""

    path: str
    kind: str
    uid: int
    gid: int
    #: ``own`` only: the owner uid, gid and mode before the grant
    original: tuple[int, int, int] | None = None
    #: (st_dev, st_ino) of the file the grant was planned on; apply and release act
    #: only on that file (None: a grant journalled before this was recorded)
    identity: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "uid": self.uid, "gid": self.gid,
                "original": list(self.original) if self.original else None,
                "identity": list(self.identity) if self.identity else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grant:
        original = data.get("original")
        identity = data.get("identity")
        return cls(str(data["path"]), str(data["kind"]), int(data["uid"]), int(data["gid"]),
                   (int(original[0]), int(original[1]), int(original[2]))
                   if original else None,
                   (int(identity[0]), int(identity[1])) if identity else None)


class PathChanged(HostError):
    """The file a grant names is not the one that was checked (a link or another file
    was put in its place): nothing was changed."""


#: called with each grant after its file was checked and before it is changed (tests
#: swap a link in here, as an attacker racing the daemon would)
before_change: Callable[[Grant], None] | None = None

#: folder kinds: only a folder may be changed for them
_FOLDER_KINDS = ("exec", "rx", "rwx")


def open_nofollow(path: str) -> int:
    """An ``O_PATH`` descriptor of absolute ``path``, reached one component at a time
    without following any symbolic link (OSError ``ENOTDIR``/``ELOOP`` on one)."""
    parts = [part for part in path.split("/") if part and part != "."]
    if not path.startswith("/") or ".." in parts:
        raise OSError(errno.EINVAL, "not an absolute, normalised path", path)
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            if index < len(parts) - 1:
                flags |= os.O_DIRECTORY
            following = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = following
        return fd
    except BaseException:
        os.close(fd)
        raise


def _target(grant: Grant) -> str:
    # folder traversal grants may name a folder through a link (the name QEMU is given);
    # the link is resolved here and the folder checked by type below
    return os.path.realpath(grant.path) if grant.kind in _FOLDER_KINDS else grant.path


def _verify(grant: Grant, st: os.stat_result) -> None:
    mode = st.st_mode
    shown = grant.path
    if stat.S_ISLNK(mode):
        raise PathChanged(f"{shown} is a symbolic link now; it was checked as a file, so "
                          "nothing was changed", path=shown)
    if grant.kind in _FOLDER_KINDS:
        fits = stat.S_ISDIR(mode)
    else:
        fits = stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode)
    if not fits:
        raise PathChanged(f"{shown} is not a regular file, block device or folder now "
                          f"(mode {mode:o}); nothing was changed", path=shown)
    if grant.identity is not None and (st.st_dev, st.st_ino) != grant.identity:
        raise PathChanged(f"{shown} was replaced by another file after it was checked; "
                          "nothing was changed", path=shown,
                          fix="start the VM again once nobody renames files there")


@contextlib.contextmanager
def pinned(grant: Grant, *, check: bool = True) -> Iterator[str]:
    """A path (``/proc/self/fd/N``) that reaches exactly the grant's file: opened with
    ``O_PATH|O_NOFOLLOW`` at every component and checked with ``fstat`` (type, and the
    identity it was planned on).  Every change goes through it."""
    target = _target(grant)
    try:
        fd = open_nofollow(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EINVAL):
            raise PathChanged(f"{grant.path} is reached through a symbolic link now; it "
                              "was checked without one, so nothing was changed",
                              path=grant.path) from exc
        raise
    try:
        st = os.fstat(fd)
        handle = f"/proc/self/fd/{fd}"
        if check:
            _verify(grant, st)
            # where the descriptor really is: the place the path policy judged (a folder
            # on the way renamed after the walk would show here)
            if os.readlink(handle) != target:
                raise PathChanged(f"{grant.path} was moved while it was being changed; "
                                  "nothing was changed", path=grant.path)
        yield handle
    finally:
        os.close(fd)


PERMS = {"read": R, "exec": X, "rx": R | X, "rwx": R | W | X}


def plan(path: str, uid: int, gid: int, kind: str) -> Grant:
    """The grant for ``path``; an ``own`` grant remembers the owner it finds now."""
    if kind not in KINDS:
        raise ValueError(f"unknown grant kind {kind!r}")
    original = None
    grant = Grant(path, kind, uid, gid)
    with pinned(grant, check=False) as handle:
        st = os.stat(handle)
        grant.identity = (st.st_dev, st.st_ino)
        _verify(grant, st)
        if kind == "own":
            original = _remembered(handle) or (st.st_uid, st.st_gid,
                                               stat.S_IMODE(st.st_mode))
    grant.original = original
    return grant


def apply(grant: Grant) -> None:
    """Do what ``grant`` says (idempotent), through a checked descriptor; PathChanged
    (nothing changed) when its file is no longer the one planned on."""
    try:
        with pinned(grant) as handle:
            if before_change is not None:
                before_change(grant)
            if grant.kind == "own":
                _apply_own(grant, handle)
            else:
                with _acl_lock():
                    entries = read_acl(handle)
                    write_acl(handle, with_user(entries, grant.uid, PERMS[grant.kind]))
    except PathChanged:
        raise
    except OSError as exc:
        raise HostError(f"cannot grant the VM's uid {grant.uid} access to {grant.path}: "
                        f"{exc.strerror}", path=grant.path,
                        fix="the file system must support chown and POSIX ACLs "
                        "(ext4, xfs, tmpfs), or run virtkitd with --no-confine") from exc


def _apply_own(grant: Grant, handle: str) -> None:
    assert grant.original is not None
    if _remembered(handle) is None:
        with contextlib.suppress(OSError):  # a file system without trusted xattrs
            os.setxattr(handle, OWNER_XATTR, json.dumps(list(grant.original)).encode())
    os.chown(handle, grant.uid, grant.gid)
    os.chmod(handle, 0o700 if stat.S_ISDIR(os.stat(handle).st_mode) else 0o600)


def _remembered(path: str) -> tuple[int, int, int] | None:
    try:
        uid, gid, mode = json.loads(os.getxattr(path, OWNER_XATTR))
        return int(uid), int(gid), int(mode)
    except (OSError, ValueError, TypeError):
        return None


def release(grant: Grant) -> None:
    """Undo ``grant`` through a checked descriptor; a file gone, taken over by another
    VM, or replaced (a link or another file in its place) is left as it is."""
    try:
        with pinned(grant) as handle:
            if before_change is not None:
                before_change(grant)
            if grant.kind == "own":
                _release_own(grant, handle)
            else:
                with _acl_lock():
                    entries = read_acl(handle)
                    if any(e.tag == USER and e.id == grant.uid for e in entries):
                        write_acl(handle, without_user(entries, grant.uid))
    except FileNotFoundError:
        return
    except PathChanged as exc:
        log.warning("not restoring %s after uid %d: %s", grant.path, grant.uid, exc)
    except OSError as exc:
        log.warning("cannot restore %s after uid %d: %s", grant.path, grant.uid, exc)


def _release_own(grant: Grant, handle: str) -> None:
    st = os.stat(handle)
    if st.st_uid != grant.uid:
        return  # restored already, or another VM (a migration's destination) holds it
    original = _remembered(handle) or grant.original
    assert original is not None
    os.chown(handle, original[0], original[1])
    os.chmod(handle, original[2])
    with contextlib.suppress(OSError):
        os.removexattr(handle, OWNER_XATTR)


def traverse_grants(path: str, uid: int, gid: int) -> list[Grant]:
    """``exec`` grants for the folders above ``path`` that ``uid`` could not traverse."""
    grants = []
    parent = Path(os.path.abspath(path)).parent
    for folder in [*reversed(parent.parents), parent]:
        try:
            st = os.stat(folder)
        except OSError:
            break
        if st.st_mode & stat.S_IXOTH or st.st_uid == uid:
            continue
        grants.append(Grant(str(folder), "exec", uid, gid))
    return grants


def needs_read_grant(path: str, uid: int) -> bool:
    """False when "others" may already read ``path`` (a system file: leave it alone)."""
    st = os.stat(path)
    return not (st.st_mode & stat.S_IROTH) and st.st_uid != uid
