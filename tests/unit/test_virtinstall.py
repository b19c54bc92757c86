"""virt-install's command line -> install requests (formats.virtinstall), and osinfo."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from virtkit.errors import InvalidSpec
from virtkit.formats.osinfo import OsinfoDb
from virtkit.formats.suboptions import split_commas
from virtkit.formats.virtinstall import InstallRequest, parse_command_line
from virtkit.model.load import load_domain

ISSUE_LINE = (
    "--os-type=linux --os-variant centos7.0 --name test01 --ram 1024 --vcpus 1 "
    "--disk=/kvm-vm/test01.raw,format=raw,size=10 --location /iso/CentOS-7-x86_64-DVD-1611.iso "
    "--network network=default --graphics vnc,listen=0.0.0.0 --noautoconsole")


def parse(line: str) -> InstallRequest:
    return parse_command_line(shlex.split(line))


def error_of(line: str) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as caught:
        parse(line)
    return caught.value


def test_the_classic_line_means_what_it_says() -> None:
    req = parse(ISSUE_LINE)
    assert req.method == "location"
    assert req.location == "/iso/CentOS-7-x86_64-DVD-1611.iso"
    assert req.os_variant == "centos7.0"
    assert req.autoconsole is False
    dom = req.domain
    assert dom["name"] == "test01"
    assert dom["memory"] == {"current": 1024}
    assert dom["vcpus"] == {"current": 1}
    assert dom["disks"] == [{"device": "disk", "format": "raw", "path": "/kvm-vm/test01.raw"}]
    assert [(d.path, d.size_bytes, d.format) for d in req.new_disks] == [
        ("/kvm-vm/test01.raw", 10 * 2**30, "raw")]
    assert dom["nics"] == [{"network": "default"}]
    assert dom["graphics"] == {"type": "vnc", "listen": "0.0.0.0"}
    load_domain(dom)  # the final spec is a valid domain


def test_equals_and_space_forms_are_the_same() -> None:
    spaced = parse("--name a --memory 512 --import --disk /x.qcow2")
    joined = parse("--name=a --memory=512 --import --disk=/x.qcow2")
    assert spaced.to_dict() == joined.to_dict()


def test_round_trip_through_json() -> None:
    req = parse(ISSUE_LINE)
    assert InstallRequest.from_dict(req.to_dict()) == req


@pytest.mark.parametrize(("line", "expected"), [
    ("--nmae x --import --disk /a", "unknown option '--nmae' (did you mean '--name'?)"),
    ("--name x --import --disk /a,sise=3", "unknown sub-option 'sise' (did you mean 'size'?)"),
    ("--name x --cdrom /a.iso --location /b.iso", "cannot be used together"),
    ("--name x --import --pxe --disk /a", "cannot be used together"),
    ("--name x --disk size=3", "an install method must be specified"),
    ("--import --disk /a", "--name is required"),
    ("--name x --import --disk images/a.qcow2", "the path must be absolute"),
    ("--name x --import --disk bus=virtio", "a new disk needs size="),
    ("--name x --cdrom /a.iso --extra-args ks=x", "--extra-args only works with --location"),
    ("--name x --paravirt --import --disk /a", "full (hardware-assisted or emulated)"),
    ("--name x --container", "not containers"),
    ("--name x --import --disk /a --graphics spice", "VNC"),
    ("--name x --import --disk /a --network model=ne2k_pci",
     "virtio, e1000 and rtl8139"),
    ("--name x --import --disk /a --arch aarch64", "x86 guests only"),
    ("--name x --import --disk /a --virt-type xen", "kvm and qemu"),
    ("--name x --import --disk vol=nopool", "vol=POOL/VOLUME"),
    ("--name x --import --nodisks --disk /a", "contradict"),
    ("--name x --import --disk /a --boot floppy", "no floppy"),
    ("--name x --import --disk /a,size=abc", "not a number"),
])
def test_bad_input_names_the_problem(line: str, expected: str) -> None:
    error = error_of(line)
    assert expected in error.message, error.message


def test_an_unbalanced_quote_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="unbalanced"):
        parse_command_line(["--name", "x", "--import", "--disk", '"/a,size=1'])


def test_a_missing_method_says_which_methods_exist() -> None:
    error = error_of("--name x --memory 512")
    assert error.fix is not None and "--cdrom" in error.fix and "--import" in error.fix


def test_vcpus_forms() -> None:
    assert parse("--name a --import --disk /a --vcpus 5").domain["vcpus"] == {"current": 5}
    assert parse("--name a --import --disk /a --vcpus 5,maxvcpus=10").domain["vcpus"] == {
        "current": 5, "max": 10}
    topo = parse("--name a --memory 512 --import --disk /a --vcpus sockets=2,cores=4,threads=2")
    assert topo.domain["vcpus"] == {"sockets": 2, "cores": 4, "threads": 2, "current": 16}
    load_domain(topo.domain)


@pytest.mark.parametrize(("option", "expected"), [
    ("4,sockets=2", {"sockets": 2, "cores": 2, "threads": 1, "current": 4}),
    ("8,cores=4", {"sockets": 2, "cores": 4, "threads": 1, "current": 8}),
    ("8,threads=2", {"sockets": 1, "cores": 4, "threads": 2, "current": 8}),
    ("2,maxvcpus=8,cores=4", {"sockets": 2, "cores": 4, "threads": 1, "current": 2, "max": 8}),
    ("cores=4", {"sockets": 1, "cores": 4, "threads": 1, "current": 4}),
])
def test_vcpus_topology_left_out_parts_are_filled_as_virt_install_does(
        option: str, expected: dict[str, int]) -> None:
    """virtinst's set_defaults_from_vcpus: cores, then sockets, then threads take what
    the vCPU count leaves; before, '--vcpus 4,sockets=2' was refused as a mismatch."""
    request = parse(f"--name a --memory 512 --import --disk /a --vcpus {option}")
    assert request.domain["vcpus"] == expected
    load_domain(request.domain)


def test_cpu_model_and_features() -> None:
    req = parse("--name a --import --disk /a --cpu Haswell,+vmx,-svm,disable=pcid")
    assert req.domain["cpu"] == {"model": "Haswell", "features": ["+vmx", "-svm", "-pcid"]}
    assert parse("--name a --import --disk /a --cpu host-passthrough").domain["cpu"] == {
        "model": "host"}


@pytest.mark.parametrize("mode", ["host", "host-model", "host-copy"])
def test_cpu_host_model_is_the_default_as_in_virt_install(mode: str) -> None:
    """virt-install writes <cpu mode='host-model'> for these (and without --cpu); virtkit's
    'auto' is what the XML reader makes of that: the host CPU under KVM, max under TCG."""
    line = f"--name a --import --disk /a --cpu {mode}"
    assert parse(line).domain["cpu"] == {"model": "auto"}


@pytest.mark.parametrize(("option", "expected"), [
    ("1024", {"current": 1024}),
    ("memory=1024", {"current": 1024}),
    # virt-install: <memory> 2048 (the ceiling), <currentMemory> 1024 (at boot)
    ("1024,maxmemory=2048", {"current": 1024, "max": 2048}),
    ("memory=2048,currentMemory=1024", {"current": 1024, "max": 2048}),
    ("2048,currentMemory=1024", {"current": 1024, "max": 2048}),
    ("maxmemory=2048", {"current": 2048}),
    ("currentMemory=512", {"current": 512}),
    ("1024,hotplugmemorymax=4096,hotplugmemoryslots=4", {"current": 1024, "max": 4096}),
])
def test_memory_forms_mean_what_virt_install_makes_of_them(
        option: str, expected: dict[str, int]) -> None:
    assert parse(f"--name a --import --disk /a --memory {option}").domain["memory"] == expected


def test_memory_ceiling_below_the_boot_amount_is_refused() -> None:
    assert "below" in error_of("--name a --import --disk /a --memory 2048,maxmemory=1024").message


def test_watchdog_default_is_virt_installs_i6300esb() -> None:
    dom = parse("--name a --memory 512 --import --disk /a --watchdog default").domain
    assert dom["watchdog"] == {"model": "i6300esb"}
    load_domain(dom)


def test_new_volume_in_a_pool_and_existing_volumes() -> None:
    req = parse("--name a --cdrom /i.iso --disk size=8 --disk pool=fast,size=2,format=raw "
                "--disk vol=default/data.qcow2")
    assert req.method == "cdrom"
    assert [(d.pool, d.size_bytes, d.format, d.index) for d in req.new_disks] == [
        ("default", 8 * 2**30, "qcow2", 0), ("fast", 2 * 2**30, "raw", 1)]
    assert req.domain["disks"][2] == {"device": "disk", "pool": "default",
                                      "volume": "data.qcow2"}


def test_disk_sub_options() -> None:
    req = parse("--name a --import --disk path=/a.img,bus=sata,cache=none,readonly=on,"
                "serial=abc --disk /b.iso,device=cdrom")
    first, second = req.domain["disks"]
    assert first == {"path": "/a.img", "device": "disk", "bus": "sata", "cache": "none",
                     "readonly": True, "serial": "abc"}
    assert second == {"path": "/b.iso", "device": "cdrom"}


def test_network_forms() -> None:
    req = parse("--name a --import --disk /a --network bridge=br0,model=e1000,"
                "mac=52:54:00:aa:bb:cc --network bridge:br1 --network network:lab "
                "--network default")
    assert req.domain["nics"] == [
        {"bridge": "br0", "model": "e1000", "mac": "52:54:00:aa:bb:cc"}, {"bridge": "br1"},
        {"network": "lab"}, {"network": "default"}]
    assert parse("--name a --import --disk /a").domain["nics"] == [{"network": "default"}]
    assert "nics" not in parse("--name a --import --disk /a --nonetworks").domain


def test_boot_options() -> None:
    req = parse("--name a --import --disk /a --boot cdrom,hd,menu=on")
    assert req.domain["boot"] == {"order": ["cdrom", "hd"], "menu": True}
    assert parse("--name a --import --disk /a --boot uefi").domain["firmware"] == "uefi"
    kernel = parse("--name a --disk /a --boot kernel=/k,initrd=/i,cmdline='console=ttyS0 x=1'")
    assert kernel.method == "kernel"
    assert kernel.domain["boot"] == {"kernel": "/k", "initrd": "/i",
                                     "cmdline": "console=ttyS0 x=1"}


def test_flags_and_print_xml_step() -> None:
    req = parse("--name a --import --disk /a --print-xml 1 --noreboot --autostart --wait 5 "
                "--graphics none --quiet --hvm --virt-type kvm --machine pc-q35-7.2")
    assert req.print_xml and req.noreboot and req.quiet
    assert req.wait_minutes == 5.0
    assert req.domain["autostart"] is True
    assert req.domain["graphics"] == {"type": "none"}
    assert req.domain["accelerator"] == "kvm"
    assert req.domain["machine"] == "q35"


def test_cloud_init_defaults_to_a_generated_root_password() -> None:
    req = parse("--name a --import --disk /a --cloud-init")
    assert req.cloud_init == {"root-password-generate": "on"}
    keyed = parse("--name a --import --disk /a --cloud-init ssh-key=/root/.ssh/id.pub")
    assert keyed.cloud_init == {"ssh-key": "/root/.ssh/id.pub"}


def test_split_commas_respects_quotes() -> None:
    assert split_commas('path="/a,b.img",size=3') == ["path=/a,b.img", "size=3"]
    assert split_commas("a,,b") == ["a", "b"]


OSINFO_PARENT = """<libosinfo version="0.0.1"><os id="http://example.org/os/1">
<short-id>exos1</short-id><name>Example OS 1</name><version>1</version>
<family>linux</family><vendor>Example</vendor>
<devices><device id="http://pcisig.com/pci/1af4/1001"/></devices>
<resources arch="all"><minimum><ram>536870912</ram></minimum>
<recommended><ram>2147483648</ram><storage>21474836480</storage><n-cpus>2</n-cpus>
</recommended></resources></os></libosinfo>"""
OSINFO_CHILD = """<libosinfo version="0.0.1"><os id="http://example.org/os/2">
<short-id>exos2</short-id><short-id>exos-two</short-id><name>Example OS 2</name>
<version>2</version><derives-from id="http://example.org/os/1"/></os></libosinfo>"""
OSINFO_OLD = """<libosinfo version="0.0.1"><os id="http://example.org/old/9">
<short-id>oldos9</short-id><name>Old OS 9</name><version>9</version>
<resources arch="x86_64"><minimum><ram>268435456</ram></minimum></resources>
</os></libosinfo>"""


@pytest.fixture
def osinfo_db(tmp_path: Path) -> OsinfoDb:
    folder = tmp_path / "os" / "example.org"
    folder.mkdir(parents=True)
    for name, text in (("one", OSINFO_PARENT), ("two", OSINFO_CHILD), ("old", OSINFO_OLD)):
        (folder / f"{name}.xml").write_text(text)
    return OsinfoDb(tmp_path)


def test_osinfo_defaults_inherit_from_the_parent(osinfo_db: OsinfoDb) -> None:
    child = osinfo_db.defaults("exos-two")
    assert (child.memory_mib, child.vcpus, child.storage_bytes, child.virtio) == (
        2048, 2, 20 * 2**30, True)
    old = osinfo_db.defaults("oldos9")  # a minimum only: twice it, as virt-install takes
    assert (old.memory_mib, old.virtio) == (512, False)


OSINFO_WIN = """<libosinfo version="0.0.1"><os id="http://example.org/win/3">
<short-id>exwin3</short-id><name>Example Windows 3</name><version>3</version>
<derives-from id="http://example.org/os/1"/>
<devices><device id="http://pcisig.com/pci/1af4/1001" supported="false"/></devices>
<resources arch="i686"><minimum><ram>1073741824</ram></minimum></resources>
<resources arch="x86_64"><minimum><n-cpus>1</n-cpus><ram>2147483648</ram></minimum>
<maximum><ram>6597069766656</ram></maximum></resources>
<resources arch="all"><recommended><storage>42949672960</storage></recommended></resources>
</os></libosinfo>"""
#: what an OS's .d folder holds: drivers for the installer, under the same OS id
OSINFO_WIN_DRIVERS = """<libosinfo version="0.0.1"><os id="http://example.org/win/3">
<short-id>exwin3</short-id><driver arch="x86_64" location="https://example.org/d">
<device id="http://pcisig.com/pci/1af4/1001"/></driver></os></libosinfo>"""


def test_osinfo_defaults_are_the_ones_virt_install_picks(osinfo_db: OsinfoDb) -> None:
    folder = osinfo_db.root / "os" / "example.org"
    (folder / "win-3.xml").write_text(OSINFO_WIN)
    (folder / "win-3.d").mkdir()
    (folder / "win-3.d" / "drivers.xml").write_text(OSINFO_WIN_DRIVERS)
    win = OsinfoDb(osinfo_db.root).defaults("exwin3")
    # its own x86_64 resources (not the parent's recommended 2 GiB, 2 CPUs), a minimum
    # doubled, the 'all' storage; no virtio disks despite the parent and the drivers
    assert (win.memory_mib, win.vcpus, win.storage_bytes, win.virtio) == (
        4096, 2, 40 * 2**30, False)


def test_osinfo_unknown_variant_lists_the_closest(osinfo_db: OsinfoDb) -> None:
    with pytest.raises(InvalidSpec) as caught:
        osinfo_db.defaults("exos3")
    assert "exos1" in caught.value.message or "exos2" in caught.value.message
    assert [e.short_ids[0] for e in osinfo_db.search("example")] == ["exos1", "exos2"]


def test_a_default_disk_only_where_virt_install_adds_one() -> None:
    assert parse("--name a --cdrom /i.iso").default_disk is True
    assert parse("--name a --pxe").default_disk is True
    assert parse("--name a --cdrom /i.iso --nodisks").default_disk is False
    assert parse("--name a --cdrom /i.iso --disk size=3").default_disk is False
    assert parse("--name a --livecd --cdrom /i.iso").default_disk is False


def test_install_media_are_recognised_by_volume_id(tmp_path: Path) -> None:
    """--os-variant detect=on: libosinfo's media match, against the real database when
    present (Debian's osinfo-db is installed by the test set-up) and an ISO made here."""
    import pycdlib

    from virtkit.formats.osinfo import iso_volume_id, system_db

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="Debian 11.5.0 amd64 n")
    iso.write(str(tmp_path / "debian.iso"))
    iso.close()
    volume_id = iso_volume_id(str(tmp_path / "debian.iso"))
    assert volume_id == "Debian 11.5.0 amd64 n"
    entry = system_db().detect(volume_id)
    assert entry is not None and "debian11" in entry.short_ids
    assert system_db().detect("SOMETHING ELSE 1.0") is None
    (tmp_path / "not.iso").write_bytes(b"\0" * 40000)
    assert iso_volume_id(str(tmp_path / "not.iso")) is None
    assert iso_volume_id(str(tmp_path / "missing.iso")) is None


