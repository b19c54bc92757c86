"""Other programs' ``<metadata>`` elements (libosinfo's OS id, an application's own
data set with ``virsh metadata``), kept in the spec and written back by dumpxml.

A spec holds each as ``{namespace URI: XML text}``, the text in libvirt's prefixed form
(``<app1:foo xmlns:app1="http://app1.org/">...``), as dumpxml shows it.  ``virsh
metadata`` shows the element without its namespace, as libvirt does.  PURE.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import VIRTKIT_NS

_PREFIX = re.compile(r"[A-Za-z_][\w.-]*")


def _split(tag: str) -> tuple[str, str]:
    """``{uri}local`` -> (uri, local); a tag without a namespace has uri ''."""
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return "", tag


def parse(text: str, *, what: str = "metadata") -> ET.Element:
    """One XML element from ``text``, or InvalidSpec saying why not."""
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise InvalidSpec(f"{what}: no DOCTYPE or entity declarations", field="metadata")
    try:
        return ET.fromstring(text)  # noqa: S314 - expat fetches no external entity
    except ET.ParseError as exc:
        raise InvalidSpec(f"{what} is not one well-formed XML element: {exc}",
                          field="metadata") from None


def prefixed(element: ET.Element, uri: str, key: str) -> str:
    """``element`` (its tags in ``uri``, or in no namespace as ``virsh metadata --set``
    gives them) as libvirt's prefixed text: ``<key:foo xmlns:key="uri">``."""
    if not _PREFIX.fullmatch(key) or key.lower().startswith("xml"):
        raise InvalidSpec(f"metadata key {key!r} is not an XML namespace prefix",
                          field="key", fix="use letters, e.g. --key app1")
    return ET.tostring(_literal(element, uri, key, top=True),
                       encoding="unicode").replace(" />", "/>")


def _literal(element: ET.Element, uri: str, key: str, *, top: bool) -> ET.Element:
    ns, local = _split(element.tag)
    if ns not in ("", uri):
        raise InvalidSpec(f"metadata element <{local}> is in namespace {ns!r}, not {uri!r}",
                          field="metadata")
    attrs = {_split(name)[1]: value for name, value in element.attrib.items()}
    if top:
        attrs = {f"xmlns:{key}": uri, **attrs}
    copy = ET.Element(f"{key}:{local}", attrs)
    # indentation is layout, not data: dumpxml indents again
    copy.text = element.text if (element.text or "").strip() else None
    copy.tail = None if top or not (element.tail or "").strip() else element.tail
    copy.extend(_literal(child, uri, key, top=False) for child in element)
    return copy


def namespace_prefixes(text: str) -> dict[str, str]:
    """Namespace URI -> the first prefix ``text`` declares for it (ElementTree's tree
    keeps no prefixes)."""
    found: dict[str, str] = {}
    try:
        for _event, (prefix, uri) in ET.iterparse(io.StringIO(text), events=("start-ns",)):  # noqa: S314 - as above
            if prefix:
                found.setdefault(uri, prefix)
    except ET.ParseError:
        pass  # the caller parsed it already and reported what is wrong
    return found


def metadata_in(metadata: ET.Element | None, prefixes: dict[str, str]) -> dict[str, str]:
    """The foreign elements of a domain's ``<metadata>`` (virtkit's own excluded), each
    with the prefix the document gave it (else the element's own name)."""
    found: dict[str, str] = {}
    for child in metadata if metadata is not None else ():
        uri, local = _split(child.tag)
        if uri and uri != VIRTKIT_NS and uri not in found:
            key = prefixes.get(uri) or local
            if not _PREFIX.fullmatch(key) or key.lower().startswith("xml"):
                key = "app"
            found[uri] = prefixed(child, uri, key)
    return found


def element_out(uri: str, text: str) -> ET.Element:
    """The stored text as an element to append under ``<metadata>`` (literal prefixes,
    so the namespace is declared on it, where libvirt keeps it)."""
    match = re.match(r"\s*<([A-Za-z_][\w.-]*):", text)
    return _literal(parse(text), uri, match.group(1) if match else "app", top=True)


def shown(text: str) -> str:
    """What ``virsh metadata DOMAIN URI`` prints: the element without its namespace."""
    def strip(element: ET.Element) -> None:
        element.tag = _split(element.tag)[1]
        element.attrib = {_split(k)[1]: v for k, v in element.attrib.items()}
        for child in element:
            strip(child)

    element = parse(text)
    strip(element)
    ET.indent(element, space="  ")
    return ET.tostring(element, encoding="unicode") + "\n"
