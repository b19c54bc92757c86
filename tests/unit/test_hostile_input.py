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


@pytest.mark.parametrize(("field", "value"), [
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


# -- (d) round 2: the naming rule, the text rule, bounded XML and cpusets, secrets, -------
# --     strict requests, terminal escaping (docs/security.md "Hostile input") -------------

UUID_NAMES = ["65707b9d-22e8-4cf0-92df-46a47793fcd8", "65707B9D-22E8-4CF0-92DF-46A47793FCD8",
              "65707b9d22e84cf092df46a47793fcd8", "{65707b9d-22e8-4cf0-92df-46a47793fcd8}",
              "urn:uuid:65707b9d-22e8-4cf0-92df-46a47793fcd8"]
BAD_NAMES = [*UUID_NAMES, "-x", "--help", "-"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_naming_rule_holds_for_every_object_kind(name: str) -> None:
    from virtkit.model.network import load_network
    from virtkit.model.pool import Pool
    from virtkit.model.snapshot import check_name

    for load in (lambda: load_domain({"name": name, "memory": 128}),
                 lambda: load_network({"name": name, "mode": "isolated"})):
        with pytest.raises(InvalidSpec) as caught:
            load()
        assert caught.value.field == "name"
        assert name in caught.value.message
    with pytest.raises(ValueError, match=r"Value error, name "):
        Pool(name=name, target="/srv/pool")
    if not name.startswith(("-", "{", "urn")):  # those break the snapshot pattern anyway
        with pytest.raises(InvalidSpec, match="UUID"):
            check_name(name)


@pytest.mark.parametrize("name", ["vm-65707b9d", "65707b9d-22e8", "a-b", "x-", "uuid",
                                  "65707b9d-22e8-4cf0-92df-46a47793fcd8x"])
def test_names_near_the_rule_stay_allowed(name: str) -> None:
    assert load_domain({"name": name, "memory": 128}).name == name


def test_a_stored_object_from_before_the_rule_keeps_loading_and_only_it() -> None:
    from virtkit.model import naming

    legacy, uuid = "-legacy", "0b6c3a4e-8d2f-4a57-9f1e-3c2d1b0a9e8f"
    naming.grandfather(legacy, uuid)
    try:
        assert load_domain({"name": legacy, "uuid": uuid, "memory": 128}).name == legacy
        with pytest.raises(InvalidSpec):  # another object may not take that name
            load_domain({"name": legacy, "memory": 128})
    finally:
        naming._GRANDFATHERED.discard((legacy, uuid))


@pytest.mark.parametrize("where", [("name",), ("title",), ("description",),
                                   ("disks", 0, "path"), ("boot", "cmdline"),
                                   ("graphics", "password")])
@pytest.mark.parametrize("bad", ["a\udc80b", "\ud800", "a\x00b"])
def test_the_text_rule_refuses_surrogates_and_nul_by_field(where: tuple[Any, ...],
                                                           bad: str) -> None:
    spec: dict[str, Any] = {"name": "x", "memory": 128, "disks": [{"path": "/srv/x.img"}],
                            "boot": {"cmdline": "console=ttyS0"}, "graphics": {"type": "vnc"}}
    node: Any = spec
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = bad
    with pytest.raises(InvalidSpec) as caught:
        load_domain(spec)
    expected = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where).lstrip(".")
    assert caught.value.field == expected
    json.dumps(caught.value.to_dict()).encode()  # the answer itself is encodable


def test_find_bad_text_walks_keys_and_any_depth_without_recursion() -> None:
    from virtkit.model.naming import find_bad_text

    deep: Any = "ok"
    for _ in range(20000):
        deep = [deep]
    assert find_bad_text({"a": deep}) is None
    assert find_bad_text({"a": [{"b\udc80": 1}]}) == ("a[0].b\udc80",
                                                       "field name is not valid Unicode: a lone "
                                                       "surrogate \\udc80 at character 1")
    assert find_bad_text({"a": {"b": "x\x00"}}) == ("a.b", "contains a NUL character")


def _nested(tag: str, depth: int) -> str:
    return f"<{tag}>" * depth + f"</{tag}>" * depth


@pytest.mark.parametrize("kind", ["domain", "network", "pool", "device", "hostdev"])
@pytest.mark.parametrize("depth", [100, 3000, 100000])
def test_deeply_nested_xml_is_refused_before_any_recursion(kind: str, depth: int) -> None:
    from virtkit.formats.libvirt_common import parse_document
    from virtkit.formats.libvirt_device import device_from_xml
    from virtkit.formats.libvirt_network_xml import network_from_xml
    from virtkit.formats.libvirt_pool_xml import pool_from_xml

    deep = _nested("x", depth)
    documents = {
        "domain": (domain_from_xml, f"<domain type='kvm'><name>d</name><memory>1</memory>"
                                    f"<devices>{deep}</devices></domain>"),
        "network": (network_from_xml, f"<network><name>n</name>{deep}</network>"),
        "pool": (pool_from_xml, f"<pool type='dir'><name>p</name>{deep}</pool>"),
        "device": (device_from_xml, f"<disk type='file'>{deep}</disk>"),
        "hostdev": (lambda text: parse_document(text, "hostdev", command="attach-device"),
                    f"<hostdev>{deep}</hostdev>"),
    }
    reader, text = documents[kind]
    with pytest.raises(InvalidSpec, match="nests elements more than 64 deep") as caught:
        reader(text)  # type: ignore[operator]
    assert caught.value.field == "xml"


def test_xml_with_too_many_elements_or_a_surrogate_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="more than 50000 elements"):
        domain_from_xml("<domain>" + "<x/>" * 50001 + "</domain>")
    with pytest.raises(InvalidSpec, match="lone surrogate"):
        domain_from_xml("<domain><name>a\udc80</name></domain>")


@pytest.mark.parametrize("cpuset", [",".join(["0-65535"] * 2000), "0-8192", "99999",
                                    "0-" + "9" * 5000, ",".join(["1"] * 3000)])
def test_big_cpusets_are_refused_quickly_with_a_short_message(cpuset: str) -> None:
    import time

    start = time.monotonic()
    with pytest.raises(InvalidSpec) as caught:
        load_domain({"name": "x", "memory": 128, "vcpus": {"current": 1, "cpuset": cpuset}})
    assert time.monotonic() - start < 2.0  # was 13 s (and a 447 KB answer)
    assert caught.value.field == "vcpus.cpuset"
    assert len(json.dumps(caught.value.to_dict())) < 600


def test_cpusets_within_the_bounds_still_work() -> None:
    domain = load_domain({"name": "x", "memory": 128,
                          "vcpus": {"current": 1, "cpuset": "0-8191,^5"}})
    assert domain.vcpus.cpuset == "0-8191,^5"


def test_secrets_are_left_out_unless_asked_for() -> None:
    from virtkit.formats.libvirt_xml import domain_to_xml
    from virtkit.model.load import (
        domain_to_yaml,
        domain_without_secrets,
        dump_domain,
        without_secrets,
    )

    domain = load_domain({"name": "x", "memory": 128,
                          "graphics": {"type": "vnc", "password": "s3cret"}})
    assert "s3cret" in domain_to_xml(domain)
    assert "passwd" not in domain_to_xml(domain_without_secrets(domain))
    assert domain.graphics.password == "s3cret"  # the copy, not the original, lost it
    assert "s3cret" not in json.dumps(without_secrets(dump_domain(domain)))
    assert "s3cret" not in domain_to_yaml(domain, secrets=False)
    assert "s3cret" in domain_to_yaml(domain)


# -- strict requests (api/requests.py) -----------------------------------------------------

def _mocked(path: str) -> Any:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", path)


@pytest.mark.parametrize(("body", "field"), [
    ({"enabled": "false"}, "enabled"), ({"enabled": 0}, "enabled"),
    ({"enabled": None}, "enabled"), ({"bogus": 1}, "bogus"),
])
def test_request_bodies_are_strict(body: dict[str, Any], field: str) -> None:
    from virtkit.api.requests import AutostartBody, validate_body

    with pytest.raises(InvalidSpec) as caught:
        validate_body(body, AutostartBody)
    assert caught.value.field == field
    assert field in caught.value.message
    assert validate_body({"enabled": False}, AutostartBody).enabled is False


def test_every_route_module_parses_bodies_with_typed_models() -> None:
    from virtkit.api import device_routes, install_routes, snapshot_routes, storage_routes
    from virtkit.api import domain_requests as app
    from virtkit.api.requests import validate_body

    cases = [(app.StartBody, {"paused": "false"}, "paused"),
             (app.ShutdownBody, {"timeout": "5"}, "timeout"),
             (app.ShutdownBody, {"timeout": -1}, "timeout"),
             (app.DomainDefineBody, {"spec": {}, "bogus": 1}, "bogus"),
             (app.UpdateBody, {"spec": {}}, "version"),
             (storage_routes.CreateVolumeBody, {"name": "v", "prealloc_typo": True},
              "prealloc_typo"),
             (storage_routes.ResizeBody, {"capacity": True}, "capacity"),
             (device_routes.VcpusBody, {"count": "2"}, "count"),
             (device_routes.VcpusBody, {"count": 2, "live": "yes"}, "live"),
             (snapshot_routes.CreateBody, {"kind": "weird"}, "kind"),
             (device_routes.AttachInterfaceBody, {"interface": 5}, "interface"),
             (install_routes.InstallBody, {"domain": {}, "method": 5}, "method"),
             (install_routes.InstallBody, {"domain": {}, "method": "import",
                                           "new_disks": [{"bogus": 1}]}, "new_disks[0]"),
             (install_routes.InstallBody, {"domain": {}, "method": "import",
                                           "dry_run": "false"}, "dry_run")]
    for model, body, field in cases:
        with pytest.raises(InvalidSpec) as caught:
            validate_body(body, model)
        assert caught.value.field is not None and field in caught.value.field, (model, body)


@pytest.mark.parametrize(("text", "expected"), [
    ("", True), ("?all=1", True), ("?all=true", True), ("?all=YES", True),
    ("?all=0", False), ("?all=false", False), ("?all=no", False), ("?all=No", False),
])
def test_one_query_flag_parser(text: str, expected: bool) -> None:
    from virtkit.api.requests import ListQuery, query_of

    assert query_of(_mocked("/v1/networks" + text), ListQuery).all is expected


@pytest.mark.parametrize("text", ["?all=maybe", "?all=", "?all=2", "?al=1", "?all=1&all=0"])
def test_query_strings_are_strict(text: str) -> None:
    from virtkit.api.requests import ListQuery, query_of

    with pytest.raises(InvalidSpec) as caught:
        query_of(_mocked("/v1/pools" + text), ListQuery)
    assert caught.value.field in ("all", "al")


# -- the CLI never prints control or bidi characters raw -------------------------------------

HOSTILE_TEXT = ["evil\u202etxt.exe", "a\x1b[2Jb", "c\x9bd", "e\u2066f\u2069", "g\x07h",
                "i\u200fj", "k\nl", "m\ufeffn"]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_render_escapes_control_and_bidi_characters_everywhere(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import re

    from virtkit.cli import render

    unsafe = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                        "\u202a-\u202e\u2066-\u2069\ufeff]")
    out = io.StringIO()
    render.table(["Name", "State"], [[text, "running"]], stream=out)
    render.keyvalues([("Name", text), ("Title", text)], stream=out)
    render.status_lines([{"name": text, "status": "FAIL", "detail": text, "fix": text}],
                        stream=out)
    render.error(text, fix=text, detail=text)
    printed = out.getvalue() + capsys.readouterr().err
    assert not unsafe.search(printed.replace("\n", "")), repr(printed)
    assert render.safe(text) in printed
    render.as_json({"name": text})  # JSON stays JSON
    assert json.loads(capsys.readouterr().out) == {"name": text}


def test_the_terminal_backstop_escapes_what_plain_prints_carry() -> None:
    import io

    from virtkit.cli.render import _SafeTerminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    raw = Tty()
    terminal = _SafeTerminal(raw)  # type: ignore[arg-type]
    print("Domain 'evil\u202etxt\x9b' started\n\x1b[1mbold\x1b[0m", file=terminal)
    assert raw.getvalue() == "Domain 'evil\\u202etxt\\x9b' started\n\x1b[1mbold\x1b[0m\n"


def test_double_dash_ends_the_options() -> None:
    from virtkit.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["dumpxml", "--security-info", "--", "--name"])
    assert (args.domain, args.security_info) == ("--name", True)


