"""Volume names stay inside their pool: the name table, and DirPool.volume_path's
refusal of symlinks and paths that resolve outside the pool folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import InvalidSpec, NotFound
from virtkit.model.pool import Pool, PoolType, validate_volume_name
from virtkit.storage.dirpool import DirPool
from virtkit.storage.isopool import read_iso_label
from virtkit.storage.lvm import ACTIVATION_OFF, METADATA_ONLY_ENV, lvm_config_from_env

GOOD = ["ok.qcow2", "disk1", "web-root.raw", "a", "A_b+c.d-e", "0", "x" * 201]
BAD = [
    ("../x", "climbs out of the pool"),
    ("a/b", "a path, not a name"),
    ("/etc/passwd", "absolute path"),
    (".hidden", "hidden (and the .partial temps are hidden)"),
    (".x.partial", "a staging temp"),
    ("..", "parent folder"),
    (".", "the folder itself"),
    ("-x", "looks like an option to qemu-img/lvm"),
    ("a..b", "contains '..'"),
    ("", "empty"),
    ("disk one", "space"),
    ("tab\tname", "control character"),
    ("new\nline", "control character"),
    ("dïsk", "non-ASCII letter"),
    ("диск", "unicode"),
    ("disk\u200b", "zero-width space"),
    ("a:b", "a protocol prefix for qemu (nbd:, json:)"),
    ("a,b", "a comma (qemu option syntax)"),
    ("x" * 202, "too long"),
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name: str) -> None:
    assert validate_volume_name(name) == name


@pytest.mark.parametrize(("name", "why"), BAD, ids=[repr(n) for n, _ in BAD])
def test_bad_names(name: str, why: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        validate_volume_name(name)


@pytest.fixture
def pool(tmp_path: Path) -> DirPool:
    folder = tmp_path / "pool"
    folder.mkdir()
    return DirPool(Pool(name="p", type=PoolType.DIR, target=str(folder)))


@pytest.mark.parametrize(("name", "why"), BAD, ids=[repr(n) for n, _ in BAD])
def test_volume_path_refuses_bad_names_with_invalid_spec(pool: DirPool, name: str,
                                                          why: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        pool.volume_path(name)
    assert caught.value.field == "name" and caught.value.fix


def test_volume_path_is_inside_the_pool(pool: DirPool) -> None:
    assert pool.volume_path("ok.qcow2") == os.path.join(pool.root, "ok.qcow2")


def test_symlink_out_of_the_pool_is_refused(pool: DirPool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"x" * 512)
    os.symlink(secret, os.path.join(pool.root, "escape.img"))
    with pytest.raises(InvalidSpec, match="symbolic link") as caught:
        pool.volume_path("escape.img")
    assert "escape.img" in caught.value.message
    # the listing does not show it either (only regular files are volumes)
    assert [v.name for v in pool.list_volumes()] == []
    with pytest.raises(InvalidSpec):
        pool.delete_volume("escape.img")
    assert secret.exists()


def test_symlink_inside_the_pool_is_refused_too(pool: DirPool) -> None:
    Path(pool.root, "real.img").write_bytes(b"")
    os.symlink("real.img", os.path.join(pool.root, "alias.img"))
    with pytest.raises(InvalidSpec, match="symbolic link"):
        pool.volume_path("alias.img")


def test_a_pool_folder_behind_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    pool = DirPool(Pool(name="p", type=PoolType.DIR, target=str(tmp_path / "link")))
    assert pool.volume_path("a.raw") == str(tmp_path / "link" / "a.raw")


def test_missing_volume_names_the_pool(pool: DirPool) -> None:
    with pytest.raises(NotFound, match=r"'nope\.qcow2' not found in pool 'p'") as caught:
        pool.volume("nope.qcow2")
    assert caught.value.fix


def test_iso_label_from_a_hand_made_descriptor(tmp_path: Path) -> None:
    image = tmp_path / "x.iso"
    boot = bytes([0]) + b"CD001\x01" + b"EL TORITO SPECIFICATION".ljust(2041, b"\x00")
    primary = bytes([1]) + b"CD001\x01\x00" + b" " * 32 + b"Debian 12 amd64".ljust(32) \
        + b"\x00" * (2048 - 72)
    end = bytes([255]) + b"CD001\x01" + b"\x00" * 2041
    image.write_bytes(b"\x00" * 16 * 2048 + boot + primary + end)
    assert read_iso_label(str(image)) == "Debian 12 amd64"


@pytest.mark.parametrize("content", [b"", b"\x00" * 40000, b"\x00" * 32768 + b"\x01CD002"])
def test_no_label_without_a_primary_descriptor(tmp_path: Path, content: bytes) -> None:
    image = tmp_path / "x.iso"
    image.write_bytes(content)
    assert read_iso_label(str(image)) is None


def test_metadata_only_lvm_is_never_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METADATA_ONLY_ENV, raising=False)
    assert lvm_config_from_env() is None
    monkeypatch.setenv(METADATA_ONLY_ENV, "0")
    assert lvm_config_from_env() is None
    monkeypatch.setenv(METADATA_ONLY_ENV, "1")
    assert lvm_config_from_env() == ACTIVATION_OFF
