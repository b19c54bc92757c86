"""What a CLI call and the daemon import at start-up (docs/benchmarks.md: start-up time
and the daemon's resident memory are mostly imports).  Rarely used subsystems are
imported when first used, not at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

#: never imported to parse a command line (every ``virtkit`` call does that)
CLI_NEVER = ["datetime", "threading", "shutil", "http.client", "ssl", "subprocess",
             "tempfile", "asyncio", "pydantic", "virtkit.model"]


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_building_the_cli_parser_imports_nothing_heavy() -> None:
    modules = _imported_after("import virtkit.cli.main as m\nm.build_parser()")
    assert not modules & set(CLI_NEVER), sorted(modules & set(CLI_NEVER))


#: imported by the daemon only when first used: installs (virt-install's parser, the
#: osinfo database, ISO reading with pycdlib) and the OpenAPI document
DAEMON_LATER = ["virtkit.formats.virtinstall", "virtkit.formats.osinfo",
                "virtkit.storage.installmedia", "pycdlib", "virtkit.api.openapi",
                "virtkit.api.openapi_virsh"]


def test_the_daemon_imports_installs_and_the_openapi_document_when_first_used() -> None:
    modules = _imported_after("import virtkit.api.daemon")
    assert not modules & set(DAEMON_LATER), sorted(modules & set(DAEMON_LATER))
    used = _imported_after("import virtkit.api.daemon\n"
                           "from virtkit.api.openapi import openapi_document\n"
                           "assert openapi_document()['paths']")
    assert "virtkit.api.openapi_virsh" in used


def test_building_the_cli_parser_asks_gettext_once_per_text() -> None:
    """argparse translates its own texts at every parser and option it makes; gettext
    looks for catalogue files on disk at each call (a third of the parser's build)."""
    out = subprocess.run([sys.executable, "-c",
                          "import gettext\n"
                          "calls = []\n"
                          "find = gettext.find\n"
                          "gettext.find = lambda *a, **k: calls.append(a) or find(*a, **k)\n"
                          "import virtkit.cli.main as m\n"
                          "m.build_parser()\n"
                          "print(len(calls))"],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) <= 20


def test_the_daemon_builds_request_validators_when_a_route_first_uses_them() -> None:
    """pydantic builds a model's validator and serializer at class creation unless told
    to defer it: the 87 request models cost an idle daemon about 650 KiB for routes
    it may never serve (docs/benchmarks.md)."""
    out = subprocess.run([sys.executable, "-c",
                          "import virtkit.api.daemon\n"
                          "from virtkit.api.requests import Body, Query, EmptyBody\n"
                          "def subs(c):\n"
                          "    for s in c.__subclasses__():\n"
                          "        yield s\n"
                          "        yield from subs(s)\n"
                          "models = [*subs(Body), *subs(Query)]\n"
                          "built = [m.__name__ for m in models if m.__pydantic_complete__]\n"
                          "EmptyBody.model_validate({})\n"
                          "print(len(models), built, EmptyBody.__pydantic_complete__)"],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[0]) > 50
    assert out.stdout.strip().endswith("[] True"), out.stdout