def test_host_passthrough_cpu_runs_as_max_under_tcg() -> None:
    """virt-manager's default <cpu mode='host-passthrough'> must start on a TCG host
    (QEMU refuses '-cpu host' without KVM); under KVM it stays 'host'."""
    spec = {"name": "hp", "memory": 256, "cpu": {"model": "host", "features": ["-svm"]}}
    argv = _argv(spec)
    assert argv[argv.index("-cpu") + 1] == "max,svm=off"
    domain = load_domain(spec)
    kvm = HostCaps(accel="kvm", machine_aliases=CAPS.machine_aliases)
    argv = build_argv(domain, kvm, _files(domain), "/usr/bin/qemu-system-x86_64")
    assert argv[argv.index("-cpu") + 1] == "host,svm=off"


def test_deeply_nested_yaml_is_refused_before_parsing() -> None:
    """A spec nested thousands deep would keep PyYAML (and the event loop) busy for
    seconds: it is refused by a bound read without parsing, naming the limit."""
    from virtkit.model.load import MAX_NESTING, nesting_bound, parse_text

    for text in ("[" * 3000 + "]" * 3000, "".join(f"{' ' * i}a{i}:\n" for i in range(200))):
        assert nesting_bound(text) > MAX_NESTING
        with pytest.raises(InvalidSpec, match="nests more than"):
            parse_text(text)
    assert parse_text("name: vm\nmemory: 256\ndisks:\n  - path: /x\n    bus: virtio\n") == {
        "name": "vm", "memory": 256, "disks": [{"path": "/x", "bus": "virtio"}]}


