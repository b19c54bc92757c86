"""QEMU is confined by a wrapper command (/bin/sh joins the cgroup, setpriv drops the
privileges) instead of a ``preexec_fn``, so the daemon spawns with vfork instead of
forking itself (runtime/confine.py; docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from virtkit.qemu.process import QemuProcess
from virtkit.runtime import confine

needs_setpriv = pytest.mark.skipif(confine.setpriv() is None, reason="no setpriv")


@needs_setpriv
def test_the_wrapper_joins_the_cgroups_first_then_execs_setpriv() -> None:
    wrapper = confine.confining_wrapper(6_500_123, 6_500_124, [], ["/cg/a/cgroup.procs"])
    assert wrapper is not None
    assert wrapper[:2] == ["/bin/sh", "-c"]
    assert wrapper[3:6] == ["virtkit-confine", "/cg/a/cgroup.procs", "--"]
    assert wrapper[6:] == [confine.setpriv(), "--reuid=6500123", "--regid=6500124",
                           "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                           "--no-new-privs", "--"]
    groups = confine.confining_wrapper(1, 2, [36, 37], [])
    assert groups is not None and groups[0] == confine.setpriv() and "--groups=36,37" in groups


def test_without_setpriv_the_confinement_falls_back_to_preexec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confine, "setpriv", lambda: None)
    assert confine.confining_wrapper(1, 2, [], []) is None


@needs_setpriv
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uid")
def test_the_wrapped_process_has_what_make_preexec_gave_it(tmp_path: Path) -> None:
    """Same uid/gid everywhere (real, effective, saved), no groups, no capability in any
    set, no-new-privs, and the cgroup.procs file written with 0 (the writer itself)."""
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    wrapper = confine.confining_wrapper(6_500_123, 6_500_124, [], [str(procs)])
    assert wrapper is not None
    out = subprocess.run([*wrapper, "/bin/cat", "/proc/self/status"], capture_output=True,
                         text=True, check=True).stdout
    status = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    assert status["Uid"].split() == ["6500123"] * 4
    assert status["Gid"].split() == ["6500124"] * 4
    assert status["Groups"].split() == []
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, caps
    assert status["NoNewPrivs"].strip() == "1"
    assert procs.read_text() == "0\n"


@needs_setpriv
def test_a_missing_qemu_is_named_before_the_wrapper_runs(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot run /no/such/qemu"):
        QemuProcess.spawn(["/no/such/qemu"], pass_fds=[], log_path=tmp_path / "log",
                          wrapper=["/bin/sh", "-c", 'exec "$@"', "x"])


def test_a_confinement_spawns_through_the_wrapper_else_through_preexec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = confine.Confinement("u", 6_500_123, 6_500_123, [], tmp_path / "u.json")
    if confine.setpriv() is not None:
        options = conf.spawn_options()
        assert list(options) == ["wrapper"] and options["wrapper"][0] == confine.setpriv()
    monkeypatch.setattr(confine, "setpriv", lambda: None)
    options = conf.spawn_options()
    assert list(options) == ["preexec"] and callable(options["preexec"])
