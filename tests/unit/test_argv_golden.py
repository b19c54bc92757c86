"""Golden files for the pure argv builder: tests/data/argv/<case>.json -> <case>.args.

Run ``pytest tests/unit/test_argv_golden.py --regenerate`` after an intended
change and review the diff of the .args files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtkit.model.host import HostCaps, LaunchFiles
from virtkit.model.load import load_domain
from virtkit.qemu.argv import build_argv, qemu_escape

DATA = Path(__file__).parent.parent / "data" / "argv"
CASES = sorted(p.stem for p in DATA.glob("*.json"))
ALIASES = {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"}


def _argv(case: str) -> list[str]:
    data = json.loads((DATA / f"{case}.json").read_text())
    domain = load_domain(data["spec"])
    caps_data = {"accel": "tcg", "machine_aliases": ALIASES,
                 "ovmf_code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
                 "ovmf_vars": "/usr/share/OVMF/OVMF_VARS_4M.fd", **data.get("caps", {})}
    fds = {"qmp": 3, "agent": 4, **{f"serial{i}": 5 + i for i in range(len(domain.serials))},
           **data.get("fds", {})}
    files = LaunchFiles("/run/virtkit/" + domain.uuid, "/var/log/virtkit/" + domain.uuid, fds,
                        nvram="/var/lib/virtkit/nvram/" + domain.uuid + "_VARS.fd",
                        incoming=data.get("incoming"))
    return build_argv(domain, HostCaps(**caps_data), files, "/usr/bin/qemu-system-x86_64")


@pytest.mark.parametrize("case", CASES)
def test_argv_matches_golden(case: str, regenerate: bool) -> None:
    text = "\n".join(_argv(case)) + "\n"
    golden = DATA / f"{case}.args"
    if regenerate or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text()


def test_every_case_has_a_golden_file() -> None:
    assert CASES, "no argv cases"
    for case in CASES:
        assert (DATA / f"{case}.args").exists(), case


def test_hostile_disk_path_stays_inside_one_json_value() -> None:
    argv = _argv("full-q35-kvm")
    blockdevs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    filenames = [b["filename"] for b in blockdevs if "filename" in b]
    assert "/images/a,file.driver=ssh,host=evil.qcow2" in filenames
    assert not any(b.get("driver") == "ssh" for b in blockdevs)


def test_hostile_name_is_comma_escaped() -> None:
    argv = _argv("full-q35-kvm")
    assert argv[argv.index("-name") + 1] == "guest=web,,server=evil,debug-threads=on"
    assert qemu_escape("a,b,,c") == "a,,b,,,,c"


def test_argv_never_contains_unrestricted_user_networking() -> None:
    for case in CASES:
        for arg in _argv(case):
            if arg.startswith("user,"):
                assert "restrict=on" in arg
