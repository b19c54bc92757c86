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


#: the note a refused edit is shown again with; everything from its first line to its
#: last is taken out again before the next try, whatever the error said
ERROR_START = "# ---- virtkit: the daemon refused this edit ----"
ERROR_END = "# ---- fix the spec below and save, or save it unchanged to abort ----"


def strip_error(text: str) -> str:
    """``text`` without the error note :func:`with_error` put on top of it."""
    lines = text.splitlines()
    if ERROR_START in lines and ERROR_END in lines:
        start, end = lines.index(ERROR_START), lines.index(ERROR_END)
        if start < end:
            del lines[start:end + 1]
    return "\n".join(lines) + ("\n" if lines else "")


def with_error(text: str, message: str) -> str:
    """``text`` with ``message`` on top, every line of it commented (a YAML parser's
    message spans several lines), replacing the note of an earlier round."""
    note = [ERROR_START, *(f"# {line}".rstrip() for line in message.splitlines()),
            "# (line numbers count from the first line after this note)", ERROR_END]
    return "\n".join(note) + "\n" + strip_error(text)


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
            body = strip_error(edited)
            try:
                result = client.request("PUT", client.domain_path(domain),
                                        {"yaml": body, "version": current["version"]})
            except ApiError as exc:
                if exc.code == "stale-version":
                    raise
                print(f"error: {exc}", file=sys.stderr)
                text = with_error(edited, str(exc))
                continue
            print(f"Domain '{name}' spec edited (version {result['version']}).")
            return 0
