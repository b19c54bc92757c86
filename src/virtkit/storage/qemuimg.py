"""A thin wrapper over ``qemu-img`` whose JSON output is parsed, never scraped.

Every path handed to qemu-img is made absolute first, so a name such as
``nbd:host:10809`` or ``json:{...}`` is always a local file, never a protocol.
Formats are always passed explicitly (``-f``/``-F``/``-O``) except where a caller
asks for detection, because probing a raw image a guest wrote is how a guest gets
QEMU to open a file of its choosing.

Image locking: QEMU and qemu-img lock images with OFD locks.  ``-U`` (force-share)
is used only for read-only inspection (``info``, ``measure``); every write goes
through qemu-img without it, so writing an image a running QEMU holds fails, and
that failure becomes :class:`~virtkit.errors.Conflict`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import IO, Any

from virtkit.errors import (
    Conflict,
    HostError,
    InvalidSpec,
    NotFound,
    QemuError,
    VirtkitError,
)
from virtkit.model.netdisk import is_network_path, is_rbd_path, parse_rbd_url, rbd_blockdev
from virtkit.storage.base import Progress, VolumeInfo

#: formats virtkit creates volumes in (qemu-img reads many more on import).
CREATE_FORMATS = ("raw", "qcow2")
#: qemu-img -p prints "    (12.34/100%)" and rewrites it with \r.
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_LOCK_FAILURE = re.compile(r'Failed to get (?:shared )?"[^"]+" lock')
#: phrases by which qemu-img says the input itself is bad (not the host, not QEMU).
_BAD_INPUT = ("Invalid", "invalid", "not a ", "is not", "Could not read", "Unknown",
              "nsupported", "does not support", "Parameter", "too large", "corrupt")


def qemu_img() -> str:
    """The qemu-img binary, or a HostError saying how to install it."""
    binary = os.environ.get("VIRTKIT_QEMU_IMG") or shutil.which("qemu-img")
    if not binary:
        raise HostError("qemu-img is not installed", fix="apt-get install qemu-utils")
    return binary


def _stderr_line(stderr: str) -> str:
    """The line of qemu-img's stderr that names the problem: the last one that is not a
    warning or the "Is another process using the image" hint, without the prefix."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    useful = [line for line in lines
              if "warning:" not in line and not line.startswith("Is another process")]
    line = (useful or lines or ["unknown error"])[-1]
    return line.removeprefix("qemu-img: ")


def error_from_stderr(action: str, path: str, stderr: str) -> VirtkitError:
    """Map a failed qemu-img run to the right VirtkitError subclass.

    ``action`` says what was attempted ("resize", "convert ..."), ``path`` the image
    the user knows.  A lock failure means a running QEMU holds the image.
    """
    line = _stderr_line(stderr)
    if _LOCK_FAILURE.search(stderr):
        return Conflict(f"volume {path} is in use by a running VM ({line})",
                        fix="shut the VM down or detach the disk, then try again")
    if "No space left on device" in stderr:
        return HostError(f"qemu-img {action} of {path} failed: {line}",
                         fix="free space on the pool's file system or use another pool")
    if "No such file or directory" in stderr:
        return NotFound(f"qemu-img {action} of {path} failed: {line}",
                        fix="check the path exists")
    if "Permission denied" in stderr:
        return HostError(f"qemu-img {action} of {path} failed: {line}",
                         fix="check the file's owner and mode")
    if any(phrase in line for phrase in _BAD_INPUT):
        return InvalidSpec(f"qemu-img {action} of {path} failed: {line}",
                           fix="check the image and the format it was declared in")
    return QemuError(f"qemu-img {action} of {path} failed: {line}")


