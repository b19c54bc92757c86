"""Install media: the installer kernel and initrd of a ``--location``, initrd injection,
and cloud-init NoCloud seed ISOs.

``--location`` may be an ISO image, a directory tree (a mounted DVD, an unpacked
netboot tree) or an http/https/ftp URL of a tree.  The kernel and initrd are found
as virt-install finds them: first through the tree's ``.treeinfo`` (Fedora, CentOS,
RHEL and their rebuilds write one), then at the known paths of Debian, Ubuntu,
openSUSE and the Fedora family.  ISO images are read with pycdlib (no loop mount,
so this works without root and without device-mapper).
"""

from __future__ import annotations

import configparser
import io
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from virtkit.cpio import CpioWriter
from virtkit.errors import InvalidSpec

#: (kernel, initrd) pairs at the known places of x86_64 install trees.
KNOWN_BOOT_FILES: tuple[tuple[str, str], ...] = (
    ("install.amd/vmlinuz", "install.amd/initrd.gz"),  # Debian ISO
    ("main/installer-amd64/current/images/netboot/debian-installer/amd64/linux",
     "main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz"),  # Debian URL
    ("install/vmlinuz", "install/initrd.gz"),  # older Debian/Ubuntu alternate ISOs
    ("casper/vmlinuz", "casper/initrd"),  # Ubuntu live-server ISO
    ("casper/vmlinuz", "casper/initrd.gz"),
    ("casper/vmlinuz", "casper/initrd.lz"),
    ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img"),  # Fedora, CentOS, RHEL
    ("isolinux/vmlinuz", "isolinux/initrd.img"),
    ("boot/x86_64/loader/linux", "boot/x86_64/loader/initrd"),  # openSUSE
    ("boot/vmlinuz", "boot/initrd.img"),
    ("boot/vmlinuz", "boot/initrd.gz"),
)
_URL_TIMEOUT = 30.0


