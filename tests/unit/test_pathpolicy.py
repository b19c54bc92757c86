"""The one path policy for every host file a guest is given (host/pathpolicy.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from virtkit.errors import Forbidden, InvalidSpec
from virtkit.host import pathpolicy
from virtkit.host.pathpolicy import PathPolicy, as_remote_caller, remote_caller
from virtkit.model.load import load_domain
from virtkit.runtime import preflight


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A state root with its default pool, a pool elsewhere, an allowed folder, and
    special files."""
    root = tmp_path / "state"
    (root / "images").mkdir(parents=True)
    (root / "virtkit.db").write_bytes(b"SQLite")
    (root / "tls").mkdir()
    (root / "tls" / "ca-key.pem").write_text("KEY")
    (root / "cache" / "install" / "u").mkdir(parents=True)
    (root / "cache" / "install" / "u" / "vmlinuz").write_bytes(b"k")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "disk.qcow2").write_bytes(b"x")
    (root / "images" / "vol.raw").write_bytes(b"x")
    (pool / "passwd-link").symlink_to("/etc/passwd")
    (pool / "db-link").symlink_to(root / "virtkit.db")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "iso").write_bytes(b"x")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "disk.raw").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    return {"root": root, "pool": pool, "allowed": allowed, "plain": plain, "tmp": tmp_path}


def policy_for(world: dict[str, Path], *, mountinfo: str = "/nonexistent") -> PathPolicy:
    root, pool = world["root"], world["pool"]
    return PathPolicy(str(root), (str(world["allowed"]),),
                      lambda: [str(root / "images"), str(pool)],
                      own_dirs=(str(root / "cache" / "install"),), mountinfo=mountinfo)


def _block_device() -> str | None:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        if name.startswith("loop") and os.path.exists(path) and \
                os.stat(path).st_mode & 0o170000 == 0o060000:
            return path
    return None


# (path relative to the world or absolute, kind, refused by whom: None (allowed),
#  "all" (InvalidSpec for every caller), "remote" (Forbidden only for a remote caller),
#  and a phrase the refusal names)
TABLE = [
    ("/etc/shadow", "file", "all", "system tree /etc"),
    ("/etc/passwd", "file", "all", "system tree /etc"),
    ("{root}/virtkit.db", "file", "all", "state folder"),
    ("{root}/tls/ca-key.pem", "file", "all", "state folder"),
    ("{root}/nvram/other_VARS.fd", "file", "all", "state folder"),
    ("{tmp}/fifo", "file", "all", "FIFO"),
    ("{tmp}/sock", "file", "all", "socket"),
    ("/dev/null", "file", "all", "character device"),
    ("{pool}/passwd-link", "file", "all", "a link to /etc/passwd"),
    ("{pool}/db-link", "file", "all", "state folder"),
    ("/root/.ssh/id_rsa", "file", "all", ".ssh"),
    ("{tmp}/home/u/.ssh/authorized_keys", "file", "all", ".ssh"),
    ("/var/lib/dpkg/status", "file", "all", "system tree /var/lib"),
    ("/boot/vmlinuz", "file", "all", "system tree /boot"),
    ("/proc/self/environ", "file", "all", "system tree /proc"),
    ("{plain}", "file", "all", "is a folder"),
    ("/var/lib/libvirt/images/vm.qcow2", "file", "remote", "pool volumes only"),
    ("{pool}/disk.qcow2", "file", None, ""),
    ("{root}/images/vol.raw", "file", None, ""),
    ("{root}/cache/install/u/vmlinuz", "file", "remote", "pool volumes only"),
    ("{allowed}/iso", "file", None, ""),
    ("{plain}/disk.raw", "file", "remote", "pool volumes only"),
    ("{plain}/missing.qcow2", "file", "remote", "pool volumes only"),
    # shared folders
    ("{plain}", "dir", "remote", "pool volumes only"),
    ("/", "dir", "all", "would give the guest"),
    ("/var", "dir", "all", "would give the guest"),
    ("{tmp}", "dir", "all", "would give the guest"),
    ("/etc", "dir", "all", "system tree /etc"),
    ("{tmp}/fifo", "dir", "all", "not a folder"),
    # files the daemon creates (serial logs, save files)
    ("{plain}/serial.log", "new", "remote", "pool volumes only"),
    ("/etc/cron.d/evil", "new", "all", "system tree /etc"),
    ("{root}/log/x.log", "new", "all", "state folder"),
    ("{tmp}/fifo", "new", "all", "not a regular file"),
]


@pytest.mark.parametrize(("template", "kind", "refused", "phrase"), TABLE)
@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_the_policy_table(world: dict[str, Path], template: str, kind: str,
                          refused: str | None, phrase: str, remote: bool) -> None:
    path = template.format(**{k: str(v) for k, v in world.items()})
    policy = policy_for(world)
    if refused == "all" or (refused == "remote" and remote):
        error = Forbidden if refused == "remote" else InvalidSpec
        with pytest.raises(error) as caught:
            policy.check(path, field="disks[0].path", kind=kind, remote=remote)
        message = str(caught.value)
        assert message.startswith("disks[0].path: ") and phrase in message, message
        assert caught.value.fix
    else:
        assert policy.check(path, field="f", kind=kind, remote=remote) == \
            os.path.realpath(path)


