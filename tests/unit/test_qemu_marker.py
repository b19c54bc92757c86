"""Every tests/real module that boots QEMU carries the ``qemu`` marker (pyproject.toml),
so ``-m 'not qemu'`` really leaves QEMU out.  A module boots QEMU when it starts a
domain (the API's ``/start`` or ``/restore``, the CLI's ``start``/``create``/``restore``/
``install``/``migrate``, a wait for the boot), or runs QEMU itself (capability probes)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / "real"

BOOTS = re.compile(
    r'"/(start|restore)"'                                     # domain_path(name, "/start")
    r'|\bcli\(\s*"(start|create|restore|install|migrate)"'   # daemon.cli("start", name)
    r'|\bwait_booted\('                                       # waits for a boot
    r'|"(start|restore)",\s*"POST"'                           # the stateful test's calls
    r'|\bqemu_info\(|"qemu-system'                            # runs QEMU itself
    r'|\bdebian_vm\b'                                          # the shared Debian guest
)


def _is_qemu_mark(node: ast.expr) -> bool:
    return "mark.qemu" in ast.unparse(node)


def _has_qemu_mark(tree: ast.Module) -> bool:
    """``pytestmark`` naming ``pytest.mark.qemu`` (alone or in a list)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and _is_qemu_mark(node.value) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return True
    return False


def _names(node: ast.AST) -> set[str]:
    """Every name a function uses or takes (its fixtures are its parameters)."""
    found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    found |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    found |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
              for a in (*n.args, *n.kwonlyargs)}
    return found


def unmarked_boots(text: str) -> list[str]:
    """The tests (or module-level code) of one module that boot QEMU without the marker:
    a function boots when its text does, or when it uses a function or fixture of the
    module that boots."""
    tree = ast.parse(text)
    if _has_qemu_mark(tree):
        return []
    functions = {n.name: n for n in tree.body
                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    booting = {name for name, node in functions.items()
               if BOOTS.search(ast.get_source_segment(text, node) or "")}
    grew = True
    while grew:
        more = {name for name, node in functions.items()
                if name not in booting and _names(node) & booting}
        booting |= more
        grew = bool(more)
    unmarked = [name for name in sorted(booting) if name.startswith("test")
                and not any(_is_qemu_mark(d) for d in functions[name].decorator_list)]
    for node in tree.body:  # a state machine or other test class booting at module level
        if isinstance(node, ast.ClassDef) and BOOTS.search(
                ast.get_source_segment(text, node) or ""):
            unmarked.append(node.name)
    return unmarked


def test_every_real_module_that_boots_qemu_is_marked() -> None:
    unmarked = {}
    for path in sorted(REAL.glob("test_*.py")):
        found = unmarked_boots(path.read_text())
        if found:
            unmarked[path.name] = found
    assert not unmarked, ("these tests/real tests boot QEMU without the qemu marker "
                          "('pytestmark = pytest.mark.qemu', or @pytest.mark.qemu on the "
                          f"test): {unmarked}")


def test_the_scan_finds_the_ways_a_module_boots() -> None:
    assert BOOTS.search('daemon.client.post(daemon.client.domain_path("vm", "/start"))')
    assert BOOTS.search('daemon.cli("start", name)')
    assert BOOTS.search('daemon.wait_booted("vm")')
    assert BOOTS.search('info = qemubin.qemu_info()')
    assert BOOTS.search('def test_x(debian_vm: DebianVm) -> None:')
    assert not BOOTS.search('refused(hd, "POST", "/v1/domains/strict/start", {})')
    marked = ast.parse("import pytest\npytestmark = [pytest.mark.qemu, pytest.mark.x]\n")
    assert _has_qemu_mark(marked)
    assert not _has_qemu_mark(ast.parse("pytestmark = pytest.mark.skipif(True, reason='')\n"))
    module = (
        "import pytest\n"
        "@pytest.fixture\n"
        "def vm(daemon):\n"
        "    daemon.wait_booted('vm')\n"
        "def test_uses_the_fixture(vm): pass\n"
        "@pytest.mark.qemu\n"
        "def test_marked(vm): pass\n"
        "def test_plain(daemon): pass\n")
    assert unmarked_boots(module) == ["test_uses_the_fixture"]
