"""REST routes for pools and volumes.

Long operations (clone, import/convert) answer with newline-delimited JSON when
the client asks for ``application/x-ndjson``: ``{"progress": 12.5}`` lines as
the copy goes, then one ``{"result": ...}`` or ``{"error": ...}`` line.  Plain
JSON clients get the result when the operation ends.  Uploads and downloads
stream the volume's bytes in the request or response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from virtkit.api import peerfd
from virtkit.api.common import json_response, progress_response, xml_response
from virtkit.api.requests import (
    AutostartBody,
    Body,
    EmptyBody,
    ForceQuery,
    ListQuery,
    body_of,
    define_body,
    query_of,
)
from virtkit.errors import HostError
from virtkit.service.models.base import Result
from virtkit.service.models.storage import PoolInfo
from virtkit.service.storage import StorageService

routes = web.RouteTableDef()
CHUNK = 1024 * 1024

STORAGE = web.AppKey("storage", StorageService)


def _storage(request: web.Request) -> StorageService:
    return request.app[STORAGE]


# -- request models (api/requests.py has the rules) --------------------------------------

Capacity = int | str


class CreateVolumeBody(Body):
    name: str
    capacity: Capacity = ""
    #: None: raw in an rbd pool, qcow2 elsewhere
    format: str | None = None
    backing: str | None = None
    prealloc: bool = False


class ResizeBody(Body):
    capacity: Capacity
    shrink: bool = False


class CloneVolumeBody(Body):
    name: str
    linked: bool = False
    format: str | None = None


class ImportBody(Body):
    name: str
    source: str
    #: None: raw in an rbd pool, qcow2 elsewhere
    format: str | None = None


class FdBody(Body):
    #: a descriptor number of the client (an int in the kernel)
    fd: Annotated[int, Field(ge=0, le=2**31 - 1)]
    client: dict[str, Any] | None = None





@routes.get("/v1/pools")
async def list_pools(request: web.Request) -> web.Response:
    inactive = query_of(request, ListQuery).all
    return json_response(await asyncio.to_thread(_storage(request).list_pools,
                                         include_inactive=inactive))


@routes.post("/v1/pools")
async def define_pool(request: web.Request) -> web.Response:
    body, spec = await define_body(request)
    storage = _storage(request)
    # worker threads: big specs take a while to parse, and the pool's folder is probed
    if body.xml is not None:  # libvirt pool XML; the answer has "warnings"
        result = await asyncio.to_thread(storage.define_pool_xml, body.xml, force=body.force)
    else:
        result = await asyncio.to_thread(storage.define_pool,
                                         spec if spec is not None else {})
    return json_response(result, status=201)


@routes.get("/v1/pools/{pool}/xml")
async def pool_xml(request: web.Request) -> web.Response:
    """virsh pool-dumpxml: the pool as libvirt storage pool XML."""
    text = _storage(request).pool_dumpxml(request.match_info["pool"])
    return xml_response(text)


@routes.get("/v1/pools/{pool}")
async def pool_info(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_storage(request).pool_info,
                                         request.match_info["pool"]))


@routes.delete("/v1/pools/{pool}")
async def undefine_pool(request: web.Request) -> web.Response:
    return json_response(_storage(request).undefine_pool(request.match_info["pool"]))


@routes.post("/v1/pools/{pool}/{action:build|start|destroy|delete|refresh}")
async def pool_action(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    storage = _storage(request)
    action = request.match_info["action"]
    operations: dict[str, Callable[[str], PoolInfo]] = {
        "build": storage.build_pool, "start": storage.start_pool,
        "destroy": storage.destroy_pool, "delete": storage.delete_pool,
        "refresh": storage.pool_info,
    }
    return json_response(await asyncio.to_thread(operations[action], request.match_info["pool"]))


@routes.put("/v1/pools/{pool}/autostart")
async def pool_autostart(request: web.Request) -> web.Response:
    body = await body_of(request, AutostartBody)
    return json_response(_storage(request).set_pool_autostart(request.match_info["pool"],
                                                              body.enabled))


@routes.get("/v1/pools/{pool}/volumes")
async def list_volumes(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_storage(request).list_volumes,
                                         request.match_info["pool"]))


@routes.post("/v1/pools/{pool}/volumes")
async def create_volume(request: web.Request) -> web.Response:
    body = await body_of(request, CreateVolumeBody)
    result = await asyncio.to_thread(
        _storage(request).create_volume, request.match_info["pool"], body.name,
        body.capacity, body.format, backing=body.backing, prealloc=body.prealloc)
    return json_response(result, status=201)


@routes.get("/v1/pools/{pool}/volumes/{volume}")
async def volume_info(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_storage(request).volume_info,
                                         request.match_info["pool"],
                                         request.match_info["volume"]))


@routes.delete("/v1/pools/{pool}/volumes/{volume}")
async def delete_volume(request: web.Request) -> web.Response:
    force = query_of(request, ForceQuery).force
    return json_response(await asyncio.to_thread(_storage(request).delete_volume,
                                         request.match_info["pool"],
                                         request.match_info["volume"], force=force))


@routes.post("/v1/pools/{pool}/volumes/{volume}/resize")
async def resize_volume(request: web.Request) -> web.Response:
    body = await body_of(request, ResizeBody)
    return json_response(await _storage(request).resize_volume_live(
        request.match_info["pool"], request.match_info["volume"], body.capacity,
        shrink=body.shrink))


@routes.post("/v1/pools/{pool}/volumes/{volume}/wipe")
async def wipe_volume(request: web.Request) -> web.Response:
    await body_of(request, EmptyBody)
    return json_response(await asyncio.to_thread(_storage(request).wipe_volume,
                                         request.match_info["pool"],
                                         request.match_info["volume"]))


@routes.post("/v1/pools/{pool}/volumes/{volume}/clone")
async def clone_volume(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, CloneVolumeBody)
    storage = _storage(request)
    pool, source = request.match_info["pool"], request.match_info["volume"]
    name, linked, fmt = body.name, body.linked, body.format
    return await _with_progress(request, lambda progress: storage.clone_volume(
        pool, source, name, linked=linked, fmt=fmt, progress=progress))


@routes.post("/v1/pools/{pool}/import")
async def import_volume(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, ImportBody)
    storage = _storage(request)
    pool = request.match_info["pool"]
    name, source, fmt = body.name, body.source, body.format
    return await _with_progress(request, lambda progress: storage.import_volume(
        pool, name, source, fmt, progress=progress))


async def _with_progress(request: web.Request,
                         operation: Callable[[Callable[[float, float], None]], Result]
                         ) -> web.StreamResponse:
    """Run a blocking operation in a thread, streaming its progress as NDJSON if asked."""
    return await progress_response(
        request, lambda progress: asyncio.to_thread(operation, progress))


@routes.put("/v1/pools/{pool}/volumes/{volume}/upload")
async def upload_volume(request: web.Request) -> web.Response:
    """Stream the request body into the volume (created if new), atomically."""
    storage = _storage(request)
    pool, name = request.match_info["pool"], request.match_info["volume"]
    partial, final = await asyncio.to_thread(storage.upload_target, pool, name)
    written = 0
    in_place = partial == final
    try:
        # 0600 like every volume the daemon makes: a confined QEMU of another VM must
        # not read it (the VM that uses it is granted access while it runs)
        # opened and written as the body arrives (page-cache writes); the fsync is in a thread
        with open(partial, "r+b" if in_place else "wb",  # noqa: ASYNC230
                  opener=lambda path, flags: os.open(path, flags, 0o600)) as out:
            async for chunk in request.content.iter_chunked(CHUNK):
                out.write(chunk)
                written += len(chunk)
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())  # not in the event loop
        if not in_place:
            os.replace(partial, final)
    except BaseException as exc:
        if not in_place:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        if isinstance(exc, OSError):
            fix = ("free space in the pool, or upload to another pool"
                   if exc.errno == errno.ENOSPC else None)
            raise HostError(f"upload to {pool}/{name} failed after {written} bytes: "
                            f"{exc.strerror}; nothing was changed", fix=fix) from None
        raise
    volume = await asyncio.to_thread(storage.volume_info, pool, name)
    return json_response(volume.model_copy(update={"uploaded": written}))


@routes.post("/v1/pools/{pool}/volumes/{volume}/{action:upload-fd|download-fd}")
async def copy_with_client_fd(request: web.Request) -> web.StreamResponse:
    """vol-upload/vol-download for a local client: it names one of its open file
    descriptors (``{"fd": N}``), the daemon takes a duplicate and copies inside the
    kernel.  501 (code ``unsupported``) tells the client to stream instead."""
    body = await body_of(request, FdBody)
    fd = peerfd.take_fd(request, body.fd, body.client)
    storage = _storage(request)
    pool, name = request.match_info["pool"], request.match_info["volume"]
    copy = storage.upload_from_fd if request.match_info["action"] == "upload-fd" \
        else storage.download_to_fd

    def operation(progress: Callable[[float, float], None]) -> Result:
        try:
            return copy(pool, name, fd, progress)
        finally:
            os.close(fd)

    return await _with_progress(request, operation)


@routes.get("/v1/pools/{pool}/volumes/{volume}/download")
async def download_volume(request: web.Request) -> web.StreamResponse:
    path = await asyncio.to_thread(_storage(request).download_source,
                                   request.match_info["pool"], request.match_info["volume"])
    return web.FileResponse(path, chunk_size=CHUNK,
                            headers={"Content-Type": "application/octet-stream"})
