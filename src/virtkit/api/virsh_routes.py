"""REST routes of virsh's smaller commands (service/virsh.py): screenshot, send-key,
vcpucount, domblkinfo, desc, and the host documents and node statistics.  Every body and
query string is parsed by one strict model (api/requests.py)."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response, progress_response, xml_response
from virtkit.api.requests import Body, Count, Flag, Query, body_of, query_of
from virtkit.service.virsh import VirshService

routes = web.RouteTableDef()
VIRSH = web.AppKey("virsh", VirshService)


def _ref(request: web.Request) -> str:
    return request.match_info["ref"]


class ScreenshotBody(Body):
    """Which display head to capture (virsh screenshot --screen)."""

    screen: int | None = Field(default=None, ge=0, le=63)


class SendKeyBody(Body):
    """virsh send-key: keys pressed together, then released after ``holdtime`` ms."""

    keys: list[str] = Field(min_length=1, max_length=16)
    codeset: str = "linux"
    holdtime: int | None = Field(default=None, ge=0, le=60000)


class DescriptionBody(Body):
    """virsh desc --new-desc: the new description (or title); "" removes it."""

    text: str
    title: bool = False


class DescriptionQuery(Query):
    title: Flag = False


class MetadataQuery(Query):
    uri: str = Field(min_length=1)


class MetadataBody(Body):
    """virsh metadata --set/--remove: one element under a namespace; null removes it."""

    uri: str = Field(min_length=1)
    key: str | None = None
    xml: str | None


class BlockCommitBody(Body):
    """virsh blockcommit's options; base/top are file names or ``vda[N]``."""

    active: bool = False
    pivot: bool = False
    keep_overlay: bool = False
    shallow: bool = False
    base: str | None = Field(default=None, min_length=1, max_length=4096)
    top: str | None = Field(default=None, min_length=1, max_length=4096)
    wait: bool = False
    delete: bool = False
    speed: int = Field(default=0, ge=0)


class BlockPullBody(Body):
    """virsh blockpull's options."""

    base: str | None = Field(default=None, min_length=1, max_length=4096)
    wait: bool = False
    speed: int = Field(default=0, ge=0)


class BlockJobBody(Body):
    """virsh blockjob --abort / --pivot / --bandwidth (bytes/s)."""

    abort: bool = False
    pivot: bool = False
    speed: int | None = Field(default=None, ge=0)


class BlockCopyBody(Body):
    """virsh blockcopy: ``dest`` a path, a volume name with ``pool``, or POOL/VOLUME;
    ``timeout`` in seconds (implies waiting), ``speed`` in bytes/s."""

    dest: str = Field(min_length=1, max_length=4096)
    pool: str | None = Field(default=None, min_length=1, max_length=255)
    format: Literal["qcow2", "raw"] | None = None
    shallow: bool = False
    reuse_external: bool = False
    blockdev: bool = False
    wait: bool = False
    pivot: bool = False
    finish: bool = False
    speed: int = Field(default=0, ge=0)
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400)


class BlockResizeBody(Body):
    """virsh blockresize: the new size in bytes."""

    size: int = Field(gt=0)


class CpuStatsQuery(Query):
    cpu: Count | None = None


class DomCapabilitiesQuery(Query):
    machine: str | None = None
    virttype: str | None = None
    arch: str | None = None
    emulatorbin: str | None = None


# POST, not GET: a screenshot shows guest output, which the read-only socket never serves
@routes.post("/v1/domains/{ref}/screenshot")
async def screenshot(request: web.Request) -> web.Response:
    """The display as an image (image/png, or image/x-portable-pixmap on an old QEMU)."""
    body = await body_of(request, ScreenshotBody)
    data, mime = await request.app[VIRSH].screenshot(_ref(request), body.screen)
    return web.Response(body=data, content_type=mime)


@routes.post("/v1/domains/{ref}/send-key")
async def send_key(request: web.Request) -> web.Response:
    """{"keys": ["KEY_LEFTCTRL", "KEY_C"], "codeset": "linux", "holdtime": MS}"""
    body = await body_of(request, SendKeyBody)
    result = await request.app[VIRSH].send_key(_ref(request), body.keys, codeset=body.codeset,
                                               holdtime=body.holdtime)
    return json_response(result)


@routes.get("/v1/domains/{ref}/vcpucount")
async def vcpucount(request: web.Request) -> web.Response:
    return json_response(request.app[VIRSH].vcpucount(_ref(request)))


@routes.get("/v1/domains/{ref}/blkinfo")
async def blkinfo(request: web.Request) -> web.Response:
    return json_response(await request.app[VIRSH].blkinfo(_ref(request)))


