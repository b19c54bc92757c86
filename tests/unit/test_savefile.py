"""The ``virtkit save`` file header: round trip, alignment of QEMU's data, corrupt files."""

from __future__ import annotations

import json
import os
import struct
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import InvalidSpec
from virtkit.runtime import savefile

SPEC: dict[str, Any] = {"name": "web", "uuid": "0b6c3a4e-8d2f-4a57-9f1e-3c2d1b0a9e8f",
                        "memory": {"current": 512, "max": None}, "title": "ünïcode"}
QEMU_DATA = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 20


def _write(path: Path, spec: dict[str, Any], *, running: bool = True) -> int:
    """Write a save file like lifecycle.save does; return where QEMU's data starts."""
    with open(path, "xb") as stream:
        savefile.write_header(stream, spec, running=running)
        data_start = stream.tell()
        stream.write(QEMU_DATA)
    return data_start


@pytest.fixture
def open_fd() -> Iterator[Any]:
    fds: list[int] = []

    def opener(path: Path) -> int:
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1]

    yield opener
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("running", [True, False])
def test_header_round_trip(tmp_path: Path, open_fd: Any, running: bool) -> None:
    path = tmp_path / "web.save"
    data_start = _write(path, SPEC, running=running)
    fd = open_fd(path)
    header = savefile.read_header(fd, str(path))
    assert header["spec"] == SPEC
    assert header["running"] is running
    assert isinstance(header["saved"], float)
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    assert offset == data_start
    assert offset % savefile.ALIGN == 0 and offset > 0
    assert os.read(fd, len(QEMU_DATA) + 1) == QEMU_DATA


def test_padding_is_zeros(tmp_path: Path) -> None:
    path = tmp_path / "web.save"
    data_start = _write(path, SPEC)
    raw = path.read_bytes()
    assert raw.startswith(savefile.MAGIC)
    (length,) = struct.unpack(">Q", raw[len(savefile.MAGIC):len(savefile.MAGIC) + 8])
    end = len(savefile.MAGIC) + 8 + length
    assert json.loads(raw[len(savefile.MAGIC) + 8:end])["spec"] == SPEC
    assert raw[end:data_start] == b"\0" * (data_start - end)
    assert data_start - end < savefile.ALIGN


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_header_at_a_block_boundary(tmp_path: Path, open_fd: Any,
                                    monkeypatch: pytest.MonkeyPatch, extra: int) -> None:
    """A header that ends just before, exactly on, or just after 4096 bytes."""
    monkeypatch.setattr(savefile, "time", types.SimpleNamespace(time=lambda: 1700000000.5))
    probe = {"pad": ""}
    overhead = len(savefile.MAGIC) + 8 + len(json.dumps(
        {"spec": probe, "running": True, "saved": 1700000000.5}).encode())
    spec = {"pad": "x" * (savefile.ALIGN - overhead + extra)}
    path = tmp_path / f"edge{extra}.save"
    data_start = _write(path, spec)
    assert data_start == (savefile.ALIGN if extra <= 0 else 2 * savefile.ALIGN)
    fd = open_fd(path)
    assert savefile.read_header(fd, str(path))["spec"] == spec
    assert os.lseek(fd, 0, os.SEEK_CUR) == data_start
    assert os.read(fd, 8) == QEMU_DATA[:8]


@pytest.mark.parametrize("content", [
    b"", b"QEVM\x00\x00\x00\x03 a raw QEMU stream", b"VIRTKIT-SAVE-2\n" + b"\0" * 64,
    b"#!/bin/sh\necho hello\n" * 10,
], ids=["empty", "qemu-stream", "other-version", "script"])
def test_not_a_save_file(tmp_path: Path, open_fd: Any, content: bytes) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    with pytest.raises(InvalidSpec) as info:
        savefile.read_header(open_fd(path), str(path))
    assert info.value.message == f"{path} is not a virtkit save file"
    assert info.value.fix


@pytest.mark.parametrize("length", [16 * 1024 * 1024 + 1, 2**40, 2**64 - 1])
def test_huge_length_is_refused(tmp_path: Path, open_fd: Any, length: int) -> None:
    path = tmp_path / "huge.save"
    path.write_bytes(savefile.MAGIC + struct.pack(">Q", length) + b"{}")
    with pytest.raises(InvalidSpec, match=rf"corrupt header \(length {length}\)"):
        savefile.read_header(open_fd(path), str(path))


@pytest.mark.parametrize("body", [b"{not json", b'{"spec": {"name"', b"\xff\xfe"])
def test_corrupt_json_is_refused(tmp_path: Path, open_fd: Any, body: bytes) -> None:
    path = tmp_path / "bad.save"
    path.write_bytes(savefile.MAGIC + struct.pack(">Q", len(body)) + body)
    with pytest.raises(InvalidSpec, match="corrupt header"):
        savefile.read_header(open_fd(path), str(path))


@pytest.mark.parametrize("tail", [b"", b"\0\0\0"], ids=["magic-only", "short-length"])
def test_truncated_length_is_refused(tmp_path: Path, open_fd: Any, tail: bytes) -> None:
    path = tmp_path / "cut.save"
    path.write_bytes(savefile.MAGIC + tail)
    with pytest.raises(InvalidSpec, match="corrupt header"):
        savefile.read_header(open_fd(path), str(path))


@pytest.mark.parametrize("body", [b"[]", b'"spec"', b'{"running": true}'])
def test_header_without_spec_is_refused(tmp_path: Path, open_fd: Any, body: bytes) -> None:
    path = tmp_path / "odd.save"
    path.write_bytes(savefile.MAGIC + struct.pack(">Q", len(body)) + body)
    with pytest.raises(InvalidSpec, match="corrupt header"):
        savefile.read_header(open_fd(path), str(path))
