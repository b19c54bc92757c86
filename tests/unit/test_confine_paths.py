"""The confiner checks every path before it grants anything, refuses a file another VM
holds, and refuses to start without a cgroup unless told (runtime/confine.py); the
cgroup file systems are found or mounted (host/cgroups.py); qemu-img never opens a
FIFO (storage/qemuimg.py); the loop-lag watchdog names what blocks (api/looplag.py)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from virtkit.api.looplag import LoopLagWatch
from virtkit.errors import Conflict, HostError, InvalidSpec
from virtkit.host import cgroups
from virtkit.model.host import HostCaps
from virtkit.model.load import load_domain
from virtkit.paths import StatePaths
from virtkit.runtime import confine
from virtkit.storage import qemuimg

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
CAPS = HostCaps(accel="tcg")


def _snapshot(path: Path) -> tuple[int, int, int, list[str]]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), sorted(os.listxattr(path))


def _spec(name: str, *disks: str) -> Any:
    return load_domain({"name": name, "memory": 64,
                        "disks": [{"path": d, "format": "raw"} for d in disks]})


@pytest.fixture
def setting(tmp_path: Path) -> tuple[confine.Confiner, StatePaths, Path]:
    paths = StatePaths(tmp_path / "state")
    paths.make()
    confiner = confine.Confiner(paths, enabled=True, cgroup_root=tmp_path / "nocgroup",
                                cgroup_required=False)
    images = tmp_path / "images"
    images.mkdir()
    os.chmod(tmp_path, 0o755)
    return confiner, paths, images


def _prepare(confiner: confine.Confiner, paths: StatePaths, domain: Any
             ) -> confine.Confinement | None:
    run = paths.run_dir(domain.uuid)
    run.mkdir(parents=True, exist_ok=True)
    logs = paths.logs / "domains" / domain.uuid
    logs.mkdir(parents=True, exist_ok=True)
    return confiner.prepare(domain, CAPS, run_dir=run, log_dir=logs, nvram=None)


@root_only
def test_a_refused_path_changes_nothing_not_even_the_paths_before_it(
        setting: tuple[confine.Confiner, StatePaths, Path]) -> None:
    confiner, paths, images = setting
    good = images / "good.raw"
    good.write_bytes(b"x")
    good.chmod(0o644)
    before = _snapshot(good)
    db_before = _snapshot(paths.database) if paths.database.exists() else None
    for bad, phrase in ((str(paths.database), "state folder"), ("/etc/shadow", "/etc"),
                        ("/dev/null", "character device")):
        domain = _spec("vm", str(good), bad)
        with pytest.raises(InvalidSpec, match=phrase):
            _prepare(confiner, paths, domain)
        assert _snapshot(good) == before
        assert not confiner.journal(domain.uuid).exists()
    shadow = os.stat("/etc/shadow")
    assert (shadow.st_uid, stat.S_IMODE(shadow.st_mode)) in ((0, 0o640), (0, 0o600),
                                                             (0, 0o000))
    if db_before is not None:
        assert _snapshot(paths.database) == db_before


@root_only
def test_a_file_another_vm_writes_is_refused_and_keeps_its_owner(
        setting: tuple[confine.Confiner, StatePaths, Path]) -> None:
    confiner, paths, images = setting
    shared = images / "shared.raw"
    shared.write_bytes(b"x")
    shared.chmod(0o644)
    original = _snapshot(shared)
    a = _prepare(confiner, paths, _spec("a", str(shared)))
    assert a is not None
    held = _snapshot(shared)
    assert held[0] == a.uid and held[2] == 0o600
    b_domain = _spec("b", str(shared))
    with pytest.raises(Conflict, match="in use by VM a") as caught:
        _prepare(confiner, paths, b_domain)
    assert caught.value.details["vm"] == "a"
    assert _snapshot(shared) == held  # a keeps it: nothing granted, nothing "restored"
    assert not confiner.journal(b_domain.uuid).exists()
    # read-only by b is refused too (a writes it), and the same for a hot-plug
    with pytest.raises(Conflict):
        _prepare(confiner, paths, load_domain({"name": "b", "memory": 64, "disks": [
            {"path": str(shared), "format": "raw", "readonly": True}]}))
    other = images / "other.raw"
    other.write_bytes(b"y")
    c = _prepare(confiner, paths, _spec("c", str(other)))
    assert c is not None
    with pytest.raises(Conflict, match="in use by VM a"):
        c.grant_image(str(shared), readonly=False, fmt="raw")
    assert _snapshot(shared) == held
    confiner.release(c)
    confiner.release(a)
    assert _snapshot(shared) == original


@root_only
def test_a_link_is_granted_as_its_target_and_released_there(
        setting: tuple[confine.Confiner, StatePaths, Path]) -> None:
    confiner, paths, images = setting
    real = images / "real.raw"
    real.write_bytes(b"x")
    real.chmod(0o644)
    links = images.parent / "links"
    links.mkdir(mode=0o700)
    link = links / "link.raw"
    link.symlink_to(real)
    conf = _prepare(confiner, paths, _spec("vm", str(link)))
    assert conf is not None
    granted = {(g.path, g.kind) for g in conf.grants}
    assert (str(real), "own") in granted and str(link) not in {p for p, _k in granted}
    assert (str(links), "exec") in granted  # QEMU opens the link's name: it must reach it
    confiner.release(conf)
    assert _snapshot(real)[:3] == (0, 0, 0o644)


@root_only
def test_no_cgroup_is_an_error_unless_the_daemon_was_told(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.make()
    image = tmp_path / "disk.raw"
    image.write_bytes(b"x")
    image.chmod(0o644)
    os.chmod(tmp_path, 0o755)
    strict = confine.Confiner(paths, enabled=True, cgroup_root=tmp_path / "nocgroup")
    domain = _spec("vm", str(image))
    with pytest.raises(HostError, match="no cgroup") as caught:
        _prepare(strict, paths, domain)
    assert "--no-cgroup" in (caught.value.fix or "")
    assert _snapshot(image)[:3] == (0, 0, 0o644)
    assert not strict.journal(domain.uuid).exists()
    ok, what = strict.cgroup_status()
    assert not ok and "no cgroup file system" in what
    told = confine.Confiner(paths, enabled=True, cgroup_root=tmp_path / "nocgroup",
                            cgroup_required=False)
    conf = _prepare(told, paths, domain)
    assert conf is not None and conf.cgroup is None
    assert any("NO CGROUP" in note for note in conf.describe()["notes"])
    assert "--no-cgroup" in told.cgroup_status()[1]
    told.release(conf)


def test_hierarchies_and_the_mount_plan(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text("9:name=systemd:/\n8:pids:/\n5:devices:/\n4:memory:/x\n"
                      "2:cpuacct:/\n1:cpu:/\n0::/\n")
    found = cgroups.hierarchies(str(hybrid))
    assert ("memory",) in found and () in found and not any("name=" in c for h in found
                                                            for c in h)
    assert cgroups.mount_plan(found) == [("pids", "cgroup", "pids"),
                                         ("devices", "cgroup", "devices"),
                                         ("memory", "cgroup", "memory"),
                                         ("cpu", "cgroup", "cpu")]
    combined = tmp_path / "combined"
    combined.write_text("3:cpu,cpuacct:/\n2:memory:/\n")
    assert cgroups.mount_plan(cgroups.hierarchies(str(combined))) == [
        ("cpu", "cgroup", "cpu,cpuacct"), ("memory", "cgroup", "memory")]
    unified = tmp_path / "unified"
    unified.write_text("0::/system.slice/virtkitd.service\n")
    assert cgroups.mount_plan(cgroups.hierarchies(str(unified))) == [(".", "cgroup2", "")]


def test_find_root_keeps_a_mounted_tree(tmp_path: Path) -> None:
    tree = tmp_path / "cg"
    (tree / "memory").mkdir(parents=True)
    assert cgroups.find_root(tmp_path / "fallback", tree) == tree
    assert not (tmp_path / "fallback").exists()


def test_qemu_img_never_opens_a_fifo_or_a_device(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    for path in (str(fifo), "/dev/null"):
        with pytest.raises(InvalidSpec, match="not a disk image"):
            qemuimg.image_info(path)
        with pytest.raises(InvalidSpec, match="not a disk image"):
            qemuimg.backing_chain(path)
    assert time.monotonic() - started < 5  # refused before qemu-img ran (no 30 s wait)


def test_the_loop_lag_watchdog_names_what_blocked(tmp_path: Path) -> None:
    log = tmp_path / "lag.log"

    def blocking_probe() -> None:
        time.sleep(0.9)

    async def main() -> None:
        watch = LoopLagWatch(log, limit=0.3)
        watch.start()
        await asyncio.sleep(0.3)
        blocking_probe()
        await asyncio.sleep(0.4)
        watch.stop()

    asyncio.run(main())
    text = log.read_text()
    assert "STALL:" in text and "blocking_probe" in text and "STALL ended" in text


def test_the_loop_lag_watchdog_is_quiet_when_nothing_blocks(tmp_path: Path) -> None:
    log = tmp_path / "lag.log"

    async def main() -> None:
        watch = LoopLagWatch(log, limit=0.5)
        watch.start()
        await asyncio.to_thread(time.sleep, 0.8)  # blocking work in a worker thread
        watch.stop()

    asyncio.run(main())
    assert not log.exists()


def test_dominfo_shows_a_missing_cgroup_loudly() -> None:
    from virtkit.cli.domains import _security_lines

    lines = dict(_security_lines({"model": "virtkit-dac", "doi": "0", "label": "+1:+1",
                                  "cgroup": [], "sandbox": True,
                                  "notes": ["NO CGROUP (--no-cgroup): no cgroup file "
                                            "system at /sys/fs/cgroup"]}))
    assert lines["Cgroup"].startswith("NONE")
    assert lines["Security note"].startswith("NO CGROUP (--no-cgroup)")
    plain = dict(_security_lines({"model": "none", "doi": "0", "label": None}))
    assert "Cgroup" not in plain


@root_only
def test_a_hot_plugged_link_is_given_back_at_unplug(
        setting: tuple[confine.Confiner, StatePaths, Path]) -> None:
    confiner, paths, images = setting
    boot = images / "boot.raw"
    boot.write_bytes(b"x")
    real = images / "extra.raw"
    real.write_bytes(b"x")
    real.chmod(0o644)
    link = images / "extra-link.raw"
    link.symlink_to(real)
    conf = _prepare(confiner, paths, _spec("vm", str(boot)))
    assert conf is not None
    conf.grant_image(str(link), readonly=False, fmt="raw")
    assert _snapshot(real)[0] == conf.uid
    conf.release_path(str(link))  # the spec names the link; the grant is on the file
    assert _snapshot(real)[:3] == (0, 0, 0o644)
    confiner.release(conf)


@root_only
def test_a_start_journals_its_grants_in_one_write_after_the_first(
        setting: tuple[confine.Confiner, StatePaths, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each journal write is an fsync (milliseconds): a start writes the journal once
    before the cgroup exists and once for all its grants, not once per kind of file."""
    confiner, paths, images = setting
    disk = images / "disk.raw"
    disk.write_bytes(b"x")
    disk.chmod(0o644)
    domain = load_domain({"name": "vm", "memory": 64,
                          "disks": [{"path": str(disk), "format": "raw"}],
                          "serials": [{"log": True}]})
    writes: list[int] = []
    save = confine.Confinement.save

    def counted(self: confine.Confinement) -> None:
        writes.append(len(self.grants))
        save(self)

    monkeypatch.setattr(confine.Confinement, "save", counted)
    conf = _prepare(confiner, paths, domain)
    assert conf is not None
    granted = {(g.path, g.kind) for g in conf.grants}
    assert (str(disk), "own") in granted
    assert (str(paths.run_dir(domain.uuid)), "own") in granted
    assert any(p.endswith("serial0.log") and k == "own" for p, k in granted)
    assert writes == [0, len(conf.grants)]
    confiner.release(conf)
    assert _snapshot(disk)[:3] == (0, 0, 0o644)