def test_install_media_must_match_every_identifier_the_database_gives(tmp_path: Path) -> None:
    """A volume id alone is not enough where osinfo-db also names the publisher, system or
    application id (or the size): grub-mkrescue's default volume id ``ISOIMAGE`` is also
    ALT Linux 8.2 server's, whose entry also names its publisher and size."""
    import pycdlib

    from virtkit.formats.osinfo import MediaIds, iso_ids, system_db

    def make(name: str, **idents: str) -> Path:
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, **idents)
        iso.write(str(tmp_path / name))
        iso.close()
        return tmp_path / name

    grub = iso_ids(str(make("grub.iso", vol_ident="ISOIMAGE")))
    assert grub is not None and grub.volume == "ISOIMAGE" and grub.publisher is None
    assert grub.size is not None and grub.size % 2048 == 0
    assert system_db().detect(grub) is None
    alt = dict(sys_ident="LINUX", vol_ident="ALT Workstation", pub_ident_str="BASEALT LTD",
               app_ident_str="8.2/X86_64")
    entry = system_db().detect(iso_ids(str(make("alt.iso", **alt))) or MediaIds(""))
    assert entry is not None and "alt8.2" in entry.short_ids
    alt["pub_ident_str"] = "SOMEONE ELSE"
    assert system_db().detect(iso_ids(str(make("other.iso", **alt))) or MediaIds("")) is None
    server = MediaIds(volume="ISOIMAGE", publisher="ALT LINUX TEAM", size=2771419136)
    assert server.matches(MediaIds("ISOIMAGE", publisher="ALT LINUX TEAM", size=2771419136))
    assert not server.matches(MediaIds("ISOIMAGE", publisher="ALT LINUX TEAM", size=32100352))


