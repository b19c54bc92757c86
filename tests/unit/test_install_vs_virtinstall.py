"""``virtkit install --print-xml`` against the real ``virt-install --print-xml``.

For each command line of :data:`CASES`, as people write them, both programs print the
XML of the VM they would define, and the two must mean the same.

virt-install's side: Debian's virtinst 4.1 (``apt-get install virtinst``; the test
packages of ``scripts/setup.sh`` include it, and without it these tests fail, they do
not skip), run as a subprocess against libvirt's test driver (``test:///default``:
no libvirtd, nothing created), with the capabilities of a KVM x86_64 host through
virtinst's ``__virtinst_test__`` URI, as ``tests/data/xml/virtinst/generate.sh``
does: plain ``test:///default`` is an i686 host without KVM or virtio, where
virt-install picks IDE disks and user-mode NICs that no KVM host gets.  Of the
documents ``--print-xml`` prints (the install phase, then the final domain), the last
one, the final domain, is compared: virtkit's ``--print-xml`` shows the final domain.

virtkit's side: :func:`parse_command_line` and then the daemon's own
``InstallService.install`` with ``print_xml``, which fills the ``--os-variant``
defaults (from the same osinfo database virt-install reads), names new volumes and
returns the XML without creating anything; the domain and storage services are
stand-ins (no domain of that name, an empty pool, no network service).

"Means the same": each document is read with ``domain_from_xml(..., force=True)``
and loaded into virtkit's Domain model, which fills the defaults virtkit and
libvirt share (what virtkit writes and virt-install leaves to libvirt: disk cache
``writeback`` and io ``threads``, ``on_poweroff``/``on_reboot``/``on_crash``, VNC on
127.0.0.1, booting from ``hd``); then every field of the two models must be equal --
memory, vCPUs and topology, CPU model and features, machine, firmware, accelerator,
boot order/menu/kernel/initrd/cmdline, each disk (device, bus, format, path or
volume, readonly, cache, io, serial), each NIC (source, model, MAC), graphics,
serial ports, guest agent, watchdog, RNG, balloon, description, uuid -- except for
these known, intended differences, normalised away:

1. Values virt-install generates when the command line gives none: the uuid and
   the MAC addresses (virtkit's daemon generates them when it defines the VM).
2. The display without ``--graphics``: virt-install adds spice, a sound card and
   spice USB redirection; virtkit gives VNC and no sound (the only drops allowed
   from virt-install's XML, with the Windows ones of 7; the import reads spice as
   VNC and leaves its plumbing out, with warnings).  With ``--graphics`` the
   displays are compared.  Likewise the video model and the sound cards are compared
   when ``--video`` / ``--sound`` are given: by default virt-install picks virtio video
   and an ich9 card from osinfo, virtkit a standard VGA and no card.
3. Where a new volume lives: virt-install's default pool is the folder
   /var/lib/libvirt/images, virtkit's is its pool ``default``; NAME.qcow2 in the
   one is the volume NAME.qcow2 of the other.
4. ``--autostart``: virt-install sets it through libvirt after defining, not in the
   XML; virtkit's spec is checked to have it.
5. ``--memory 1024,maxmemory=2048``: virt-install boots with 2048 MiB and a balloon
   target of 1024; virtkit has no balloon target and boots with 1024 MiB, hot-add up
   to 2048.  virt-install's (``currentMemory``, ``memory``) is read as virtkit's
   (``current``, ``max``).
6. A named CPU model: virt-install adds the host's CPU security features
   (``secure=on``: spec-ctrl, ssbd, ibpb, virt-ssbd, md-clear) that the command line
   does not name; virtkit passes the model as named.
7. An OS without virtio drivers (Windows): virt-install picks an e1000e NIC (virtkit
   has no e1000e: e1000), Hyper-V enlightenments and a localtime clock (virtkit has
   neither), and leaves out the guest agent channel and the virtio RNG, which
   virtkit always provides.
8. ``--livecd``: virtkit boots the CD, then ``hd``; virt-install only the CD.
9. The format of an existing image: virt-install takes it from libvirt, which
   reads the file (``format=`` only applies to storage it creates), and the test
   driver reads no file, so its XML names none; virtkit takes ``format=`` when given,
   else reads the file when it defines the VM.  Only new disks' formats are compared.
10. ``--virt-type kvm``: virtkit keeps the strict choice (KVM or fail, in its
    metadata); ``<domain type='kvm'>`` reads as ``auto``, since virt-install writes it
    whenever /dev/kvm exists.
11. libosinfo's ``<metadata>`` (the OS id): virt-install records it, virtkit's
    install does not (yet); an import keeps it in the spec's ``metadata``.

A difference found this way that is not intended is a case marked ``xfail(strict)``
with the reason, so that fixing it turns the mark into a failure to remove.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, cast

import pytest

from virtkit.errors import NotFound
from virtkit.formats import osinfo
from virtkit.formats.libvirt_xml import domain_from_xml
from virtkit.formats.virtinstall import InstallRequest, parse_command_line
from virtkit.host.pathpolicy import PathPolicy
from virtkit.model.load import load_domain
from virtkit.service.install import InstallService

CAPS = Path(__file__).resolve().parents[1] / "data" / "xml" / "virtinst"
URI = (f"__virtinst_test__test:///default,caps={CAPS}/capabilities.xml,"
       f"domcaps={CAPS}/domcapabilities.xml,fakeuri=qemu:///system,predictable")
#: virt-install's default pool folder on a qemu:///system host (difference 3).
VIRTINST_POOL = "/var/lib/libvirt/images/"
#: virtinst's CPU security features (domcapabilities._lookup_cpu_security_features).
SECURITY_FEATURES = {"spec-ctrl", "ssbd", "ibpb", "virt-ssbd", "md-clear"}
#: what force may drop from virt-install's XML (differences 2, 5 and 7), by location.
ALLOWED_DROPS = re.compile(
    r"dropped (devices/sound|currentMemory"
    r"|features/hyperv|clock@offset='localtime'|clock/timer\[\d+\]@name='hypervclock'"
    r"|devices/interface(\[\d+\])?/model@type='e1000e'):"
    r"|left out devices/(channel|redirdev|audio)(\[\d+\])?: "
    r"|devices/graphics: the SPICE display became VNC")


@dataclass(frozen=True)
class Case:
    line: str  # virt-install's words; {media} is a folder with install.iso, disk.qcow2 ...
    known: str | None = None  # an unintended difference still there: xfail(strict)


CASES: dict[str, Case] = {
    "cdrom-new-volume": Case(
        "--name web1 --memory 2048 --vcpus 2 --disk size=20 --cdrom {media}/install.iso "
        "--os-variant debian11 --network network=default"),
    "ram-alias-import-no-graphics": Case(
        "--name db1 --ram 1024 --vcpus=4 --import --disk {media}/disk.qcow2 "
        "--os-variant debian11 --graphics none --noautoconsole"),
    "equals-forms": Case(
        "--name=db2 --memory=1536 --vcpus=2 --import --disk={media}/disk.qcow2 "
        "--osinfo=debian11 --network=bridge=br0 --graphics=vnc"),
    "topology-maxvcpus-passthrough": Case(
        "--name t1 --memory 4096 --vcpus 4,maxvcpus=8,sockets=2,cores=2,threads=2 "
        "--cpu host-passthrough --import --disk {media}/disk.qcow2 --os-variant ubuntu22.04"),
    "topology-only-host-model": Case(
        "--name t2 --memory 2048 --vcpus sockets=1,cores=4,threads=2 --cpu host-model "
        "--import --disk {media}/disk.qcow2 --os-variant fedora37"),
    "topology-filled-from-the-count": Case(
        "--name t2b --memory 2048 --vcpus 4,sockets=2 --import --disk {media}/disk.qcow2 "
        "--os-variant debian11"),
    "named-cpu-with-features": Case(
        "--name t3 --memory 1024 --cpu Skylake-Client,+vmx,-hle --import "
        "--disk {media}/disk.qcow2 --os-variant centos7.0"),
    "cpu-host-maxvcpus": Case(
        "--name t4 --memory 1024 --vcpus 2,maxvcpus=4 --cpu host --import "
        "--disk {media}/disk.qcow2 --os-variant debian11"),
    "new-file-and-cdrom-boot-menu": Case(
        "--name t5 --memory 1024 --disk path={media}/new.raw,size=2,format=raw,bus=sata "
        "--disk path={media}/install.iso,device=cdrom --boot cdrom,hd,menu=on "
        "--os-variant debian11"),
    "disk-tuning": Case(
        "--name t6 --memory 1024 --import "
        "--disk path={media}/disk.qcow2,format=qcow2,bus=scsi,cache=none "
        "--disk {media}/data.raw,bus=virtio,cache=writeback,io=threads,readonly=on,"
        "serial=DATA1 --os-variant debian11"),
    "two-nics-model-mac": Case(
        "--name t7 --memory 1024 --import --disk {media}/disk.qcow2 "
        "--network bridge=br0,model=e1000,mac=52:54:00:12:34:56 "
        "--network network=default,model=virtio --os-variant debian11"),
    "old-network-syntax": Case(
        "--name t8 --memory 1024 --import --disk {media}/disk.qcow2 --network bridge:br0 "
        "--network network:default,model=rtl8139 --os-variant debian11"),
    "new-style-network-keys-kvm": Case(
        "--name t8b --memory 1024 --virt-type kvm --import --disk {media}/disk.qcow2 "
        "--network type=network,source=default,model.type=e1000,"
        "mac.address=52:54:00:aa:bb:cc --os-variant debian11"),
    "vnc-listen-port": Case(
        "--name t9 --memory 1024 --import --disk {media}/disk.qcow2 "
        "--graphics vnc,listen=0.0.0.0,port=5901 --os-variant debian11"),
    "vnc-password-keymap": Case(
        "--name t10 --memory 1024 --import --disk {media}/disk.qcow2 "
        "--graphics vnc,password=secret,keymap=de --os-variant debian11"),
    "no-graphics-serial-console": Case(
        "--name t11 --memory 1024 --import --disk {media}/disk.qcow2 --graphics none "
        "--console pty,target_type=serial --os-variant debian11"),
    "uefi": Case(
        "--name t12 --memory 2048 --import --disk {media}/disk.qcow2 --boot uefi "
        "--graphics vnc --os-variant debian11"),
    "firmware-efi-boot-order": Case(
        "--name t13 --memory 2048 --import --disk {media}/disk.qcow2 "
        "--boot hd,network,firmware=efi --os-variant debian11"),
    "direct-kernel-boot-pc": Case(
        "--name t14 --memory 512 --machine pc "
        "--boot kernel={media}/vmlinuz,initrd={media}/initrd.img,"
        "cmdline='console=ttyS0 quiet' --disk {media}/disk.qcow2 --graphics none "
        "--network none --os-variant debian11"),
    "pxe-q35": Case(
        "--name t15 --memory 1024 --machine q35 --pxe --disk size=8 --os-variant debian11"),
    "watchdog-rng": Case(
        "--name t16 --memory 1024 --import --disk {media}/disk.qcow2 "
        "--watchdog i6300esb,action=poweroff --rng /dev/random --os-variant debian11"),
    "watchdog-default-no-rng-no-balloon": Case(
        "--name t17 --memory 1024 --import --disk {media}/disk.qcow2 --watchdog default "
        "--rng none --memballoon none --nonetworks --os-variant debian11"),
    "description-uuid-autostart": Case(
        "--name t18 --memory 1024 --import --disk {media}/disk.qcow2 "
        "--description 'web server, rack 4' --uuid 6f2c8e3a-4b1d-4c5e-9a7f-0123456789ab "
        "--autostart --os-variant debian11"),
    "tcg-two-serials": Case(
        "--name t19 --memory 1024 --virt-type qemu --import --disk {media}/disk.qcow2 "
        "--serial pty --serial pty --os-variant debian11"),
    "balloon-ceiling": Case(
        "--name t20 --memory 1024,maxmemory=2048 --import --disk {media}/disk.qcow2 "
        "--os-variant debian11"),
    "hot-add-ceiling": Case(
        "--name t21 --memory 1024,hotplugmemorymax=4096,hotplugmemoryslots=4 --import "
        "--disk {media}/disk.qcow2 --os-variant debian11"),
    "osinfo-fills-memory-and-vcpus": Case(
        "--name t22 --cdrom {media}/install.iso --disk size=10 --os-variant ubuntu22.04"),
    "osinfo-doubles-a-minimum": Case(
        "--name t23 --import --disk {media}/disk.qcow2 --os-variant archlinux"),
    "windows-import": Case(
        "--name win1 --memory 4096 --vcpus 2 --import --disk {media}/disk.qcow2 "
        "--network network=default --os-variant win10"),
    "windows-cdrom": Case(
        "--name win2 --cdrom {media}/install.iso --disk size=40 --os-variant win10"),
    "livecd": Case(
        "--name t24 --memory 1024 --livecd --cdrom {media}/install.iso --nodisks "
        "--os-variant debian11"),
    "cpuset": Case(
        "--name t27 --memory 1024 --vcpus 2,cpuset=0-1 --import --disk {media}/disk.qcow2 "
        "--os-variant debian11"),
    "sound-and-video": Case(
        "--name t26 --memory 1024 --import --disk {media}/disk.qcow2 --os-variant debian11 "
        "--graphics vnc --video virtio --sound ich9 --sound ac97"),
    "cdrom-without-disk": Case(
        "--name t25 --memory 1024 --cdrom {media}/install.iso --os-variant debian11"),
}


# -- the two sides ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def virt_install() -> str:
    found = shutil.which("virt-install")
    if found is None:
        pytest.fail("virt-install is not installed, so virtkit install cannot be compared "
                    "with it: apt-get install --no-install-recommends virtinst "
                    "(scripts/setup.sh test installs it)", pytrace=False)
    return found


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name in ("install.iso", "vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"")
    for name in ("disk.qcow2", "data.raw"):
        with (folder / name).open("wb") as image:
            image.truncate(2**20)
    return folder


def words(case: Case, media: Path) -> list[str]:
    return shlex.split(case.line.format(media=media))


def run_virt_install(program: str, argv: list[str], home: Path) -> CompletedProcess[str]:
    return subprocess.run(
        [program, "--connect", URI, "--print-xml", "--noautoconsole", *argv],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(home), "LC_ALL": "C.UTF-8"})


@pytest.fixture(scope="module")
def virt_install_runs(virt_install: str, media: Path, tmp_path_factory: pytest.TempPathFactory,
                      ) -> dict[str, CompletedProcess[str]]:
    """virt-install for every case at once (a third of a second each, mostly startup)."""
    home = tmp_path_factory.mktemp("home")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs = {name: pool.submit(run_virt_install, virt_install, words(case, media), home)
                for name, case in CASES.items()}
        return {name: run.result() for name, run in runs.items()}


def virt_install_xml(result: CompletedProcess[str]) -> str:
    """The final domain of ``virt-install --print-xml`` (the last document printed)."""
    assert result.returncode == 0, f"virt-install refused {result.args}:\n{result.stderr}"
    documents = re.findall(r"<domain\b.*?</domain>", result.stdout, flags=re.S)
    assert documents, result.stdout
    return documents[-1]


class _NoDomains:
    """DomainService stand-in: no domain exists, no network service."""

    networks = None
    policy = PathPolicy("/nonexistent/virtkit-state")  # the daemon's path policy

    def spec(self, ref: str) -> Any:
        raise NotFound(f"domain '{ref}' not found")

    def check_fits_host(self, domain: Any) -> None:
        """The host checks of a dry run: this comparison's host fits everything."""


