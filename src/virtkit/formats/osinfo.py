"""The osinfo database (Debian's ``osinfo-db``): OS variants and what they recommend.

``--os-variant debian11`` fills the memory, CPU count and disk size the database
recommends, and says whether the OS has virtio drivers (if not, disks go on SATA
and NICs are e1000).  The database is a tree of XML files, one per OS, each with
``short-id`` names, ``derives-from``/``clones`` links to its parent and
``resources`` (minimum, recommended) per architecture; this module reads it
directly, so no libosinfo is needed.  ``$OSINFO_SYSTEM_DIR`` overrides the
location, as it does for libosinfo.

The values are the ones virt-install picks from the same database: a key's
recommended value, else twice its minimum (virtinst's approximation); the
``x86_64`` resources before ``all``; those of the OS itself, and only when it has
none, its parent's (virt-install would then ask for ``--memory``).  virtio means
the OS drives virtio-block disks (virtinst's ``supports_virtiodisk``): the nearest
entry that lists such a device decides, ``supported="false"`` saying no.  The files
in an OS's ``.d`` folder (drivers to inject into Windows installs) are not read:
they name the same OS, and the drivers they list are not in the installed OS.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import HostError, InvalidSpec

DEFAULT_ROOTS = (Path("/usr/share/osinfo"), Path("/usr/share/libosinfo/db"))
#: virtio-block (legacy and 1.0) PCI ids: the OS boots from virtio disks.
_VIRTIO_BLOCK = ("http://pcisig.com/pci/1af4/1001", "http://pcisig.com/pci/1af4/1042")
_ARCHES = ("x86_64", "all")


@dataclass(frozen=True)
class OsDefaults:
    """What an OS variant recommends for a new VM."""

    memory_mib: int
    vcpus: int | None = None
    storage_bytes: int | None = None
    virtio: bool = True
    #: Windows installs in several stages that each read the CD: keep it after the first
    keep_install_media: bool = False


@dataclass(frozen=True)
class MediaIds:
    """The identifiers of an ISO 9660 primary volume descriptor: read from an image, or
    as an OS's ``<media><iso>`` gives them (regular expressions; None: any value)."""

    volume: str
    system: str | None = None
    publisher: str | None = None
    application: str | None = None
    size: int | None = None  # bytes: an exact size, as some media entries give

    def matches(self, iso: MediaIds) -> bool:
        """libosinfo's media match: every identifier this entry gives matches the ISO's
        (an ISO without that identifier does not match), and the size if both have one."""
        for pattern, value in ((self.volume, iso.volume), (self.system, iso.system),
                               (self.publisher, iso.publisher),
                               (self.application, iso.application)):
            if pattern is None:
                continue
            try:
                if value is None or not re.match(pattern, value):
                    return False
            except re.error:
                return False
        return self.size is None or iso.size is None or self.size == iso.size


@dataclass
class OsEntry:
    id: str
    short_ids: list[str]
    name: str
    family: str
    vendor: str
    version: str
    release_date: str
    eol_date: str
    parents: list[str]
    resources: dict[str, int]  # ram, storage, n-cpus (recommended, else 2 x minimum)
    virtio: bool | None  # None: the file says nothing, ask the parent
    media_ids: list[MediaIds] = field(default_factory=list)  # x86 install ISOs

    def to_dict(self) -> dict[str, object]:
        return {"short_id": self.short_ids[0] if self.short_ids else self.id,
                "aliases": self.short_ids[1:], "name": self.name, "version": self.version,
                "family": self.family, "vendor": self.vendor, "id": self.id,
                "release_date": self.release_date, "eol_date": self.eol_date}


def _text(node: ET.Element, tag: str) -> str:
    found = node.find(tag)
    return (found.text or "").strip() if found is not None else ""


def _resources(node: ET.Element) -> dict[str, int]:
    """ram, storage and n-cpus as virt-install picks them from one ``<os>``."""
    levels: dict[tuple[str, str], dict[str, int]] = {}
    for res in node.findall("resources"):
        arch = res.get("arch", "all")
        if arch not in _ARCHES:
            continue
        for level in ("minimum", "recommended"):
            block = res.find(level)
            if block is None:
                continue
            for key in ("ram", "storage", "n-cpus"):
                value = _text(block, key)
                if value.isdecimal() and int(value) > 0:
                    levels.setdefault((level, arch), {})[key] = int(value)
    out: dict[str, int] = {}
    for key in ("ram", "storage", "n-cpus"):
        recommended = next((levels[("recommended", a)][key] for a in _ARCHES
                            if key in levels.get(("recommended", a), {})), None)
        minimum = next((levels[("minimum", a)][key] for a in _ARCHES
                        if key in levels.get(("minimum", a), {})), None)
        if recommended is not None:
            out[key] = recommended
        elif minimum is not None:
            out[key] = minimum * 2
    return out


def _virtio(node: ET.Element) -> bool | None:
    """Whether this ``<os>`` says it drives virtio-block disks; None if it says nothing."""
    said = [device.get("supported", "true") != "false"
            for device in node.findall("devices/device") if device.get("id") in _VIRTIO_BLOCK]
    return any(said) if said else None


def parse_os(text: str) -> OsEntry | None:
    """One ``<os>`` of a database file."""
    root = ET.fromstring(text)  # noqa: S314 - the host's own osinfo database
    node = root.find("os") if root.tag != "os" else root
    if node is None:
        return None
    parents = [link.get("id", "") for link in node.findall("derives-from")]
    parents += [link.get("id", "") for link in node.findall("clones")]
    return OsEntry(id=node.get("id", ""),
                   short_ids=[(s.text or "").strip() for s in node.findall("short-id")],
                   name=_text(node, "name"), family=_text(node, "family"),
                   vendor=_text(node, "vendor"), version=_text(node, "version"),
                   release_date=_text(node, "release-date"), eol_date=_text(node, "eol-date"),
                   parents=[p for p in parents if p], resources=_resources(node),
                   virtio=_virtio(node), media_ids=_media_ids(node))