def test_a_block_device_is_given_unless_it_is_mounted(world: dict[str, Path],
                                                      tmp_path: Path) -> None:
    device = _block_device()
    if device is None:
        pytest.skip("no loop block device node on this host")
    st = os.stat(device)
    policy = policy_for(world)
    assert policy.check(device, field="f") == device
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"25 1 {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} / /mnt rw - "
                         "ext4 /dev/x rw\n")
    with pytest.raises(InvalidSpec, match="is mounted on the host"):
        policy_for(world, mountinfo=str(mountinfo)).check(device, field="f")
    with pytest.raises(Forbidden):
        policy.check(device, field="f", remote=True)


def test_an_allowed_folder_holding_the_state_root_is_not_shared(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "virtkit"
    (root / "images").mkdir(parents=True)
    policy = PathPolicy(str(root), (str(tmp_path / "srv"),))
    with pytest.raises(InvalidSpec, match="would give the guest"):
        policy.check(str(tmp_path / "srv"), field="f", kind="dir")


def test_relative_paths_are_refused(world: dict[str, Path]) -> None:
    with pytest.raises(InvalidSpec, match="not an absolute path"):
        policy_for(world).check("disk.qcow2", field="f")


def test_the_remote_mark_follows_the_context(world: dict[str, Path]) -> None:
    policy = policy_for(world)
    plain = str(world["plain"] / "disk.raw")
    assert not remote_caller()
    policy.check(plain, field="f")
    with as_remote_caller():
        assert remote_caller()
        with pytest.raises(Forbidden):
            policy.check(plain, field="f")
        policy.check(plain, field="f", remote=False)  # a stored path, named by a local user
    assert not remote_caller()


def test_pool_targets(world: dict[str, Path], tmp_path: Path) -> None:
    policy = policy_for(world)
    (tmp_path / "new-pool").mkdir()
    assert policy.check_pool_target(str(tmp_path / "new-pool")) == str(tmp_path / "new-pool")
    for target, phrase in (("/etc", "system tree"), (str(world["root"] / "tls"),
                                                     "state folder"),
                           ("/", "would give the guest"),
                           (str(tmp_path), "would give the guest")):
        with pytest.raises(InvalidSpec, match=phrase):
            policy.check_pool_target(target)
    with pytest.raises(Forbidden, match="only on the daemon's host"):
        policy.check_pool_target(str(tmp_path / "new-pool"), remote=True)


def test_the_administrators_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / pathpolicy.ALLOWED_FILE).write_text("# vendor images\n/var/lib/vendor/vms\n")
    policy = PathPolicy.for_root(tmp_path, allowed=["/srv/x"])
    assert policy.allowed == ("/srv/x", "/var/lib/vendor/vms")
    assert policy.check("/var/lib/vendor/vms/a.qcow2", field="f") == \
        "/var/lib/vendor/vms/a.qcow2"
    (tmp_path / pathpolicy.ALLOWED_FILE).write_text("relative/dir\n")
    with pytest.raises(InvalidSpec, match="not an absolute path"):
        PathPolicy.for_root(tmp_path)


def test_preflight_checks_every_path_a_spec_names(world: dict[str, Path]) -> None:
    policy = policy_for(world)
    plain = world["plain"]
    spec = {"name": "vm", "memory": 64,
            "boot": {"kernel": str(plain / "disk.raw")},
            "disks": [{"path": str(world["pool"] / "disk.qcow2"), "format": "raw"}],
            "serials": [{"log": True, "log_path": str(plain / "s.log")}],
            "filesystems": [{"source": str(plain), "target": "share", "driver": "9p",
                             "accessmode": "mapped"}]}
    fields = [item.field for item in preflight.guest_paths(load_domain(spec))]
    assert fields == ["boot.kernel", "disks[0].path", "serials[0].log_path",
                      "filesystems[0].source"]
    preflight.check_paths(load_domain(spec), policy, remote=False)
    with pytest.raises(Forbidden, match=r"boot\.kernel"):
        preflight.check_paths(load_domain(spec), policy, remote=True)
    # a remote caller may keep the paths the stored definition names already
    trusted = {str(plain / "disk.raw"), str(plain / "s.log"), str(plain)}
    preflight.check_paths(load_domain(spec), policy, remote=True, trusted=trusted)
    bad = {**spec, "disks": [{"path": "/etc/shadow", "format": "raw"}]}
    with pytest.raises(InvalidSpec, match=r"disks\[0\].path: /etc/shadow"):
        preflight.check_files(load_domain(bad), policy)