class _EmptyPools:
    """StorageService stand-in: every pool is empty."""

    def list_volumes(self, pool: str) -> list[dict[str, Any]]:
        return []


async def virtkit_result(argv: list[str], media_dir: Path) -> tuple[InstallRequest,
                                                                     dict[str, Any]]:
    """What ``virtkit install ... --print-xml`` gets from the daemon."""
    request = parse_command_line([*argv, "--print-xml"])
    service = InstallService(cast(Any, _NoDomains()), cast(Any, _EmptyPools()), media_dir)
    return request, (await service.install(request.to_dict())).wire()  # the JSON answer


# -- meaning ---------------------------------------------------------------------------

def meaning(xml: str, *, allowed_drops: re.Pattern[str] | None = None) -> dict[str, Any]:
    """The domain the XML describes, with virtkit's defaults filled in."""
    spec, warnings = domain_from_xml(xml, force=True)
    unexpected = [w for w in warnings if allowed_drops is None or not allowed_drops.match(w)]
    assert unexpected == [], f"unexpected drops {unexpected} reading:\n{xml}"
    domain = load_domain(spec)
    out = domain.model_dump(mode="json")
    for disk, model in zip(out["disks"], domain.disks, strict=True):
        disk["bus"] = model.effective_bus.value
        path = disk["path"] or ""
        if path.startswith(VIRTINST_POOL):  # difference 3
            disk.update(path=None, pool="default", volume=path[len(VIRTINST_POOL):])
    return out