def test_sound_and_video() -> None:
    req = parse("--name a --import --disk /a --sound ich9 --sound model=ac97 --soundhw default "
                "--video virtio --graphics vnc")
    assert req.domain["sound"] == [{"model": "ich9"}, {"model": "ac97"}, {"model": "ich9"}]
    assert req.domain["video"] == "virtio"
    assert "sound" not in parse("--name a --import --disk /a --sound none").domain
    assert parse("--name a --import --disk /a --video model.type=qxl").domain["video"] == "qxl"
    with pytest.raises(InvalidSpec, match="sound cards are ich9"):
        parse("--name a --import --disk /a --sound sb16")
    with pytest.raises(InvalidSpec, match="leaves VNC nothing to show"):
        parse("--name a --import --disk /a --video none")
    parse("--name a --import --disk /a --video none --graphics none")


def test_filesystem_forms() -> None:
    req = parse("--name a --import --disk /a --filesystem /srv/share,share "
                "--filesystem source=/srv/ro,target=ro,accessmode=mapped,readonly=on")
    assert req.domain["filesystems"] == [
        {"source": "/srv/share", "target": "share"},
        {"source": "/srv/ro", "target": "ro", "accessmode": "mapped", "readonly": True}]
    assert parse("--name a --import --disk /a --filesystem /srv,tag,driver.type=virtiofs"
                 ).domain["filesystems"] == [{"source": "/srv", "target": "tag",
                                              "driver": "virtiofs"}]
    with pytest.raises(InvalidSpec, match=r"driver\.type is virtiofs or path"):
        parse("--name a --import --disk /a --filesystem /srv,tag,driver.type=nfs")
    with pytest.raises(InvalidSpec, match="give the host folder and the guest's mount tag"):
        parse("--name a --import --disk /a --filesystem /srv")


