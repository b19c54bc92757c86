"""Bash completion of ``virtkit install``'s sub-options (``--disk path=,size=,...``).

The keys come from the parser's own table (formats.virtinstall_options.SUBOPTIONS),
so the first test checks that the parser refuses exactly what the table leaves out.
The others run the generated script in bash with the line as bash would hand it
over: COMP_LINE/COMP_POINT raw, COMP_WORDS split at spaces and at '=' and ':'.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from virtkit.cli.completion import bash_completion
from virtkit.cli.install import completion_suboptions
from virtkit.cli.main import build_parser
from virtkit.errors import InvalidSpec
from virtkit.formats.virtinstall import SUBOPTIONS, VALUE_OPTIONS, parse_command_line

BASE = ["--name", "a", "--memory", "512", "--import", "--disk", "/a"]


def _line_with(option: str, value: str) -> list[str]:
    if option == "--memory":
        return ["--name", "a", "--memory", value, "--import", "--disk", "/a"]
    return [*BASE, option, value]


@pytest.mark.parametrize("option", sorted(SUBOPTIONS))
def test_the_parser_takes_exactly_the_keys_of_the_table(option: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_command_line(_line_with(option, "nosuchkey=1"))
    assert "unknown sub-option 'nosuchkey'" in caught.value.message
    listed = re.sub(r"^valid sub-options of \S+: ", "", caught.value.fix or "").split(", ")
    assert listed == sorted(SUBOPTIONS[option])


def test_aliases_complete_like_their_option() -> None:
    table = completion_suboptions()
    assert table["--ram"] == table["-r"] == table["--memory"] == sorted(SUBOPTIONS["--memory"])
    assert table["-w"] == table["--network"]
    assert table["--osinfo"] == table["--os-variant"]
    assert {"path", "size", "format", "bus", "pool", "vol", "device", "cache",
            "readonly"} <= set(table["--disk"])
    assert set(table) >= set(SUBOPTIONS)
    assert all(alias in table for option in SUBOPTIONS for alias in VALUE_OPTIONS[option][0])


@pytest.fixture(scope="module")
def script() -> str:
    return bash_completion(build_parser(install_options=True))


def _split(line: str) -> list[str]:
    """COMP_WORDS as bash makes them: at blanks, and '=' and ':' as words of their own."""
    words: list[str] = []
    for blank_word in line.split(" "):
        words += [w for w in re.split(r"([=:])", blank_word) if w != ""] or [""]
    return words


def complete(script: str, line: str) -> list[str]:
    words = _split(line)
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_LINE='{line}'; COMP_POINT={len(line)}\n"
               f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               "_virtkit\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile"], input=program,
                            capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.split("\n") if w]


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
@pytest.mark.parametrize(("line", "expected"), [
    # the first key; bash then replaces the current word (after its last '=' or ':')
    ("virtkit install --disk ", {"path=", "size=", "format=", "bus=", "device=", "vol="}),
    ("virtkit install --name a --disk si", {"size="}),
    ("virtkit install --disk path=/srv/a.qcow2,si", {"/srv/a.qcow2,size="}),
    ("virtkit install --disk /srv/a.qcow2,f", {"/srv/a.qcow2,format="}),
    ("virtkit install --disk=", {"=path=", "=size="}),
    ("virtkit install --disk=si", {"size="}),
    ("virtkit install --network bridge=br0,mo", {"br0,model=", "br0,model.type="}),
    ("virtkit install -w ne", {"network="}),
    ("virtkit install --ram 1024,max", {"1024,maxmemory="}),
    ("virtkit install --graphics vnc,li", {"vnc,listen=", "vnc,listen.address=",
                                           "vnc,listen.type="}),
    ("virtkit install --boot cdrom,hd,me", {"cdrom,hd,menu="}),
    ("virtkit install --vcpus 4,maxv", {"4,maxvcpus="}),
])
def test_install_sub_options_complete(script: str, line: str, expected: set[str]) -> None:
    offered = set(complete(script, line))
    assert expected <= offered, offered
    assert all(word.endswith("=") for word in offered), offered


@needs_bash
@pytest.mark.parametrize("line", [
    "virtkit install --disk path=/sr",  # a value: no keys
    "virtkit install --disk size=1,bus=vir",
    "virtkit install --cdrom ",  # no sub-options
    "virtkit install --disk zz",
])
def test_nothing_where_no_key_fits(script: str, line: str) -> None:
    assert [w for w in complete(script, line) if w.endswith("=")] == []


@needs_bash
def test_flags_still_complete_after_a_sub_option(script: str) -> None:
    offered = set(complete(script, "virtkit install --disk size=1 --no"))
    assert {"--noautoconsole", "--nodisks", "--nonetworks"} <= offered
    other = set(complete(script, "virtkit start --p"))
    assert "--paused" in other  # other commands are untouched
