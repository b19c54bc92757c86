"""Real QEMU (TCG) tests of the tiny test guest.

They build the guest (once per machine, cached), boot it with a raw
``qemu-system-x86_64`` command line and check the contract other real tests rely
on: the boot marker on the serial console, a working shell on ttyS0, disk lines,
and a clean power-off on QMP ``system_powerdown``.  QMP is spoken over a plain
unix socket here so these tests depend on nothing but the image builder.

Every QEMU process is killed by PID in a ``finally`` block and each boot has a
hard 60 s budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from virtkit.images.tinyguest import (
    BOOT_MARKER,
    DISK_MARKER,
    POWEROFF_MARKER,
    TinyGuest,
    build_tiny_guest,
)

QEMU = "qemu-system-x86_64"
HARD_TIMEOUT = 60.0
PROMPT = b"# "

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed"),
]


@pytest.fixture(scope="module")
def guest() -> TinyGuest:
    """The cached tiny guest (built on first use: about 5 s and one 70 MB download)."""
    return build_tiny_guest(progress=lambda line: print(f"tinyguest: {line}"))


def _host_tsc_khz() -> int | None:
    """The host CPU's clock in kHz, which is what the guest TSC counts at under TCG.

    microvm has neither HPET nor ACPI PM timer, so the kernel can only calibrate the
    TSC against the emulated PIT; when the host is busy that calibration fails and the
    kernel hangs after "Marking TSC unstable".  Telling it the rate avoids that.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return round(float(value) * 1000)
    return None


