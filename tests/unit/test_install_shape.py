"""An install request whose domain is shaped wrong (found by the API fuzzer: ``disks``
as an object gave a 500 when the OS variant wanted SATA disks) is refused naming the
field, before any install step reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.test_install_vs_virtinstall import _EmptyPools, _NoDomains
from virtkit.errors import InvalidSpec
from virtkit.formats.virtinstall import parse_command_line
from virtkit.service.install import InstallService

BAD = [("disks", {"f": {}}), ("disks", ["vda"]), ("nics", "default"), ("nics", [1]),
       ("boot", ["hd"]), ("name", 7)]


@pytest.mark.parametrize(("field", "value"), BAD)
async def test_a_wrongly_shaped_domain_is_refused_naming_the_field(
        tmp_path: Path, field: str, value: Any) -> None:
    # winxp: no virtio, so the install steps walk the disks to set SATA on them
    data = parse_command_line(["--name", "shape", "--memory", "128", "--pxe",
                               "--disk", "none", "--network", "none",
                               "--os-variant", "winxp", "--print-xml"]).to_dict()
    data["domain"][field] = value
    service = InstallService(cast(Any, _NoDomains()), cast(Any, _EmptyPools()), tmp_path)
    with pytest.raises(InvalidSpec) as refused:
        await service.install(data)
    assert f"domain.{field}" in str(refused.value)
