"""One running Debian guest shared by every real test that needs a real distribution.

Booting the Debian image (systemd, qemu-guest-agent) under TCG takes most of a minute
on the CI machine, so the tests that only need *a* Debian guest with an agent share one
(``debian_vm``) instead of booting their own: the guest-agent, hotplug and quiesced
snapshot tests.  It is booted when the first such test starts, kept running while they
run (tests/real/conftest.py puts them next to each other, whatever their module), and
stopped after the last one.

The shared guest (``DebianVm.name`` on ``DebianVm.daemon``, a daemon of its own):

* the Debian image of virtkit.images.debiancloud as a copy-on-write overlay
  ``DebianVm.disk``, alone in its folder ``DebianVm.folder`` (snapshot files go beside
  it; a test that makes some removes them);
* 512 MiB (maximum 1536, for DIMMs), 2 vCPUs (maximum 4), a balloon, an empty SATA
  CD-ROM ``sda``, a logged serial console, no NIC; its agent answers when a test starts;
* booted with ``cloud-init=disabled`` on its kernel command line: with no seed
  cloud-init has nothing to do but would still run its four stages (about a minute
  under TCG) before the agent starts.  The cloud-init test (test_install.py) boots its
  own copy with cloud-init.

Rules for a test that uses it:

* leave the guest as you found it: undo what you attach, freeze, offline, insert;
* a test that must leave a lasting change (a vCPU that TCG cannot unplug, a DIMM)
  carries ``@pytest.mark.changes_debian_guest``: such tests run after all the others,
  in their modules' order, and must not depend on what the other marked tests change;
  one that powers the guest off carries ``@pytest.mark.changes_debian_guest(powers_off=True)``
  and runs at the very end;
* a guest that is not running, or whose agent does not answer, when a test starts is
  replaced by a fresh one (new overlay, new daemon), and so is the guest after any test
  that failed: one broken test does not make the next ones fail (at most
  ``MAX_BOOTS`` boots a run; a guest that did not boot fails the later tests at once).

Use it by naming the fixture: ``def test_x(debian_vm: DebianVm) -> None`` (the module
must carry the ``qemu`` marker).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DaemonHandle, running_daemon, wait_for
from virtkit.cli.client import ApiError
from virtkit.images.debiancloud import DebianCloud, build_debian_cloud
from virtkit.images.tinyguest import TinyGuest

#: the fixture's name (conftest.py groups the tests that use it)
FIXTURE = "debian_vm"
#: the marker of the tests that leave lasting changes (they run last)
CHANGES_MARK = "changes_debian_guest"
AGENT_BOOT_TIMEOUT = 240.0
#: fresh guests a run may boot (the first one, and those that replace a broken one): a
#: run where many tests fail must not spend a boot on each
MAX_BOOTS = 4
NAME = "deb"
#: kernel arguments added for the shared guest (see the module docstring)
EXTRA_CMDLINE = "cloud-init=disabled"


@dataclass
class DebianVm:
    """The shared Debian guest: running, its agent answering."""

    daemon: DaemonHandle
    name: str
    disk: Path
    folder: Path


def agent_answers(handle: DaemonHandle, name: str) -> bool:
    try:
        handle.client.get(handle.client.domain_path(name, "/guest/ping"))
    except ApiError:
        return False
    return True


def debian_spec(name: str, image: DebianCloud, disk: Path, **overrides: object
                ) -> dict[str, Any]:
    """A spec booting ``disk`` (an overlay of ``image``) by direct kernel boot."""
    spec: dict[str, Any] = {
        "name": name, "memory": {"current": 512, "max": 1536},
        "vcpus": {"current": 2, "max": 4},
        "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                 "cmdline": image.cmdline},
        "disks": [{"path": str(disk), "format": "qcow2"}],
        "serials": [{"log": True}],
    }
    spec.update(overrides)
    return spec


def overlay(image: DebianCloud, disk: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.image), str(disk)], check=True)


class SharedDebian:
    """Boots the shared guest on demand, replaces it when broken, stops it when asked."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self._vm: DebianVm | None = None
        #: set when a test using the guest failed: the next one gets a fresh guest
        self.broken = False
        #: why the guest did not boot: later tests fail at once instead of waiting again
        self._boot_error: str | None = None
        self._boots = 0

    def ready(self, tiny_guest: TinyGuest) -> DebianVm:
        if self._boot_error is not None:
            pytest.fail(f"the shared Debian guest did not boot: {self._boot_error}",
                        pytrace=False)
        vm = self._vm
        if vm is not None and self._boots >= MAX_BOOTS:
            return vm  # many tests failed: no more fresh guests (each costs a boot)
        if vm is not None and not self.broken and self._healthy(vm):
            return vm
        self.close()
        self._boots += 1
        try:
            return self._boot(tiny_guest)
        except Exception as error:
            self._boot_error = str(error)[:2000]
            self.close()
            raise

    @staticmethod
    def _healthy(vm: DebianVm) -> bool:
        try:
            running = vm.daemon.state(vm.name) == "running"
        except ApiError:
            return False
        return running and agent_answers(vm.daemon, vm.name)

    def _boot(self, tiny_guest: TinyGuest) -> DebianVm:
        image = build_debian_cloud()
        stack = contextlib.ExitStack()
        self._stack = stack
        folder = Path(tempfile.mkdtemp(prefix="vk-debian-", dir="/tmp"))
        stack.callback(shutil.rmtree, folder, True)
        daemon = stack.enter_context(running_daemon(tiny_guest))
        disk = folder / f"{NAME}.qcow2"
        overlay(image, disk)
        spec = debian_spec(NAME, image, disk, balloon=True)
        spec["boot"]["cmdline"] = f"{image.cmdline} {EXTRA_CMDLINE}"
        spec["disks"].append({"device": "cdrom", "bus": "sata"})
        daemon.client.post("/v1/domains", {"spec": spec})
        daemon.client.post(daemon.client.domain_path(NAME, "/start"))
        wait_for(lambda: agent_answers(daemon, NAME), AGENT_BOOT_TIMEOUT,
                 "the shared Debian guest's agent", interval=0.5)
        self._vm = DebianVm(daemon, NAME, disk, folder)
        self.broken = False
        return self._vm

    def close(self) -> None:
        """Stop the guest and its daemon, remove its folder (nothing when none runs)."""
        stack, self._stack, self._vm = self._stack, None, None
        if stack is not None:
            stack.close()


SHARED = SharedDebian()
