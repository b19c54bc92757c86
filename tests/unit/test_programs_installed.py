"""Every external program that virtkit, its tests or its set-up scripts run comes from a
Debian package that ``scripts/setup.sh`` installs -- directly, as a dependency of one it
installs, or as part of every Debian system (Essential or Priority ``required``).

A green CI on a machine that already had a package proves nothing: ``xmllint`` went
missing that way (``virt-xml-validate`` needs it, but libvirt-clients only *recommends*
libxml2-utils and setup.sh installs with ``--no-install-recommends``).  This test makes
that class of mistake a failure that names the package to add.

Programs are found statically, without running anything:

- ``shutil.which("NAME")`` with a literal name;
- the first element of a literal argv handed to ``subprocess.*``,
  ``asyncio.create_subprocess_exec``, ``os.exec*`` or a module's own ``_run``-style
  wrapper (a module-level string constant is followed: ``QEMU = "qemu-system-x86_64"``);
- absolute program paths written in the code (``/usr/sbin/sshd``), where they exist (the
  code also names other distributions' places, e.g. ``/usr/libexec/virtiofsd``);
- the command words of the shell scripts that set-up and CI run (scripts/setup.sh,
  scripts/build-test-guest, .ci/run), classified by bash itself (``type -t``).

A program named by one of the *direct* forms must exist here; a word that only looks like
a program (first element of a list given to some other wrapper) is checked when it
resolves to a file.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_TREES = ("src", "tests", "scripts")
SHELL_SCRIPTS = ("scripts/setup.sh", "scripts/build-test-guest", ".ci/run",
                 "scripts/record-virsh-output.sh")

# Programs the code may run but deliberately does not install, each with its reason.
NOT_INSTALLED_ON_PURPOSE = {
    # tests/real/test_storage_dir.py builds an ISO with xorriso (installed) and falls
    # back to genisoimage only where xorriso is missing.
    "genisoimage": "fallback of xorriso, which setup.sh installs",
    # cli/edit.py runs the user's $EDITOR; 'vi' is the last resort like virsh's.
    "vi": "the user's editor (virsh edit's fallback), chosen by the user",
    "sensible-editor": "the user's editor, chosen by the user",
    # Debian's /usr/bin/chromium wrapper runs man only for its own --help.
    "man": "run by chromium's wrapper for --help only, which nothing here asks for",
}

RUNNER_CALLS = {"run", "Popen", "check_output", "check_call", "call", "create_subprocess_exec",
                "execvp", "execv", "execvpe", "execlp", "spawnvp", "posix_spawnp"}
SHELL_WORDS_SKIPPED = {"exec", "env", "time", "nice", "then", "do", "else", "elif", "if",
                       "while", "until", "!", "{", "}", "(", ")", "[[", "]]", "case", "esac",
                       "fi", "done", "in", "for", "select", "function", "return", "local",
                       "export", "readonly", "declare", "set", "shift", "unset"}
PROGRAM_PATH = re.compile(r"^/(usr/)?(s?bin|libexec|lib/qemu)/[A-Za-z0-9._+-]+$")
PROGRAM_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def python_files() -> Iterator[Path]:
    for tree in SOURCE_TREES:
        yield from sorted((REPO / tree).rglob("*.py"))


def _constants(module: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments and parameters' text defaults
    (``binary: str = "dnsmasq"``), to follow ``[QEMU, ...]`` and ``which(binary)``."""
    found = {}
    for node in module.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[node.targets[0].id] = node.value.value
    for node in ast.walk(module):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = arguments.posonlyargs + arguments.args
            pairs = [*zip(positional[len(positional) - len(arguments.defaults):],
                          arguments.defaults, strict=True),
                     *((a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults,
                                              strict=True) if d is not None)]
            for argument, default in pairs:
                if isinstance(default, ast.Constant) and isinstance(default.value, str):
                    found.setdefault(argument.arg, default.value)
    return found


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _literal(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _first_of_argv(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return _literal(node.elts[0], constants)
    return None


def programs_in_python(path: Path) -> Iterator[tuple[str, bool, str]]:
    """(program, named directly?, where) for every program ``path``'s code runs."""
    module = ast.parse(path.read_text(), str(path))
    constants = _constants(module)
    where = str(path.relative_to(REPO))
    for node in ast.walk(module):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and PROGRAM_PATH.match(node.value):
            yield node.value, False, f"{where}:{node.lineno}"
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = _call_name(node)
        first = node.args[0]
        if name == "which":
            program = _literal(first, constants)
            if program:
                yield program, True, f"{where}:{node.lineno}"
        elif name in RUNNER_CALLS:
            program = _first_of_argv(first, constants)
            if program is None and name in {"create_subprocess_exec", "execvp", "execlp"}:
                program = _literal(first, constants)
            if program:
                yield program, True, f"{where}:{node.lineno}"
        else:
            program = _first_of_argv(first, constants)
            if program and "run" in name.lower():
                yield program, False, f"{where}:{node.lineno}"


def _script_functions(text: str) -> set[str]:
    return set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*\(\)", text, re.M))


def programs_in_shell(path: Path) -> Iterator[tuple[str, bool, str]]:
    """The command words of a shell script (here-documents and quoted text skipped) that
    bash does not know as a keyword, builtin or function of the script: programs, found
    (``True``) or not (``False``)."""
    text = path.read_text(errors="replace")
    functions = _script_functions(text)
    heredoc_end: str | None = None
    in_array = False
    for number, line in enumerate(text.splitlines(), 1):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if in_array or re.match(r"^\s*\w+=\([^)]*$", line):  # a list over several lines
            in_array = not line.rstrip().endswith(")") or not in_array
            continue
        opened = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if opened:
            heredoc_end = opened.group(1)
        line = re.sub(r"(^|\s)#.*$", "", line)
        line = re.sub(r"\"[^\"]*\"|'[^']*'", "$QUOTED", line)
        for segment in re.split(r"\|\||&&|[|;`]|\$\(|\(", line):
            words = segment.split()
            while words and (words[0] in SHELL_WORDS_SKIPPED or re.match(r"^\w+=", words[0])):
                words.pop(0)
            if not words or segment.split()[0] in ("for", "select", "case"):
                continue
            word = words[0].strip("\"'")
            if word in functions or not PROGRAM_WORD.match(word) or word.endswith(")"):
                continue
            kind = _shell_kind(word)
            if kind in ("file", ""):
                yield word, kind == "file", f"{path}:{number}"


def _is_shell_script(path: str) -> bool:
    try:
        with open(path, "rb") as program:
            first = program.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and re.search(rb"\b(ba)?sh\b", first) is not None


@functools.cache
def _shell_kind(word: str) -> str:
    done = subprocess.run(["bash", "-c", 'type -t -- "$1"', "_", word], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip()


@functools.cache
def all_programs() -> dict[str, list[str]]:
    """program -> where it is named; directly named ones first-class, others only if real."""
    found: dict[str, list[str]] = {}
    for path in python_files():
        for program, direct, where in programs_in_python(path):
            if direct or _resolve(program):
                found.setdefault(program, []).append(where)
    for script in SHELL_SCRIPTS:
        for program, _found, where in programs_in_shell(REPO / script):
            found.setdefault(program, []).append(where.removeprefix(f"{REPO}/"))
    # Programs that are shell scripts run programs of their own: virt-xml-validate runs
    # xmllint, which its package only recommends (the mistake this test was made for).
    # Their words that resolve to no program are not counted: such scripts define
    # functions in files they source (debootstrap), which this scan cannot follow; a
    # missing program there fails the test that runs the script.
    for program in list(found):
        path = _resolve(program)
        if path and not _inside_venv(path) and _is_shell_script(path):
            for inner, resolved, where in programs_in_shell(Path(path)):
                if resolved:
                    found.setdefault(inner, []).append(f"{where} (run by {program})")
    return found


@functools.cache
def own_programs() -> frozenset[str]:
    """virtkit's own commands (pyproject's [project.scripts]): setup.sh installs them
    from this checkout, into whichever virtual environment it made."""
    with open(REPO / "pyproject.toml", "rb") as project:
        return frozenset(tomllib.load(project)["project"]["scripts"])


def _resolve(program: str) -> str | None:
    """The file that runs for ``program``; a Debian system's own copy where PATH puts a
    local one first (this machine's pyenv shims shadow /usr/bin/python3)."""
    if program.startswith("/"):
        return program if os.access(program, os.X_OK) else None
    found = shutil.which(program)
    if found and not found.startswith(("/usr/", "/bin/", "/sbin/")):
        for system in ("/usr/bin", "/usr/sbin"):
            if os.access(f"{system}/{program}", os.X_OK):
                return f"{system}/{program}"
    return found


def _inside_venv(path: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(sys.prefix).resolve()) \
        and sys.prefix != sys.base_prefix


def packages_of(paths: list[str]) -> dict[str, str]:
    """path -> the Debian package that ships it, in one dpkg call (dpkg records /bin and
    /usr/bin apart on merged-/usr systems, so each path is asked in both spellings)."""
    spellings: dict[str, set[str]] = {}
    for path in paths:
        for one in (path, os.path.realpath(path)):
            other = one[len("/usr"):] if one.startswith("/usr/") else "/usr" + one
            spellings.setdefault(one, set()).add(path)
            spellings.setdefault(other, set()).add(path)
    done = subprocess.run(["dpkg", "-S", *spellings], capture_output=True, text=True,
                          check=False)
    owners: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if line.startswith(("diversion by", "local diversion")) or ": " not in line:
            continue
        package, _, spelled = line.partition(": ")
        for path in spellings.get(spelled, ()):
            owners.setdefault(path, package.split(",")[0].split(":")[0].strip())
    return owners


def setup_packages() -> list[str]:
    """The packages ``setup.sh test`` installs, as the script itself lists them."""
    done = subprocess.run(["bash", str(REPO / "scripts/setup.sh"), "packages"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


@functools.cache
def provided_packages() -> frozenset[str]:
    """setup.sh's packages and everything they depend on (installed), plus the packages
    every Debian system has (Essential, or Priority required)."""
    base = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Essential} ${Priority}\n"],
                          capture_output=True, text=True, check=True)
    everywhere = [line.split()[0] for line in base.stdout.splitlines()
                  if " yes " in f"{line} " or line.endswith(" required")]
    wanted = setup_packages()
    done = subprocess.run(
        ["apt-cache", "depends", "--installed", "--recurse", "--no-recommends",
         "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
         *wanted, *everywhere], capture_output=True, text=True, check=True)
    names = {line.strip() for line in done.stdout.splitlines()
             if line and not line.startswith(" ")}
    names |= {re.sub(r"^\s*\|?\w[\w-]*:\s*", "", line).strip("<> ")
              for line in done.stdout.splitlines() if line.startswith(" ")}
    return frozenset(name.split(":")[0] for name in names | set(wanted) | set(everywhere))


pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("apt-cache") is None,
                                reason="maps programs to Debian packages: needs dpkg and apt")


def test_the_scan_finds_the_programs_we_know_about() -> None:
    """Guard the scanner itself: programs known to be run must be found."""
    found = all_programs()
    for known in ("qemu-img", "dnsmasq", "nft", "ip", "virt-xml-validate", "debootstrap",
                  "openssl", "apt-get", "xorriso", "losetup", "/usr/sbin/sshd", "xmllint",
                  "ganesha.nfsd", "rpcbind", "ceph-mon", "monmaptool"):
        assert known in found, f"the scan missed {known}"


def test_setup_lists_its_packages() -> None:
    packages = setup_packages()
    assert "qemu-system-x86" in packages and "libxml2-utils" in packages


def test_every_program_comes_from_a_package_setup_installs() -> None:
    provided = provided_packages()
    problems = []
    resolved: dict[str, str] = {}
    for program, places in sorted(all_programs().items()):
        if program in NOT_INSTALLED_ON_PURPOSE or program in own_programs():
            continue
        path = _resolve(program)
        if path is None:
            problems.append(f"{program} (run at {places[0]}) is not installed on this "
                            f"machine: add the package that ships it to scripts/setup.sh")
        elif not _inside_venv(path):
            resolved[program] = path
    owners = packages_of(list(resolved.values()))
    for program, path in resolved.items():
        where = all_programs()[program][0]
        package = owners.get(path)
        if package is None:
            problems.append(f"{program} ({path}, run at {where}) belongs to no Debian "
                            f"package: install it through a package in scripts/setup.sh")
        elif package not in provided:
            problems.append(f"{program} (run at {where}) comes from the package "
                            f"'{package}', which scripts/setup.sh does not install: add "
                            f"'{package}' to its package list")
    assert not problems, "\n".join(problems)
