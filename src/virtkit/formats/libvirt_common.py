"""What every libvirt XML reader shares: safe parsing, sizes, and the refusal rule.

:class:`XmlReader` knows where each element sits (``devices/disk[2]/source``) and
collects what virtkit cannot honour.  :meth:`XmlReader.finish` then either raises
one :class:`InvalidSpec` listing every refused location (without ``force``) or
turns each into a ``dropped ...`` warning (with ``force``).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable

from virtkit.errors import InvalidSpec
from virtkit.model.domain import DiskBus
from virtkit.model.naming import text_problem

VIRTKIT_NS = "urn:virtkit:domain:1"
_PREFIXES = {VIRTKIT_NS: "virtkit", "http://libvirt.org/schemas/domain/qemu/1.0": "qemu"}

FORCE_FIX = "remove them, or pass --force to drop them with a warning"
TARGET_PREFIX = {DiskBus.VIRTIO: "vd", DiskBus.SATA: "sd", DiskBus.SCSI: "sd", DiskBus.IDE: "hd"}
#: children any device may carry: where libvirt put it, and its name in live XML
PLACEMENT = ("address", "alias")


_MARKUP = re.compile(r"<[^<>]*>")
_DOUBLE_QUOTED = re.compile(r'="([^"]*)"')
_METADATA = re.compile(r"(<metadata>.*?</metadata>)", re.DOTALL)


def _single_quotes(markup: re.Match[str]) -> str:
    return _DOUBLE_QUOTED.sub(lambda a: "='" + a.group(1).replace("'", "&apos;") + "'",
                              markup.group(0))


def libvirt_text(root: ET.Element) -> str:
    """An element as libvirt writes its XML: attributes in single quotes
    (``<disk type='file'>``), empty elements as ``<x/>``, a final newline.  The contents
    of ``<metadata>`` keep double quotes, as libvirt dumps them through libxml2.

    ElementTree escapes ``<``, ``>`` and ``"`` in attribute values and ``<``/``>`` in
    text, so every raw ``<...>`` of its output is markup and every ``="..."`` in it an
    attribute: rewriting those is exact."""
    text = ET.tostring(root, encoding="unicode").replace(" />", "/>")
    parts = _METADATA.split(text)
    return "".join(part if index % 2 else _MARKUP.sub(_single_quotes, part)
                   for index, part in enumerate(parts)) + "\n"


def disk_name(prefix: str, index: int) -> str:
    """libvirt's disk names: vda .. vdz, vdaa, vdab ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


#: how deep elements may nest in XML we read (libvirt's own documents stay under 10)
MAX_XML_DEPTH = 64
#: how many elements one XML document may hold (a domain with 256 disks and NICs
#: has a few thousand)
MAX_XML_ELEMENTS = 50_000


class _BoundedBuilder(ET.TreeBuilder):
    """A tree builder that stops the parse as soon as the document nests deeper than
    :data:`MAX_XML_DEPTH` or holds more than :data:`MAX_XML_ELEMENTS` elements: bounds
    checked while reading, before any recursive walk of the tree could overflow the
    stack (3,000 nested elements raised RecursionError) or a huge tree filled memory."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.count = 0

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self.depth += 1
        self.count += 1
        if self.depth > MAX_XML_DEPTH:
            raise InvalidSpec(f"the XML document nests elements more than {MAX_XML_DEPTH} "
                              "deep; libvirt XML never does", field="xml")
        if self.count > MAX_XML_ELEMENTS:
            raise InvalidSpec(f"the XML document has more than {MAX_XML_ELEMENTS} elements",
                              field="xml")
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self.depth -= 1
        return super().end(tag)


def parse_bounded(text: str) -> ET.Element:
    """``ET.fromstring`` with the depth and element-count bounds: the one way virtkit
    parses XML it is given (raises ET.ParseError for bad XML, InvalidSpec past a bound)."""
    parser = ET.XMLParser(target=_BoundedBuilder())  # noqa: S314 - bounded builder; expat fetches no external entity
    parser.feed(text)
    root: ET.Element = parser.close()
    return root


def parse_document(text: str, root_tag: str | tuple[str, ...], *,
                   command: str) -> ET.Element:
    """Parse ``text`` into its root element, refusing DTDs, bad XML and other roots
    (``root_tag``: the one expected, or a tuple of those accepted)."""
    if not text.strip():
        raise InvalidSpec("the XML document is empty", field="xml")
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise InvalidSpec("libvirt XML has no DOCTYPE or entity declarations; remove them",
                          field="xml")
    problem = text_problem(text)
    if problem:
        raise InvalidSpec(f"the XML document {problem}", field="xml")
    try:
        root = parse_bounded(text)
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise InvalidSpec(f"not well-formed XML at line {line}, column {column + 1}: {reason}",
                          field="xml",
                          fix="check the file; it must be one XML document") from None
    accepted = (root_tag,) if isinstance(root_tag, str) else root_tag
    if root.tag not in accepted:
        names = ">, <".join(accepted)
        raise InvalidSpec(f"expected a libvirt <{names}> document, got <{local(root.tag)}>",
                          field="xml", fix=f"'{command}' takes <{names}> XML")
    return root


def local(tag: str) -> str:
    """``{uri}name`` as ``prefix:name`` for namespaces we know, else ``name``."""
    if tag.startswith("{"):
        uri, _, name = tag[1:].partition("}")
        prefix = _PREFIXES.get(uri)
        return f"{prefix}:{name}" if prefix else name
    return tag


_UNITS = {"b": 1, "byte": 1, "bytes": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _UNITS.update({_letter: 1024**_power, _letter + "ib": 1024**_power,
                   _letter + "b": 1000**_power})


def size_bytes(value: str | None, unit: str | None, *, where: str, default: str = "KiB") -> int:
    """A libvirt size (``<memory unit='GiB'>2</memory>``) in bytes."""
    factor = _UNITS.get((unit or default).strip().lower())
    if factor is None:
        raise InvalidSpec(f"{where}: unknown unit {unit!r}; use KiB, MiB, GiB, bytes ...",
                          field="xml")
    text = (value or "").strip()
    if not (text.isascii() and text.isdecimal()) or len(text) > 30:
        raise InvalidSpec(f"{where}: {text[:40]!r} is not a whole number", field="xml")
    return int(text) * factor


def whole_number(value: str | None, *, where: str) -> int:
    """A count such as ``<vcpu current='2'>4</vcpu>``: ASCII digits only, or InvalidSpec."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdecimal()) or len(text) > 9:
        raise InvalidSpec(f"{where}: {text!r} is not a whole number", field="xml")
    return int(text)