def test_transient() -> None:
    assert parse("--name a --import --disk /a --transient").domain["transient"] is True
    with pytest.raises(InvalidSpec, match="--transient and --autostart contradict"):
        parse("--name a --import --disk /a --transient --autostart")


def test_host_dependent_options_go_to_the_daemon() -> None:
    req = parse("--name a --import --disk /a --host-device 01:00.0 --security type=selinux "
                "--numatune 0")
    assert req.host_checks == {"security": "selinux", "numatune": "0",
                               "host_devices": ["01:00.0"]}
    assert parse("--name a --import --disk /a --security type=none").host_checks == {}
    assert req.domain["hostdevs"] == [{"address": "0000:01:00.0"}]
    assert req.domain["numatune"] == {"nodeset": "0", "mode": "strict"}
    req = parse("--name a --import --disk /a --host-device pci_0000_02_00_1 "
                "--numatune 0,mode=interleave")
    assert req.domain["hostdevs"] == [{"address": "0000:02:00.1"}]
    assert req.domain["numatune"]["mode"] == "interleave"
    with pytest.raises(InvalidSpec, match="named by address"):
        parse("--name a --import --disk /a --host-device 001.003")
    with pytest.raises(InvalidSpec, match="unknown security model"):
        parse("--name a --import --disk /a --security type=smack")
    with pytest.raises(InvalidSpec, match="--noapic"):
        parse("--name a --import --disk /a --noapic")
    assert parse("--name a --import --disk /a --noacpi").domain["acpi"] is False