def normalise(line: str, request: InstallRequest, virtinst: dict[str, Any],
              virtkit: dict[str, Any], virtinst_xml: str) -> None:
    """Take the known, intended differences of the module docstring out of both sides."""
    for side in (virtinst, virtkit):
        side.pop("autostart")  # 4
        side.pop("metadata")  # 11
        if "--uuid" not in line:
            side.pop("uuid")  # 1
        if "--graphics" not in line:
            side.pop("graphics")  # 2
        if "--video" not in line:
            side.pop("video")  # 2
        if "--sound" not in line:
            side.pop("sound")  # 2
    given_macs = set(re.findall(r"mac(?:\.address)?=([0-9a-fA-F:]{17})", line))
    for nic in virtinst["nics"]:
        if nic["mac"] not in given_macs:
            nic["mac"] = None  # 1
    root = ET.fromstring(virtinst_xml)
    boot_mib = root.findtext("currentMemory")
    if boot_mib is not None and int(boot_mib) < int(root.findtext("memory") or 0):
        virtinst["memory"]["max"] = virtinst["memory"]["current"]  # 5
        virtinst["memory"]["current"] = int(boot_mib) // 1024
    cpu = line.split("--cpu ", 1)[1].split(" ")[0] if "--cpu " in line else ""
    named = set(re.findall(r"[+-]?([\w-]+)", cpu))
    virtinst["cpu"]["features"] = [f for f in virtinst["cpu"]["features"]  # 6
                                   if f[1:] not in SECURITY_FEATURES or f[1:] in named]
    variant = request.os_variant
    if variant and not osinfo.system_db().defaults(variant).virtio:  # 7
        interfaces = root.findall("devices/interface")
        for nic, element in zip(virtinst["nics"], interfaces, strict=True):
            if element.find("model[@type='e1000e']") is not None:
                nic["model"] = "e1000"
        for side in (virtinst, virtkit):
            side.pop("guest_agent")
            side.pop("rng")
    if request.method == "livecd" and virtkit["boot"]["order"][-1:] == ["hd"]:
        virtkit["boot"]["order"] = virtkit["boot"]["order"][:-1]  # 8
    if "--virt-type kvm" in line:
        virtinst["accelerator"] = "kvm"  # 10
    new = {disk.index for disk in request.new_disks}
    for side in (virtinst, virtkit):
        for index, disk in enumerate(side["disks"]):
            if index not in new:
                disk["format"] = None  # 9