@routes.put("/v1/domains/{ref}/description")
async def put_description(request: web.Request) -> web.Response:
    """{"text": "...", "title": false}: replace the description (or title); "" removes."""
    body = await body_of(request, DescriptionBody)
    return json_response(request.app[VIRSH].set_description(_ref(request), body.text,
                                                            title=body.title))


@routes.get("/v1/domains/{ref}/description")
async def get_description(request: web.Request) -> web.Response:
    """?title=1 for the title."""
    query = query_of(request, DescriptionQuery)
    return json_response(request.app[VIRSH].set_description(_ref(request), None,
                                                            title=query.title))


@routes.get("/v1/domains/{ref}/metadata")
async def get_metadata(request: web.Request) -> web.Response:
    """?uri=NAMESPACE: the element of that namespace, shown without its prefix."""
    query = query_of(request, MetadataQuery)
    return json_response(request.app[VIRSH].metadata(_ref(request), query.uri))


@routes.put("/v1/domains/{ref}/metadata")
async def put_metadata(request: web.Request) -> web.Response:
    """{"uri": NAMESPACE, "key": PREFIX, "xml": "<foo/>"}; "xml": null removes it."""
    body = await body_of(request, MetadataBody)
    return json_response(request.app[VIRSH].metadata(_ref(request), body.uri, key=body.key,
                                                     xml=body.xml, remove=body.xml is None))


def _disk(request: web.Request) -> str:
    return request.match_info["disk"]


async def _block_operation(request: web.Request, body_type: type[Body],
                           operation: str) -> web.StreamResponse:
    """A block job request: its typed body, run with NDJSON progress when asked."""
    body = await body_of(request, body_type)
    run = getattr(request.app[VIRSH].blocks, operation)
    return await progress_response(request, lambda progress: run(
        _ref(request), _disk(request), progress, **body.model_dump()))


@routes.post("/v1/domains/{ref}/blockjobs/{disk}/commit")
async def block_commit(request: web.Request) -> web.StreamResponse:
    """virsh blockcommit (NDJSON progress when asked, with wait/pivot)."""
    return await _block_operation(request, BlockCommitBody, "commit")


@routes.post("/v1/domains/{ref}/blockjobs/{disk}/pull")
async def block_pull(request: web.Request) -> web.StreamResponse:
    """virsh blockpull (NDJSON progress when asked, with wait)."""
    return await _block_operation(request, BlockPullBody, "pull")


@routes.post("/v1/domains/{ref}/blockjobs/{disk}/copy")
async def block_copy(request: web.Request) -> web.StreamResponse:
    """virsh blockcopy (NDJSON progress when asked, with wait/pivot/finish)."""
    return await _block_operation(request, BlockCopyBody, "copy")


@routes.get("/v1/domains/{ref}/blockjobs/{disk}")
async def block_job(request: web.Request) -> web.Response:
    """virsh blockjob --info: {"job": null} when the disk has none."""
    return json_response(await request.app[VIRSH].blocks.job(_ref(request), _disk(request)))


@routes.post("/v1/domains/{ref}/blockjobs/{disk}")
async def block_job_act(request: web.Request) -> web.StreamResponse:
    """virsh blockjob --abort / --pivot / --bandwidth."""
    return await _block_operation(request, BlockJobBody, "job")


@routes.post("/v1/domains/{ref}/blockjobs/{disk}/resize")
async def block_resize(request: web.Request) -> web.Response:
    """virsh blockresize: {"size": BYTES}, live."""
    body = await body_of(request, BlockResizeBody)
    return json_response(await request.app[VIRSH].blocks.resize(_ref(request),
                                                                _disk(request), body.size))


@routes.get("/v1/host/memstats")
async def memstats(request: web.Request) -> web.Response:
    return json_response(request.app[VIRSH].memstats())


@routes.get("/v1/host/cpustats")
async def cpustats(request: web.Request) -> web.Response:
    """?cpu=N for one host CPU."""
    return json_response(request.app[VIRSH].cpustats(query_of(request, CpuStatsQuery).cpu))


@routes.get("/v1/host/sysinfo")
async def sysinfo(request: web.Request) -> web.Response:
    return xml_response(request.app[VIRSH].sysinfo())


@routes.get("/v1/host/capabilities")
async def capabilities(request: web.Request) -> web.Response:
    return xml_response(await asyncio.to_thread(request.app[VIRSH].capabilities))


@routes.get("/v1/host/domcapabilities")
async def domcapabilities(request: web.Request) -> web.Response:
    """?machine=, ?virttype=, ?arch=, ?emulatorbin= as virsh domcapabilities takes them."""
    virsh = request.app[VIRSH]
    query = query_of(request, DomCapabilitiesQuery)
    text = await asyncio.to_thread(
        lambda: virsh.domcapabilities(machine=query.machine or None,
                                      virttype=query.virttype or None,
                                      arch=query.arch or None,
                                      emulator=query.emulatorbin or None))
    return xml_response(text)