# -- daemon-to-daemon migration bodies (api/requests.py IncomingBody, OfflineIncomingBody) --

def _incoming_body() -> dict[str, Any]:
    """What a source daemon sends (service/migrations.py, runtime/migration.py)."""
    spec = {"name": "m", "uuid": "0a8e9c1e-3a55-4c3e-9d35-5a0f2a5b0c11", "memory": 128}
    return {"keepalive": 5.0, "spec": spec, "persistent_spec": spec, "postcopy": False,
            "deadline": 630, "machine_type": "pc-q35-7.2", "accelerator": "tcg",
            "address": "127.0.0.1",
            "copy_storage": {"disks": [{"device": "virtio-disk0", "path": "/x/a.qcow2",
                                        "format": "qcow2", "size": 1048576,
                                        "backing": {"path": "/x/b.raw", "format": "raw"}}]}}


@pytest.mark.parametrize(("change", "field"), [
    ({"bogus": 1}, "bogus"), ({"postcopy": "false"}, "postcopy"),
    ({"deadline": "600"}, "deadline"), ({"deadline": float("inf")}, "deadline"),
    ({"deadline": -1}, "deadline"), ({"keepalive": True}, "keepalive"),
    ({"spec": "name: m"}, "spec"), ({"persistent_spec": []}, "persistent_spec"),
    ({"machine_type": 7}, "machine_type"), ({"address": None}, "address"),
    ({"copy_storage": {"disks": []}}, "copy_storage.disks"),
    ({"copy_storage": {"disks": [{"device": "d", "path": "/p", "size": "1"}]}},
     "copy_storage.disks[0].size"),
    ({"copy_storage": {"disks": [{"device": "d", "path": "/p", "size": 1, "x": 1}]}},
     "copy_storage.disks[0].x"),
    ({"copy_storage": {"disks": [{"device": "d", "path": "/p", "size": 0}]}},
     "copy_storage.disks[0].size"),
])
def test_incoming_migration_bodies_are_strict(change: dict[str, Any], field: str) -> None:
    from virtkit.api.requests import IncomingBody, OfflineIncomingBody, validate_body

    assert validate_body(_incoming_body(), IncomingBody).deadline == 630
    with pytest.raises(InvalidSpec) as caught:
        validate_body({**_incoming_body(), **change}, IncomingBody)
    assert caught.value.field == field, caught.value.message
    assert field.split(".")[-1].split("[")[0] in caught.value.message
    offline = {key: _incoming_body()[key] for key in ("spec", "address", "copy_storage")}
    validate_body(offline, OfflineIncomingBody)
    if field.split(".")[0] in offline:
        with pytest.raises(InvalidSpec):
            validate_body({**offline, **change}, OfflineIncomingBody)
    with pytest.raises(InvalidSpec) as caught:  # a live-migration field is unknown here
        validate_body({**offline, "deadline": 5}, OfflineIncomingBody)
    assert caught.value.field == "deadline"


