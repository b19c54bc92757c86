"""Commands every named object shares: undefine, autostart, define from a file, dumpxml."""

from __future__ import annotations

import sys

from virtkit.cli.client import Client

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def undefine(client: Client, path: str, label: str) -> int:
    """DELETE the object and say so, as virsh's *-undefine."""
    result = client.request("DELETE", path)
    print(f"{label} {result['name']} has been undefined")
    return 0


def set_autostart(client: Client, path: str, label: str, *, disable: bool) -> int:
    """Turn autostart on or off, as virsh's *-autostart [--disable]."""
    result = client.request("PUT", f"{path}/autostart", {"enabled": not disable})
    state = "marked as autostarted" if result["autostart"] else "unmarked as autostarted"
    print(f"{label} {result['name']} {state}")
    return 0


def define(client: Client, path: str, text: str, *, force: bool = False) -> Any:
    """POST a YAML/JSON spec, or libvirt XML (text starting with '<'); each warning of
    an XML import goes to stderr."""
    if not text.lstrip().startswith("<"):
        return client.post(path, {"yaml": text})
    result = client.post(path, {"xml": text, "force": force})
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return result


def dumpxml(client: Client, path: str) -> int:
    """Print the libvirt XML the daemon answers at ``path`` (virsh's *dumpxml)."""
    data = client.get(path)
    sys.stdout.write(data.decode() if isinstance(data, bytes) else str(data))
    return 0
