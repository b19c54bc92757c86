"""The API's assembly (api/app.py): route tables mounted by the services they need,
and handlers that refuse, rather than ignore, what the container cannot do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from virtkit.api.app import ROUTE_TABLES, create_app
from virtkit.api.middleware import error_middleware, middlewares
from virtkit.api.services import Services


def _bare_services() -> Services:
    """Only the four services every container has (stubs: never reached here)."""
    stub = cast(Any, object())
    return Services(domains=stub, host=stub, storage=stub, networks=stub)


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    runner = web.AppRunner(create_app(_bare_services()))
    await runner.setup()
    sock = str(tmp_path / "api.sock")  # a unix socket: a local client, as the CLI
    await web.UnixSite(runner, sock).start()
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
        yield session
    await runner.cleanup()


async def test_new_disks_without_a_provisioning_service_is_refused(
        bare: aiohttp.ClientSession) -> None:
    body = {"spec": {"name": "vm", "memory": "64M"},
            "new_disks": [{"volume": "vm.qcow2", "capacity": "1G"}]}
    async with bare.post("http://localhost/v1/domains", json=body) as answer:
        assert answer.status == 501
        assert "new_disks" in (await answer.json())["message"]


async def test_remove_all_storage_without_a_provisioning_service_is_refused(
        bare: aiohttp.ClientSession) -> None:
    url = "http://localhost/v1/domains/vm?remove_all_storage=1"
    async with bare.delete(url) as answer:
        assert answer.status == 501
        assert "remove_all_storage" in (await answer.json())["message"]


async def test_a_table_whose_service_is_absent_is_not_served(
        bare: aiohttp.ClientSession) -> None:
    async with bare.get("http://localhost/v1/host/repairs") as answer:
        assert answer.status == 404
    async with bare.get("http://localhost/v1/version") as answer:
        assert answer.status == 200


def test_every_table_is_mounted_once_and_the_error_middleware_is_innermost() -> None:
    tables = [table for table, _needs in ROUTE_TABLES]
    assert len({id(table) for table in tables}) == len(tables)
    assert middlewares()[-1] is error_middleware
