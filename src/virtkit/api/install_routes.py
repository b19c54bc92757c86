"""REST routes for installs (``virtkit install``, the web wizard) and the OS database."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, model_validator

from virtkit.api.common import json_body, json_response
from virtkit.api.requests import Body, Query, query_of, validate_body
from virtkit.service.install import InstallService
from virtkit.service.models.install import InstallPreview

routes = web.RouteTableDef()
INSTALL = web.AppKey("install", InstallService)


@routes.post("/v1/install")
async def install(request: web.Request) -> web.Response:
    """Run an install request (see formats.virtinstall.InstallRequest); 201 with the VM.

    ``{"argv": [...]}`` sends virt-install's own options instead (what the web
    console's wizard does, so it can show the equivalent command line); they are
    parsed here exactly as ``virtkit install`` parses them.
    """
    body = await json_body(request)
    validate_body(body, InstallBody)  # types and fields; the service reads the dict
    result = await request.app[INSTALL].install(body)
    return json_response(result, status=200 if isinstance(result, InstallPreview) else 201)


class NewDiskBody(Body):
    """A disk the install creates first (formats.virtinstall.NewDisk)."""

    index: Annotated[int, Field(ge=0)]
    size_bytes: Annotated[int, Field(ge=0)]
    format: str
    pool: str | None = None
    volume: str | None = None
    path: str | None = None
    sparse: bool = True


class InstallBody(Body):
    """formats.virtinstall.InstallRequest, typed; or ``{"argv": [...]}`` alone."""

    argv: list[str] | None = None
    domain: dict[str, Any] | None = None
    method: Literal["import", "cdrom", "location", "pxe", "kernel", "livecd",
                    "none"] | None = None
    new_disks: list[NewDiskBody] = Field(default_factory=list)
    install_media: str | None = None
    location: str | None = None
    extra_args: str | None = None
    initrd_inject: list[str] = Field(default_factory=list)
    os_variant: str | None = None
    cloud_init: dict[str, str] | None = None
    autoconsole: bool = True
    wait_minutes: float | None = None
    noreboot: bool = False
    dry_run: bool = False
    print_xml: bool = False
    quiet: bool = False
    default_nic: bool = False
    default_disk: bool = False
    host_checks: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _form(self) -> InstallBody:
        if self.argv is None and (self.domain is None or self.method is None):
            raise ValueError("send {\"argv\": [...]} or an install request with domain "
                             "and method")
        return self


class OsinfoQuery(Query):
    filter: str = ""


@routes.get("/v1/osinfo")
async def list_os_variants(request: web.Request) -> web.Response:
    """The OS variants of the osinfo database, optionally filtered (osinfo-query os)."""
    text = query_of(request, OsinfoQuery).filter
    return json_response(await asyncio.to_thread(request.app[INSTALL].os_variants, text))
