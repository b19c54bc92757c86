"""libvirt domain XML in and out (virtkit.formats.libvirt_xml).

Golden files under tests/data/xml:

- ``vi-*.xml``: written by virt-install 4.1 (``virtinst/generate.sh`` makes them again);
  ``vm-*.xml``: virt-manager / ``virsh dumpxml`` style XML written by hand.  Each has a
  ``<case>.expected.yaml``: the locations refused without force, the warnings, the spec.
- ``export-<case>.xml``: ``domain_to_xml`` of each argv example spec (tests/data/argv).

``pytest tests/unit/test_libvirt_xml.py --regenerate`` rewrites them; review the diff.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import FORCE_FIX, size_mib
from virtkit.formats.libvirt_xml import domain_from_xml, domain_to_xml
from virtkit.model.domain import Domain
from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.load import dump_domain, load_domain
from virtkit.qemu.argv import build_argv

DATA = Path(__file__).parent.parent / "data" / "xml"
ARGV = Path(__file__).parent.parent / "data" / "argv"
IMPORT_CASES = sorted(p.stem for pattern in ("vi-*.xml", "vm-*.xml") for p in DATA.glob(pattern))
ARGV_CASES = sorted(p.stem for p in ARGV.glob("*.json"))
UUID = "11111111-2222-3333-4444-000000000001"


def _argv_spec(case: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((ARGV / f"{case}.json").read_text())["spec"]
    return spec


def _read(text: str) -> dict[str, Any]:
    """What the golden files record: refused locations (no force), warnings, spec."""
    refused: list[str] = []
    try:
        spec, warnings = domain_from_xml(text)
    except InvalidSpec as exc:
        assert exc.fix == FORCE_FIX
        refused = [problem.split(": ", 1)[0] for problem in exc.details["problems"]]
        assert all(location in exc.message for location in refused)
        spec, warnings = domain_from_xml(text, force=True)
        assert warnings[: len(refused)] == [w for w in warnings if w.startswith("dropped ")]
    return {"refused": refused, "warnings": warnings, "spec": spec}


# -- golden files ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", IMPORT_CASES)
def test_import_matches_golden(case: str, regenerate: bool) -> None:
    actual = _read((DATA / f"{case}.xml").read_text())
    golden = DATA / f"{case}.expected.yaml"
    if regenerate or not golden.exists():
        golden.write_text(yaml.safe_dump(actual, sort_keys=False, width=100))
    assert actual == yaml.safe_load(golden.read_text())
    load_domain(actual["spec"])  # what define validates next


def test_virt_install_samples_are_there() -> None:
    assert {"vi-basic", "vi-uefi-vnc", "vi-windows"} <= set(IMPORT_CASES)
    assert all((DATA / f"{case}.expected.yaml").exists() for case in IMPORT_CASES)


@pytest.mark.parametrize("case", ARGV_CASES)
def test_export_matches_golden(case: str, regenerate: bool) -> None:
    text = domain_to_xml(load_domain(_argv_spec(case)))
    golden = DATA / f"export-{case}.xml"
    if regenerate or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
@pytest.mark.parametrize("case", ARGV_CASES)
def test_export_validates_against_libvirts_schema(case: str, tmp_path: Path) -> None:
    text = domain_to_xml(load_domain(_argv_spec(case)))
    schema = Path("/usr/share/libvirt/schemas/domaincommon.rng")
    if "'itco'" in text.replace('"', "'") and schema.exists() \
            and "itco" not in schema.read_text():
        pytest.skip("the itco watchdog needs libvirt >= 9.1")
    path = tmp_path / "domain.xml"
    path.write_text(text)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


# -- round trips ----------------------------------------------------------------------------

ROUND_TRIP_SPECS: list[dict[str, Any]] = [
    *(_argv_spec(case) for case in ARGV_CASES),
    {"name": 'odd <&> "names" \'too\'', "uuid": UUID, "title": "Title & more",
     "description": "line one\n  line two <b>", "memory": {"current": 1536, "max": 4096},
     "metadata": {"http://app1.org/app1/":
                  '<app1:foo xmlns:app1="http://app1.org/app1/" a="1 &amp; 2">'
                  '<app1:bar>x &lt; y</app1:bar></app1:foo>'},
     "vcpus": {"current": 3, "max": 6, "sockets": 3, "threads": 2, "cpuset": "0-1,^1,3"},
     "cpu": {"model": "max"},
     "accelerator": "kvm", "autostart": True, "ha": True,
     "serials": [{}, {"log": False}, {"log_path": "/var/log/vm, serial.log"}],
     "on_poweroff": "restart", "on_crash": "preserve", "guest_agent": False, "rng": None,
     "balloon": False, "graphics": {"type": "vnc", "port": "auto", "listen": "::"},
     "video": "virtio", "sound": [{"model": "ich9"}, {"model": "hda"}, {"model": "ac97"},
                                  {"model": "es1370"}],
     "filesystems": [{"source": "/srv/a,b", "target": "share", "driver": "9p"},
                     {"source": "/srv/ro", "target": "ro", "accessmode": "mapped",
                      "readonly": True, "driver": "9p"},
                     {"source": "/srv/fast", "target": "fast", "driver": "virtiofs"}]},
    {"name": "tcg-volumes", "uuid": UUID, "memory": 128, "accelerator": "tcg", "cpu": "host",
     "machine": "pc", "serials": [], "acpi": False,
     "parallels": [{"path": "/var/log/lpt0.log"}, {"path": "/var/log/lpt, 1.log"}],
     "disks": [{"pool": "default", "volume": "root.qcow2", "format": "qcow2"},
               {"pool": "isos", "volume": "debian.iso", "device": "cdrom", "bus": "ide"},
               {"path": "/dev/sdz", "format": "raw", "aio": "io_uring", "readonly": True,
                "target": "vdq"}],
     "nics": [{"network": "default", "mac": "52:54:00:00:00:0a", "link": "down"}],
     "watchdog": {"model": "i6300esb", "action": "inject-nmi"},
     "rng": {"backend": "/dev/hwrng"}, "boot": {"order": ["cdrom"], "menu": True}},
    {"name": "many-disks", "uuid": UUID, "memory": 64, "cpu": {"model": "Skylake-Client"},
     "transient": True, "anti_affinity": "web", "channels": [
         {"name": "org.libguestfs.channel.0"},
                                     {"name": "com.example.log", "path": "/run/ex, it.sock"}],
     "disks": [{"path": f"/images/d{i}.raw", "format": "raw"} for i in range(30)],
     "boot": {"kernel": "/k", "cmdline": ""}},
    {"name": "limits", "uuid": UUID, "memory": 256,
     "cputune": {"shares": 2048, "period": 50000, "quota": 25000},
     "memtune": {"hard_limit": 1048576, "soft_limit": 524288, "swap_hard_limit": 2097152},
     "blkiotune": {"weight": 300, "devices": [
         {"path": "/dev/sda", "weight": 500, "read_bytes_sec": 1048576,
          "write_bytes_sec": 2097152},
         {"path": "/dev/vdb", "read_iops_sec": 100, "write_iops_sec": 50}]},
     "disks": [{"path": "/images/a.raw", "format": "raw",
                "iotune": {"total_bytes_sec": 10485760, "total_iops_sec": 500}},
               {"path": "/images/b.raw", "format": "raw",
                "iotune": {"read_bytes_sec": 1000000, "write_bytes_sec": 2000000,
                           "read_iops_sec": 100, "write_iops_sec": 200}}]},
]


def _canonical(domain: Domain) -> dict[str, Any]:
    """The domain as stored, with a partial vCPU topology completed (libvirt needs all three)."""
    data = dump_domain(domain)
    vcpus = data["vcpus"]
    if any(vcpus[part] is not None for part in ("sockets", "cores", "threads")):
        vcpus["cores"] = vcpus["cores"] or 1
        vcpus["threads"] = vcpus["threads"] or 1
        vcpus["sockets"] = vcpus["sockets"] or domain.vcpus.maximum // (
            vcpus["cores"] * vcpus["threads"])
    return data


def _argv(domain: Domain) -> list[str]:
    caps = HostCaps(accel="tcg", machine_aliases={"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"},
                    ovmf_code="/OVMF_CODE.fd", ovmf_vars="/OVMF_VARS.fd")
    fds = {"qmp": 3, "agent": 4, **{f"serial{i}": 5 + i for i in range(4)},
           **{f"tap{i}": 20 + i for i in range(4)}}
    files = LaunchFiles("/run/x", "/log/x", fds, nvram="/nvram/x")
    return build_argv(domain, caps, files, "/usr/bin/qemu-system-x86_64")


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=lambda s: str(s["name"])[:20])
def test_round_trip_gives_an_equivalent_domain(spec: dict[str, Any]) -> None:
    domain = load_domain(spec)
    text = domain_to_xml(domain)
    data, warnings = domain_from_xml(text)
    back = load_domain(data)
    assert _canonical(back) == _canonical(domain)
    assert _argv(back) == _argv(domain)
    user_nics = [nic for nic in domain.nics if nic.type == "user"]
    assert len(warnings) == len(user_nics)  # the restricted user-mode note, nothing else
    assert domain_to_xml(back) == text  # a fixed point


def _non_default_paths(model: BaseModel, prefix: str = "") -> set[str]:
    """Dotted field paths (list items as name[]) whose value differs from the default."""
    found = set()
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, BaseModel):
                found |= _non_default_paths(item, f"{path}{'[]' if items is value else ''}.")
        if not field.is_required() and value != field.get_default(call_default_factory=True):
            found.add(path)
    return found


def _all_paths(model_type: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model_type.model_fields.items():
        path = f"{prefix}{name}"
        if not field.is_required():
            paths.add(path)
        args = getattr(field.annotation, "__args__", None) or (field.annotation,)
        for arg in args:
            inner = getattr(arg, "__args__", (arg,))
            for sub in inner:
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    is_list = getattr(field.annotation, "__origin__", None) is list
                    paths |= _all_paths(sub, f"{path}{'[]' if is_list else ''}.")
    return paths


def test_every_model_field_takes_part_in_a_round_trip() -> None:
    """A new Domain field fails here until a round-trip spec sets it (and the XML keeps it)."""
    seen: set[str] = set()
    for spec in ROUND_TRIP_SPECS:
        seen |= _non_default_paths(load_domain(spec))
    # a user-mode NIC can only be restricted: there is no other value to carry
    assert _all_paths(Domain) - seen == {"nics[].restrict"}


# -- reading details -------------------------------------------------------------------------

def _domain(devices: str = "", *, head: str = "", root: str = "type='kvm'",
            os: str = "<type arch='x86_64' machine='q35'>hvm</type>") -> str:
    return (f"<domain {root}><name>t</name><memory>262144</memory>{head}"
            f"<os>{os}</os><devices>{devices}</devices></domain>")


@pytest.mark.parametrize(("value", "unit", "mib"), [
    ("1048576", None, 1024), ("1048576", "KiB", 1024), ("1048576", "k", 1024),
    ("1024", "M", 1024), ("1024", "MiB", 1024), ("1", "G", 1024), ("2", "GiB", 2048),
    ("1073741824", "bytes", 1024), ("1073741824", "b", 1024), ("1000000", "KB", 954),
    ("1000", "MB", 954), ("1", "TiB", 1024 * 1024), ("1", "KiB", 1),
])
def test_memory_units_follow_libvirt(value: str, unit: str | None, mib: int) -> None:
    assert size_mib(value, unit, where="memory") == mib
    unit_attr = f" unit='{unit}'" if unit else ""
    text = f"<domain type='kvm'><name>t</name><memory{unit_attr}>{value}</memory></domain>"
    assert domain_from_xml(text)[0]["memory"] == {"current": mib}


@pytest.mark.parametrize(("memory", "message"), [
    ("<memory unit='furlong'>1</memory>", "unknown unit 'furlong'"),
    ("<memory>1.5</memory>", "'1.5' is not a whole number"),
    ("<memory unit='GiB'>-1</memory>", "'-1' is not a whole number"),
])
def test_bad_memory_is_refused(memory: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        domain_from_xml(f"<domain type='kvm'><name>t</name>{memory}</domain>", force=True)


def test_domain_type_maps_to_the_accelerator() -> None:
    assert domain_from_xml(_domain())[0]["accelerator"] == "auto"
    assert domain_from_xml(_domain(root="type='qemu'"))[0]["accelerator"] == "tcg"
    strict = ("<metadata><vk:domain xmlns:vk='urn:virtkit:domain:1'><vk:accelerator>kvm"
              "</vk:accelerator></vk:domain></metadata>")
    assert domain_from_xml(_domain(head=strict))[0]["accelerator"] == "kvm"
    with pytest.raises(InvalidSpec, match="domain@type='xen'"):
        domain_from_xml(_domain(root="type='xen'"))


@pytest.mark.parametrize(("target", "expected"), [
    ("<target dev='vdb'/>", {}),
    ("<target dev='vdc' bus='virtio'/>", {"target": "vdc"}),
    ("<target dev='sda'/>", {"bus": "scsi"}),
    ("<target dev='sda' bus='sata'/>", {"bus": "sata"}),
    ("<target dev='hdc'/>", {"bus": "ide", "target": "hdc"}),
    ("<target dev='xvda'/>", {"target": "xvda"}),
])
def test_disk_bus_follows_the_target_name(target: str, expected: dict[str, Any]) -> None:
    first = "<disk type='file'><source file='/a.img'/><target dev='vda'/></disk>"
    second = f"<disk type='file' device='disk'><source file='/b.img'/>{target}</disk>"
    spec, _ = domain_from_xml(_domain(first + second,
                                      os="<type machine='pc'>hvm</type>"))
    assert spec["disks"] == [{"path": "/a.img"}, {"path": "/b.img", **expected}]


def test_volume_disks_and_interfaces() -> None:
    devices = """
      <disk type='volume' device='disk'><source pool='default' volume='v.qcow2'/></disk>
      <disk type='block' device='cdrom'><source dev='/dev/sr0'/><target dev='sda' bus='sata'/>
      </disk>
      <interface type='network'><source network='lan'/></interface>
      <interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>
      <interface type='user'><mac address='52:54:00:00:00:09'/></interface>"""
    spec, warnings = domain_from_xml(_domain(devices))
    assert spec["disks"] == [{"pool": "default", "volume": "v.qcow2"},
                             {"device": "cdrom", "path": "/dev/sr0"}]
    assert spec["nics"] == [{"type": "network", "network": "lan"},
                            {"type": "bridge", "bridge": "br0", "model": "e1000"},
                            {"type": "user", "mac": "52:54:00:00:00:09"}]
    assert warnings == ["devices/interface[3]: a user-mode NIC in virtkit is restricted and "
                        "reaches no network at all; use <interface type='network'> for NAT"]
    load_domain(spec)


def test_console_alone_means_one_serial_port_and_missing_devices_mean_none() -> None:
    spec, _ = domain_from_xml(_domain("<console type='pty'/>"))
    assert spec["serials"] == [{}]
    spec, _ = domain_from_xml(_domain())
    assert (spec["serials"], spec["guest_agent"], spec["rng"], spec["balloon"]) == \
        ([], False, None, True)
    assert "graphics" not in spec


def test_per_device_boot_order() -> None:
    devices = """
      <disk type='file' device='disk'><source file='/a.img'/><boot order='2'/></disk>
      <disk type='file' device='cdrom'><source file='/x.iso'/><boot order='1'/></disk>
      <interface type='network'><source network='n'/><boot order='3'/></interface>"""
    spec, _ = domain_from_xml(_domain(devices, os="<type>hvm</type>"))
    assert spec["boot"] == {"order": ["cdrom", "hd", "network"]}
    second = ("<disk type='file'><source file='/a.img'/></disk>"
              "<disk type='file'><source file='/b.img'/><boot order='1'/></disk>")
    with pytest.raises(InvalidSpec, match=r"devices/disk\[2\]/boot \(virtkit boots the first"):
        domain_from_xml(_domain(second))


def test_uefi_from_loader_or_firmware_attribute() -> None:
    loader = "<type>hvm</type><loader readonly='yes' type='pflash'>/x/OVMF_CODE.fd</loader>"
    assert domain_from_xml(_domain(os=loader))[0]["firmware"] == "uefi"
    assert domain_from_xml(_domain(os="<type>hvm</type>").replace(
        "<os>", "<os firmware='efi'>"))[0]["firmware"] == "uefi"
    with pytest.raises(InvalidSpec, match="custom firmware ROMs"):
        domain_from_xml(_domain(os="<type>hvm</type><loader>/my/bios.bin</loader>"))


# -- refusing ---------------------------------------------------------------------------------

UNSUPPORTED = """
  <disk type='file'><source file='/a.img'/></disk>
  <disk type='network' device='disk'><source protocol='iscsi' name='iqn.x/1'/></disk>
  <hostdev mode='subsystem' type='usb'/>
  <sound model='sb16'/>"""


def test_unsupported_elements_are_listed_by_location() -> None:
    with pytest.raises(InvalidSpec) as info:
        domain_from_xml(_domain(UNSUPPORTED))
    error = info.value
    assert error.message.startswith("the libvirt domain XML uses 3 things virtkit cannot "
                                    "honour: ")
    assert "devices/disk[2]/source@protocol='iscsi' (network disks are rbd (Ceph) or nfs)" \
        in error.message
    assert "devices/hostdev (only PCI host devices (VFIO) are supported)" in error.message
    assert ("devices/sound@model='sb16' (virtkit's sound cards are ich9, ich6, ac97 and "
            "es1370)") in error.message
    assert error.fix == "remove them, or pass --force to drop them with a warning"
    assert error.details["field"] == "xml"
    assert len(error.details["problems"]) == 3


def test_force_drops_them_with_warnings() -> None:
    spec, warnings = domain_from_xml(_domain(UNSUPPORTED), force=True)
    assert spec["disks"] == [{"path": "/a.img"}]
    assert warnings == [
        "dropped devices/disk[2]/source@protocol='iscsi': network disks are rbd (Ceph) or nfs",
        "dropped devices/hostdev: only PCI host devices (VFIO) are supported",
        "dropped devices/sound@model='sb16': virtkit's sound cards are ich9, ich6, ac97 and "
        "es1370",
    ]
    load_domain(spec)


def test_harmless_libvirt_defaults_are_accepted_silently() -> None:
    devices = """
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <controller type='pci' index='0' model='pcie-root'/>
      <controller type='usb' model='qemu-xhci' ports='15'><address type='pci'/></controller>
      <controller type='scsi' model='virtio-scsi'/>
      <input type='tablet' bus='usb'/><input type='keyboard' bus='ps2'/>
      <video><model type='qxl'/></video>
      <memballoon model='virtio'><stats period='5'/></memballoon>
      <panic model='isa'/>
      <audio id='1' type='none'/>"""
    head = ("<pm><suspend-to-mem enabled='no'/></pm><seclabel type='none'/>"
            "<features><acpi/><apic/><vmport state='off'/><smm state='on'/></features>"
            "<clock offset='utc'><timer name='hpet' present='no'/></clock>")
    spec, warnings = domain_from_xml(_domain(devices, head=head))
    assert warnings == []
    assert spec["balloon"] is True


@pytest.mark.parametrize(("text", "message"), [
    ("", "the XML document is empty"),
    ("<domain><name>x</name>", "not well-formed XML at line 1, column 23: no element found"),
    ("<domain type='kvm'><name>x</nam></domain>", "not well-formed XML at line 1"),
    ("name: x\nmemory: 1G\n", "not well-formed XML at line 1, column 1: syntax error"),
    ("<network><name>default</name></network>",
     "expected a libvirt <domain> document, got <network>"),
    ("<!DOCTYPE domain [<!ENTITY a 'aaaa'>]><domain><name>&a;</name></domain>",
     "no DOCTYPE or entity declarations"),
])
def test_bad_xml_is_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message.replace("(", r"\(").replace(")", r"\)")):
        domain_from_xml(text, force=True)


# -- writing details --------------------------------------------------------------------------

def test_output_is_pretty_printed_like_virsh() -> None:
    text = domain_to_xml(load_domain({"name": "p", "uuid": UUID, "memory": 512,
                                      "graphics": "vnc"}))
    lines = text.splitlines()
    assert lines[0] == "<domain type='kvm'>"
    assert lines[1] == "  <name>p</name>"
    assert "    <acpi/>" in lines
    assert "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>" in lines
    assert "  <memory unit='KiB'>524288</memory>" in lines
    assert text.endswith("</domain>\n")
    assert "metadata" not in text  # nothing virtkit-only to keep


def test_accelerator_and_cpu_modes_out() -> None:
    def root_and_cpu(**spec: Any) -> tuple[str, str]:
        lines = domain_to_xml(load_domain({"name": "a", "memory": 64, **spec})).splitlines()
        return lines[0], next(line.strip() for line in lines if "<cpu" in line)

    assert root_and_cpu() == ("<domain type='kvm'>", "<cpu mode='host-model'/>")
    assert root_and_cpu(accelerator="tcg", cpu="max") == ("<domain type='qemu'>",
                                                         "<cpu mode='maximum'/>")
    assert root_and_cpu(accelerator="kvm", cpu="host")[1] == "<cpu mode='host-passthrough'/>"
    assert root_and_cpu(cpu="qemu64")[1] == "<cpu mode='custom' match='exact' check='none'>"


def test_the_xml_modules_are_pure() -> None:
    """formats/libvirt_*.py import only the model, errors, each other and the stdlib."""
    import sys

    import virtkit.formats

    folder = Path(virtkit.formats.__file__).parent
    modules = sorted(folder.glob("libvirt_*.py"))
    assert len(modules) >= 4
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                allowed = name.startswith(("virtkit.model", "virtkit.errors",
                                           "virtkit.formats.libvirt_"))
                assert allowed or top in sys.stdlib_module_names or top == "__future__", \
                    f"{path.name} imports {name}"