def size_mib(value: str | None, unit: str | None, *, where: str, default: str = "KiB") -> int:
    """A libvirt size in MiB, rounded up (libvirt aligns guest memory to MiB for QEMU)."""
    return math.ceil(size_bytes(value, unit, where=where, default=default) / 1024**2)


class XmlReader:
    """Locations of elements, and the refused items of one document."""

    def __init__(self, root: ET.Element, *, force: bool, reasons: dict[str, str]) -> None:
        self.root = root
        self.force = force
        self.reasons = reasons
        self.refused: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self._paths: dict[int, str] = {id(root): ""}
        self._index(root, "")

    def _index(self, element: ET.Element, path: str) -> None:
        counts = Counter(child.tag for child in element)
        seen: Counter[str] = Counter()
        for child in element:
            seen[child.tag] += 1
            name = local(child.tag)
            if counts[child.tag] > 1:
                name += f"[{seen[child.tag]}]"
            child_path = f"{path}/{name}" if path else name
            self._paths[id(child)] = child_path
            self._index(child, child_path)

    def where(self, element: ET.Element, attr: str | None = None) -> str:
        """``devices/disk[2]``, or ``devices/disk[2]/source@protocol='rbd'`` for an attribute."""
        path = self._paths.get(id(element)) or local(self.root.tag)
        if attr is None:
            return path
        return f"{path}@{attr}='{element.get(attr, '')}'"

    def refuse(self, location: str, reason: str | None = None) -> None:
        self.refused.append((location, reason or "not supported by virtkit"))

    def refuse_element(self, element: ET.Element) -> None:
        self.refuse(self.where(element), self.reasons.get(local(element.tag)))

    def note(self, message: str) -> None:
        """A change of meaning worth telling even when nothing is dropped."""
        self.warnings.append(message)

    def check(self, element: ET.Element, attrs: Iterable[str] = (),
              children: Iterable[str] = (), silent: Iterable[str] = ()) -> None:
        """Refuse attributes not in ``attrs`` and children in neither ``children`` nor
        ``silent`` (accepted and ignored; ``address`` and ``alias`` always are)."""
        allowed_attrs = set(attrs)
        for name in element.attrib:
            if name not in allowed_attrs:
                self.refuse(self.where(element, name))
        known = {*children, *silent, *PLACEMENT}
        for child in element:
            if local(child.tag) not in known:
                self.refuse_element(child)

    def finish(self, kind: str) -> list[str]:
        """Raise for refused items (without force), else return the warnings."""
        if self.refused and not self.force:
            count = len(self.refused)
            items = "; ".join(f"{where} ({why})" for where, why in self.refused)
            raise InvalidSpec(
                f"the libvirt {kind} XML uses {count} thing{'s' if count > 1 else ''} "
                f"virtkit cannot honour: {items}", field="xml", fix=FORCE_FIX,
                problems=[f"{where}: {why}" for where, why in self.refused])
        dropped = [f"dropped {where}: {why}" for where, why in self.refused]
        return dropped + self.warnings
