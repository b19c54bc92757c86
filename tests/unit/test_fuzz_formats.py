"""Fuzz the two text front doors: libvirt domain XML (``domain_from_xml``) and
virt-install's option syntax (``parse_command_line``).

Whatever comes in, the only exceptions allowed out are VirtkitError subclasses (a
clear refusal), and every example must finish within hypothesis's deadline (no
hang, no quadratic blow-up).  What is accepted must also validate as a domain or be
refused by the model with an InvalidSpec.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.errors import VirtkitError
from virtkit.formats.libvirt_xml import domain_from_xml
from virtkit.formats.virtinstall import all_option_names, parse_command_line
from virtkit.model.load import load_domain

DATA = Path(__file__).parent.parent / "data" / "xml"
SAMPLES = [path.read_text() for path in sorted(DATA.glob("*.xml"))
           if path.name.startswith(("vi-", "vm-", "export-")) and "-net-" not in path.name
           and "-pool-" not in path.name]
# CI runs the same examples every time (a red CI must be reproducible); a developer's
# run draws new ones
FUZZ = settings(max_examples=300, deadline=2000, database=None,
                derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: values that have broken parsers before, mixed with random text
SPICY = ["", " ", "0", "-1", "1e999", "99999999999999999999", "NaN", "yes", "on", "none",
         "a,b", "a=b", "../../x", "/dev/sda", "/a,file.driver=ssh", "\u202e", "ü", "0x10",
         "1G", "512M", "1.5", "auto", "vnc", "virtio", "q35", "pc", "uefi", "hvm", "kvm",
         "²", "٣", "9" * 5000, "1" + "0" * 30]
TEXT = st.one_of(st.sampled_from(SPICY), st.text(max_size=30),
                 st.integers(-2**70, 2**70).map(str))
# XML 1.0 cannot carry most control characters: keep the text serialisable
XML_TEXT = TEXT.map(lambda s: "".join(c for c in s if c in "\t\n\r" or c >= " ")
                    .replace("\ud800", ""))


def _check_xml(text: str, force: bool) -> None:
    try:
        spec, warnings = domain_from_xml(text, force=force)
        assert isinstance(warnings, list)
        load_domain(spec)
    except VirtkitError:
        pass


def _elements(root: ET.Element) -> list[ET.Element]:
    return list(root.iter())


@FUZZ
@given(st.data())
def test_mutated_real_domain_xml(data: st.DataObject) -> None:
    root = ET.fromstring(data.draw(st.sampled_from(SAMPLES)))
    for _ in range(data.draw(st.integers(1, 6))):
        elements = _elements(root)
        element = data.draw(st.sampled_from(elements))
        action = data.draw(st.sampled_from(["attr", "text", "drop", "dup", "newattr"]))
        if action == "attr" and element.attrib:
            key = data.draw(st.sampled_from(sorted(element.attrib)))
            element.set(key, data.draw(XML_TEXT))
        elif action == "text":
            element.text = data.draw(XML_TEXT)
        elif action == "drop" and element is not root:
            parent = next(p for p in elements if element in list(p))
            parent.remove(element)
        elif action == "dup" and element is not root:
            parent = next(p for p in elements if element in list(p))
            parent.append(ET.fromstring(ET.tostring(element)))
        elif action == "newattr":
            element.set(data.draw(st.sampled_from(["type", "dev", "bus", "file", "unit",
                                                   "name", "mode", "model", "port"])),
                        data.draw(XML_TEXT))
    _check_xml(ET.tostring(root, encoding="unicode"), data.draw(st.booleans()))


@FUZZ
@given(st.sampled_from(SAMPLES), st.integers(0, 10**6), st.integers(0, 40),
       st.text(max_size=10), st.booleans())
def test_byte_mutated_domain_xml(sample: str, at: int, cut: int, insert: str,
                                 force: bool) -> None:
    at %= len(sample)
    _check_xml(sample[:at] + insert + sample[at + cut:], force)


TAGS = ["domain", "name", "uuid", "memory", "currentMemory", "vcpu", "os", "type", "boot",
        "kernel", "initrd", "cmdline", "loader", "nvram", "features", "acpi", "cpu", "model",
        "feature", "topology", "devices", "disk", "source", "target", "driver", "readonly",
        "interface", "mac", "graphics", "video", "serial", "console", "channel", "controller",
        "filesystem", "sound", "watchdog", "rng", "memballoon", "hostdev", "address",
        "numatune", "cputune", "vcpupin", "on_poweroff", "on_reboot", "on_crash", "clock",
        "parallel", "backend", "emulator", "input", "metadata", "title", "description"]
ATTRS = ["type", "dev", "bus", "file", "unit", "name", "mode", "model", "port", "path",
         "machine", "arch", "cache", "io", "address", "listen", "autoport", "placement",
         "cpuset", "vcpu", "nodeset", "current", "sockets", "cores", "threads", "policy",
         "accessmode", "domain", "slot", "function", "managed", "keymap", "passwd"]


def _tree() -> st.SearchStrategy[ET.Element]:
    def leaf(tag: str, attrs: dict[str, str], text: str | None) -> ET.Element:
        element = ET.Element(tag, attrs)
        element.text = text
        return element

    base = st.builds(leaf, st.sampled_from(TAGS),
                     st.dictionaries(st.sampled_from(ATTRS), XML_TEXT, max_size=3),
                     st.none() | XML_TEXT)

    def extend(children: st.SearchStrategy[list[ET.Element]]) -> st.SearchStrategy[ET.Element]:
        def node(element: ET.Element, kids: list[ET.Element]) -> ET.Element:
            element.extend(kids)
            return element

        return st.builds(node, base, st.lists(children, max_size=5))

    return st.recursive(base, lambda kids: extend(kids), max_leaves=40)


@FUZZ
@given(_tree(), st.booleans())
def test_random_domain_trees(tree: ET.Element, force: bool) -> None:
    tree.tag = "domain"
    _check_xml(ET.tostring(tree, encoding="unicode"), force)


OPTIONS = all_option_names()
KEYS = ["path", "size", "format", "bus", "device", "cache", "pool", "vol", "network",
        "bridge", "model", "mac", "type", "listen", "port", "password", "keymap", "kernel",
        "initrd", "cmdline", "kernel_args", "cores", "sockets", "threads", "maxvcpus",
        "memory", "maxmemory", "currentMemory", "hugepages", "name", "target", "readonly",
        "sparse", "boot", "uefi", "firmware", "loader", "source", "mode", "accessmode",
        "driver", "io", "discard", "serial", "id", "detect", "require", "cpuset", "placement",
        "backing_store", "backing_format", "startup_policy", "address.type", "rom.bar"]


def _suboptions() -> st.SearchStrategy[str]:
    part = st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), TEXT),
        TEXT,
        st.builds(lambda k, v: f'{k}="{v}"', st.sampled_from(KEYS), TEXT),
    )
    return st.lists(part, min_size=1, max_size=5).map(",".join)


def _argv() -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(OPTIONS), st.one_of(_suboptions(), TEXT, st.none()))

    def flatten(pairs: list[tuple[str, str | None]]) -> list[str]:
        words: list[str] = []
        for option, value in pairs:
            words.append(option)
            if value is not None:
                words.append(value)
        return words

    return st.lists(pair, max_size=8).map(flatten)


def _check_install(argv: list[str]) -> None:
    try:
        request = parse_command_line(argv)
        load_domain(request.domain)
    except VirtkitError:
        pass


BASE_LINE = ["--name", "fuzz", "--memory", "256", "--import", "--osinfo",
             "detect=on,require=off", "--disk", "/srv/fuzz.img"]


@FUZZ
@given(st.booleans(), _argv())
def test_random_virt_install_lines(on_a_valid_line: bool, argv: list[str]) -> None:
    _check_install([*BASE_LINE, *argv] if on_a_valid_line else argv)


@FUZZ
@given(st.sampled_from(["--disk", "--network", "--graphics", "--boot", "--cpu", "--vcpus",
                        "--memory", "--filesystem", "--serial", "--channel", "--controller",
                        "--sound", "--video", "--rng", "--watchdog", "--cdrom", "--location",
                        "--osinfo", "--host-device", "--memorybacking", "--numatune",
                        "--features", "--clock", "--cloud-init", "--install"]),
       _suboptions())
def test_one_option_with_random_suboptions(option: str, value: str) -> None:
    _check_install([*BASE_LINE, option, value])  # valid but for the option under test


NET_POOL_SAMPLES = [path.read_text() for path in sorted(DATA.glob("*.xml"))
                    if path.name.startswith(("net-", "pool-", "export-net", "export-pool"))]


@FUZZ
@given(st.data())
def test_mutated_network_and_pool_xml(data: st.DataObject) -> None:
    from virtkit.formats.libvirt_network_xml import network_from_xml
    from virtkit.formats.libvirt_pool_xml import pool_from_xml
    from virtkit.model.network import load_network
    from virtkit.service.storage import load_pool

    root = ET.fromstring(data.draw(st.sampled_from(NET_POOL_SAMPLES)))
    for _ in range(data.draw(st.integers(1, 6))):
        element = data.draw(st.sampled_from(_elements(root)))
        if element.attrib and data.draw(st.booleans()):
            element.set(data.draw(st.sampled_from(sorted(element.attrib))), data.draw(XML_TEXT))
        else:
            element.text = data.draw(XML_TEXT)
    text = ET.tostring(root, encoding="unicode")
    force = data.draw(st.booleans())
    try:
        if root.tag == "network":
            load_network(network_from_xml(text, force=force)[0])
        else:
            load_pool(pool_from_xml(text, force=force)[0])
    except VirtkitError:
        pass
