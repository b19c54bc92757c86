"""The osinfo database (Debian's ``osinfo-db``): OS variants and what they recommend.

``--os-variant debian11`` fills the memory, CPU count and disk size the database
recommends, and says whether the OS has virtio drivers (if not, disks go on SATA
and NICs are e1000).  The database is a tree of XML files, one per OS, each with
``short-id`` names, ``derives-from``/``clones`` links to its parent and
``resources`` (minimum, recommended) per architecture; this module reads it
directly, so no libosinfo is needed.  ``$OSINFO_SYSTEM_DIR`` overrides the
location, as it does for libosinfo.
"""

from __future__ import annotations

import difflib
import functools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import HostError, InvalidSpec

DEFAULT_ROOTS = (Path("/usr/share/osinfo"), Path("/usr/share/libosinfo/db"))
_VIRTIO_VENDOR = "http://pcisig.com/pci/1af4/"  # Red Hat's PCI vendor id: virtio devices


@dataclass(frozen=True)
class OsDefaults:
    """What an OS variant recommends for a new VM."""

    memory_mib: int
    vcpus: int | None = None
    storage_bytes: int | None = None
    virtio: bool = True


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
    resources: dict[str, int]  # ram, storage, n-cpus (recommended, else minimum)
    virtio: bool | None  # None: the file says nothing, ask the parent

    def to_dict(self) -> dict[str, object]:
        return {"short_id": self.short_ids[0] if self.short_ids else self.id,
                "aliases": self.short_ids[1:], "name": self.name, "version": self.version,
                "family": self.family, "vendor": self.vendor, "id": self.id,
                "release_date": self.release_date, "eol_date": self.eol_date}


def _text(node: ET.Element, tag: str) -> str:
    found = node.find(tag)
    return (found.text or "").strip() if found is not None else ""


def _resources(node: ET.Element) -> dict[str, int]:
    out: dict[str, int] = {}
    for res in node.findall("resources"):
        if res.get("arch") not in ("all", "x86_64", None):
            continue
        for level in ("minimum", "recommended"):  # recommended overrides minimum
            block = res.find(level)
            if block is None:
                continue
            for key in ("ram", "storage", "n-cpus"):
                value = _text(block, key)
                if value.isdigit():
                    out[key] = int(value)
    return out


def parse_os(text: str) -> OsEntry | None:
    """One ``<os>`` of a database file."""
    root = ET.fromstring(text)
    node = root.find("os") if root.tag != "os" else root
    if node is None:
        return None
    parents = [link.get("id", "") for link in node.findall("derives-from")]
    parents += [link.get("id", "") for link in node.findall("clones")]
    devices = [d.get("id", "") for d in node.iter("device")]
    virtio = True if any(d.startswith(_VIRTIO_VENDOR) for d in devices) else None
    return OsEntry(id=node.get("id", ""),
                   short_ids=[(s.text or "").strip() for s in node.findall("short-id")],
                   name=_text(node, "name"), family=_text(node, "family"),
                   vendor=_text(node, "vendor"), version=_text(node, "version"),
                   release_date=_text(node, "release-date"), eol_date=_text(node, "eol-date"),
                   parents=[p for p in parents if p], resources=_resources(node),
                   virtio=virtio)


class OsinfoDb:
    """The OS entries of one osinfo database folder, by id and by short-id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_id: dict[str, OsEntry] = {}
        self.by_short: dict[str, OsEntry] = {}
        for path in sorted((root / "os").rglob("*.xml")):
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
        resources: dict[str, int] = {}
        for entry in reversed(chain):
            resources.update(entry.resources)
        virtio = next((e.virtio for e in chain if e.virtio is not None), False)
        ram = resources.get("ram")
        return OsDefaults(memory_mib=ram // 2**20 if ram else 1024,
                          vcpus=resources.get("n-cpus"),
                          storage_bytes=resources.get("storage"), virtio=virtio)

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
