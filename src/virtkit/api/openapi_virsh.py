"""The OpenAPI operations of api/virsh_routes.py (virsh's smaller commands), listed in
:data:`virtkit.api.openapi.OPERATIONS`."""

from __future__ import annotations

from typing import Any

from virtkit.api.requests import body_schema
from virtkit.api.virsh_routes import (
    BlockCommitBody,
    BlockCopyBody,
    BlockJobBody,
    BlockPullBody,
    BlockResizeBody,
    DescriptionBody,
    MetadataBody,
    ScreenshotBody,
    SendKeyBody,
)

VIRSH_OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("post", "/v1/domains/{ref}/screenshot", "virsh screenshot: the display as image/png "
     "(image/x-portable-pixmap on a QEMU without PNG); the client writes the file",
     body_schema(ScreenshotBody)),
    ("post", "/v1/domains/{ref}/send-key", "virsh send-key: press keys together, then "
     "release them", body_schema(SendKeyBody)),
    ("get", "/v1/domains/{ref}/vcpucount", "virsh vcpucount: maximum/current vCPUs of the "
     "config and of the running QEMU (live: null when shut off)", None),
    ("get", "/v1/domains/{ref}/blkinfo", "virsh domblkinfo: capacity, allocation and "
     "physical bytes of each disk", None),
    ("get", "/v1/domains/{ref}/description", "virsh desc: the description (?title=1: the "
     "title)", None),
    ("put", "/v1/domains/{ref}/description", "virsh desc --new-desc: replace the "
     "description or title (\"\" removes it)", body_schema(DescriptionBody)),
    ("get", "/v1/domains/{ref}/metadata", "virsh metadata: the element of namespace ?uri= "
     "(shown without its prefix)", None),
    ("put", "/v1/domains/{ref}/metadata", "virsh metadata --set/--remove: store one element "
     "under a namespace and prefix (xml null removes it)",
     body_schema(MetadataBody)),
    ("post", "/v1/domains/{ref}/blockjobs/{disk}/commit", "virsh blockcommit: merge a "
     "disk's images into a lower one (active: then pivot onto it); NDJSON progress",
     body_schema(BlockCommitBody)),
    ("post", "/v1/domains/{ref}/blockjobs/{disk}/pull", "virsh blockpull: copy the backing "
     "images' data into the top; NDJSON progress", body_schema(BlockPullBody)),
    ("post", "/v1/domains/{ref}/blockjobs/{disk}/copy", "virsh blockcopy: copy a running "
     "disk to a new file or pool volume (blockdev-mirror), then pivot onto it or keep it; "
     "NDJSON progress", body_schema(BlockCopyBody)),
    ("get", "/v1/domains/{ref}/blockjobs/{disk}", "virsh blockjob --info: the disk's job "
     "(job null when none)", None),
    ("post", "/v1/domains/{ref}/blockjobs/{disk}", "virsh blockjob --abort/--pivot/"
     "--bandwidth", body_schema(BlockJobBody)),
    ("post", "/v1/domains/{ref}/blockjobs/{disk}/resize", "virsh blockresize: new size in "
     "bytes, live", body_schema(BlockResizeBody)),
    ("get", "/v1/host/memstats", "virsh nodememstats: total, free, buffers, cached (KiB)",
     None),
    ("get", "/v1/host/cpustats", "virsh nodecpustats: user, system, idle, iowait ns since "
     "boot (?cpu=N: one CPU)", None),
    ("get", "/v1/host/sysinfo", "virsh sysinfo: the host's SMBIOS data (XML)", None),
    ("get", "/v1/host/capabilities", "virsh capabilities: libvirt capabilities XML", None),
    ("get", "/v1/host/domcapabilities", "virsh domcapabilities: libvirt domainCapabilities "
     "XML (?machine=, ?virttype=kvm|qemu, ?arch=, ?emulatorbin=)", None),
]
