"""``virtkit install``: virt-install's command line, run by the daemon.

The words are parsed here (``formats.virtinstall``: pure, so a typo is reported
before the daemon is asked anything) into an install request that the daemon
runs.  Then, as virt-install does: attach the serial console (with ``--graphics
none`` on a terminal), or wait for the install phase to end (``--wait``), or
return at once (``--noautoconsole``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from virtkit.cli import render
from virtkit.cli.client import Client
from virtkit.errors import InvalidSpec, TimeoutExpired
from virtkit.formats.virtinstall import (
    SUBOPTIONS,
    VALUE_OPTIONS,
    InstallRequest,
    all_option_names,
    parse_command_line,
)

USAGE = """\
usage: virtkit install --name NAME --memory MiB [--vcpus N] INSTALL-METHOD [OPTIONS]

Create a VM and install its OS, with virt-install's options (--opt value or
--opt=value, comma-separated sub-options, the old aliases such as --ram).

install methods (one):
  --cdrom ISO             boot the installer from a CD image
  --location ISO|DIR|URL  boot the installer's kernel+initrd (with --extra-args,
                          --initrd-inject)
  --pxe                   boot from the network first
  --import                boot an existing disk image (no install phase)
  --livecd --cdrom ISO    run a live CD (the CD stays the boot device)
  --boot kernel=,initrd=,cmdline=   direct kernel boot, kept in the VM
examples:
  virtkit install --name web1 --memory 2048 --vcpus 2 --disk size=20 \\
      --cdrom /srv/iso/debian-12.iso --os-variant debian11 --network network=default
  virtkit install --name db1 --ram 1024 --import --disk /srv/images/db1.qcow2 \\
      --graphics none --noautoconsole
Every option: see docs/cli.md ('virtkit install'); --print-xml and --dry-run check a
command line without creating anything.
"""


def run_install(connect: Callable[[], Client], argv: list[str]) -> int:
    """Parse first (a typo is reported without asking, or starting, a daemon), then run."""
    argv, host = _host_option(argv)
    request = parse_command_line(argv)
    client = connect()
    query = "?" + urlencode({"host": host}) if host else ""
    result = client.post("/v1/install" + query, request.to_dict())
    if request.dry_run or request.print_xml:
        return _preview(request, result)
    say = (lambda text: None) if request.quiet else print
    for note in result.get("notes", []):
        say(f"Note: {note}")
    name = result["name"]
    where = f" on host {result['host']}" if result.get("host") else ""
    say(f"Domain '{name}' started{where} ({_method_text(request)})")
    if result.get("vnc"):
        vnc = result["vnc"]
        display = vnc.get("display") or f"{vnc.get('host', '')}:{int(vnc['port']) - 5900}"
        say(f"Graphical console: VNC display {display} (TCP port {vnc.get('port')}; "
            f"again with 'virtkit vncdisplay {name}')")
    graphics_none = request.domain.get("graphics", {}).get("type") == "none"
    attach = request.autoconsole and graphics_none and sys.stdin.isatty() \
        and request.wait_minutes is None
    if attach:
        from virtkit.cli.console import attach as attach_console

        attach_console(client, name, force=False)
    if result.get("install_phase"):
        if request.wait_minutes is None and not attach and not request.autoconsole:
            say("Domain installation still in progress. The installed system boots when "
                "the installer powers off" + (" (--noreboot: it stays off)."
                                              if request.noreboot else "."))
            say(f"Follow it with 'virtkit console {name}' or 'virtkit event {name} --loop'.")
            return 0
        say("Waiting for the installation to complete.")
        _wait_install(client, name, request.wait_minutes, installer_pid=result.get("pid"),
                      reboot=not request.noreboot)
        say(f"Domain '{name}' installed" + ("; it stays off (--noreboot)." if request.noreboot
                                            else "; the installed system is booting."))
    say("Domain creation completed.")
    return 0


def _host_option(argv: list[str]) -> tuple[list[str], str | None]:
    """``--host NAME`` (virtkit's, for a cluster: install on that host; default:
    placement picks) taken out of virt-install's words."""
    rest, host, words = [], None, iter(argv)
    for word in words:
        if word == "--host":
            host = next(words, None)
            if not host:
                raise InvalidSpec("install: --host needs a host name", fix="--host NAME")
        elif word.startswith("--host="):
            host = word.split("=", 1)[1]
        else:
            rest.append(word)
    return rest, host


def _method_text(request: InstallRequest) -> str:
    return {"cdrom": "installing from CD", "location": "installer kernel from --location",
            "pxe": "installing from the network", "import": "imported disk",
            "livecd": "live CD", "kernel": "direct kernel boot",
            "none": "booting"}.get(request.method, request.method) + \
        (", cloud-init seed attached" if request.cloud_init is not None else "")


def _wait_install(client: Client, name: str, minutes: float | None, *,
                  installer_pid: int | None, reboot: bool) -> None:
    """Poll until the install phase is over -- and, unless --noreboot, the installed
    system runs (between the installer's exit and that start the domain is briefly off);
    --wait N gives up after N minutes (N<0: never)."""
    deadline = None if minutes is None or minutes < 0 else time.monotonic() + minutes * 60
    finished: float | None = None  # when the installer was first seen gone
    while True:
        info = client.get(client.domain_path(name))
        if not info.get("installing"):
            state = info.get("state")
            finished = finished or time.monotonic()
            if not reboot or (state == "running" and info.get("pid") != installer_pid):
                return
            if state in ("shutoff", "crashed") and (
                    info.get("reason") != "install finished" or
                    time.monotonic() - finished > 30):
                return  # stopped for another reason, or the daemon could not start it
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutExpired(
                f"installation of '{name}' has exceeded the --wait time limit "
                f"({minutes:g} min); the VM keeps running",
                fix=f"follow it with 'virtkit console {name}', or stop it: "
                    f"virtkit destroy {name}")
        time.sleep(0.25 if not info.get("installing") else 1.0)


def _preview(request: InstallRequest, result: dict[str, Any]) -> int:
    if request.print_xml:
        xml = result.get("xml")
        if xml is None:
            render.as_json(result.get("spec", {}))
        else:
            sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
        return 0
    for note in result.get("notes", []):
        print(f"Note: {note}")
    print("Dry run completed successfully")
    return 0


def completion_words() -> list[str]:
    """Every option of ``virtkit install``, for the bash completion script."""
    return all_option_names()


def completion_suboptions() -> dict[str, list[str]]:
    """The ``key=`` sub-options of each option (and its aliases), for bash completion:
    the parser's own table, so what completes is what parses."""
    table: dict[str, list[str]] = {}
    for option, keys in SUBOPTIONS.items():
        aliases = VALUE_OPTIONS.get(option, ((), False))[0]
        for name in (option, *aliases):
            table[name] = sorted(keys)
    return table
