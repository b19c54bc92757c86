"""rbd pools: a Ceph pool that QEMU reaches itself through librbd (qemu-block-extra).

Volumes are rbd images of that pool; their "path" is an
``rbd://[USER@]MON[:PORT][,MON...]/POOL/IMAGE`` URL (model/netdisk.py), which QEMU
opens as an ``rbd`` blockdev (qemu/argv.py) and qemu-img as ``json:`` options
(storage/qemuimg.py).  Everything else goes through Ceph's own ``rbd`` command
(ceph-common), run here with the pool's monitors and user on its command line, so a
host needs no ceph.conf (one in /etc/ceph is read when present: keyring paths, for
example) and no kernel rbd module (this one has none).

What differs from a dir pool, on purpose:

- **Volumes are raw.**  An rbd image is a block device; qcow2 on top of it would hide
  rbd's own thin provisioning, snapshots and clones.  A qcow2 create or clone is
  refused, an import converts to raw.
- **Linked clones are rbd clones**: a snapshot ``vk-clone-NAME`` of the source,
  protected, and ``rbd clone`` of it (copy-on-write in Ceph).  Deleting the clone
  removes that snapshot again when nothing else uses it.  A full clone is ``rbd cp``.
- **Writes are staged** under ``.NAME.partial`` and renamed when complete (import,
  full clone), as dir pools do.
- **Shared**: every host that defines the pool (same monitors, same Ceph pool) sees
  the same images, so a live migration copies none of them, and librbd's exclusive
  lock plus Ceph's blocklist fence a host that lost its VM (storage/rbdfence.py).
- No streamed upload/download (the service refuses them, naming vol-import), no
  preallocation (Ceph allocates on write), no backing volumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound, VirtkitError
from virtkit.model.netdisk import RbdRef
from virtkit.model.pool import Pool
from virtkit.storage import qemuimg
from virtkit.storage.base import (
    PoolCapacity,
    Progress,
    VolumeInfo,
    checked_volume_name,
    refuse_while_holding,
)

PARTIAL_SUFFIX = ".partial"
CLONE_SNAPSHOT = "vk-clone-"
#: seconds any one rbd/ceph command may take (a monitor that does not answer)
TIMEOUT = 120.0
#: librados' own waits, shorter than TIMEOUT so its error is what the user sees
_CLIENT_OPTIONS = ("--client-mount-timeout", "15", "--rados-mon-op-timeout", "30",
                   "--rados-osd-op-timeout", "60", "--log-to-stderr=false",
                   "--err-to-stderr=false")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ [0-9a-f]+ +-?\d+ ")


def _tool_options(tool: str) -> tuple[str, ...]:
    """librados' timeouts for rbd and rados; the ceph command's own connect timeout."""
    return ("--connect-timeout", "15") if tool == "ceph" else _CLIENT_OPTIONS


def _conf() -> list[str]:
    """Read the host's ceph.conf when there is one; otherwise tell Ceph not to look
    (it would print a warning to stderr on every command)."""
    return [] if os.path.exists("/etc/ceph/ceph.conf") else ["--conf", "/dev/null"]


def client_args(ref: RbdRef) -> list[str]:
    """The connection options of the ``rbd``/``ceph`` commands for ``ref``'s cluster:
    its monitors, and its cephx user or no authentication."""
    monitors = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in ref.monitors)
    args = [*_conf(), "--mon-host", monitors]
    args += ["--id", ref.user] if ref.user else ["--auth-client-required", "none"]
    return args


def _message(stderr: str) -> str:
    """The line of an rbd/ceph command's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not _LOG_LINE.match(line)]
    return lines[-1] if lines else "no error message"


