"""The bases of the service boundary's models.

:class:`Result` is what a service method returns.  Its JSON form (:meth:`Result.wire`)
leaves out the fields that were never set, so a result whose keys depend on the case
(``status`` only for an active network, ``error`` only when QEMU went away) answers the
same JSON as the dictionaries it replaced; a field set to ``None`` is sent as ``null``.

:class:`Request` is what a service method takes when the input has several fields;
it is strict (no coercion, unknown fields refused), so the API parses a request body
straight into it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from pydantic import BaseModel, ConfigDict

#: A definition, or a part of one, as JSON: what model/load.py dumps and loads.  It
#: is free-form here on purpose: the model (model/domain.py's Domain and its parts)
#: validates it where it is used, and an answer passes the stored one on as it is.
SpecDocument: TypeAlias = dict[str, Any]


class Result(BaseModel):
    """A service method's answer."""

    model_config = ConfigDict(extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The JSON object the API answers: every field that was set, nothing else."""
        return self.model_dump(exclude_unset=True)


class Request(BaseModel):
    """A service method's input: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")

