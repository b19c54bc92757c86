"""The OpenAPI operations of api/managedsave_routes.py (virsh managedsave*, the host
guests policy) and api/limits_routes.py (schedinfo, memtune, blkiotune,
blkdeviotune), listed in :data:`virtkit.api.openapi.OPERATIONS`.  The request schemas
are the routes' own body and query models."""

from __future__ import annotations

from typing import Any

from virtkit.api.limits_routes import LimitsBody, ShowQuery
from virtkit.api.managedsave_routes import (
    GuestsPolicyBody,
    ManagedSaveBody,
    ManagedSaveDefineBody,
)
from virtkit.api.requests import XmlQuery

_MANAGED = "/v1/domains/{ref}/managedsave"
_LIMITS = "/v1/domains/{ref}/limits/{kind}"
_IOTUNE = "/v1/domains/{ref}/disks/{disk}/iotune"

LIMITS_OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("post", _MANAGED, "virsh managedsave: save the memory to the domain's managed image "
     "and stop it; the next start resumes from it (NDJSON progress with Accept: "
     "application/x-ndjson)", None),
    ("delete", _MANAGED, "virsh managedsave-remove: drop the managed save image (the next "
     "start boots afresh)", None),
    ("get", _MANAGED + "/xml", "virsh managedsave-dumpxml: the definition stored in the "
     "managed save image, as libvirt domain XML (?security_info=1: with secrets)", None),
    ("put", _MANAGED + "/xml", "virsh managedsave-define: replace the definition stored "
     "in the managed save image (host-side changes only)",
     None),
    ("get", "/v1/host/guests", "The host guests policy (libvirt-guests' ON_SHUTDOWN, "
     "SHUTDOWN_TIMEOUT, ON_BOOT) and the guests waiting to be started again", None),
    ("put", "/v1/host/guests", "Change the host guests policy (fields left out keep "
     "their value)", None),
    ("post", "/v1/host/guests/shutdown", "virtkit host shutdown-guests: apply ON_SHUTDOWN "
     "now (NDJSON: one {guest, message} line per step, then {result} or {error})", None),
    ("get", _LIMITS, "virsh schedinfo / memtune / blkiotune: the values now "
     "(?config=1: the stored ones)", None),
    ("post", _LIMITS, "virsh schedinfo / memtune / blkiotune --set: values by virsh's "
     "names, live and/or config; devices: blkiotune's per device values",
     None),
    ("get", _IOTUNE, "virsh blkdeviotune: a disk's I/O throttles (?config=1: the stored "
     "ones)", None),
    ("post", _IOTUNE, "virsh blkdeviotune --set: a disk's I/O throttles, live and/or "
     "config", None),
]

#: (method, path) -> the body model the route parses with
LIMITS_BODIES: dict[tuple[str, str], Any] = {
    ("post", _MANAGED): ManagedSaveBody,
    ("put", _MANAGED + "/xml"): ManagedSaveDefineBody,
    ("put", "/v1/host/guests"): GuestsPolicyBody,
    ("post", _LIMITS): LimitsBody,
    ("post", _IOTUNE): LimitsBody,
}

#: (method, path) -> the query model the route parses with
LIMITS_QUERIES: dict[tuple[str, str], Any] = {
    ("get", _MANAGED + "/xml"): XmlQuery,
    ("get", _LIMITS): ShowQuery,
    ("get", _IOTUNE): ShowQuery,
}
