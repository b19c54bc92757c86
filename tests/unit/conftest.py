"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_etcd_client import servers, wait_ready
from virtkit.cluster.etcd import Etcd


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[Etcd]:
    """A client of a fresh one-member etcd-server (tests/unit/test_etcd_client.py starts
    real servers)."""
    with servers(tmp_path, 1) as (server,):
        client = Etcd([server.client_url], deadline=5)
        await wait_ready(client)
        yield client
        await client.close()