def _sys(tmp_path: Path, *, iommu: bool = False, lsm: str = "", nodes: int = 1) -> Path:
    (tmp_path / "kernel" / "iommu_groups").mkdir(parents=True)
    if iommu:
        (tmp_path / "kernel" / "iommu_groups" / "0").mkdir()
    (tmp_path / "kernel" / "security").mkdir()
    (tmp_path / "kernel" / "security" / "lsm").write_text(lsm)
    for node in range(nodes):
        (tmp_path / "devices" / "system" / "node" / f"node{node}").mkdir(parents=True)
    return tmp_path


def test_the_host_says_what_it_cannot_do(tmp_path: Path) -> None:
    from virtkit.service import hostsupport

    bare = _sys(tmp_path / "bare")
    with pytest.raises(InvalidSpec, match="this host has no IOMMU"):
        hostsupport.check({"host_devices": ["01:00.0"]}, bare)
    with pytest.raises(InvalidSpec, match="this host does not run apparmor"):
        hostsupport.check({"security": "apparmor"}, bare)
    assert "one NUMA node" in hostsupport.check({"numatune": "0"}, bare)[0]
    with pytest.raises(InvalidSpec, match=r"no NUMA node \[1\] \(it has \[0\]\)"):
        hostsupport.check({"numatune": "0-1"}, bare)
    able = _sys(tmp_path / "able", iommu=True, lsm="capability,apparmor", nodes=2)
    assert hostsupport.check({"host_devices": ["01:00.0"]}, able) == []
    with pytest.raises(InvalidSpec, match="does not apply apparmor labels to QEMU yet"):
        hostsupport.check({"security": "apparmor"}, able)
    assert hostsupport.check({"numatune": "1"}, able) == []
    assert hostsupport.check({}, bare) == []


