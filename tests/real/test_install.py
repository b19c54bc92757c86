"""``virtkit install`` against a real daemon and real QEMU.

The install media are made here from the tiny guest: an ISO laid out like Debian's
(``install.amd/vmlinuz`` + ``initrd.gz``) whose "installer" is the tiny guest itself.
The test plays the installer on its serial console (checks the ``--extra-args`` and
the ``--initrd-inject`` file, then powers off) and sees the daemon boot the
installed configuration, without the installer kernel and CD.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pycdlib
import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.images.debiancloud import DebianCloud, build_debian_cloud
from virtkit.images.installer import (
    DEFAULT_HOSTNAME,
    DONE_MARKER,
    INSTALLED_ARG,
    Installer,
    answer_file,
    build_installer,
)

pytestmark = pytest.mark.qemu


def make_iso(path: Path, files: dict[str, bytes]) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="TINYINST")
    made: set[str] = set()
    for index, (name, data) in enumerate(sorted(files.items())):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                iso.add_directory(f"/D{len(made)}", rr_name=parts[depth - 1])
                made.add(folder)
        parent = "" if len(parts) == 1 else f"/D{sorted(made).index('/'.join(parts[:-1]))}"
        iso.add_fp(io.BytesIO(data), len(data), f"{parent}/F{index}.;1", rr_name=parts[-1])
    iso.write(str(path))
    iso.close()
    return path


@pytest.fixture
def installer_iso(daemon: DaemonHandle, tmp_path: Path) -> Path:
    guest = daemon.guest
    return make_iso(tmp_path / "installer.iso", {
        "install.amd/vmlinuz": guest.kernel.read_bytes(),
        "install.amd/initrd.gz": guest.initrd.read_bytes()})


def volumes(daemon: DaemonHandle) -> list[str]:
    return sorted(v["name"] for v in daemon.client.get("/v1/pools/default/volumes"))


def domains(daemon: DaemonHandle) -> list[str]:
    return [row["name"] for row in daemon.client.get("/v1/domains")]


def test_location_install_then_the_installed_system_boots(daemon: DaemonHandle,
                                                         installer_iso: Path,
                                                         tmp_path: Path) -> None:
    answers = tmp_path / "answers.cfg"
    answers.write_text("VK-ANSWER-FILE\n")
    result = daemon.cli(
        "install", "--name", "inst1", "--ram", "256", "--vcpus=1", "--os-variant", "generic",
        f"--location={installer_iso}", "--extra-args", f"{daemon.guest.cmdline} vk_install=1",
        "--initrd-inject", str(answers), "--disk", "size=1", "--graphics", "none",
        "--nonetworks", "--noautoconsole")
    assert "Domain 'inst1' started" in result.stdout
    assert "installation still in progress" in result.stdout
    info = daemon.info("inst1")
    assert info["installing"] is True and info["state"] == "running"
    # The defined (final) configuration has neither the installer kernel nor the CD.
    assert info["spec"]["boot"]["kernel"] is None
    assert [d.get("device", "disk") for d in info["spec"]["disks"]] == ["disk"]
    assert volumes(daemon) == ["inst1.qcow2"]
    daemon.wait_booted("inst1")
    out = daemon.console_run("inst1", "cat /proc/cmdline; cat /answers.cfg; echo done-$((6*7))",
                             "done-42")
    assert "vk_install=1" in out and "VK-ANSWER-FILE" in out
    daemon.console_run("inst1", "echo bye-$((6*7)); poweroff -f", "bye-42")
    # The daemon boots the installed configuration on its own.
    wait_for(lambda: (i := daemon.info("inst1"))["state"] == "running" and not i["installing"]
             and i["pid"] != info["pid"], 60, "the installed system to boot")
    events = daemon.cli("event", "inst1", "--since", "0", "--count", "3", "--json",
                        timeout=10).stdout
    assert [json.loads(line)["type"] for line in events.splitlines()] == [
        "defined", "started", "installed"]
    argv = Path(f"/proc/{daemon.info('inst1')['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"-kernel" not in argv and not any(b"installer.iso" in a for a in argv)


def test_import_boots_the_given_disk_and_kernel(daemon: DaemonHandle, tmp_path: Path) -> None:
    disk = tmp_path / "imp.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    guest = daemon.guest
    result = daemon.cli(
        "install", "--name", "imp1", "--memory=256", "--import", "--disk", f"{disk},bus=sata",
        "--boot", f"kernel={guest.kernel},initrd={guest.initrd},cmdline='{guest.cmdline}'",
        "--graphics=vnc", "--nonetworks", "--noautoconsole")
    assert "Domain creation completed." in result.stdout
    info = daemon.info("imp1")
    port = info["vnc"]["port"]  # the display number, as VNC viewers take it, not the port
    assert f"VNC display {info['vnc']['host']}:{port - 5900} (TCP port {port};" in result.stdout
    assert info["state"] == "running" and info["installing"] is False
    assert info["spec"]["boot"]["kernel"] == str(guest.kernel)
    assert info["spec"]["disks"][0]["bus"] == "sata"
    daemon.wait_booted("imp1")


def test_dry_run_and_bad_input_leave_nothing_behind(daemon: DaemonHandle, tmp_path: Path,
                                                    installer_iso: Path) -> None:
    base = ["install", "--name", "bad1", "--memory", "256", "--noautoconsole",
            "--graphics", "none"]
    dry = daemon.cli(*base, "--location", str(installer_iso), "--disk", "size=1", "--dry-run")
    assert "Dry run completed successfully" in dry.stdout
    assert "there is no network 'default'" in dry.stdout  # no --network, no 'default'
    assert domains(daemon) == [] and volumes(daemon) == []
    # the dry run refuses what the real run refuses (memory above the host's)
    huge = daemon.cli("install", "--name", "bad1", "--memory", "99999999", "--noautoconsole",
                      "--graphics", "none", "--location", str(installer_iso), "--disk",
                      "size=1", "--dry-run", check=False)
    assert huge.returncode == 1 and "more than the host's" in huge.stderr, huge.stdout
    empty_iso = make_iso(tmp_path / "empty.iso", {"README": b"nothing to boot\n"})
    cases = [
        (["--location", str(empty_iso), "--disk", "size=1"], "found no installer kernel"),
        (["--cdrom", str(tmp_path / "missing.iso"), "--disk", "size=1"], "does not exist"),
        (["--location", str(installer_iso), "--disk", "size=1", "--disk",
          "vol=default/nosuch.qcow2"], "nosuch.qcow2"),
        (["--import", "--disk", "size=1", "--cdrom", str(installer_iso)], "together"),
        (["--import", "--disk", "/nonexistent/dir/x.qcow2,size=1"], "does not exist"),
        (["--location", str(installer_iso), "--disk", "size=1", "--network", "network=nosuch"],
         "nosuch"),
    ]
    for extra, expected in cases:
        result = daemon.cli(*base, *extra, check=False)
        assert result.returncode == 1, (extra, result.stdout)
        assert expected in result.stderr, (extra, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
        assert domains(daemon) == [] and volumes(daemon) == [], extra
    existing = tmp_path / "exists.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(existing), "1G"], check=True)
    result = daemon.cli(*base, "--import", "--disk", f"{existing},size=2", check=False)
    assert "exists with size 1 GiB, not the 2 GiB" in result.stderr
    daemon.define("taken")
    result = daemon.cli("install", "--name", "taken", "--memory", "256", "--import",
                        "--disk", str(existing), "--nonetworks", check=False)
    assert "domain 'taken' already exists" in result.stderr
    assert json.loads(daemon.cli("list", "--all", "--json").stdout)[0]["name"] == "taken"
    assert existing.exists()


# -- an unattended install end to end, with the test installer ------------------------------


@pytest.fixture(scope="module")
def installer() -> Installer:
    return build_installer()


def installed_cmdline(daemon: DaemonHandle, name: str, first_pid: int) -> str:
    """Wait for the installed system (a new QEMU) to boot; its kernel command line."""
    wait_for(lambda: (i := daemon.info(name))["state"] == "running" and not i["installing"]
             and i["pid"] != first_pid, 240, f"{name}'s installed system to start")
    daemon.wait_booted(name, count=2)  # the console log holds the installer's boot too
    return daemon.console_run(name, "echo CMD=$(cat /proc/cmdline)=; echo ok-$((6*7))", "ok-42")


def test_unattended_install_from_cdrom_boots_from_its_own_disk(
        daemon: DaemonHandle, installer: Installer) -> None:
    result = daemon.cli("install", "--name", "cd1", "--memory", "256", "--cdrom",
                        str(installer.iso), "--disk", "size=1", "--graphics", "none",
                        "--nonetworks", "--os-variant", "generic", "--noautoconsole")
    assert "installation still in progress" in result.stdout
    first = daemon.info("cd1")
    assert first["installing"]
    argv = Path(f"/proc/{first['pid']}/cmdline").read_bytes().split(b"\0")
    assert any(str(installer.iso).encode() in a for a in argv) and b"-kernel" not in argv
    wait_for(lambda: DONE_MARKER in daemon.console_log("cd1"), 240, "the installer to finish")
    out = installed_cmdline(daemon, "cd1", first["pid"])
    assert f"{INSTALLED_ARG}={DEFAULT_HOSTNAME}" in out  # booted by extlinux from the disk
    spec = daemon.info("cd1")["spec"]
    assert [(d["device"], d["path"]) for d in spec["disks"]][1] == ("cdrom", None)
    argv = Path(f"/proc/{daemon.info('cd1')['pid']}/cmdline").read_bytes().split(b"\0")
    assert not any(str(installer.iso).encode() in a for a in argv)


def test_unattended_install_by_location_with_an_injected_answer_file_then_import(
        daemon: DaemonHandle, installer: Installer, tmp_path: Path) -> None:
    answers = tmp_path / "vm.ks"
    answers.write_text(answer_file("fromlocation", append="vk.extra=yes"))
    daemon.cli("install", "--name", "loc1", "--memory", "256", "--location", str(installer.iso),
               "--extra-args", f"{installer.cmdline.split(' vk.ks=')[0]} vk.ks=/vm.ks",
               "--initrd-inject", str(answers), "--disk", "size=1", "--graphics", "none",
               "--nonetworks", "--noautoconsole", "--noreboot")
    wait_for(lambda: DONE_MARKER in daemon.console_log("loc1"), 240, "the installer to finish")
    info = daemon.wait_state("loc1", "shutoff", timeout=60)  # --noreboot: it stays off
    assert info["installing"] is False
    # --import of the installed disk (a copy) boots as the installed system.
    disk = info["spec"]["disks"][0]
    daemon.cli("vol-clone", disk["volume"], "copy.qcow2", "--pool", disk["pool"])
    daemon.cli("install", "--name", "imp2", "--memory", "256", "--import", "--disk",
               "vol=default/copy.qcow2", "--graphics", "none", "--nonetworks",
               "--noautoconsole")
    daemon.wait_booted("imp2")
    out = daemon.console_run("imp2", "echo CMD=$(cat /proc/cmdline)=; echo ok-$((6*7))", "ok-42")
    assert f"{INSTALLED_ARG}=fromlocation" in out and "vk.extra=yes" in out


def test_unattended_install_over_pxe_from_the_network_tftp_server(
        netns_daemon: DaemonHandle, installer: Installer) -> None:
    """--pxe: the NIC's iPXE gets a lease and boot.ipxe from the network's dnsmasq (TFTP),
    boots the installer from it, and the installed system then boots from the disk."""
    d = netns_daemon
    tftp = Path(tempfile.mkdtemp(prefix="vk-tftp-", dir="/tmp"))
    try:
        tftp.chmod(0o755)  # dnsmasq serves TFTP as an unprivileged user
        shutil.copyfile(installer.kernel, tftp / "vmlinuz")
        shutil.copyfile(installer.initrd, tftp / "initrd.gz")
        (tftp / "boot.ipxe").write_text(f"#!ipxe\nkernel vmlinuz {installer.cmdline}\n"
                                        "initrd initrd.gz\nboot\n")
        for item in tftp.iterdir():
            item.chmod(0o644)
        d.cli("net-define-as", "pxe", "--mode", "isolated", "--subnet", "10.67.0.0/24",
              "--tftp-root", str(tftp), "--boot-file", "boot.ipxe")
        d.cli("net-start", "pxe")
        d.cli("install", "--name", "pxe1", "--memory", "256", "--pxe", "--network",
              "network=pxe", "--disk", "size=1", "--graphics", "none", "--noautoconsole")
        first = d.info("pxe1")
        assert first["installing"]
        wait_for(lambda: DONE_MARKER in d.console_log("pxe1"), 300, "the PXE install")
        out = installed_cmdline(d, "pxe1", first["pid"])
        assert f"{INSTALLED_ARG}={DEFAULT_HOSTNAME}" in out
        leases = json.loads(d.cli("net-dhcp-leases", "pxe", "--json").stdout)
        assert leases and leases[0]["ip"].startswith("10.67.0.")
    finally:
        shutil.rmtree(tftp, ignore_errors=True)


def test_cloud_init_seed_is_on_the_first_boot_only(daemon: DaemonHandle, tmp_path: Path) -> None:
    """--cloud-init: the first boot sees a NoCloud seed CD (label cidata) with the root
    password and SSH key in user-data; the installed configuration has no seed."""
    disk = tmp_path / "ci.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    password, key = tmp_path / "pw", tmp_path / "id.pub"
    password.write_text("s3cret-Pass\n")
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest test@host\n")
    guest = daemon.guest
    daemon.cli("install", "--name", "ci1", "--memory", "256", "--import", "--disk", str(disk),
               "--boot", f"kernel={guest.kernel},initrd={guest.initrd},cmdline='{guest.cmdline}'",
               "--cloud-init", f"root-password-file={password},ssh-key={key}",
               "--graphics", "none", "--nonetworks", "--noautoconsole")
    first = daemon.info("ci1")
    assert first["installing"] is True
    daemon.wait_booted("ci1")
    out = daemon.console_run("ci1", "mkdir -p /seed; mount -t iso9660 -o ro /dev/sr0 /seed && "
                                    "cat /seed/user-data /seed/meta-data; "
                                    "echo LABEL=$(dd if=/dev/sr0 bs=1 skip=32808 count=6 "
                                    "2>/dev/null)=; echo seed-$((6*7))", "seed-42")
    assert "#cloud-config" in out and "root:s3cret-Pass" in out
    assert "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest" in out
    assert "local-hostname: ci1" in out and "LABEL=cidata=" in out
    daemon.console_run("ci1", "umount /seed; echo bye-$((6*7)); poweroff -f", "bye-42")
    wait_for(lambda: (i := daemon.info("ci1"))["state"] == "running" and not i["installing"]
             and i["pid"] != first["pid"], 60, "the installed configuration to boot")
    daemon.wait_booted("ci1", count=2)
    out = daemon.console_run("ci1", "ls /dev/sr0 2>&1; echo done-$((6*7))", "done-42")
    assert "No such file" in out


def test_wait_returns_once_the_installed_system_runs(daemon: DaemonHandle,
                                                     installer: Installer) -> None:
    result = daemon.cli("install", "--name", "w1", "--memory", "256", "--cdrom",
                        str(installer.iso), "--disk", "size=1", "--graphics", "none",
                        "--nonetworks", "--wait", "5", timeout=400)
    assert "Waiting for the installation to complete." in result.stdout
    assert "Domain 'w1' installed; the installed system is booting." in result.stdout
    info = daemon.info("w1")
    assert info["state"] == "running" and info["installing"] is False
    assert DONE_MARKER in daemon.console_log("w1")


@pytest.fixture(scope="module")
def debian_cloud() -> DebianCloud:
    return build_debian_cloud()


def test_cloud_init_sets_the_root_password_of_a_debian_image(
        daemon: DaemonHandle, debian_cloud: DebianCloud, tmp_path: Path) -> None:
    """The issue's end-to-end case: a Debian image (debootstrap + cloud-init) gets its
    root password from --cloud-init, and logging in on the serial console with it works."""
    disk = tmp_path / "debian.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(debian_cloud.image),
                    "-F", "qcow2", str(disk)], check=True)
    password = tmp_path / "root.pw"
    password.write_text("Vk-cloud-7t!\n")
    daemon.cli("install", "--name", "deb1", "--memory", "512", "--import", "--disk",
               str(disk), "--boot", f"kernel={debian_cloud.kernel},initrd={debian_cloud.initrd},"
               f"cmdline='{debian_cloud.cmdline}'", "--cloud-init",
               f"root-password-file={password}", "--graphics", "none", "--nonetworks",
               "--noautoconsole")
    wait_for(lambda: re.search(r"deb1 login:", daemon.console_log("deb1")), 900,
             "the Debian login prompt with the hostname cloud-init set")
    daemon.console_login("deb1", "root", "Vk-cloud-7t!", "root@deb1:~#")
    out = daemon.console_run("deb1", "cloud-init status --wait; echo in-$((6*7))", "in-42",
                             timeout=120)
    assert "status: done" in out, out  # every module ran without error


def test_location_from_a_directory_tree_and_an_http_url(daemon: DaemonHandle,
                                                        installer: Installer,
                                                        tmp_path: Path) -> None:
    """--location reads the installer's kernel and initrd from a directory tree and from
    an http URL (served here on 127.0.0.1), as from an ISO."""
    import functools
    import http.server
    import threading

    tree = tmp_path / "tree"
    (tree / "install.amd").mkdir(parents=True)
    shutil.copyfile(installer.kernel, tree / "install.amd" / "vmlinuz")
    shutil.copyfile(installer.initrd, tree / "install.amd" / "initrd.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tree))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        for name, location in (("dir1", str(tree)), ("url1", url)):
            daemon.cli("install", "--name", name, "--memory", "256", "--location", location,
                       "--extra-args", installer.cmdline, "--disk", "size=1", "--graphics",
                       "none", "--nonetworks", "--noautoconsole", "--noreboot")
            wait_for(lambda name=name: DONE_MARKER in daemon.console_log(name), 240,  # type: ignore[misc]
                     f"the installer of {name} to finish")
            daemon.wait_state(name, "shutoff", timeout=60)
        missing = daemon.cli("install", "--name", "url2", "--memory", "256", "--location",
                             url + "nothing/", "--disk", "size=1", "--nonetworks", check=False)
        assert "found no installer kernel and initrd" in missing.stderr
        unreachable = daemon.cli("install", "--name", "url3", "--memory", "256", "--location",
                                 "http://127.0.0.1:9/", "--disk", "size=1", "--nonetworks",
                                 check=False)
        assert "cannot reach it" in unreachable.stderr
        assert "url2" not in daemon.cli("list", "--all", "--name").stdout
    finally:
        server.shutdown()
        server.server_close()