def _run(argv: list[str], action: str, path: str, *, timeout: float = 600,
         ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run qemu-img; a return code outside ``ok`` raises via error_from_stderr."""
    try:
        result = subprocess.run([qemu_img(), *argv], capture_output=True, text=True,
                                timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise QemuError(f"qemu-img {action} of {path} did not finish within {timeout:.0f}s",
                        fix="check the storage under the image is responsive") from exc
    if result.returncode not in ok:
        raise error_from_stderr(action, path, result.stderr)
    return result


def _json(result: subprocess.CompletedProcess[str], action: str, path: str) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise QemuError(f"qemu-img {action} of {path} printed no JSON: "
                        f"{result.stdout[:200]!r}") from exc


def check_format(fmt: str, allowed: tuple[str, ...] = CREATE_FORMATS) -> None:
    if fmt not in allowed:
        raise InvalidSpec(f"volume format {fmt!r} is not supported here",
                          field="format", fix=f"use one of: {', '.join(allowed)}")


def local_source(path: str) -> str:
    """The absolute path of an image to read (import), which must be a file or block
    device on this host: NotFound / InvalidSpec otherwise."""
    source = os.path.abspath(path)
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError:
        raise NotFound(f"import source {path} does not exist",
                       fix="give the path of an image on this host") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise InvalidSpec(f"import source {path} is not a file or block device",
                          field="source", fix="give the path of an image file")
    return source


def _where(path: str) -> str:
    """What qemu-img is given for ``path``: an ``nfs://`` URL as it is (qemu-block-extra's
    libnfs driver opens it), an ``rbd://`` URL as ``json:`` options of an rbd protocol
    node (:func:`rbd_filename`), a host path made absolute."""
    if is_rbd_path(path):
        return rbd_filename(path)
    return path if is_network_path(path) else os.path.abspath(path)


def rbd_filename(url: str) -> str:
    """qemu-img's name for an rbd image: ``json:{"file": {rbd options}}`` (the format
    stays the caller's ``-f``/``-O``); never the ``rbd:pool/image:opt=...`` string."""
    return "json:" + json.dumps({"file": rbd_blockdev(parse_rbd_url(url))},
                                separators=(",", ":"))


def image_file(path: str) -> str:
    """The absolute path of an image qemu-img may open: a regular file or a block device
    (missing is left to qemu-img).  A FIFO would block qemu-img until the timeout, a
    character device or socket is no image: InvalidSpec before anything runs.  An
    ``nfs://`` URL is given as it is."""
    if is_network_path(path):
        return _where(path)
    source = os.path.abspath(path)
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return source
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise InvalidSpec(f"{path} is not a disk image (not a regular file or block device)",
                          field="path", fix="name an image file or a block device")
    return source


