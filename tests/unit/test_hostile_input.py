"""Hostile names and paths through every way in: the model + argv builder, the libvirt
XML importer and the virt-install parser (the daemon API is tests/real/test_security.py).

Each value must either arrive as the literal it is (inside one JSON value of a
``-blockdev``/``-device``/``-object``, or comma-escaped in a ``key=value`` option) or be
refused with an InvalidSpec naming the field.  Never may it add an option or a key.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from virtkit.errors import InvalidSpec, VirtkitError
from virtkit.formats.libvirt_xml import domain_from_xml
from virtkit.formats.virtinstall import parse_command_line
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.load import load_domain
from virtkit.qemu.argv import build_argv

#: hostile text: (id, value, refused as a *name*, refused inside a *path*)
HOSTILE: list[tuple[str, str, bool, bool]] = [
    ("comma", "a,b", False, False),
    ("double-comma", "a,,b", False, False),
    ("equals", "a=b", False, False),
    ("blockdev-injection", "a,file.driver=ssh,file.host=evil", False, False),
    ("option-injection", "x,readonly=on,id=charmonitor", False, False),
    ("double-quote", 'a"b', False, False),
    ("single-quote", "a'b", False, False),
    ("newline", "a\nb", True, True),
    ("carriage-return", "a\rb", True, True),
    ("tab", "a\tb", True, True),
    ("nul", "a\x00b", True, True),
    ("escape", "a\x1b[2Jb", True, True),
    ("delete", "a\x7fb", True, True),
    ("dotdot-path", "../../etc/passwd", True, False),
    ("dotdot", "..", True, False),
    ("dot", ".", True, False),
    ("very-long", "x" * 300, True, False),
    ("unicode", "ünïcødé-名前-🙂", False, False),
    ("shell", "$(reboot);`id`|rm -rf / &", True, False),  # '/' is refused in names
    ("dash", "-readconfig", True, False),  # the naming rule: never starts with "-"
    ("uuid-shaped", "65707b9d-22e8-4cf0-92df-46a47793fcd8", True, False),
    ("lone-surrogate", "a\udc80b", True, True),
    # braces: refused in names (no API route matches them), literal in paths
    ("json-protocol", 'json:{"driver":"ssh","host":"evil"}', True, False),
    ("space", "a b", False, False),
    ("percent-hash", "a%2F?#b", False, False),
]
IDS = [case[0] for case in HOSTILE]

CAPS = HostCaps(accel="tcg", machine_aliases={"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"})


def _files(domain: Domain) -> LaunchFiles:
    fds = {"qmp": 3, "agent": 4, **{f"serial{i}": 5 + i for i in range(len(domain.serials))}}
    return LaunchFiles("/run/virtkit/" + domain.uuid, "/var/log/virtkit/" + domain.uuid, fds)


def _argv(spec: dict[str, Any]) -> list[str]:
    domain = load_domain(spec)
    return build_argv(domain, CAPS, _files(domain), "/usr/bin/qemu-system-x86_64")


def split_qemu_options(text: str) -> list[str]:
    """Split QEMU's ``key=value,...`` syntax the way QEMU does: ``,,`` is a literal comma."""
    parts, current, index = [], [], 0
    while index < len(text):
        if text[index] == ",":
            if text[index + 1:index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[index])
        index += 1
    parts.append("".join(current))
    return parts