def _media_ids(node: ET.Element) -> list[MediaIds]:
    """The identifiers of this OS's x86 install ISOs (those that give a volume id)."""
    out = []
    for media in node.findall("media"):
        iso = media.find("iso")
        if media.get("arch", "x86_64") not in ("x86_64", "i686", "all") or iso is None:
            continue
        volume = _text(iso, "volume-id")
        if not volume:
            continue
        size = _text(iso, "volume-size")
        out.append(MediaIds(volume=volume, system=_text(iso, "system-id") or None,
                            publisher=_text(iso, "publisher-id") or None,
                            application=_text(iso, "application-id") or None,
                            size=int(size) if size.isdecimal() and int(size) > 0 else None))
    return out


def iso_ids(path: str) -> MediaIds | None:
    """The identifiers of an ISO 9660 image (its primary volume descriptor: system id at
    byte 8, volume id at 40, volume space size at 80, block size at 128, publisher id at
    318, application id at 574), or None if ``path`` is not one or has no volume id."""
    try:
        with open(path, "rb") as image:
            image.seek(16 * 2048)
            descriptor = image.read(2048)
    except OSError:
        return None
    if len(descriptor) < 702 or descriptor[0] != 1 or descriptor[1:6] != b"CD001":
        return None

    def field_at(start: int, end: int) -> str | None:
        return descriptor[start:end].decode("ascii", errors="replace").strip(" \0") or None

    volume = field_at(40, 72)
    if volume is None:
        return None
    blocks = int.from_bytes(descriptor[80:84], "little")
    block_size = int.from_bytes(descriptor[128:130], "little")
    return MediaIds(volume=volume, system=field_at(8, 40), publisher=field_at(318, 446),
                    application=field_at(574, 702), size=blocks * block_size or None)


def iso_volume_id(path: str) -> str | None:
    """The volume identifier of an ISO 9660 image, or None if ``path`` is not one."""
    ids = iso_ids(path)
    return ids.volume if ids is not None else None


class OsinfoDb:
    """The OS entries of one osinfo database folder, by id and by short-id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_id: dict[str, OsEntry] = {}
        self.by_short: dict[str, OsEntry] = {}
        for path in sorted((root / "os").rglob("*.xml")):
            if any(part.endswith(".d") for part in path.relative_to(root).parts[:-1]):
                continue  # drivers for the installer, under the same OS id
            try:
                entry = parse_os(path.read_text())
            except (ET.ParseError, OSError):
                continue
            if entry is None:
                continue
            self.by_id[entry.id] = entry
            for short in entry.short_ids:
                self.by_short.setdefault(short, entry)

    def lookup(self, name: str) -> OsEntry:
        entry = self.by_short.get(name) or self.by_id.get(name)
        if entry is not None:
            return entry
        near = difflib.get_close_matches(name, list(self.by_short), n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(near)}" if near else ""
        raise InvalidSpec(f"--os-variant {name}: unknown OS variant{hint}",
                          fix="see 'virtkit osinfo list --filter NAME', or use "
                              "--os-variant generic")

    def _inherited(self, entry: OsEntry, seen: set[str] | None = None) -> list[OsEntry]:
        """``entry`` and its ancestors, nearest first."""
        seen = seen or set()
        chain = [entry]
        seen.add(entry.id)
        for parent_id in entry.parents:
            parent = self.by_id.get(parent_id)
            if parent is not None and parent.id not in seen:
                chain += self._inherited(parent, seen)
        return chain

    def defaults(self, name: str) -> OsDefaults:
        chain = self._inherited(self.lookup(name))
        resources = next((e.resources for e in chain if e.resources), {})
        virtio = next((e.virtio for e in chain if e.virtio is not None), False)
        ram = resources.get("ram")
        family = next((e.family for e in chain if e.family), "")
        return OsDefaults(memory_mib=ram // 2**20 if ram else 1024,
                          vcpus=resources.get("n-cpus"),
                          storage_bytes=resources.get("storage"), virtio=virtio,
                          keep_install_media=family == "winnt")

    def detect(self, iso: MediaIds | str) -> OsEntry | None:
        """The OS whose install media match these ISO identifiers (a volume id alone
        matches only media entries that give nothing else), as libosinfo's media match;
        the newest release first when several match."""
        ids = MediaIds(volume=iso) if isinstance(iso, str) else iso
        found = [entry for entry in self.by_id.values()
                 if any(media.matches(ids) for media in entry.media_ids)]
        found.sort(key=lambda e: e.release_date, reverse=True)
        return found[0] if found else None

    def search(self, text: str = "") -> list[OsEntry]:
        needle = text.lower()
        rows = [e for e in self.by_id.values()
                if not needle or needle in " ".join([*e.short_ids, e.name, e.vendor]).lower()]
        return sorted(rows, key=lambda e: e.short_ids[0] if e.short_ids else e.id)


@functools.lru_cache(maxsize=1)
def system_db() -> OsinfoDb:
    """The host's osinfo database (read once per daemon)."""
    override = os.environ.get("OSINFO_SYSTEM_DIR")
    roots = [Path(override)] if override else list(DEFAULT_ROOTS)
    for root in roots:
        if (root / "os").is_dir():
            return OsinfoDb(root)
    raise HostError("the osinfo database is not installed, so --os-variant has nothing to "
                    "look up", fix="apt-get install osinfo-db, or use --os-variant generic")