def run(tool: str, ref: RbdRef, *args: str, what: str,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``rbd`` or ``ceph`` against ``ref``'s cluster; errors become VirtkitErrors
    naming ``what`` and Ceph's own message (ENOENT: NotFound, EEXIST/EBUSY: Conflict)."""
    argv = [tool, *client_args(ref), *_tool_options(tool), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise HostError(f"the {tool} command is not installed",
                        fix="apt-get install ceph-common") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{what}: Ceph did not answer within {timeout:.0f}s (monitors "
                        f"{ref.url.split('/')[2]})",
                        fix="check that the monitors are up and reachable from this "
                            "host") from None
    if done.returncode != 0:
        message = _message(done.stderr)
        if "(2) No such file" in message or "ENOENT" in message:
            raise NotFound(f"{what}: {message}")
        if "(17) File exists" in message or "(16) Device or resource busy" in message \
                or "still has watchers" in message or "has snapshots" in message:
            raise Conflict(f"{what}: {message}")
        if "(110)" in message or "timed out" in message:
            raise HostError(f"{what}: Ceph did not answer ({message})",
                            fix="check that the monitors are up and reachable")
        raise HostError(f"{what}: {message}")
    return done


def run_json(tool: str, ref: RbdRef, *args: str, what: str) -> Any:
    done = run(tool, ref, *args, "--format", "json", what=what)
    try:
        return json.loads(done.stdout or "null")
    except json.JSONDecodeError:
        raise HostError(f"{what}: {tool} printed no JSON: {done.stdout[:200]!r}") from None


class RbdPool:
    """A :class:`~virtkit.storage.base.PoolBackend` over one Ceph pool."""

    shared = True

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.ref = pool.rbd_source()
        self.cpool = self.ref.pool

    def _spec(self, name: str) -> str:
        return f"{self.cpool}/{name}"

    def _rbd(self, *args: str, what: str) -> subprocess.CompletedProcess[str]:
        return run("rbd", self.ref, *args, what=what)

    # --- the pool ---------------------------------------------------------------------

    def build(self) -> None:
        """Nothing to create: the Ceph pool is the Ceph admin's.  Checks it is there."""
        try:
            self._rbd("ls", "-p", self.cpool, what=f"pool {self.pool.name!r}")
        except NotFound:
            raise NotFound(f"pool {self.pool.name!r}: Ceph has no pool {self.cpool!r}",
                           fix=f"create it on the Ceph cluster: ceph osd pool create "
                               f"{self.cpool}; rbd pool init {self.cpool}") from None

    def exists(self) -> bool:
        try:
            self._rbd("ls", "-p", self.cpool, what=f"pool {self.pool.name!r}")
        except VirtkitError:
            return False
        return True

    def delete(self) -> None:
        """Refuses while images remain; the Ceph pool itself stays (it is Ceph's)."""
        refuse_while_holding(self.pool.name, self.list_volumes())

    def capacity(self) -> PoolCapacity:
        """The Ceph pool's space as ``rados df`` reports it (a cluster without a
        manager reports none: then the images' provisioned sizes, and 0 available)."""
        used = sum(v.capacity for v in self.list_volumes())
        try:
            stats = run_json("rados", self.ref, "df", what=f"pool {self.pool.name!r}")
        except VirtkitError:
            stats = {}
        total = int(stats.get("total_space", 0) or 0) * 1024
        avail = int(stats.get("total_avail", 0) or 0) * 1024
        if total:
            return PoolCapacity(capacity=total, allocation=total - avail, available=avail)
        return PoolCapacity(capacity=used, allocation=used, available=0)

    # --- looking at volumes -----------------------------------------------------------

    def _images(self) -> list[dict[str, Any]]:
        listed = run_json("rbd", self.ref, "ls", "-l", "-p", self.cpool,
                          what=f"pool {self.pool.name!r}")
        return [i for i in listed or [] if "snapshot" not in i]

    def list_volumes(self) -> list[VolumeInfo]:
        images = sorted((i for i in self._images() if not str(i["image"]).startswith(".")),
                        key=lambda i: str(i["image"]))
        return [self._info(str(i["image"]), int(i.get("size", 0)), i.get("parent"))
                for i in images]

    def volume(self, name: str) -> VolumeInfo:
        checked_volume_name(name)
        where = f"volume {name!r} of pool {self.pool.name!r}"
        try:
            info = run_json("rbd", self.ref, "info", self._spec(name),
                            what=where)
        except NotFound:
            raise NotFound(f"volume {name!r} not found in pool {self.pool.name!r}",
                           fix=f"virtkit vol-list {self.pool.name}") from None
        return self._info(name, int(info.get("size", 0)), info.get("parent"))

    def _info(self, name: str, size: int, parent: Any) -> VolumeInfo:
        backing = None
        if isinstance(parent, dict) and parent.get("image"):
            backing = self.ref.with_image(str(parent["image"])).url
        return VolumeInfo(name=name, path=self.ref.with_image(name).url, format="raw",
                          capacity=size, allocation=size, backing=backing)

    def volume_path(self, name: str) -> str:
        """``rbd://MONS/POOL/NAME``, after checking the name."""
        return self.ref.with_image(checked_volume_name(name)).url

    # --- writing volumes --------------------------------------------------------------

    @staticmethod
    def _raw_only(fmt: str | None, what: str) -> None:
        if fmt not in (None, "raw"):
            raise InvalidSpec(f"{what} in an rbd pool is a raw rbd image, not {fmt}: rbd "
                              "gives thin provisioning, snapshots and clones itself",
                              field="format", fix="use format raw (or leave it out)")

    def create_volume(self, name: str, capacity: int, fmt: str, *,
                      backing: VolumeInfo | None = None, prealloc: bool = False) -> VolumeInfo:
        """A new empty rbd image (raw, thin)."""
        self._raw_only(fmt, "a volume")
        if backing is not None:
            raise InvalidSpec("rbd volumes have no backing volumes", field="backing",
                              fix="make a copy-on-write rbd clone instead: vol-clone "
                                  "--linked SOURCE NAME --pool POOL")
        if prealloc:
            raise InvalidSpec("rbd images cannot be preallocated (Ceph allocates objects "
                              "as they are written)", field="prealloc",
                              fix="leave out --prealloc-metadata / allocation")
        if capacity <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
        checked_volume_name(name)
        self._rbd("create", "--size", f"{capacity}B", self._spec(name),
                  what=f"create volume {name!r} in pool {self.pool.name!r}")
        return self.volume(name)

    def delete_volume(self, name: str) -> None:
        """Remove an image (and the clone snapshot it was made from, when no other
        clone uses it).  An image a QEMU has open is refused by Ceph ("still has
        watchers"): a Conflict naming it."""
        info = self.volume(name)
        clones = self._clones_of(name)
        if clones:
            raise Conflict(f"volume {name!r} of pool {self.pool.name!r} is the base of the "
                           f"linked clone(s) {', '.join(clones)}",
                           fix="delete those clones first (or flatten them: rbd flatten)",
                           used_by=clones)
        self._rbd("rm", "--no-progress", self._spec(name),
                  what=f"delete volume {name!r} of pool {self.pool.name!r}")
        if info.backing:
            parent = info.backing.rsplit("/", 1)[1]
            snap = f"{self._spec(parent)}@{CLONE_SNAPSHOT}{name}"
            with contextlib.suppress(VirtkitError):
                self._rbd("snap", "unprotect", snap, what="unprotect clone snapshot")
            with contextlib.suppress(VirtkitError):
                self._rbd("snap", "rm", "--no-progress", snap, what="remove clone snapshot")

    def _clones_of(self, name: str) -> list[str]:
        snaps = run_json("rbd", self.ref, "snap", "ls", self._spec(name),
                         what=f"snapshots of volume {name!r}")
        return sorted(str(s["name"]).removeprefix(CLONE_SNAPSHOT) for s in snaps or []
                      if str(s.get("name", "")).startswith(CLONE_SNAPSHOT))

    def resize_volume(self, name: str, capacity: int, *, shrink: bool = False) -> VolumeInfo:
        info = self.volume(name)
        if capacity <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
        if capacity < info.capacity and not shrink:
            raise InvalidSpec(f"shrinking volume {name!r} from {info.capacity} to {capacity} "
                              "bytes would discard the data beyond the new end",
                              field="capacity",
                              fix="pass shrink (vol-resize --shrink) if the guest no longer "
                                  "uses that space")
        args = ["resize", "--no-progress", "--size", f"{capacity}B", self._spec(name)]
        if capacity < info.capacity:
            args.insert(1, "--allow-shrink")
        self._rbd(*args, what=f"resize volume {name!r} of pool {self.pool.name!r}")
        return self.volume(name)

    def wipe_volume(self, name: str) -> None:
        """Replace the image by an empty one of the same size (rbd images are thin)."""
        info = self.volume(name)
        if info.backing:
            raise InvalidSpec(f"volume {name!r} is an rbd clone and cannot be wiped in "
                              "place", fix="delete and recreate it instead")
        with self._staging(name, replace=True) as temp:
            self._rbd("create", "--size", f"{info.capacity}B", self._spec(temp),
                      what=f"wipe volume {name!r}")
            self._rbd("rm", "--no-progress", self._spec(name), what=f"wipe volume {name!r}")

    def clone_volume(self, source: str, name: str, *, linked: bool = False,
                     fmt: str | None = None, progress: Progress | None = None) -> VolumeInfo:
        """``linked``: an rbd clone (copy-on-write); otherwise a full copy (rbd cp)."""
        self._raw_only(fmt, "a clone")
        src = self.volume(source)
        checked_volume_name(name)
        if linked:
            snap = f"{self._spec(source)}@{CLONE_SNAPSHOT}{name}"
            what = f"linked clone {name!r} of {source!r}"
            self._rbd("snap", "create", "--no-progress", snap, what=what)
            try:
                self._rbd("snap", "protect", snap, what=what)
                self._rbd("clone", snap, self._spec(name), what=what)
            except BaseException:
                with contextlib.suppress(VirtkitError):
                    self._rbd("snap", "unprotect", snap, what=what)
                with contextlib.suppress(VirtkitError):
                    self._rbd("snap", "rm", "--no-progress", snap, what=what)
                raise
            return self.volume(name)
        with self._staging(name) as temp:
            self._rbd("cp", "--no-progress", self._spec(src.name), self._spec(temp),
                      what=f"copy of {source!r} into {name!r}")
        if progress is not None:
            progress(100, 100)
        return self.volume(name)

    def import_volume(self, name: str, source_path: str, fmt: str, *,
                      source_fmt: str | None = None,
                      progress: Progress | None = None) -> VolumeInfo:
        """Convert a host image (vmdk, vdi, vhdx, qcow2, raw ...) into a new raw image:
        an empty image of the source's virtual size, written by qemu-img through librbd."""
        self._raw_only(fmt, "an imported volume")
        source = qemuimg.local_source(source_path)
        src_fmt = source_fmt or qemuimg.detect_format(source)
        size = int(qemuimg.image_info(source, fmt=src_fmt)["virtual-size"])
        with self._staging(name) as temp:
            self._rbd("create", "--size", f"{max(size, 512)}B", self._spec(temp),
                      what=f"import into volume {name!r}")
            qemuimg.convert(source, src_fmt, self.ref.with_image(temp).url, "raw",
                            progress=progress, create_target=False)
        return self.volume(name)

    # --- staging ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self, name: str, *, replace: bool = False) -> Iterator[str]:
        """Yield the name of the hidden image to write for volume ``name``; rename it
        to ``name`` on success, remove it on failure.  ``replace``: ``name`` exists and
        the block removes it before the rename."""
        checked_volume_name(name)
        temp = f".{name}{PARTIAL_SUFFIX}"
        present = {str(i["image"]) for i in self._images()}
        if name in present and not replace:
            raise Conflict(f"volume {name!r} already exists in pool {self.pool.name!r}",
                           fix="choose another name or delete the volume first")
        if temp in present:
            raise Conflict(f"volume {name!r} of pool {self.pool.name!r} is being written by "
                           "another operation (or one was cut off: remove the image "
                           f"{self._spec(temp)} with rbd rm)", fix="wait for it to finish")
        try:
            yield temp
            self._rbd("rename", self._spec(temp), self._spec(name),
                      what=f"volume {name!r} of pool {self.pool.name!r}")
        except BaseException:
            with contextlib.suppress(VirtkitError):
                self._rbd("rm", "--no-progress", self._spec(temp), what="remove partial image")
            raise
