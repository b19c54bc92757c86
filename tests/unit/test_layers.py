"""The dependency rule of docs/architecture.md (DESIGN §2), checked by parsing imports.

Every ``import``/``from ... import`` anywhere in a module counts, including lazy ones inside
functions; the only sanctioned lazy exception is named below by module and function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import virtkit

SRC = Path(virtkit.__file__).resolve().parent
MAX_MODULE_LINES = 800


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. virtkit.cli.main
    target: str  # the imported module, e.g. virtkit.host.checks
    function: str | None  # the innermost enclosing function, for lazy imports
    line: int

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        return f"{self.module}:{self.line}{where} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = SRC.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.functions: list[str] = []
        self.imports: list[Import] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        function = self.functions[-1] if self.functions else None
        self.imports.append(Import(self.module, target, function, node.lineno))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            candidate = f"{source}.{alias.name}"
            self._add(candidate if _is_module(candidate) else source, node)


def _all_imports() -> list[Import]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        collector = _Collector(_module_name(path), path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.imports
    return found


IMPORTS = [i for i in _all_imports() if i.target == "virtkit" or
           i.target.startswith("virtkit.")]


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports_of(*prefixes: str) -> list[Import]:
    return [i for i in IMPORTS if _within(i.module, *prefixes)]


def _violations(imports: list[Import], allowed: tuple[str, ...],
                exceptions: frozenset[tuple[str, str, str]] = frozenset()) -> list[str]:
    """Imports whose target is outside ``allowed`` (``virtkit`` itself = the __init__)."""
    bad = []
    for imp in imports:
        if imp.target == "virtkit" and "virtkit" in allowed:
            continue
        if _within(imp.target, *(a for a in allowed if a != "virtkit")):
            continue
        if (imp.module, imp.function or "", imp.target) in exceptions:
            continue
        bad.append(str(imp))
    return bad


def test_the_collector_sees_lazy_and_relative_imports() -> None:
    lazy = [i for i in IMPORTS if i.module == "virtkit.cli.main" and i.function]
    assert any(i.target == "virtkit.host.checks" and i.function == "cmd_host_check"
               for i in lazy)
    assert any(i.target == "virtkit.cli.domains" for i in IMPORTS)  # from virtkit.cli import
    assert any(i.target == "virtkit" for i in IMPORTS)  # from virtkit import __version__
    collector = _Collector("virtkit.runtime.lifecycle", is_package=False)
    collector.visit(ast.parse("from . import savefile\nfrom ..model.state import State\n"
                              "def f():\n    from .. import errors\n"))
    assert [(i.target, i.function) for i in collector.imports] == [
        ("virtkit.runtime.savefile", None), ("virtkit.model.state", None),
        ("virtkit.errors", "f")]


def test_model_imports_only_errors() -> None:
    assert _imports_of("virtkit.model"), "no model imports found: is the walk broken?"
    assert _violations(_imports_of("virtkit.model"), ("virtkit.model", "virtkit.errors")) == []


def test_argv_builder_imports_only_the_model() -> None:
    imports = _imports_of("virtkit.qemu.argv")
    assert imports
    assert _violations(imports, ("virtkit.model", "virtkit.errors")) == []


#: formats.virtinstall is pure (no I/O): the CLI parses virt-install's words itself, so
#: a typo is reported before the daemon is asked anything.
CLI_ALLOWED = ("virtkit.cli", "virtkit.errors", "virtkit.paths", "virtkit.unixsock", "virtkit",
               "virtkit.formats.virtinstall", "virtkit.formats.suboptions",
               "virtkit.formats.virtxml")
#: (module, function, target): the host check runs locally when the daemon is down.
CLI_EXCEPTIONS = frozenset({("virtkit.cli.main", "cmd_host_check", "virtkit.host.checks")})


def test_cli_talks_only_to_the_api() -> None:
    assert _violations(_imports_of("virtkit.cli"), CLI_ALLOWED, CLI_EXCEPTIONS) == []


def test_the_cli_exception_is_lazy() -> None:
    """virtkit.host.checks may be imported by the CLI only inside cmd_host_check."""
    hits = [i for i in _imports_of("virtkit.cli") if _within(i.target, "virtkit.host")]
    assert all((i.module, i.function, i.target) in {
        (m, f, t) for m, f, t in CLI_EXCEPTIONS} for i in hits), [str(i) for i in hits]


def test_service_does_not_import_front_ends() -> None:
    imports = _imports_of("virtkit.service")
    assert imports
    bad = [str(i) for i in imports if _within(i.target, "virtkit.api", "virtkit.cli",
                                              "virtkit.web")]
    assert bad == []


def test_service_does_not_import_qemu() -> None:
    """QEMU work (QMP, the agent, argv) is the runtime's; the service reaches what it
    must know of qemu/ through virtkit.runtime.qemunames (issue 19)."""
    bad = [str(i) for i in _imports_of("virtkit.service") if _within(i.target, "virtkit.qemu")]
    assert bad == []


def test_runtime_does_not_import_service_or_front_ends() -> None:
    imports = _imports_of("virtkit.runtime")
    assert imports
    bad = [str(i) for i in imports if _within(i.target, "virtkit.service", "virtkit.api",
                                              "virtkit.cli", "virtkit.web")]
    assert bad == []


#: the cluster package sits beside runtime, below service: etcd and host records only
CLUSTER_ALLOWED = ("virtkit.cluster", "virtkit.model", "virtkit.host", "virtkit.store",
                   "virtkit.errors", "virtkit.paths", "virtkit")


def test_cluster_uses_only_the_lower_layers() -> None:
    imports = _imports_of("virtkit.cluster")
    assert imports, "no cluster imports found: is the walk broken?"
    assert _violations(imports, CLUSTER_ALLOWED) == []


def test_only_the_service_and_the_daemon_use_the_cluster() -> None:
    bad = [str(i) for i in IMPORTS if _within(i.target, "virtkit.cluster")
           and not _within(i.module, "virtkit.cluster", "virtkit.service")
           and i.module != "virtkit.api.daemon"]
    assert bad == []


def test_lower_layers_do_not_import_upper_ones() -> None:
    lower = ("virtkit.model", "virtkit.formats", "virtkit.host", "virtkit.qemu",
             "virtkit.storage", "virtkit.network", "virtkit.store", "virtkit.errors",
             "virtkit.paths", "virtkit.unixsock", "virtkit.cluster")
    upper = ("virtkit.runtime", "virtkit.service", "virtkit.api", "virtkit.cli", "virtkit.web")
    bad = [str(i) for i in _imports_of(*lower) if _within(i.target, *upper)]
    assert bad == []


def test_only_the_front_ends_own_their_packages() -> None:
    bad = [str(i) for i in IMPORTS if _within(i.target, "virtkit.cli")
           and not _within(i.module, "virtkit.cli")]
    bad += [str(i) for i in IMPORTS if _within(i.target, "virtkit.api")
            and not _within(i.module, "virtkit.api")]
    assert bad == []


API_ALLOWED = ("virtkit.api", "virtkit.service", "virtkit.errors", "virtkit.paths",
               "virtkit.unixsock", "virtkit.model", "virtkit")
#: the daemon assembles the layers: it alone may build the runtime and the store.
DAEMON_ALLOWED = (*API_ALLOWED, "virtkit.runtime", "virtkit.store")
API_MODULES = sorted({_module_name(p) for p in (SRC / "api").glob("*.py")})


@pytest.mark.parametrize("module", API_MODULES)
def test_api_uses_only_the_service(module: str) -> None:
    allowed = DAEMON_ALLOWED if module == "virtkit.api.daemon" else API_ALLOWED
    assert _violations([i for i in IMPORTS if i.module == module], allowed) == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines; split it by responsibility"
