"""JSON documents the service passes on without a model of its own.

Each is a named alias, not a model, because its shape is someone else's: a
definition before it is validated (the validation names the field it refuses),
another daemon's answer (its version may differ from ours, so it is read with
``.get()`` and passed on as sent), or QEMU's own counters.  A dictionary in a
service signature is one of these, or a typed model of its area."""

from __future__ import annotations

from typing import Any

from pydantic import JsonValue

DomainDocument = dict[str, Any]
"""A domain definition as JSON: model/domain.py's ``Domain`` dumped (the store's
``spec`` column), or one sent by a migration's source before it is validated."""

PoolDocument = dict[str, Any]
"""A pool definition as JSON before it is validated into model/pool.py's ``Pool``
(``POST /v1/pools``' ``spec``, or a YAML document read into a dictionary);
service/storage.load_pool validates it and names the field it refuses."""

PeerAnswer = dict[str, Any]
"""A JSON object another virtkitd answered (service/peer.py): read with ``.get()``
and passed on as sent, since that daemon's version may differ from this one's."""

PeerBody = dict[str, Any]
"""A JSON request body for another virtkitd's API, built as that API documents it
(docs/api.md; the destination parses it with its strict request model)."""

PeerAddress = dict[str, JsonValue]
"""Where another virtkitd is: ``{"socket": PATH}`` or ``{"url": "https://...",
"token": T, "ca": PEM}``, as a migrate request names it; service/peer.Peer checks it
and refuses anything else."""

QemuCounters = dict[str, Any]
"""One statistics group as runtime/stats.py collected it (QEMU's and the kernel's
counters under their own names), passed on as collected."""