class Vm:
    """One QEMU process: serial console on stdio pipes, QMP on a unix socket."""

    def __init__(self, guest: TinyGuest, machine: str, sock: Path, extra: Sequence[str]) -> None:
        append = guest.cmdline
        if machine.startswith("microvm") and (khz := _host_tsc_khz()):
            append += f" tsc_early_khz={khz}"
        self.sock = sock
        self.started = time.monotonic()
        self.deadline = self.started + HARD_TIMEOUT
        self._output = bytearray()
        self._cond = threading.Condition()
        argv = [QEMU, "-accel", "tcg", "-M", machine, "-m", "256", "-nographic", "-nic", "none",
                "-no-reboot", "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
                "-append", append, "-qmp", f"unix:{sock},server=on,wait=off", *extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        """Collect everything QEMU writes (serial console and its own messages)."""
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self._cond:
                self._output += chunk
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        """The console output so far, decoded leniently."""
        with self._cond:
            return self._output.decode("utf-8", "replace")

    def wait_for(self, needle: bytes, start: int = 0, timeout: float = 30.0) -> int:
        """Wait until ``needle`` appears at or after offset ``start``; return its end offset."""
        limit = min(time.monotonic() + timeout, self.deadline)
        with self._cond:
            while (found := self._output.find(needle, start)) < 0:
                remaining = limit - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{needle!r} not seen (qemu exit status "
                                         f"{self.proc.poll()}); console:\n{self.output[-3000:]}")
                self._cond.wait(min(remaining, 0.5))
            return found + len(needle)

    def type(self, text: str) -> None:
        """Send keystrokes to the serial console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command on a fresh connection and return its ``return`` value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.sock))
            stream = conn.makefile("rwb")
            json.loads(stream.readline())  # greeting
            for execute, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": execute, "arguments": args}).encode() + b"\n")
                stream.flush()
                while "return" not in (reply := json.loads(stream.readline())):
                    if "error" in reply:
                        raise AssertionError(f"QMP {execute} failed: {reply['error']}")
            return reply["return"]

    def kill(self) -> None:
        """Kill this QEMU by PID (if still running) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def boot(guest: TinyGuest, tmp_path: Path) -> Iterator[Any]:
    """Factory booting the guest; every VM it made is killed by PID afterwards."""
    vms: list[Vm] = []

    def start(machine: str, *extra: str) -> Vm:
        vm = Vm(guest, machine, tmp_path / f"qmp-{len(vms)}.sock", extra)
        vms.append(vm)
        return vm

    try:
        yield start
    finally:
        for vm in vms:
            vm.kill()


def _wait_for_qmp_socket(vm: Vm) -> None:
    while not vm.sock.exists():
        assert time.monotonic() < vm.deadline and vm.proc.poll() is None, vm.output
        time.sleep(0.05)


@pytest.mark.parametrize("machine", ["q35", "pc", "microvm"])
def test_boot_shell_and_powerdown(boot: Any, machine: str) -> None:
    """Marker, an interactive shell on ttyS0, and ACPI power-off that ends QEMU."""
    vm: Vm = boot(machine)
    marker_end = vm.wait_for(BOOT_MARKER.encode(), timeout=45)
    booted = time.monotonic() - vm.started
    vm.wait_for(PROMPT, marker_end, timeout=10)

    a, b = random.randint(1000, 9999), random.randint(1000, 9999)
    vm.type(f"echo hello-$(({a}+{b}))\n")  # the echoed command line cannot contain the sum
    vm.wait_for(f"hello-{a + b}".encode(), marker_end, timeout=10)

    _wait_for_qmp_socket(vm)
    asked = time.monotonic()
    assert vm.qmp("system_powerdown") == {}
    try:
        returncode = vm.proc.wait(timeout=min(15.0, vm.deadline - asked))
    except subprocess.TimeoutExpired:
        pytest.fail(f"guest did not power off within 15 s; console:\n{vm.output[-3000:]}")
    stopped = time.monotonic() - asked
    assert returncode == 0
    assert POWEROFF_MARKER in vm.output
    print(f"{machine}: marker after {booted:.1f} s, powered off {stopped:.1f} s after request")


def test_disks_and_devices(boot: Any, tmp_path: Path) -> None:
    """virtio-blk and virtio-scsi disks are reported; rng, balloon, watchdog drivers bind."""
    disk_a, disk_b = tmp_path / "a.raw", tmp_path / "b.raw"
    with disk_a.open("wb") as handle:
        handle.truncate(8 * 2**20)
    with disk_b.open("wb") as handle:
        handle.truncate(3 * 2**20)
    vm: Vm = boot(
        "q35",
        "-drive", f"if=none,id=d0,format=raw,file={disk_a}",
        "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"if=none,id=d1,format=raw,file={disk_b}",
        "-device", "scsi-hd,drive=d1,bus=scsi0.0",
        "-device", "virtio-rng-pci",
        "-device", "virtio-balloon-pci",
        "-device", "i6300esb",
        "-device", "virtio-serial-pci",
        "-chardev", "null,id=ga",
        "-device", "virtserialport,chardev=ga,name=org.qemu.guest_agent.0",
    )
    marker_end = vm.wait_for(BOOT_MARKER.encode(), timeout=45)
    assert f"{DISK_MARKER} vda {8 * 2**20}" in vm.output
    assert f"{DISK_MARKER} sda {3 * 2**20}" in vm.output
    vm.wait_for(PROMPT, marker_end, timeout=10)
    probe = ("ls /dev/watchdog /dev/hwrng /dev/virtio-ports/org.qemu.guest_agent.0"
             " /sys/bus/virtio/drivers/virtio_balloon/virtio* >/dev/null && echo ok-$((6*7))\n")
    vm.type(probe)
    vm.wait_for(b"ok-42", marker_end, timeout=10)


def test_build_is_cached(guest: TinyGuest) -> None:
    """A second build call is a cheap cache hit returning the same files."""
    started = time.monotonic()
    again = build_tiny_guest()
    assert time.monotonic() - started < 2.0
    assert again == guest
    manifest = json.loads((guest.kernel.parent / "manifest.json").read_text())
    assert manifest["kernel_version"] == guest.kernel_version
    assert manifest["kernel_package"] == f"linux-image-{guest.kernel_version}"
    assert guest.marker == BOOT_MARKER


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_initrd_layout(guest: TinyGuest) -> None:
    """The initramfs is a valid newc archive holding init, busybox, acpid and the modules."""
    unpacked = subprocess.run(["gzip", "-dc", str(guest.initrd)], capture_output=True, check=True)
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=unpacked.stdout,
                             capture_output=True, check=True).stdout.decode().split()
    moddir = f"lib/modules/{guest.kernel_version}"
    expected = {"init", "bin/busybox", "bin/acpid", "bin/sh", "etc/inittab", "etc/init.d/rcS",
                "etc/acpi/PWRF/00000080", "etc/virtkit/modules", "dev/console",
                f"{moddir}/virtio_pci.ko", f"{moddir}/virtio_blk.ko", f"{moddir}/button.ko",
                f"{moddir}/evdev.ko", f"{moddir}/i6300esb.ko"}
    assert expected <= set(listing)
