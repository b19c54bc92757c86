"""Device configurations start in real QEMU and the guest sees what the spec says."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.real.conftest import DaemonHandle, wait_for
from virtkit.cli.client import ApiError

pytestmark = pytest.mark.qemu


def _image(path: Path, size: str, fmt: str = "qcow2") -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return str(path)


def test_disks_on_every_bus_and_the_optional_devices(daemon: DaemonHandle, tmp_path: Path) -> None:
    iso = tmp_path / "empty.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    daemon.define(
        "devices",
        vcpus={"current": 2, "max": 4, "sockets": 1, "cores": 2, "threads": 2},
        memory={"current": 256, "max": 1024},
        disks=[
            {"path": _image(tmp_path / "a.qcow2", "64M")},  # format detected at define
            {"path": _image(tmp_path / "b.raw", "32M", "raw"), "bus": "scsi",
             "serial": "SCSI-B"},
            {"path": _image(tmp_path / "c.qcow2", "16M"), "bus": "sata", "cache": "none"},
            {"path": str(iso), "device": "cdrom"},
            {"device": "cdrom", "bus": "scsi"},
        ],
        nics=[{"model": "virtio"}],
        graphics={"type": "vnc", "password": "secret"},
        watchdog={"model": "i6300esb", "action": "reset"},
        serials=[{"log": True}, {"log": False}],
    )
    info = daemon.client.post(daemon.client.domain_path("devices", "/start"))
    assert [d["format"] for d in info["disks"][:3]] == ["qcow2", "raw", "qcow2"]
    assert [d["target"] for d in info["disks"]] == ["vda", "sda", "sdb", "sdc", "sdd"]
    assert info["vnc"]["port"] >= 5900
    mac = info["spec"]["nics"][0]["mac"]
    assert mac.startswith("52:54:00:")
    daemon.wait_booted("devices")
    log = daemon.console_log("devices")
    assert "VIRTKIT-DISK vda 67108864" in log
    assert "VIRTKIT-DISK sda 33554432" in log  # the virtio-scsi disk
    output = daemon.console_run("devices", "cat /sys/class/net/eth0/address; nproc",
                                mac)
    assert mac in output
    daemon.client.post(daemon.client.domain_path("devices", "/destroy"))


def test_uefi_firmware_boots_and_keeps_its_nvram(daemon: DaemonHandle) -> None:
    info = daemon.define("efi", firmware="uefi")
    daemon.client.post(daemon.client.domain_path("efi", "/start"))
    daemon.wait_booted("efi", timeout=150)
    nvram = daemon.root / "nvram" / f"{info['uuid']}_VARS.fd"
    assert nvram.stat().st_size > 0
    daemon.client.post(daemon.client.domain_path("efi", "/destroy"))
    daemon.client.request("DELETE", daemon.client.domain_path("efi") + "?nvram=1")
    assert not nvram.exists()


def test_pc_machine_with_ide_disk(daemon: DaemonHandle, tmp_path: Path) -> None:
    daemon.define("legacy", machine="pc",
                  disks=[{"path": _image(tmp_path / "ide.qcow2", "8M"), "bus": "ide"},
                         {"path": _image(tmp_path / "v.qcow2", "8M")}])
    info = daemon.client.post(daemon.client.domain_path("legacy", "/start"))
    assert [d["target"] for d in info["disks"]] == ["hda", "vda"]
    daemon.wait_booted("legacy")
    assert "VIRTKIT-DISK vda 8388608" in daemon.console_log("legacy")


def test_sound_cards_and_every_video_model(daemon: DaemonHandle) -> None:
    """Every sound card model appears on the guest's PCI bus (on the silent audio back
    end), and QEMU starts with each display adapter."""
    cards = [{"model": "ich9"}, {"model": "hda"}, {"model": "ac97"}, {"model": "es1370"}]
    daemon.define("sound", graphics="vnc", video="virtio", sound=cards)
    info = daemon.client.post(daemon.client.domain_path("sound", "/start"))
    argv = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode().split("\0")
    assert "none,id=audio0" in argv
    daemon.wait_booted("sound")
    out = daemon.console_run("sound", "cat /sys/bus/pci/devices/*/device | sort | tr '\\n' ' ';"
                                      " echo pci-$((6*7))", "pci-42")
    # ich9-intel-hda 0x293e, intel-hda 0x2668, AC97 0x2415, ES1370 0x5000, virtio-vga 0x1050
    for device in ("0x293e", "0x2668", "0x2415", "0x5000", "0x1050"):
        assert device in out, device
    daemon.client.post(daemon.client.domain_path("sound", "/destroy"))
    for model in ("vga", "bochs", "qxl", "cirrus"):
        daemon.define(f"video-{model}", graphics="vnc", video=model)
        daemon.client.post(daemon.client.domain_path(f"video-{model}", "/start"),
                           {"paused": True})
        assert daemon.state(f"video-{model}") == "paused"
        daemon.client.post(daemon.client.domain_path(f"video-{model}", "/destroy"))


def test_shared_folders_over_virtiofs_and_9p(daemon: DaemonHandle, tmp_path: Path) -> None:
    """A writable share becomes virtiofs (virtiofsd is installed), one asked for 9p stays
    9p; the guest reads and writes both, and a read-only (9p) share refuses writes."""
    fast, slow, ro = tmp_path / "fast, with comma", tmp_path / "slow", tmp_path / "ro"
    for folder in (fast, slow, ro):
        folder.mkdir()
    (fast / "from-host.txt").write_text("hello over virtiofs\n")
    (slow / "from-host.txt").write_text("hello over 9p\n")
    (ro / "keep.txt").write_text("read only\n")
    defined = daemon.define("fs", filesystems=[
        {"source": str(fast), "target": "fast"},
        {"source": str(slow), "target": "slow", "driver": "9p"},
        {"source": str(ro), "target": "ro", "readonly": True}])
    assert [fs["driver"] for fs in defined["spec"]["filesystems"]] == ["virtiofs", "9p", "9p"]
    info = daemon.client.post(daemon.client.domain_path("fs", "/start"))
    helpers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"virtiofsd" in (p / "cmdline").read_bytes().split(b"\0")[0]
               and str(daemon.root).encode() in (p / "cmdline").read_bytes()]
    assert helpers  # virtiofsd (which forks into its own namespaces: one or two processes)
    daemon.wait_booted("fs")
    out = daemon.console_run(
        "fs", "mkdir -p /a /b /c; mount -t virtiofs fast /a && mount -t 9p -o trans=virtio "
              "slow /b && mount -t 9p -o trans=virtio ro /c && cat /a/from-host.txt "
              "/b/from-host.txt /c/keep.txt; echo guest > /a/from-guest.txt; "
              "echo guest > /b/from-guest.txt; echo nope > /c/x.txt; echo rc=$?; sync; "
              "echo fs-$((6*7))", "fs-42")
    assert "hello over virtiofs" in out and "hello over 9p" in out and "read only" in out
    assert "rc=0" not in out  # the read-only share refused the write
    assert (fast / "from-guest.txt").read_text() == "guest\n"
    assert (slow / "from-guest.txt").read_text() == "guest\n"
    assert not (ro / "x.txt").exists()
    daemon.client.post(daemon.client.domain_path("fs", "/destroy"))
    wait_for(lambda: not any(helper.exists() for helper in helpers), 10,
             "virtiofsd to end with its QEMU")
    assert info["pid"] not in [int(helper.name) for helper in helpers]
    with pytest.raises(ApiError, match="is not a folder"):
        daemon.client.post("/v1/domains", {"spec": daemon.spec(
            "fs2", filesystems=[{"source": str(tmp_path / "nope"), "target": "x"}])})


def test_cpuset_pins_every_qemu_thread(daemon: DaemonHandle) -> None:
    """vcpus.cpuset (libvirt's <vcpu cpuset=>, virt-install --cpuset): every thread of the
    QEMU process may run only on those host CPUs; a CPU the host lacks is refused."""
    daemon.define("pinned", vcpus={"current": 2, "cpuset": "1"})
    info = daemon.client.post(daemon.client.domain_path("pinned", "/start"))
    daemon.wait_booted("pinned")
    tasks = list(Path(f"/proc/{info['pid']}/task").iterdir())
    assert len(tasks) >= 3  # main loop + 2 vCPUs at least
    for task in tasks:
        status = (task / "status").read_text()
        allowed = [line.split()[1] for line in status.splitlines()
                   if line.startswith("Cpus_allowed_list:")]
        assert allowed == ["1"], (task.name, allowed)
    daemon.client.post(daemon.client.domain_path("pinned", "/destroy"))
    with pytest.raises(ApiError, match="this host has no CPU"):
        daemon.define("too-far", vcpus={"current": 1, "cpuset": "0,4096"})


def test_a_guest_without_acpi_boots_and_is_destroyed_not_shut_down(
        daemon: DaemonHandle) -> None:
    """acpi: false (virt-install --noacpi, libvirt XML without <acpi/>): QEMU gets
    acpi=off and the guest boots without QEMU's ACPI tables (no DSDT, so no power
    button; SeaBIOS still builds a minimal MADT of its own, as under libvirt)."""
    daemon.define("noacpi", acpi=False, machine="pc")
    info = daemon.client.post(daemon.client.domain_path("noacpi", "/start"))
    argv = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
    assert ",acpi=off" in argv
    daemon.wait_booted("noacpi")
    out = daemon.console_run("noacpi", "echo T=$(ls /sys/firmware/acpi/tables)=; "
                                       "echo acpi-$((6*7))", "acpi-42")
    tables = out.split("T=")[-1].split("=")[0].split()
    assert "DSDT" not in tables and "FACP" not in tables, tables
    daemon.client.post(daemon.client.domain_path("noacpi", "/destroy"))


def test_serial_port_logs_to_a_file_of_its_own(daemon: DaemonHandle, tmp_path: Path) -> None:
    """serials[].log_path (libvirt <log file=>, virt-install --serial file,path=): the
    console output goes to that file, and 'virtkit console --log' reads it from there."""
    log = tmp_path / "console, port 0.log"
    daemon.define("logged", serials=[{"log_path": str(log)}])
    daemon.client.post(daemon.client.domain_path("logged", "/start"))
    daemon.wait_booted("logged")  # reads the console log through the API
    assert "VIRTKIT-GUEST-READY" in log.read_text(errors="replace")
    assert "VIRTKIT-GUEST-READY" in daemon.cli("console", "logged", "--log").stdout
    daemon.client.post(daemon.client.domain_path("logged", "/destroy"))


def test_a_named_channel_carries_bytes_between_guest_and_host(daemon: DaemonHandle,
                                                              tmp_path: Path) -> None:
    """channels[] (libvirt <channel type='unix'>, virt-install --channel): the guest writes
    /dev/vport*p2 (named com.example.test), a host process reads the unix socket."""
    sock = tmp_path / "test channel.sock"
    daemon.define("chan", channels=[{"name": "com.example.test", "path": str(sock)}])
    daemon.client.post(daemon.client.domain_path("chan", "/start"))
    daemon.wait_booted("chan")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    try:
        client.connect(str(sock))
        out = daemon.console_run("chan", "ls /dev/virtio-ports/; echo from-the-guest > "
                                         "/dev/virtio-ports/com.example.test; echo ch-$((6*7))",
                                 "ch-42")
        assert "com.example.test" in out
        received = b""
        while b"from-the-guest" not in received:
            received += client.recv(100)
    finally:
        client.close()
    daemon.client.post(daemon.client.domain_path("chan", "/destroy"))


def test_a_parallel_port_writes_to_its_file(daemon: DaemonHandle, tmp_path: Path) -> None:
    """parallels[] (libvirt <parallel type='file'>, virt-install --parallel file,path=):
    what the guest writes to /dev/port's LPT data register lands in the host file."""
    printed = tmp_path / "lpt0, printed.txt"
    daemon.define("lpt", parallels=[{"path": str(printed)}])
    info = daemon.client.post(daemon.client.domain_path("lpt", "/start"))
    assert "isa-parallel" in Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
    daemon.wait_booted("lpt")
    # write 'V' (0x56) to the data port 0x378 and pulse the strobe line, as a driver does
    daemon.console_run("lpt", "printf 'V' | dd of=/dev/port bs=1 seek=888 2>/dev/null; "
                              "printf '\\015' | dd of=/dev/port bs=1 seek=890 2>/dev/null; "
                              "printf '\\014' | dd of=/dev/port bs=1 seek=890 2>/dev/null; "
                              "echo lp-$((6*7))", "lp-42")
    wait_for(lambda: printed.exists() and b"V" in printed.read_bytes(), 10,
             "the byte to reach the host file")
    daemon.client.post(daemon.client.domain_path("lpt", "/destroy"))
