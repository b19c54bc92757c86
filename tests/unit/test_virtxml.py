"""``virtkit xml`` with command lines from virt-xml's man page (EXAMPLES), against a
fake daemon: the change each makes to the spec, and which API calls it sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from virtkit.cli import main as cli_main
from virtkit.errors import InvalidSpec
from virtkit.formats.virtxml import device_fields, select

SPEC: dict[str, Any] = {
    "name": "EXAMPLE", "memory": {"current": 256}, "vcpus": {"current": 1},
    "disks": [{"path": "/img/a.qcow2", "format": "qcow2"},
              {"path": "/img/b.raw", "format": "raw", "bus": "sata"}],
    "nics": [{"network": "default", "mac": "52:54:00:00:00:01"}],
    "graphics": {"type": "vnc"},
}


class FakeDaemon:
    """The few API calls ``virtkit xml`` makes, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.spec = json.loads(json.dumps(SPEC))

    def domain_path(self, ref: str, suffix: str = "") -> str:
        return f"/v1/domains/{ref}{suffix}"

    def get(self, path: str) -> Any:
        if path.endswith("/disks?inactive=1"):
            return [{"target": "vda"}, {"target": "sda"}]
        return {"name": "EXAMPLE", "spec": self.spec, "version": 7}

    def post(self, path: str, body: Any = None) -> Any:
        self.calls.append(("POST", path, body))
        return {}

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        return {"version": 8}

    def close(self) -> None:
        pass


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    fake = FakeDaemon()
    monkeypatch.setattr(cli_main, "connect_with", lambda *a, **k: fake)
    return fake


def _xml(*words: str) -> int:
    argv = ["xml", *words]
    return cli_main.run(argv)


def _put_spec(daemon: FakeDaemon) -> dict[str, Any]:
    [(method, path, body)] = daemon.calls
    assert (method, path, body["version"]) == ("PUT", "/v1/domains/EXAMPLE", 7)
    spec: dict[str, Any] = body["spec"]
    return spec