def options_of(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def _hostile_spec(value: str) -> dict[str, Any]:
    """A q35 spec that carries ``value`` in every host path field that reaches argv."""
    base = f"/srv/{value}"
    return {
        "name": "hostile", "memory": 128,
        "boot": {"kernel": f"{base}/vmlinuz", "initrd": f"{base}/initrd",
                 "cmdline": f"console=ttyS0 x={value}"},
        "disks": [{"path": f"{base}/disk.img", "format": "raw"}],
        "serials": [{"log_path": f"{base}/serial.log"}],
        "channels": [{"name": "org.example.0", "path": f"{base}/chan.sock"}],
        "parallels": [{"path": f"{base}/lpt.txt"}],
        "filesystems": [{"source": f"{base}/share", "target": "share", "driver": "9p"}],
    }


# -- (a) the model and the argv builder ----------------------------------------------------

@pytest.mark.parametrize(("value", "name_refused"), [(c[1], c[2]) for c in HOSTILE], ids=IDS)
def test_hostile_domain_name(value: str, name_refused: bool) -> None:
    spec = {"name": value, "memory": 128}
    if name_refused:
        with pytest.raises(InvalidSpec) as caught:
            load_domain(spec)
        assert caught.value.field == "name"
        return
    argv = _argv(spec)
    (name_option,) = options_of(argv, "-name")
    parts = split_qemu_options(name_option)
    assert parts == [f"guest={value}", "debug-threads=on"]


@pytest.mark.parametrize(("value", "path_refused"), [(c[1], c[3]) for c in HOSTILE], ids=IDS)
def test_hostile_paths_reach_qemu_as_literals(value: str, path_refused: bool) -> None:
    spec = _hostile_spec(value)
    if path_refused:
        with pytest.raises(InvalidSpec) as caught:
            load_domain(spec)
        assert caught.value.field, "the error must name the field"
        assert any(part in caught.value.field for part in
                   ("boot", "disks", "serials", "channels", "parallels", "filesystems"))
        return
    base = f"/srv/{value}"
    argv = _argv(spec)
    # JSON options: the path is one literal value, and no ssh (or other) driver appears
    blockdevs = [json.loads(text) for text in options_of(argv, "-blockdev")]
    assert [b["filename"] for b in blockdevs if "filename" in b] == [f"{base}/disk.img"]
    assert {b["driver"] for b in blockdevs} <= {"file", "raw"}
    for text in options_of(argv, "-device") + options_of(argv, "-object"):
        obj = json.loads(text)
        assert ("file" not in obj and "host" not in obj) or obj.get("driver") == "vfio-pci"
    # plain words: the whole value, unsplit
    assert options_of(argv, "-kernel") == [f"{base}/vmlinuz"]
    assert options_of(argv, "-initrd") == [f"{base}/initrd"]
    assert options_of(argv, "-append") == [f"console=ttyS0 x={value}"]
    # key=value options: after un-doubling commas, exactly the expected keys
    chardevs = [split_qemu_options(text) for text in options_of(argv, "-chardev")]
    expected = {"logfile": f"{base}/serial.log", "path": None}
    seen_paths = set()
    for parts in chardevs:
        keys = [part.split("=", 1)[0] for part in parts[1:]]
        assert len(keys) == len(set(keys)), parts
        assert set(keys) <= {"id", "fd", "server", "wait", "logfile", "logappend", "path"}
        for part in parts[1:]:
            key, _, val = part.partition("=")
            if key in expected:
                seen_paths.add(val)
    assert {f"{base}/serial.log", f"{base}/chan.sock", f"{base}/lpt.txt"} <= seen_paths
    (fsdev,) = [split_qemu_options(text) for text in options_of(argv, "-fsdev")]
    assert fsdev[0] == "local"
    assert dict(part.split("=", 1) for part in fsdev[1:]) == {
        "id": "fsdev0", "path": f"{base}/share", "security_model": "passthrough"}


@pytest.mark.parametrize("field,value", [
    (("graphics", "keymap"), "en-us,id=x"),
    (("graphics", "keymap"), "de\n"),
    (("disks", 0, "target"), "vda,id=x"),
    (("disks", 0, "target"), "../vda"),
    (("cpu", "model"), "max,+vmx"),
    (("graphics", "listen"), "0.0.0.0,password=off"),
    (("nics", 0, "mac"), "52:54:00:00:00:01,id=x"),
    (("nics", 0, "bridge"), "br0,vhost=on"),
    (("channels", 0, "name"), "org.x,id=y"),
    (("filesystems", 0, "target"), "tag,id=y"),
    (("disks", 0, "serial"), "abc,drive=x"),
])
def test_values_without_an_escape_are_refused_by_name(field: tuple[Any, ...], value: str) -> None:
    spec: dict[str, Any] = {
        "name": "x", "memory": 128, "graphics": {"type": "vnc"}, "cpu": {"model": "max"},
        "disks": [{"path": "/srv/x.img"}], "nics": [{"bridge": "br0"}],
        "channels": [{"name": "org.example.0"}],
        "filesystems": [{"source": "/srv/share", "target": "share"}],
    }
    node: Any = spec
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    with pytest.raises(InvalidSpec) as caught:
        load_domain(spec)
    expected = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in field)
    assert caught.value.field == expected.lstrip(".")


# -- (b) the libvirt XML importer ----------------------------------------------------------

def _domain_xml(name: str, path: str) -> str:
    root = ET.Element("domain", type="kvm")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", unit="MiB").text = "128"
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize(("value", "name_refused", "path_refused"),
                         [(c[1], c[2], c[3]) for c in HOSTILE], ids=IDS)
def test_hostile_values_through_libvirt_xml(value: str, name_refused: bool,
                                            path_refused: bool) -> None:
    path = f"/srv/{value}.img"
    try:
        spec, _ = domain_from_xml(_domain_xml(value, path))
        domain = load_domain(spec)
    except InvalidSpec as exc:
        assert name_refused or path_refused, f"refused a value that works: {exc}"
        # XML 1.0 cannot carry most control characters: refused as bad XML, or by field
        return
    assert not name_refused and not path_refused
    assert domain.name == value
    assert domain.disks[0].path == path
    argv = build_argv(domain, CAPS, _files(domain), "qemu")
    blockdevs = [json.loads(text) for text in options_of(argv, "-blockdev")]
    assert blockdevs[0]["filename"] == path


# -- (c) the virt-install option parser ----------------------------------------------------

def _quoted(value: str) -> str | None:
    """virt-install's sub-option quoting: the value inside " or ' (None: cannot be)."""
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return None


@pytest.mark.parametrize(("value", "name_refused", "path_refused"),
                         [(c[1], c[2], c[3]) for c in HOSTILE], ids=IDS)
def test_hostile_values_through_virt_install(value: str, name_refused: bool,
                                             path_refused: bool) -> None:
    path = f"/srv/{value}.img"
    quoted = _quoted(path)
    if quoted is None:
        pytest.skip("a value with both quote kinds cannot be written in a sub-option")
    argv = [f"--name={value}", "--memory", "128", "--import", "--osinfo", "detect=on,"
            "require=off", "--disk", f"path={quoted},format=raw", "--graphics", "none"]
    try:
        request = parse_command_line(argv)
        domain = load_domain(request.domain)
    except InvalidSpec as exc:
        assert name_refused or path_refused, f"refused a value that works: {exc}"
        assert exc.field or "name" in exc.message or "path" in exc.message
        return
    assert not name_refused and not path_refused
    assert domain.name == value
    assert [d.path for d in domain.disks] == [path]


@pytest.mark.parametrize("disk", [
    "path=/srv/a.img,file.driver=ssh,file.host=evil",
    "/srv/a.img,readonly=on,id=x",
    "path=/srv/a.img,format=raw,driver.file=x",
])
def test_unquoted_injection_in_virt_install_is_refused(disk: str) -> None:
    with pytest.raises(VirtkitError):
        parse_command_line(["--name", "x", "--memory", "128", "--import", "--disk", disk,
                            "--osinfo", "detect=on,require=off"])
