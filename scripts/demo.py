"""Define and boot the demo VM, wait for it to come up, and print how to reach it.

Run by ``scripts/setup.sh demo`` after the install.  It drives virtkit the way a
user does, through the ``virtkit`` command line (which starts a daemon if none
runs), and uses the tiny guest built from Debian packages.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from virtkit.images.tinyguest import BOOT_MARKER, build_tiny_guest

NAME = "demo"
#: the web console of the daemon the demo starts (docs/web.md); set VIRTKITD_WEB to move it
WEB = os.environ.setdefault("VIRTKITD_WEB", "127.0.0.1:8006")
WEB_TOKEN = Path(os.environ.get("VIRTKIT_ROOT") or "/var/lib/virtkit") / "web-demo.token"


def virtkit(*args: str, check: bool = True, quiet: bool = False
            ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["virtkit", *args], capture_output=True, text=True, check=False)
    for line in result.stderr.splitlines(keepends=True):
        if not quiet or "started virtkitd" in line:
            sys.stderr.write(line)
    if check and result.returncode != 0:
        raise SystemExit(result.returncode)
    return result


def ensure_default_network() -> None:
    """The 'default' NAT network, as libvirt's packages set it up at install time."""
    if virtkit("net-info", "default", check=False, quiet=True).returncode != 0:
        virtkit("net-define-as", "default", "--mode", "nat", "--autostart")
    info = json.loads(virtkit("net-info", "default", "--json").stdout)
    if info["state"] != "active":
        virtkit("net-start", "default")


def main() -> int:
    guest = build_tiny_guest()
    spec = {
        "name": NAME,
        "title": "virtkit demo guest (Debian kernel + busybox)",
        "memory": 256,
        "vcpus": 1,
        "boot": {"kernel": str(guest.kernel), "initrd": str(guest.initrd),
                 "cmdline": guest.cmdline},
        "graphics": {"type": "vnc", "listen": "127.0.0.1"},
    }
    ensure_default_network()
    state = virtkit("domstate", NAME, check=False, quiet=True)
    if state.returncode != 0:
        subprocess.run(["virtkit", "define", "-"], input=yaml.safe_dump(spec), text=True,
                       check=True)
    if virtkit("domstate", NAME).stdout.strip() != "running":
        virtkit("start", NAME)
    deadline = time.monotonic() + 120
    while BOOT_MARKER not in virtkit("console", NAME, "--log").stdout:
        if time.monotonic() > deadline:
            print("the demo VM did not finish booting in 120 s; see 'virtkit console demo --log'")
            return 1
        time.sleep(0.5)
    info = json.loads(virtkit("dominfo", NAME, "--json").stdout)
    web = web_console_line()
    vnc = virtkit("vncdisplay", NAME, check=False, quiet=True).stdout.strip()
    print(f"""
The demo VM '{NAME}' is running (QEMU pid {info['pid']}, accelerator {info['accelerator']}).
Its guest printed {BOOT_MARKER} on the serial console.

  serial console:   virtkit console {NAME}        (type commands; Ctrl-] leaves)
  console log:      virtkit console {NAME} --log
  VNC display:      {vnc or '-'}                (virtkit vncdisplay {NAME})
  details:          virtkit dominfo {NAME}
  stop it:          virtkit shutdown {NAME}       (or: virtkit destroy {NAME})
  host check:       virtkit host check
  networks:         virtkit net-list --all   (the 'default' NAT network is ready for NICs)
  web console:      {web}
""")
    return 0


def web_console_line() -> str:
    """Where the web console answers and how to log in (an API token made for it)."""
    url = f"https://{WEB}/"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the daemon's self-signed certificate
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as page:
            page.read(64)
    except OSError:
        return ("not served by the running daemon (restart it with "
                f"'virtkitd --web {WEB}', see docs/web.md)")
    if not WEB_TOKEN.exists():
        virtkit("token", "create", "--name", "web-demo", "--output", str(WEB_TOKEN), quiet=True)
    return (f"{url}  (self-signed certificate; log in as root or a member of the "
            f"'virtkit' group, or with the API token in {WEB_TOKEN})")


if __name__ == "__main__":
    sys.exit(main())
