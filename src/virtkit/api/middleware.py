"""The middleware chain of the v1 API, in one list (:func:`middlewares`).

Order, outermost first: the audit log (it sees the status the others answered),
authentication (a network request without a valid token reaches nothing else),
then the error translation next to the handlers.  A new middleware goes into
:func:`middlewares` and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from virtkit.api import auth
from virtkit.api.audit import AuditLog, audit_middleware
from virtkit.api.common import json_response
from virtkit.errors import VirtkitError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every :class:`VirtkitError` becomes a JSON error body with its HTTP status;
    anything else is a 500 whose message says it is a bug."""
    try:
        return await handler(request)
    except VirtkitError as exc:
        return json_response(exc.to_dict(), status=exc.http_status)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("internal error in %s %s", request.method, request.path)
        body = {"error": "internal", "message": f"internal error (a virtkit bug): {exc!r}"}
        return json_response(body, status=500)


def middlewares(audit: AuditLog | None = None) -> list[Any]:
    """The application's middlewares, outermost first."""
    chain: list[Any] = []
    if audit is not None:  # outermost: it sees the status error_middleware answered
        chain.append(audit_middleware(audit))
    # auth before everything but the audit: a network request without a valid token
    # reaches nothing else (and the audit log records the refusal)
    chain.append(auth.auth_middleware)
    chain.append(error_middleware)
    return chain
