"""Request and response helpers shared by the API's route modules."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from virtkit.errors import InvalidSpec


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; values JSON cannot encode (paths, times) become strings."""
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none), or InvalidSpec."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise InvalidSpec("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidSpec("the request body must be a JSON object")
    return data