class _Tree:
    """Read access to files of an install tree, whatever it is stored in."""

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the tree holds open."""


class _DirTree(_Tree):
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def read(self, path: str) -> bytes | None:
        try:
            return (self.root / path).read_bytes()
        except OSError:
            return None


class _IsoTree(_Tree):
    """Files of an ISO 9660 image, by Rock Ridge, Joliet or plain ISO names."""

    def __init__(self, image: Path) -> None:
        import pycdlib

        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(str(image))
        except Exception as exc:
            raise InvalidSpec(f"--location {image}: not a readable ISO image ({exc})",
                              fix="give an ISO 9660 image, a directory tree or a URL") from None

    def _lookups(self, path: str) -> Iterable[dict[str, str]]:
        absolute = "/" + path.lstrip("/")
        if self.iso.has_rock_ridge():
            yield {"rr_path": absolute}
        if self.iso.has_joliet():
            yield {"joliet_path": absolute}
        yield {"iso_path": absolute.upper() + ";1"}

    def read(self, path: str) -> bytes | None:
        for lookup in self._lookups(path):
            out = io.BytesIO()
            try:
                self.iso.get_file_from_iso_fp(out, **lookup)
            except Exception:  # noqa: S112 - pycdlib raises PyCdlibInvalidInput for a missing file: try the next name
                continue
            return out.getvalue()
        return None

    def exists(self, path: str) -> bool:
        for lookup in self._lookups(path):
            try:
                self.iso.get_record(**lookup)
            except Exception:  # noqa: S112 - not under this name (as in read): try the next
                continue
            return True
        return False

    def close(self) -> None:
        self.iso.close()


class _UrlTree(_Tree):
    def __init__(self, url: str) -> None:
        import urllib.error
        import urllib.request

        self.base = url.rstrip("/") + "/"
        try:
            with urllib.request.urlopen(self.base, timeout=_URL_TIMEOUT):  # noqa: S310 - http(s)/ftp only (open_tree)
                pass
        except urllib.error.HTTPError:
            pass  # the server answers; a tree need not list its root
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InvalidSpec(f"--location {url}: cannot reach it ({reason})",
                              fix="check the URL and that this host can reach it") from None

    def read(self, path: str) -> bytes | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + path, timeout=_URL_TIMEOUT) as answer:  # noqa: S310 - http(s)/ftp only (open_tree)
                data: bytes = answer.read()
                return data
        except OSError:  # urllib's URLError is an OSError
            return None

    def exists(self, path: str) -> bool:
        import urllib.request

        request = urllib.request.Request(self.base + path, method="HEAD")  # noqa: S310 - http(s)/ftp only (open_tree)
        try:
            with urllib.request.urlopen(request, timeout=_URL_TIMEOUT):  # noqa: S310 - http(s)/ftp only (open_tree)
                return True
        except OSError:  # urllib's URLError is an OSError
            return False


def open_tree(location: str) -> _Tree:
    """The install tree at ``location``: an ISO file, a directory, or a URL."""
    if location.startswith(("http://", "https://", "ftp://")):
        return _UrlTree(location)
    path = Path(location)
    if not path.is_absolute():
        raise InvalidSpec(f"--location {location}: give an absolute path or a URL",
                          fix=f"write --location {Path(location).absolute()}")
    if path.is_dir():
        return _DirTree(path)
    if path.is_file() or (path.exists() and stat.S_ISBLK(path.stat().st_mode)):
        return _IsoTree(path)
    raise InvalidSpec(f"--location {location}: no such file or directory",
                      fix="give an existing ISO image, directory tree or URL")


def _treeinfo_boot_files(tree: _Tree) -> tuple[str, str] | None:
    text = tree.read(".treeinfo")
    if not text:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text.decode(errors="replace"))
    except configparser.Error:
        return None
    for section in ("images-x86_64", "images-xen", "images-amd64"):
        if parser.has_option(section, "kernel") and parser.has_option(section, "initrd"):
            return parser.get(section, "kernel"), parser.get(section, "initrd")
    return None


def find_boot_files(location: str) -> tuple[str, str]:
    """The (kernel, initrd) paths inside the tree at ``location``; InvalidSpec if none."""
    tree = open_tree(location)
    try:
        found = _treeinfo_boot_files(tree)
        if found is not None and tree.exists(found[0]) and tree.exists(found[1]):
            return found
        for kernel, initrd in KNOWN_BOOT_FILES:
            if tree.exists(kernel) and tree.exists(initrd):
                return kernel, initrd
    finally:
        tree.close()
    raise InvalidSpec(
        f"--location {location}: found no installer kernel and initrd in it",
        fix="give install media with a .treeinfo or a Debian/Ubuntu/Fedora/openSUSE layout, "
            "or boot a kernel directly with --boot kernel=PATH,initrd=PATH")


def extract_boot_files(location: str, dest: Path) -> tuple[Path, Path]:
    """Copy the installer kernel and initrd of ``location`` into ``dest`` (created)."""
    kernel_path, initrd_path = find_boot_files(location)
    dest.mkdir(parents=True, exist_ok=True)
    tree = open_tree(location)
    try:
        outputs = []
        for inside, name in ((kernel_path, "vmlinuz"), (initrd_path, "initrd")):
            data = tree.read(inside)
            if data is None:
                raise InvalidSpec(f"--location {location}: cannot read {inside}")
            target = dest / name
            target.write_bytes(data)
            outputs.append(target)
    finally:
        tree.close()
    return outputs[0], outputs[1]


# -- initrd injection -----------------------------------------------------------------


def inject_into_initrd(initrd: Path, files: list[str]) -> None:
    """Append ``files`` (by their base names, at the root) to ``initrd`` as a cpio archive.

    The kernel unpacks concatenated archives in order, so a kickstart or preseed file
    added this way sits at ``/name`` in the installer's root file system, where
    ``inst.ks=file:/name`` and ``preseed/file=/name`` find it.
    """
    archive = CpioWriter()
    for name in files:
        source = Path(name)
        if not source.is_absolute() or not source.is_file():
            raise InvalidSpec(f"--initrd-inject {name}: not an existing file (absolute path)",
                              fix="give the full path of the file to add to the initrd")
        archive.file(source.name, source.read_bytes())
    with open(initrd, "ab") as out:
        out.write(b"\0" * (-out.tell() % 4))
        out.write(archive.finish())


# -- cloud-init --------------------------------------------------------------------------


def write_seed_iso(dest: Path, files: dict[str, bytes]) -> Path:
    """A NoCloud seed: an ISO with volume label ``cidata`` holding ``files``."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, data) in enumerate(sorted(files.items())):
        iso_name = f"/F{index};1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    partial = dest.with_name(dest.name + ".partial")
    try:
        iso.write(str(partial))
        os.replace(partial, dest)
    finally:
        iso.close()
        partial.unlink(missing_ok=True)
    return dest


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