# -- the comparison ------------------------------------------------------------------------

def _params() -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True,
                                                                 reason=case.known)]
                         if case.known else [])
            for name, case in CASES.items()]


@pytest.mark.parametrize("name", _params())
async def test_virtkit_and_virt_install_mean_the_same(
        name: str, media: Path, virt_install_runs: dict[str, CompletedProcess[str]],
        tmp_path: Path) -> None:
    case = CASES[name]
    argv = words(case, media)
    theirs = virt_install_xml(virt_install_runs[name])
    request, result = await virtkit_result(argv, tmp_path / "install")
    ours = meaning(result["xml"])
    expected = meaning(theirs, allowed_drops=ALLOWED_DROPS)
    if "--autostart" in case.line:
        assert result["spec"]["autostart"] is True
    normalise(case.line, request, expected, ours, theirs)
    assert ours == expected


def test_the_table_covers_what_people_write() -> None:
    """The option forms the comparison must keep covering."""
    text = " ".join(case.line for case in CASES.values())
    for form in ("--ram ", "--memory=", "maxvcpus=", "sockets=", "--cpu host-passthrough",
                 "--cpu Skylake-Client,+vmx", "size=", "format=", "bus=", "device=cdrom",
                 "network=default", "bridge=br0", "model=", "mac=", "listen=0.0.0.0",
                 "port=5901", "--graphics none", "--boot uefi", "--boot cdrom,hd,menu=on",
                 "kernel=", "initrd=", "cmdline=", "--machine q35", "--machine pc",
                 "--import", "--cdrom", "--pxe", "--livecd", "--watchdog", "--rng",
                 "--description", "--uuid", "--autostart", "--virt-type qemu",
                 "--os-variant win10"):
        assert form in text, form
    assert len(CASES) >= 15
