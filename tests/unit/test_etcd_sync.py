"""The etcd client learns every member's address (Etcd.sync_endpoints) against a real
3-member etcd: made with one member's URL, it goes on working when that member dies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.test_etcd_client import servers, wait_ready
from virtkit.cluster.etcd import Etcd

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd-server")


async def test_a_client_made_with_one_member_survives_its_death(tmp_path: Path) -> None:
    with servers(tmp_path, 3) as members:
        async with Etcd([members[0].client_url], deadline=15) as client:
            await wait_ready(client)
            endpoints = await client.sync_endpoints()
            assert endpoints[0] == members[0].client_url  # the one in use stays first
            assert sorted(endpoints) == sorted(m.client_url for m in members)
            members[0].kill()
            await client.put("/after", "1")  # reaches a member it was not made with
            value = await client.get("/after")
            assert value is not None and value.value == b"1"
            assert client.endpoints[client._current] != members[0].client_url
