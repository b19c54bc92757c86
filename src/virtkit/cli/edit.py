"""``virtkit edit``: the spec in $EDITOR; a bad edit is shown again with its error.

The spec is fetched with its version and sent back with that version, so an
edit based on a copy someone else changed meanwhile is refused, not applied.
Nothing changes until the daemon accepts the edit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

from virtkit.cli.client import ApiError, Client


def _editor() -> list[str]:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    return shlex.split(editor)


def _prepend_error(text: str, message: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("# ERROR:")]
    return f"# ERROR: {message}\n# Fix the spec below and save, or leave it unchanged to abort.\n" \
        + "\n".join(lines) + "\n"


def edit(client: Client, domain: str) -> int:
    """Edit until the daemon accepts the spec, or the user saves it unchanged (abort)."""
    # with its secrets: saving the edit must not drop the VNC password (virsh edit too)
    current = client.get(client.domain_path(domain, "/spec?security_info=1"))
    name = current["name"]
    text = current["yaml"]
    first_round = True
    with tempfile.TemporaryDirectory(prefix="virtkit-edit-") as folder:
        path = os.path.join(folder, f"{name.replace('/', '_')}.yaml")
        while True:
            with open(path, "w") as handle:
                handle.write(text)
            if subprocess.call([*_editor(), path]) != 0:
                print("error: the editor failed; nothing was changed", file=sys.stderr)
                return 1
            with open(path) as handle:
                edited = handle.read()
            if edited == text:
                if first_round:
                    print(f"Domain '{name}' spec not changed.")
                    return 0
                print("error: edit abandoned; nothing was changed", file=sys.stderr)
                return 1
            first_round = False
            body = "\n".join(line for line in edited.splitlines() if not line.startswith("# "))
            try:
                result = client.request("PUT", client.domain_path(domain),
                                        {"yaml": body, "version": current["version"]})
            except ApiError as exc:
                if exc.code == "stale-version":
                    raise
                print(f"error: {exc}", file=sys.stderr)
                text = _prepend_error(edited, str(exc))
                continue
            print(f"Domain '{name}' spec edited (version {result['version']}).")
            return 0
