"""Commands every named object (pool, network) shares: undefine and autostart."""

from __future__ import annotations

from virtkit.cli.client import Client


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
