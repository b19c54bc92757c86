"""Request and response helpers shared by the API's route modules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from virtkit.errors import InvalidSpec, VirtkitError
from virtkit.model.naming import find_bad_text
from virtkit.service.models.base import Result

#: called with (done, total) as a long operation advances
Progress = Callable[[float, float], None]

#: who a network request is from ("alice", "token:laptop"), set by the auth middleware
#: and written by the audit log (aiohttp 3.13+ has typed request keys; older: a string)
PRINCIPAL: Any = web.RequestKey("principal", str) if hasattr(web, "RequestKey") \
    else "principal"


def _encode(value: Any) -> Any:
    """What json.dumps cannot encode itself: a service result is its wire form, any
    other value (paths, times) its string."""
    if isinstance(value, Result):
        return value.wire()
    return str(value)


def dumps(data: Any) -> str:
    """The API's one JSON encoder (service results included)."""
    return json.dumps(data, default=_encode)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; a service result answers its wire form (:meth:`Result.wire`);
    values JSON cannot encode (paths, times) become strings."""
    return web.json_response(data, status=status, dumps=dumps)


def xml_response(text: str) -> web.Response:
    """A libvirt XML document (dumpxml and the like)."""
    return web.Response(text=text, content_type="application/xml")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none), or InvalidSpec."""
    if not request.body_exists:  # (not can_read_body: false once a middleware read it)
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise InvalidSpec("the request body is not valid JSON") from None
    except RecursionError:  # json.loads recurses per nesting level: '[' * 10000
        raise InvalidSpec("the request body nests too deeply to be read") from None
    if not isinstance(data, dict):
        raise InvalidSpec("the request body must be a JSON object")
    bad = find_bad_text(data)  # the text rule, for every string of every request
    if bad is not None:
        raise InvalidSpec(f"invalid request: {bad[0]} {bad[1]}", field=bad[0],
                          fix="send UTF-8 text without NUL characters")
    return data


def required_text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    """``body[key]`` as a non-empty string, or InvalidSpec naming the field."""
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{key} is required", field=key)
    return value


def string_list(body: dict[str, Any], key: str) -> list[str]:
    """``body[key]`` as a list of strings ([] when absent), or InvalidSpec."""
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(f"{key} must be a list of strings", field=key)
    return value


async def progress_response(request: web.Request,
                            operation: Callable[[Progress], Awaitable[Any]],
                            status: int = 200) -> web.StreamResponse:
    """Run a long operation; when the client accepts ``application/x-ndjson``, stream
    ``{"progress": percent}`` lines while it runs, then ``{"result": ...}`` or
    ``{"error": ...}``; otherwise answer its result as plain JSON.  ``progress`` may be
    called from any thread.  ``status`` is the plain answer's HTTP status."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[float] = asyncio.Queue()

    def progress(done: float, total: float) -> None:
        percent = 100.0 * done / total if total else 0.0
        loop.call_soon_threadsafe(queue.put_nowait, percent)

    task = asyncio.ensure_future(operation(progress))
    if "application/x-ndjson" not in request.headers.get("Accept", ""):
        return json_response(await task, status=status)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    last = -1.0
    while not task.done():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done() and getter.result() - last >= 0.5:
            last = getter.result()
            await response.write(json.dumps({"progress": round(last, 1)}).encode() + b"\n")
        elif not getter.done():
            getter.cancel()
    try:
        line: dict[str, Any] = {"result": task.result()}
    except VirtkitError as exc:
        line = {"error": {**exc.to_dict(), "status": exc.http_status}}
    await response.write(dumps(line).encode() + b"\n")
    await response.write_eof()
    return response