def image_info(path: str, *, force_share: bool = True,
               fmt: str | None = None) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``path`` (``-U`` so a running VM's image can be read).

    ``fmt`` skips probing when the caller knows the format.
    """
    argv = ["info", "--output=json"]
    if force_share:
        argv.append("-U")
    if fmt:
        argv += ["-f", fmt]
    argv.append(image_file(path))
    result = subprocess.run([qemu_img(), *argv], capture_output=True, text=True, timeout=30,
                            check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        error = error_from_stderr("info", path, result.stderr)
        if isinstance(error, Conflict):
            raise error
        raise InvalidSpec(f"cannot read disk image {path}: {_stderr_line(result.stderr)}")
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def detect_format(path: str) -> str:
    """The format qemu-img sees in ``path`` (raw, qcow2, vmdk ...)."""
    return str(image_info(path).get("format", "raw"))


def create(path: str, fmt: str, capacity_bytes: int | None, *, backing: str | None = None,
           backing_fmt: str | None = None, prealloc: bool = False,
           cluster_size: int | None = None) -> None:
    """Create an image at ``path`` (truncating what is there; callers check names first).

    ``backing`` makes a qcow2 overlay (``backing_fmt`` is then required, so QEMU
    never probes the base); ``capacity_bytes`` None takes the backing's size.
    ``prealloc`` reserves the space up front (``preallocation=falloc``: fallocate for
    raw; metadata plus fallocate for qcow2) so a full disk fails now, not in the guest.
    """
    check_format(fmt)
    options = []
    if prealloc:
        options.append("preallocation=falloc")
    if cluster_size and fmt == "qcow2":
        options.append(f"cluster_size={cluster_size}")
    argv = ["create", "-q", "-f", fmt]
    if options:
        argv += ["-o", ",".join(options)]
    if backing is not None:
        if fmt != "qcow2":
            raise InvalidSpec("only qcow2 volumes can have a backing volume", field="format",
                              fix="create the overlay with format qcow2")
        if not backing_fmt:
            raise InvalidSpec("a backing volume needs its format", field="backing_fmt")
        argv += ["-b", _where(backing), "-F", backing_fmt]
    elif capacity_bytes is None:
        raise InvalidSpec("a new volume needs a capacity", field="capacity")
    argv.append(_where(path))
    if capacity_bytes is not None:
        if capacity_bytes <= 0:
            raise InvalidSpec(f"capacity must be positive, not {capacity_bytes}",
                              field="capacity")
        argv.append(str(capacity_bytes))
    _run(argv, "create", path)


def resize_volume(info: VolumeInfo, capacity: int, *, shrink: bool = False) -> None:
    """Resize a pool's image volume (directory and NFS pools): raw and qcow2 only."""
    if info.format not in CREATE_FORMATS:
        raise InvalidSpec(f"volume {info.name!r} is {info.format}; only raw and qcow2 "
                          "volumes can be resized", fix="convert it first (vol-clone)")
    resize(info.path, info.format, capacity, shrink=shrink)


def resize(path: str, fmt: str, capacity: int, shrink: bool = False) -> None:
    """Set the virtual size of ``path``; shrinking discards data and needs ``shrink``."""
    if capacity <= 0:
        raise InvalidSpec(f"capacity must be positive, not {capacity}", field="capacity")
    current = int(image_info(path, fmt=fmt)["virtual-size"])
    if capacity < current and not shrink:
        raise InvalidSpec(
            f"shrinking {path} from {current} to {capacity} bytes would discard the data "
            "beyond the new end", field="capacity",
            fix="pass shrink (vol-resize --shrink) if the guest no longer uses that space")
    argv = ["resize", "-q", "-f", fmt]
    if capacity < current:
        argv.append("--shrink")
    argv += [_where(path), str(capacity)]
    _run(argv, "resize", path)


def convert(src: str, src_fmt: str | None, dst: str, dst_fmt: str, *,
            progress: Progress | None = None, create_target: bool = True,
            sparse: bool = True, src_image_opts: bool = False,
            force_share: bool = False) -> None:
    """Copy ``src`` into ``dst`` in ``dst_fmt`` with ``qemu-img convert -p``.

    ``progress(percent, 100)`` is called as qemu-img reports it (it may raise to
    cancel: qemu-img is then killed and the exception propagates).
    ``create_target=False`` writes into an existing target (``-n``: block devices);
    ``sparse=False`` writes every byte (``-S 0``), which is how zeros get written.
    ``src_image_opts`` says ``src`` is an option string (``--image-opts``).
    The source is opened without ``-U``: converting an image a running VM writes
    would copy a torn image, so qemu-img's lock refusal is a Conflict.  Callers that
    made the image consistent themselves (a paused VM, frozen file systems) pass
    ``force_share``.
    """
    argv = ["convert", "-p", "-O", dst_fmt]
    if force_share:
        argv.append("-U")
    if src_image_opts:
        argv += ["--image-opts", src]
    else:
        if src_fmt:
            argv += ["-f", src_fmt]
        argv.append(_where(src))
    if not create_target:
        argv.append("-n")
    if not sparse:
        argv += ["-S", "0"]
    argv.append(_where(dst))
    returncode, stderr = run_with_progress(argv, progress)
    if returncode != 0:
        raise error_from_stderr(f"convert to {dst_fmt}", dst if src_image_opts else src, stderr)


def run_with_progress(argv: list[str], progress: Progress | None) -> tuple[int, str]:
    """Run qemu-img, feeding its "(x/100%)" stdout to ``progress``; return (rc, stderr).

    stdout is read as it arrives (qemu-img ends each update with \\r, not \\n);
    stderr is drained by a thread so a chatty qemu-img cannot block on a full pipe.
    """
    process = subprocess.Popen([qemu_img(), *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    assert process.stderr is not None
    errors: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True)
    drain.start()
    try:
        _feed_progress(process.stdout, progress)
        returncode = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        drain.join(timeout=5)
        process.stdout.close()
        process.stderr.close()
    return returncode, b"".join(errors).decode(errors="replace")


def _drain(stream: IO[bytes], into: list[bytes]) -> None:
    fd = stream.fileno()
    while chunk := os.read(fd, 65536):
        into.append(chunk)


def _feed_progress(stream: IO[bytes], progress: Progress | None) -> None:
    """Parse "(12.34/100%)" updates from ``stream`` until EOF; report each rise."""
    pending = b""
    last = -1.0
    fd = stream.fileno()
    while chunk := os.read(fd, 4096):
        pending += chunk
        matches = list(_PROGRESS.finditer(pending))
        if matches:
            pending = pending[matches[-1].end():]
            percent = float(matches[-1].group(1))
            if progress is not None and percent > last:
                last = percent
                progress(percent, 100.0)
        pending = pending[-64:]


def write_zeros(path: str, size: int, *, progress: Progress | None = None) -> None:
    """Overwrite the first ``size`` bytes of the raw image or device ``path`` with zeros.

    It is a ``qemu-img convert -n -S 0`` from QEMU's null driver, so the write takes
    QEMU's image lock (a disk a running VM holds is a Conflict, not silently
    overwritten under the guest) and reports progress.
    """
    source = f"driver=null-co,size={int(size)},read-zeroes=on"
    convert(source, None, path, "raw", progress=progress, create_target=False,
            sparse=False, src_image_opts=True)


def check(path: str, fmt: str | None = None) -> dict[str, Any]:
    """``qemu-img check --output=json``: consistency of a qcow2 (leaks, corruptions).

    The result carries ``check-errors``, ``corruptions``, ``leaks`` as qemu-img
    reports them; formats without checks (raw) give ``{"supported": False}``.
    ``fmt`` None detects it (only for images a guest could not have written).
    """
    fmt = fmt or detect_format(path)
    result = _run(["check", "--output=json", "-f", fmt, os.path.abspath(path)],
                  "check", path, ok=(0, 2, 3, 63), timeout=3600)
    if result.returncode == 63:
        return {"filename": path, "format": fmt, "supported": False, "check-errors": 0}
    report: dict[str, Any] = _json(result, "check", path)
    report["supported"] = True
    return report


def backing_chain(path: str) -> list[dict[str, Any]]:
    """The image and each backing file under it, top first (``info --backing-chain``)."""
    result = _run(["info", "--backing-chain", "--output=json", "-U", image_file(path)],
                  "info", path, timeout=30)
    chain = _json(result, "info --backing-chain", path)
    if isinstance(chain, dict):  # a chain of one is printed as a bare object
        chain = [chain]
    return list(chain)


def measure(dst_fmt: str, *, size: int | None = None, src: str | None = None,
            src_fmt: str | None = None, prealloc: bool = False) -> dict[str, int]:
    """How many bytes a ``dst_fmt`` image needs: for a new image of ``size``, or for
    a conversion of ``src``.  Returns ``required`` and ``fully-allocated``."""
    argv = ["measure", "--output=json", "-O", dst_fmt]
    if prealloc:
        argv += ["-o", "preallocation=falloc"]
    if src is not None:
        argv.append("-U")
        if src_fmt:
            argv += ["-f", src_fmt]
        argv.append(os.path.abspath(src))
    elif size is not None:
        argv += ["--size", str(size)]
    else:
        raise InvalidSpec("measure needs a size or a source image")
    result = _run(argv, "measure", src or dst_fmt, timeout=60)
    data = _json(result, "measure", src or dst_fmt)
    return {key: int(value) for key, value in data.items() if isinstance(value, int)}


# --- image locks ------------------------------------------------------------------------

#: QEMU's file-posix locking: byte 100+n is held by whoever has permission n, byte
#: 200+n by whoever refuses to share it (block/file-posix.c, stable since QEMU 2.10).
_LOCK_PERM_BASE = 100
_LOCK_SHARED_BASE = 200
_PERM_WRITE = 1  # BLK_PERM_WRITE is bit 1 (CONSISTENT_READ 0, WRITE_UNCHANGED 2, RESIZE 3)
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid


@dataclass(frozen=True)
class ImageLocks:
    """Who holds QEMU's locks on an image, as seen from outside."""

    writer: bool  # some process has it open for writing (a running VM's disk)
    blocks_writes: bool  # some process refuses writers (a VM reading it, e.g. as a backing)

    @property
    def in_use(self) -> bool:
        """A write to the image would be refused by qemu-img (and would hurt a VM)."""
        return self.writer or self.blocks_writes


def image_locks(path: str) -> ImageLocks:
    """Test QEMU's write locks on ``path`` without taking any (F_OFD_GETLK).

    Used where qemu-img would not look on its own: deleting a file, and making a
    linked clone on top of a disk that a running VM is still writing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return ImageLocks(False, False)
    try:
        return ImageLocks(writer=_locked(fd, _LOCK_PERM_BASE + _PERM_WRITE),
                          blocks_writes=_locked(fd, _LOCK_SHARED_BASE + _PERM_WRITE))
    finally:
        os.close(fd)


def _locked(fd: int, offset: int) -> bool:
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    with contextlib.suppress(OSError):
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query)
        return bool(struct.unpack(_FLOCK, answer[:struct.calcsize(_FLOCK)])[0] != fcntl.F_UNLCK)
    return False


# -- snapshots -------------------------------------------------------------------------


def create_overlay(path: str, backing: str, backing_fmt: str, size: int) -> None:
    """A new qcow2 at ``path`` over ``backing`` without opening the backing (``-u``).

    The backing may be the top image a running QEMU holds for writing, which qemu-img
    could not open; the size is given instead of read from it.  ``path`` must not exist.
    """
    if os.path.lexists(path):
        raise Conflict(f"{path} already exists", fix="remove it or choose another name")
    _run(["create", "-q", "-f", "qcow2", "-u", "-b", os.path.abspath(backing),
          "-F", backing_fmt, os.path.abspath(path), str(int(size))], "create", path)


def internal_snapshot(action: str, path: str, name: str) -> None:
    """``qemu-img snapshot`` on a qcow2 no QEMU holds (create, apply or delete)."""
    flags = {"create": "-c", "apply": "-a", "delete": "-d"}
    # qemu-img snapshot has no -f: the format is given through --image-opts instead of
    # being probed (commas in the path are doubled, as option strings want)
    image = "driver=qcow2,file.driver=file,file.filename=" + os.path.abspath(path).replace(
        ",", ",,")
    _run(["snapshot", "--image-opts", flags[action], name, image], f"snapshot {action}", path)


def internal_snapshots(path: str) -> list[str]:
    """The names of the internal snapshots in a qcow2 (``info`` reads them, ``-U``)."""
    info = image_info(path, fmt="qcow2")
    return [str(snap["name"]) for snap in info.get("snapshots", [])]


def commit(path: str, fmt: str, *, progress: Progress | None = None) -> None:
    """Merge ``path`` into its backing image (``qemu-img commit -d``; ``path`` is kept as it
    was, the caller deletes it once nothing points at it)."""
    returncode, stderr = run_with_progress(
        ["commit", "-p", "-d", "-f", fmt, os.path.abspath(path)], progress)
    if returncode != 0:
        raise error_from_stderr("commit", path, stderr)


def set_backing(path: str, backing: str, backing_fmt: str) -> None:
    """Point ``path``'s header at ``backing`` whose content is already the same
    (``rebase -u``: no data is copied; used after a commit merged the old backing down)."""
    _run(["rebase", "-u", "-f", "qcow2", "-b", os.path.abspath(backing), "-F", backing_fmt,
          os.path.abspath(path)], "rebase", path)
