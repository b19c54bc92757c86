"""What the API token service (service/tokens.py) answers."""

from __future__ import annotations

from typing import Literal

from virtkit.service.models.base import Result


class TokenInfo(Result):
    """A token as the API lists it: never its secret or hash (times: epoch seconds)."""

    name: str
    id: str
    created: float
    expires: float | None
    last_used: float | None
    revoked: float | None
    status: Literal["active", "expired", "revoked"]
    #: token create only: the secret, shown this once
    token: str | None = None