def test_serial_ports_that_log_to_a_file() -> None:
    req = parse("--name a --import --disk /a --serial file,path=/var/log/a.log --serial pty")
    assert req.domain["serials"] == [{"log_path": "/var/log/a.log"}, {}]
    req = parse("--name a --import --disk /a --console pty,log.file=/var/log/c.log")
    assert req.domain["serials"] == [{"log_path": "/var/log/c.log"}]
    assert "serials" not in parse("--name a --import --disk /a --serial pty").domain
    with pytest.raises(InvalidSpec, match="consoles that can also log"):
        parse("--name a --import --disk /a --serial tcp")
    with pytest.raises(InvalidSpec, match="consoles that can also log"):
        parse("--name a --import --disk /a --console pty,target_type=virtio")
    with pytest.raises(InvalidSpec, match="needs path="):
        parse("--name a --import --disk /a --serial file")


def test_named_channels() -> None:
    req = parse("--name a --import --disk /a --channel unix,target.type=virtio,"
                "name=org.libguestfs.channel.0 --channel unix,path=/run/x.sock,"
                "target_type=virtio,name=x --channel unix,target_type=virtio,"
                "name=org.qemu.guest_agent.0")
    assert req.domain["channels"] == [{"name": "org.libguestfs.channel.0"},
                                      {"name": "x", "path": "/run/x.sock"}]
    with pytest.raises(InvalidSpec, match="spicevmc needs SPICE"):
        parse("--name a --import --disk /a --channel spicevmc")


def test_parallel_ports_write_to_files() -> None:
    req = parse("--name a --import --disk /a --parallel file,path=/var/log/lpt.log")
    assert req.domain["parallels"] == [{"path": "/var/log/lpt.log"}]
    with pytest.raises(InvalidSpec, match="parallel ports write to a host file"):
        parse("--name a --import --disk /a --parallel pty")


def test_the_cli_reports_a_typo_without_a_daemon(tmp_path: Path) -> None:
    """No daemon runs for this root and none may be started: the error is the typo's."""
    import subprocess
    import sys

    env = {"VIRTKIT_ROOT": str(tmp_path), "VIRTKIT_NO_AUTOSTART": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "virtkit.cli.main", "install", "--nmae",
                             "vm", "--cdrom", "/x.iso"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: install: unknown option '--nmae' (did you mean "
                                    "'--name'?)"), result.stderr