def test_change_disk_io_by_target(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    # man page, "Change disk 'hda' IO to threads":
    #   virt-xml EXAMPLE --edit target=hda --disk io=threads
    assert _xml("EXAMPLE", "--edit", "target=sda", "--disk", "io=threads") == 0
    spec = _put_spec(daemon)
    assert spec["disks"][1] == {**SPEC["disks"][1], "aio": "threads"}
    assert spec["disks"][0] == SPEC["disks"][0]  # only the selected disk
    assert capsys.readouterr().out == "Domain 'EXAMPLE' defined successfully.\n"


def test_edit_all_disks(daemon: FakeDaemon) -> None:
    # man page: virt-xml EXAMPLE --edit all --disk cache=none (every disk)
    _xml("EXAMPLE", "--edit", "all", "--disk", "cache=none")
    assert [d["cache"] for d in _put_spec(daemon)["disks"]] == ["none", "none"]


def test_metadata_description(daemon: FakeDaemon) -> None:
    # man page: virt-xml EXAMPLE --edit --metadata description="my new description"
    _xml("EXAMPLE", "--edit", "--metadata", "description=my new description")
    assert _put_spec(daemon)["description"] == "my new description"


def test_print_diff_defines_nothing(daemon: FakeDaemon,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # man page: virt-xml EXAMPLE --edit 2 --sound model=ich6 --print-diff (here a disk)
    _xml("EXAMPLE", "--edit", "2", "--disk", "cache=writeback", "--print-diff")
    out = capsys.readouterr().out
    assert daemon.calls == []
    assert '+      "cache": "writeback",' in out and out.startswith("--- EXAMPLE (defined)")


def test_add_disk_defines_and_hotplugs(daemon: FakeDaemon,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # man page: virt-xml EXAMPLE --add-device --disk /tmp/new.img,bus=virtio --update
    _xml("EXAMPLE", "--add-device", "--disk", "/img/new.qcow2,bus=virtio,format=qcow2",
         "--update")
    assert daemon.calls == [("POST", "/v1/domains/EXAMPLE/disks", {
        "disk": {"device": "disk", "bus": "virtio", "format": "qcow2",
                 "path": "/img/new.qcow2"}, "live": True, "config": True})]
    assert capsys.readouterr().out == ("Device hotplug successful.\n"
                                       "Domain 'EXAMPLE' defined successfully.\n")


def test_add_network_and_remove_disk(daemon: FakeDaemon) -> None:
    _xml("EXAMPLE", "--add-device", "--network", "bridge=br0,model=e1000")
    # man page: virt-xml EXAMPLE --remove-device --disk target=sdb (here sda)
    _xml("EXAMPLE", "--remove-device", "--disk", "target=sda")
    assert daemon.calls == [
        ("POST", "/v1/domains/EXAMPLE/interfaces", {
            "interface": {"type": "bridge", "bridge": "br0", "model": "e1000"},
            "live": False, "config": True}),
        ("POST", "/v1/domains/EXAMPLE/disks/detach", {"target": "sda", "live": False,
                                                      "config": True})]


def test_remove_all_graphics(daemon: FakeDaemon) -> None:
    # man page: virt-xml EXAMPLE --remove-device --graphics all
    _xml("EXAMPLE", "--remove-device", "--graphics", "all")
    assert _put_spec(daemon)["graphics"] == {"type": "none"}


def test_build_xml_needs_no_domain(daemon: FakeDaemon,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # man page: virt-xml --build-xml --disk /tmp/foo.img (virtkit: the spec fragment)
    assert _xml("--build-xml", "--disk", "/tmp/foo.img,format=raw") == 0
    assert json.loads(capsys.readouterr().out) == {"device": "disk", "format": "raw",
                                                   "path": "/tmp/foo.img"}
    assert daemon.calls == []


def test_refusals_name_the_problem(daemon: FakeDaemon,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _xml("EXAMPLE", "--edit", "--disk", "cache=none", "--update") == 1
    assert "only disks and NICs are added or removed live" in capsys.readouterr().err
    assert _xml("EXAMPLE", "--edit", "--add-device", "--disk", "cache=none") == 1
    assert "exactly one action" in capsys.readouterr().err
    assert _xml("EXAMPLE", "--add-device", "--disk", "/img/n.qcow2,size=1") == 1
    assert "vol-create-as" in capsys.readouterr().err
    assert _xml("EXAMPLE", "--edit", "target=vdz", "--disk", "cache=none") == 1
    assert "no disk device has target=vdz" in capsys.readouterr().err
    assert daemon.calls == []


def test_device_fields_reuse_the_install_translator() -> None:
    assert device_fields("--disk", "cache=none", edit=True) == {"cache": "none"}
    assert device_fields("--network", "model=virtio", edit=True) == {"model": "virtio"}
    assert device_fields("--network", "network=default") == {"network": "default"}
    assert device_fields("--graphics", "vnc,listen=0.0.0.0") == {"type": "vnc",
                                                                 "listen": "0.0.0.0"}
    with pytest.raises(InvalidSpec, match="bus"):  # the install parser's own refusal
        device_fields("--disk", "/x.img,bogus=1")
    assert select([{"mac": "a"}, {"mac": "b"}], "mac=b", "--network") == [1]
    with pytest.raises(InvalidSpec, match="from 1 to 2"):
        select([{}, {}], "3", "--disk")


def test_the_clis_device_options_are_the_translators() -> None:
    """cli/virtxml.py names them itself (building the parser must not import the model)."""
    from virtkit.cli.virtxml import DEVICE_OPTION_NAMES
    from virtkit.formats.virtxml import DEVICE_OPTIONS

    assert tuple(DEVICE_OPTIONS) == DEVICE_OPTION_NAMES
