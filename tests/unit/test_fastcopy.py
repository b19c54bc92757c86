"""In-kernel copies for local uploads and downloads (storage.fastcopy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import InvalidSpec
from virtkit.storage import fastcopy


@pytest.mark.parametrize("write_behind", [False, True])
def test_copy_in_slices_keeps_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         write_behind: bool) -> None:
    monkeypatch.setattr(fastcopy, "SLICE", 4096)  # many slices from a small file
    data = os.urandom(3 * 4096 + 123)
    (tmp_path / "src").write_bytes(data)
    seen: list[tuple[float, float]] = []
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copied = fastcopy.copy_fd(src, dst, len(data), lambda d, t: seen.append((d, t)),
                                  write_behind=write_behind)
    finally:
        os.close(src)
        os.close(dst)
    assert copied == len(data)
    assert (tmp_path / "dst").read_bytes() == data
    assert [d for d, _ in seen] == [4096, 8192, 12288, len(data)]


def test_a_source_that_shrank_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 100)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(InvalidSpec, match="ended after 100 of 200 bytes"):
            fastcopy.copy_fd(src, dst, 200)
    finally:
        os.close(src)
        os.close(dst)


def test_open_modes_and_file_types_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    for flags, write, ok in ((os.O_RDONLY, False, True), (os.O_WRONLY, False, False),
                             (os.O_WRONLY, True, True), (os.O_RDONLY, True, False),
                             (os.O_RDWR, True, True)):
        fd = os.open(path, flags)
        try:
            if ok:
                assert fastcopy.check_mode(fd, write=write, what="it") == 3
            else:
                with pytest.raises(InvalidSpec, match="was not opened for"):
                    fastcopy.check_mode(fd, write=write, what="it")
        finally:
            os.close(fd)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(InvalidSpec, match="not a regular file"):
            fastcopy.check_mode(folder, write=False, what="it")
    finally:
        os.close(folder)
