"""Other programs' domain metadata (libosinfo's OS id, virsh metadata) kept through
import, the spec and dumpxml (formats/libvirt_metadata.py)."""

from __future__ import annotations

import pytest

from virtkit.errors import InvalidSpec
from virtkit.formats import libvirt_metadata as md
from virtkit.formats.libvirt_xml import domain_from_xml, domain_to_xml
from virtkit.model.load import load_domain

OSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
DOC = f"""<domain type='kvm'><name>t</name><memory>262144</memory>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="{OSINFO}">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
    <app1:foo xmlns:app1="http://app1.org/" a="1 &amp; 2"><app1:bar>x &lt; y</app1:bar></app1:foo>
  </metadata></domain>"""


def test_import_keeps_prefixes_and_drops_indentation() -> None:
    spec, warnings = domain_from_xml(DOC)
    assert warnings == []
    assert spec["metadata"] == {
        OSINFO: f'<libosinfo:libosinfo xmlns:libosinfo="{OSINFO}">'
                '<libosinfo:os id="http://debian.org/debian/12"/></libosinfo:libosinfo>',
        "http://app1.org/": '<app1:foo xmlns:app1="http://app1.org/" a="1 &amp; 2">'
                            "<app1:bar>x &lt; y</app1:bar></app1:foo>"}


def test_dumpxml_writes_them_back_where_libvirt_keeps_them() -> None:
    spec, _ = domain_from_xml(DOC)
    text = domain_to_xml(load_domain(spec))
    assert f'<libosinfo:libosinfo xmlns:libosinfo="{OSINFO}">' in text
    assert '<libosinfo:os id="http://debian.org/debian/12"/>' in text
    assert domain_from_xml(text)[0]["metadata"] == spec["metadata"]


def test_virsh_metadata_set_and_show() -> None:
    text = md.prefixed(md.parse('<foo a="1"><bar>x</bar></foo>'), "http://app1.org/", "app1")
    assert text == ('<app1:foo xmlns:app1="http://app1.org/" a="1"><app1:bar>x</app1:bar>'
                    "</app1:foo>")
    assert md.shown(text) == '<foo a="1">\n  <bar>x</bar>\n</foo>\n'  # virsh's layout


@pytest.mark.parametrize(("text", "key", "message"), [
    ("<foo>", "k", "not one well-formed XML element"),
    ("<!DOCTYPE x><foo/>", "k", "no DOCTYPE"),
    ("<foo/>", "1bad", "is not an XML namespace prefix"),
    ("<foo/>", "xmlns", "is not an XML namespace prefix"),
    ('<o:foo xmlns:o="http://other/"/>', "k", "is in namespace 'http://other/'"),
])
def test_bad_metadata_is_refused(text: str, key: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        md.prefixed(md.parse(text), "http://app1.org/", key)


def test_the_model_bounds_metadata() -> None:
    with pytest.raises(InvalidSpec, match="not a URI"):
        load_domain({"name": "t", "memory": 64, "metadata": {"": "<a/>"}})
    with pytest.raises(InvalidSpec, match="one XML element"):
        load_domain({"name": "t", "memory": 64, "metadata": {"u:x": "plain text"}})