def test_no_route_reads_a_body_without_a_typed_model() -> None:
    """Every ``json_body`` call in api/ outside requests.py is validated by a model on
    the next line (the migration routes once passed the raw dict on)."""
    import pathlib

    import virtkit.api

    folder = pathlib.Path(virtkit.api.__file__).parent
    for module in sorted(folder.glob("*.py")):
        if module.name in ("requests.py", "common.py"):
            continue
        lines = module.read_text().splitlines()
        for number, line in enumerate(lines):
            if "await json_body(" in line:
                following = " ".join(lines[number + 1:number + 3])
                assert "validate_body(" in following, f"{module.name}:{number + 1}"


def test_the_openapi_document_takes_migration_bodies_from_the_models() -> None:
    from virtkit.api.openapi import openapi_document

    paths = openapi_document()["paths"]
    for path in ("/v1/migrations/incoming", "/v1/migrations/offline"):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema.get("additionalProperties") is False, path
        assert {"spec", "address"} <= set(schema["required"]), path


def test_descriptor_numbers_are_bounded_and_a_false_client_is_a_4xx() -> None:
    """The fuzzer's finds: ``{"fd": 3548382726750393449037430784}`` was a 500
    (OverflowError in ctypes), and a client that is not the socket's peer a 501."""
    from virtkit.api import peerfd
    from virtkit.api.requests import validate_body
    from virtkit.api.storage_routes import FdBody
    from virtkit.errors import Unsupported, UnsupportedForClient

    for number in (2**31, 3548382726750393449037430784, -1):
        with pytest.raises(InvalidSpec) as caught:
            validate_body({"fd": number}, FdBody)
        assert caught.value.field == "fd"
        with pytest.raises(InvalidSpec):
            peerfd.take_fd(None, number)  # type: ignore[arg-type]  # refused before use
    assert validate_body({"fd": 2**31 - 1}, FdBody).fd == 2**31 - 1
    assert issubclass(UnsupportedForClient, Unsupported)
    assert UnsupportedForClient.code == "unsupported"  # the CLI still falls back
    assert 400 <= UnsupportedForClient.http_status < 500
