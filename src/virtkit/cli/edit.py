"""``virtkit edit``: the spec (YAML) or, with ``--xml``, the libvirt domain XML in
$EDITOR; a bad edit is shown again with its error.

The YAML spec is fetched with its version and sent back with that version, so an
edit based on a copy someone else changed meanwhile is refused, not applied.  The
XML (``virsh edit``'s format, for scripts written against virsh; also when
``$VIRTKIT_EDIT_FORMAT=xml``) is defined again as ``virsh edit`` does, after a check
that the version did not move while the editor was open.  Nothing changes until the
daemon accepts the edit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from virtkit.cli.client import ApiError, Client
from virtkit.errors import Conflict

#: the note a refused edit is shown again with; everything from its first line to its
#: last is taken out again before the next try, whatever the error said
ERROR_START = "# ---- virtkit: the daemon refused this edit ----"
ERROR_END = "# ---- fix the spec below and save, or save it unchanged to abort ----"
XML_START = "<!-- virtkit: the daemon refused this edit:"
XML_END = "     fix the XML below and save, or save it unchanged to abort. -->"


@dataclass(frozen=True)
class NoteStyle:
    """How a format comments the error note: its first and last lines, and a prefix for
    the lines between (XML: inside one comment, where '--' may not appear)."""

    start: str
    end: str
    prefix: str
    #: inside an XML comment, where '--' may not appear
    in_xml_comment: bool = False

    def line(self, text: str) -> str:
        if self.in_xml_comment:
            text = text.replace("--", "- -")
        return f"{self.prefix}{text}".rstrip()


YAML_NOTES = NoteStyle(ERROR_START, ERROR_END, "# ")
XML_NOTES = NoteStyle(XML_START, XML_END, "  ", in_xml_comment=True)


def _editor() -> list[str]:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    return shlex.split(editor)


def strip_error(text: str, style: NoteStyle = YAML_NOTES) -> str:
    """``text`` without the error note :func:`with_error` put on top of it."""
    lines = text.splitlines()
    if style.start in lines and style.end in lines:
        start, end = lines.index(style.start), lines.index(style.end)
        if start < end:
            del lines[start:end + 1]
    return "\n".join(lines) + ("\n" if lines else "")


def with_error(text: str, message: str, style: NoteStyle = YAML_NOTES) -> str:
    """``text`` with ``message`` on top, every line of it commented (a YAML parser's
    message spans several lines), replacing the note of an earlier round."""
    note = [style.start, *(style.line(line) for line in message.splitlines()),
            style.line("(line numbers count from the first line after this note)"),
            style.end]
    return "\n".join(note) + "\n" + strip_error(text, style)


def edit(client: Client, domain: str, *, xml: bool | None = None) -> int:
    """Edit until the daemon accepts the spec (or XML), or the user saves it unchanged
    (abort)."""
    if xml is None:
        xml = os.environ.get("VIRTKIT_EDIT_FORMAT", "").lower() == "xml"
    # with its secrets: saving the edit must not drop the VNC password (virsh edit too)
    current = client.get(client.domain_path(domain, "/spec?security_info=1"))
    name = current["name"]
    style = XML_NOTES if xml else YAML_NOTES
    if xml:
        data = client.get(client.domain_path(domain, "/xml?security_info=1"))
        text = data.decode() if isinstance(data, bytes) else str(data)
    else:
        text = current["yaml"]
    filename = f"{name.replace('/', '_')}.{'xml' if xml else 'yaml'}"
    kind = "XML" if xml else "spec"

    def submit(body: str) -> str:
        version = _submit(client, domain, body, current["version"], xml=xml)
        return f"Domain '{name}' {kind} edited (version {version})."

    return edit_rounds(text, filename, style, submit, f"Domain '{name}' {kind} not changed.",
                       fatal=lambda exc: exc.code == "stale-version")


def edit_rounds(text: str, filename: str, style: NoteStyle, submit: Callable[[str], str],
                unchanged: str, *, submit_unchanged: bool = False,
                fatal: Callable[[ApiError], bool] = lambda _exc: False) -> int:
    """Show ``text`` in $EDITOR until ``submit`` takes the edited text (without our error
    note; it answers the line to print); a refusal is shown again with the error on top.
    Saved unchanged: ``unchanged`` is printed on the first round (or, with
    ``submit_unchanged``, the text is submitted once as it is), an abandoned edit later.
    An ApiError ``fatal`` says yes to is not shown again but raised."""
    first_round = True
    with tempfile.TemporaryDirectory(prefix="virtkit-edit-") as folder:
        path = os.path.join(folder, filename)
        while True:
            with open(path, "w") as handle:
                handle.write(text)
            if subprocess.call([*_editor(), path]) != 0:
                print("error: the editor failed; nothing was changed", file=sys.stderr)
                return 1
            with open(path) as handle:
                edited = handle.read()
            if edited == text and not (first_round and submit_unchanged):
                if first_round:
                    print(unchanged)
                    return 0
                print("error: edit abandoned; nothing was changed", file=sys.stderr)
                return 1
            first_round = False
            try:
                done = submit(strip_error(edited, style))
            except ApiError as exc:
                if fatal(exc):
                    raise
                print(f"error: {exc}", file=sys.stderr)
                text = with_error(edited, str(exc), style)
                continue
            print(done)
            return 0


def _submit(client: Client, domain: str, body: str, version: int, *, xml: bool) -> int:
    """Send the edited text; the new version."""
    if not xml:
        result = client.request("PUT", client.domain_path(domain),
                                {"yaml": body, "version": version})
        return int(result["version"])
    now = client.get(client.domain_path(domain))["version"]
    if now != version:
        raise Conflict(f"domain '{domain}' changed while it was being edited (version "
                       f"{version} -> {now}); nothing was changed",
                       fix=f"run 'virtkit edit --xml {domain}' again")
    result = client.request("POST", "/v1/domains", {"xml": body})
    return int(result.get("version", version + 1))
