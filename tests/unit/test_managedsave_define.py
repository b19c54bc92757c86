"""managedsave-define's pure parts: which spec changes a save image can take (the host
side only), and rewriting a save file's header without touching QEMU's stream."""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.model.load import dump_domain, load_domain
from virtkit.runtime import savefile
from virtkit.service.managedsave import merge_host_side


def _spec(**overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": "ms", "uuid": "5e0a671f-5cf7-42ea-af59-67beeb20af1d", "memory": 128,
        "vcpus": 1, "disks": [{"path": "/srv/a.qcow2", "format": "qcow2"}],
        "nics": [{"network": "default", "mac": "52:54:00:00:00:01"}],
        "graphics": {"type": "vnc"}}
    spec.update(overrides)
    return dump_domain(load_domain(spec))


def test_host_side_changes_are_taken() -> None:
    old = _spec()
    new = _spec(title="moved", disks=[{"path": "/srv/b.qcow2", "format": "qcow2",
                                       "cache": "none"}],
                nics=[{"network": "lab", "mac": "52:54:00:00:00:01"}])
    merged, changed = merge_host_side(old, new)
    assert changed == []
    assert merged["title"] == "moved" and merged["disks"][0]["path"] == "/srv/b.qcow2"
    assert merged["disks"][0]["cache"] == "none" and merged["nics"][0]["network"] == "lab"
    assert merged["memory"] == old["memory"]


def test_what_the_guest_would_see_is_named() -> None:
    old = _spec()
    new = _spec(memory=256, vcpus=2, nics=[{"network": "default",
                                            "mac": "52:54:00:00:00:02"}])
    _, changed = merge_host_side(old, new)
    assert changed == ["memory.current", "nics[0].mac", "vcpus.current"]
    _, changed = merge_host_side(old, _spec(disks=[]))  # a device more or less
    assert changed == ["disks"]
    _, changed = merge_host_side(old, _spec(name="other"))
    assert changed == ["name"]


def test_rewrite_header_keeps_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.save"
    stream = os.urandom(10000)
    with open(path, "wb") as out:
        savefile.write_header(out, {"name": "a"}, running=True)
        out.write(stream)
    os.chmod(path, 0o600)

    def read() -> tuple[dict[str, object], bytes]:
        fd = os.open(path, os.O_RDONLY)
        try:
            header = savefile.read_header(fd, str(path))
            return header, os.read(fd, 1 << 20)
        finally:
            os.close(fd)

    header, _ = read()
    savefile.rewrite_header(str(path), {**header, "running": False})  # fits: in place
    header2, data = read()
    assert header2["running"] is False and header2["saved"] == header["saved"]
    assert data == stream
    big = {**header2, "spec": {"name": "a", "description": "x" * 9000}}
    savefile.rewrite_header(str(path), big)  # longer than its room: a new file
    header3, data = read()
    assert header3["spec"] == big["spec"] and data == stream
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.save"]
