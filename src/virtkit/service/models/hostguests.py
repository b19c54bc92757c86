"""What the host guests policy (service/hostguests.py) takes and answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from virtkit.service.models.base import Request, Result

#: the longest SHUTDOWN_TIMEOUT, in seconds
MAX_TIMEOUT = 24 * 3600


class GuestsPolicy(Result):
    """libvirt-guests' settings: what a daemon stop does to running guests, how long
    a shutdown may take, and whether the next start starts them again."""

    on_shutdown: Literal["ignore", "shutdown", "managedsave"]
    shutdown_timeout: int
    on_boot: Literal["start", "ignore"]


class GuestsPolicyChange(Request):
    """A change of the policy (``PUT /v1/host/guests``'s body); fields left out keep
    their value; ``suspend`` is libvirt-guests' word for managedsave."""

    on_shutdown: Literal["ignore", "shutdown", "managedsave", "suspend"] | None = None
    shutdown_timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT)
    on_boot: Literal["start", "ignore"] | None = None


class GuestsStatus(GuestsPolicy):
    """``GET /v1/host/guests``: the policy, its file, the guests waiting from the last
    stop."""

    file: str
    pending: list[str]


class GuestsHandled(GuestsPolicy):
    """``virtkit host shutdown-guests``: the policy applied, the guests handled and
    those it failed on."""

    handled: list[str]
    failed: list[str]
