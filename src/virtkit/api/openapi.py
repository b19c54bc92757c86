"""The published OpenAPI 3.1 document of the v1 API.

Operations are listed once in :data:`OPERATIONS`; the domain schema comes from
the pydantic model itself, so the document cannot drift from what the daemon
validates.
"""

from __future__ import annotations

import functools
from typing import Any

from virtkit import __version__
from virtkit.api.openapi_limits import LIMITS_BODIES, LIMITS_OPERATIONS, LIMITS_QUERIES
from virtkit.api.openapi_virsh import VIRSH_OPERATIONS
from virtkit.model.domain import Domain
from virtkit.model.network import Network
from virtkit.model.pool import Pool

_REF = {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "domain name or UUID"}

_PIN_BODY = {"type": "object", "properties": {
    "cpulist": {"type": ["string", "null"], "description": "host CPUs, e.g. '0-1'"},
    "live": {"type": "boolean"}, "config": {"type": "boolean"}}}

#: statistics and host tuning (api/stats_routes.py; see docs/stats.md)
_STATS_OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("get", "/v1/domstats", "virsh domstats: live stats of domains (?domain=NAME repeatable, "
     "?groups=state,cpu-total,balloon,vcpu,interface,block, ?active=1)", None),
    ("get", "/metrics", "Prometheus text exposition 0.0.4 of domain stats and host capacity",
     None),
    ("get", "/v1/host/capacity", "Allocated vCPUs/memory of running and defined domains vs "
     "host capacity and the overcommit limits", None),
    ("get", "/v1/host/ksm", "KSM state and counters (pages shared, saved MiB)", None),
    ("put", "/v1/host/ksm", "Switch KSM on or off (needs a root daemon)",
     {"type": "object", "required": ["action"], "properties": {"action": {"enum": ["on",
                                                                                  "off"]}}}),
    ("get", "/v1/host/numa", "Host NUMA nodes and huge pages", None),
    ("get", "/v1/nodedevs", "Host PCI devices with driver, IOMMU group, SR-IOV (?cap=pci)",
     None),
    ("get", "/v1/domains/{ref}/vcpus", "vcpuinfo: vCPU threads, host CPU, time, affinity",
     None),
    ("get", "/v1/domains/{ref}/vcpupin", "The vCPU affinity table", None),
    ("put", "/v1/domains/{ref}/vcpupin", "Pin a vCPU (vcpu + cpulist; live and/or config)",
     {"allOf": [_PIN_BODY, {"type": "object", "properties": {"vcpu": {"type": "integer"}}}]}),
    ("get", "/v1/domains/{ref}/emulatorpin", "The emulator threads' affinity", None),
    ("put", "/v1/domains/{ref}/emulatorpin", "Pin QEMU's non-vCPU threads", _PIN_BODY),
    *[("post", f"/v1/domains/{{ref}}/devices/{action}", f"virsh {action}-device: one libvirt "
       "device element (<disk>, <interface>, <memory model='dimm'>, <hostdev type='pci'>)",
       {"type": "object", "required": ["xml"], "properties": {
           "xml": {"type": "string"}, "live": {"type": "boolean"},
           "config": {"type": "boolean"}}}) for action in ("attach", "detach")],
]

#: (method, path, summary, request body schema or None)
OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("get", "/v1/openapi.json", "This document", None),
    ("get", "/v1/version", "The daemon's version (a cheap liveness check)", None),
    ("get", "/v1/audit", "The audit log of mutating calls, oldest first (?since=EPOCH "
     "seconds, ?limit=N last records; see docs/security.md)", None),
    ("get", "/v1/host", "Host facts: CPUs, memory, accelerator, QEMU version", None),
    ("get", "/v1/host/check", "Host check lines (PASS/WARN/FAIL), accelerator verdict last", None),
    ("get", "/v1/host/repairs", "What this daemon repaired at start-up after a crash "
     "(half-done operations rolled back or forward, stale temps, ended QEMUs, networks)",
     None),
    ("get", "/v1/domains", "List domains (?all=0 for active only)", None),
    ("post", "/v1/domains", "Define a domain (or update the one with that name/uuid); from "
     "libvirt XML the answer lists in 'warnings' what force dropped",
     {"$ref": "#/components/schemas/DefineBody"}),
    ("post", "/v1/domains/restore", "Restore a domain from a save file",
     {"type": "object", "properties": {"path": {"type": "string"},
                                       "paused": {"type": "boolean"}}, "required": ["path"]}),
    ("get", "/v1/domains/{ref}", "Domain details", None),
    ("put", "/v1/domains/{ref}", "Replace a domain's spec (needs the version read)",
     {"allOf": [{"$ref": "#/components/schemas/SpecBody"},
                {"type": "object", "properties": {"version": {"type": "integer"}},
                 "required": ["version"]}]}),
    ("delete", "/v1/domains/{ref}", "Undefine a stopped domain (?nvram=1 removes its NVRAM; "
     "?snapshots_metadata=1 forgets its snapshots, else a domain with snapshots is refused; "
     "?remove_all_storage=1 also deletes its writable disks that are pool volumes no other "
     "domain uses)",
     None),
    ("get", "/v1/domains/{ref}/spec", "The spec as YAML with its version", None),
    ("get", "/v1/domains/{ref}/xml", "The domain as libvirt domain XML (application/xml)", None),
    ("put", "/v1/domains/{ref}/autostart", "Enable or disable autostart",
     {"type": "object", "properties": {"enabled": {"type": "boolean"}}}),
    ("post", "/v1/domains/{ref}/start", "Start (optionally paused)",
     {"type": "object", "properties": {"paused": {"type": "boolean"}}}),
    ("post", "/v1/domains/{ref}/shutdown", "ACPI shutdown; wait=true waits up to timeout",
     {"$ref": "#/components/schemas/ShutdownBody"}),
    ("post", "/v1/domains/{ref}/reboot", "ACPI reboot",
     {"$ref": "#/components/schemas/ShutdownBody"}),
    ("post", "/v1/domains/{ref}/destroy", "Stop at once", None),
    ("post", "/v1/domains/{ref}/suspend", "Pause the vCPUs", None),
    ("post", "/v1/domains/{ref}/resume", "Resume the vCPUs", None),
    ("post", "/v1/domains/{ref}/reset", "Hard reset (the reset button)", None),
    ("post", "/v1/domains/{ref}/save", "Save memory and device state to a file and stop",
     {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    ("get", "/v1/domains/{ref}/vnc", "The VNC display of a running domain", None),
    ("get", "/v1/domains/{ref}/console/log", "The serial console log (?port=N&tail=BYTES)", None),
    ("get", "/v1/domains/{ref}/console", "WebSocket: the serial console (binary frames)", None),
    ("get", "/v1/domains/{ref}/vnc/websocket",
     "WebSocket (protocol 'binary'): the VNC display, proxied (what noVNC connects to)", None),
    ("post", "/web/login", "Web console: log in with a local account or an API token; sets "
     "the session cookie, answers the CSRF token", {"type": "object", "properties": {
         "username": {"type": "string"}, "password": {"type": "string"},
         "token": {"type": "string"}}}),
    ("post", "/web/logout", "Web console: end this browser's session", None),
    ("get", "/web/session", "Web console: this browser's user and CSRF token", None),
    ("get", "/v1/events", "WebSocket: the event stream (?since=ID replays the journal)", None),
    ("get", "/v1/domains/{ref}/interfaces",
     "NICs: type, source, model, MAC, tap, link and DHCP-leased addresses", None),
    ("post", "/v1/domains/{ref}/interfaces/{nic}/link", "Set a NIC's link up or down (by "
     "MAC or tap name)", {"type": "object", "properties": {"state": {"enum": ["up", "down"]}}}),
    ("get", "/v1/domains/{ref}/snapshots", "List a domain's snapshots, oldest first", None),
    ("post", "/v1/domains/{ref}/snapshots", "Take a snapshot (snapshot-create-as; NDJSON "
     "progress with Accept: application/x-ndjson)",
     {"type": "object", "properties": {
         "name": {"type": "string"}, "description": {"type": "string"},
         "kind": {"enum": ["internal", "external"]}, "disk_only": {"type": "boolean"},
         "memspec": {"type": "string", "description": "external: the memory file"},
         "quiesce": {"type": "boolean"}}}),
    ("get", "/v1/domains/{ref}/snapshots/current", "The current snapshot", None),
    ("get", "/v1/domains/{ref}/snapshots/{name}", "One snapshot: kind, state, disks, parent",
     None),
    ("delete", "/v1/domains/{ref}/snapshots/{name}", "Delete a snapshot, merging its images "
     "(?children=1 also its descendants, ?metadata=1 only the record; NDJSON progress)", None),
    ("post", "/v1/domains/{ref}/snapshots/{name}/revert", "Revert to a snapshot, internal or "
     "external (start: running/paused overrides its state; NDJSON progress)",
     {"type": "object", "properties": {"start": {"enum": ["running", "paused"]}}}),
    ("get", "/v1/networks", "List virtual networks (?all=0 for active only)", None),
    ("post", "/v1/networks", "Define a network: {\"spec\"}, {\"yaml\"}, or libvirt XML "
     "{\"xml\", \"force\"} (the answer lists in 'warnings' what force dropped)",
     {"$ref": "#/components/schemas/Network"}),
    ("get", "/v1/networks/{net}", "Network details and health (bridge, dnsmasq, rules)", None),
    ("get", "/v1/networks/{net}/xml", "The network as libvirt network XML (application/xml)",
     None),
    ("delete", "/v1/networks/{net}", "Undefine an inactive network", None),
    ("post", "/v1/networks/{net}/start", "Start: bridge, dnsmasq, nftables rules", None),
    ("post", "/v1/networks/{net}/destroy", "Stop a network", None),
    ("put", "/v1/networks/{net}/autostart", "Enable or disable autostart",
     {"type": "object", "properties": {"enabled": {"type": "boolean"}}}),
    ("get", "/v1/networks/{net}/leases", "DHCP leases", None),
    ("post", "/v1/networks/{net}/update", "Add or delete a DHCP reservation or DNS host, live",
     {"type": "object", "required": ["action", "section", "entry"], "properties": {
         "action": {"enum": ["add", "delete"]}, "section": {"enum": ["dhcp-host", "dns-host"]},
         "entry": {"type": "object"}}}),
    ("post", "/v1/networks/{net}/forwards", "Add or remove a port forward, live",
     {"type": "object", "required": ["action", "forward"], "properties": {
         "action": {"enum": ["add", "remove"]}, "forward": {"type": "object"}}}),
    ("get", "/v1/pools", "List storage pools with capacity (?all=0 for active only)", None),
    ("post", "/v1/pools", "Define a pool: {\"spec\"}, {\"yaml\"}, or libvirt XML "
     "{\"xml\", \"force\"}", {"$ref": "#/components/schemas/Pool"}),
    ("get", "/v1/pools/{pool}", "Pool details: state, capacity, allocation, available", None),
    ("get", "/v1/pools/{pool}/xml", "The pool as libvirt storage pool XML (application/xml)",
     None),
    ("delete", "/v1/pools/{pool}", "Undefine an inactive pool", None),
    ("post", "/v1/pools/{pool}/build", "Create the storage (mkdir; pvcreate+vgcreate)", None),
    ("post", "/v1/pools/{pool}/start", "Activate a pool", None),
    ("post", "/v1/pools/{pool}/destroy", "Deactivate a pool (its storage stays)", None),
    ("post", "/v1/pools/{pool}/delete", "Remove an empty, inactive pool's storage", None),
    ("post", "/v1/pools/{pool}/refresh", "Rescan a pool", None),
    ("put", "/v1/pools/{pool}/autostart", "Enable or disable pool autostart",
     {"type": "object", "properties": {"enabled": {"type": "boolean"}}}),
    ("get", "/v1/pools/{pool}/volumes", "List a pool's volumes", None),
    ("post", "/v1/pools/{pool}/volumes", "Create a volume",
     {"type": "object", "required": ["name", "capacity"], "properties": {
         "name": {"type": "string"}, "capacity": {"type": ["string", "integer"]},
         "format": {"enum": ["qcow2", "raw"]}, "backing": {"type": "string"},
         "prealloc": {"type": "boolean"}}}),
    ("get", "/v1/pools/{pool}/volumes/{volume}", "Volume details and the domains using it",
     None),
    ("delete", "/v1/pools/{pool}/volumes/{volume}", "Delete a volume (?force=1)", None),
    ("post", "/v1/pools/{pool}/volumes/{volume}/resize", "Resize a volume",
     {"type": "object", "required": ["capacity"], "properties": {
         "capacity": {"type": ["string", "integer"]}, "shrink": {"type": "boolean"}}}),
    ("post", "/v1/pools/{pool}/volumes/{volume}/wipe", "Overwrite a volume's data", None),
    ("post", "/v1/pools/{pool}/volumes/{volume}/clone",
     "Full or linked clone (NDJSON progress with Accept: application/x-ndjson)",
     {"type": "object", "required": ["name"], "properties": {
         "name": {"type": "string"}, "linked": {"type": "boolean"},
         "format": {"enum": ["qcow2", "raw"]}}}),
    ("post", "/v1/pools/{pool}/import",
     "Convert a host image (vmdk, vdi, vhdx, qcow2, raw) into a new volume (NDJSON progress)",
     {"type": "object", "required": ["name", "source"], "properties": {
         "name": {"type": "string"}, "source": {"type": "string"},
         "format": {"enum": ["qcow2", "raw"]}}}),
    ("put", "/v1/pools/{pool}/volumes/{volume}/upload", "Stream bytes into a volume", None),
    ("get", "/v1/pools/{pool}/volumes/{volume}/download", "Stream a volume's bytes", None),
    ("post", "/v1/pools/{pool}/volumes/{volume}/upload-fd",
     "Local clients: the daemon copies from the caller's open descriptor fd (in-kernel; "
     "NDJSON progress; 501 'unsupported' means stream instead)",
     {"type": "object", "required": ["fd"], "properties": {"fd": {"type": "integer"}}}),
    ("post", "/v1/pools/{pool}/volumes/{volume}/download-fd",
     "Local clients: the daemon copies the volume into the caller's open descriptor fd",
     {"type": "object", "required": ["fd"], "properties": {"fd": {"type": "integer"}}}),
    ("post", "/v1/domains/create",
     "virsh create: define a transient domain and start it ({spec} / {yaml} / {xml, force})",
     None),
    ("post", "/v1/install",
     "Create a VM and run its install (virtkit install's request; see docs/install.md); "
     "or {\"argv\": [...]}: virt-install's options, parsed by the daemon",
     {"type": "object", "required": ["domain", "method"], "properties": {
         "domain": {"$ref": "#/components/schemas/Domain"}, "method": {"enum": [
             "import", "cdrom", "location", "pxe", "kernel", "livecd", "none"]},
         "new_disks": {"type": "array"}, "install_media": {"type": ["string", "null"]},
         "location": {"type": ["string", "null"]}, "extra_args": {"type": ["string", "null"]},
         "initrd_inject": {"type": "array", "items": {"type": "string"}},
         "os_variant": {"type": ["string", "null"]}, "cloud_init": {"type": ["object", "null"]},
         "noreboot": {"type": "boolean"}, "dry_run": {"type": "boolean"},
         "print_xml": {"type": "boolean"}}}),
    ("get", "/v1/osinfo", "OS variants of the osinfo database (?filter=TEXT)", None),
    *[("get", "/v1/domains/{ref}/guest/" + path, summary, None) for path, summary in (
        ("ping", "Guest agent: ping (with the round trip in ms)"),
        ("info", "Guest agent: agent version, OS, host name, users, time zone, file systems"),
        ("interfaces", "Guest agent: the guest's interfaces and addresses"),
        ("fsfreeze", "Guest agent: file system freeze status (thawed/frozen)"),
        ("file", "Guest agent: a guest file's bytes (?path=/abs/path)"),
        ("vcpus", "Guest agent: the guest's logical CPUs and which are online"),
        ("time", "Guest agent: the guest clock and its offset from the host's"))],
    ("post", "/v1/domains/{ref}/guest/command", "Guest agent: one raw command "
     "(virsh qemu-agent-command)", {"type": "object", "required": ["execute"], "properties": {
         "execute": {"type": "string"}, "arguments": {"type": "object"},
         "timeout": {"type": "number"}}}),
    ("post", "/v1/domains/{ref}/guest/fsfreeze", "Guest agent: freeze file systems",
     {"type": "object", "properties": {"mountpoints": {"type": "array",
                                                       "items": {"type": "string"}}}}),
    ("post", "/v1/domains/{ref}/guest/fsthaw", "Guest agent: thaw file systems", None),
    ("post", "/v1/domains/{ref}/guest/fstrim", "Guest agent: discard unused blocks",
     {"type": "object", "properties": {"minimum": {"type": "integer"}}}),
    ("post", "/v1/domains/{ref}/guest/exec", "Guest agent: run a program, return exit code "
     "and output", {"type": "object", "required": ["path"], "properties": {
         "path": {"type": "string"}, "args": {"type": "array", "items": {"type": "string"}},
         "env": {"type": "array", "items": {"type": "string"}}, "input": {"type": "string"},
         "timeout": {"type": "number"}}}),
    ("put", "/v1/domains/{ref}/guest/file", "Guest agent: write a guest file "
     "(?path=...&append=1; body: the bytes)", None),
    ("post", "/v1/domains/{ref}/guest/user-password", "Guest agent: set a user's password",
     {"type": "object", "required": ["user", "password"], "properties": {
         "user": {"type": "string"}, "password": {"type": "string"},
         "crypted": {"type": "boolean"}}}),
    ("put", "/v1/domains/{ref}/guest/vcpus", "Guest agent: online COUNT vCPUs in the guest",
     {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}}),
    ("get", "/v1/domains/{ref}/disks", "domblklist: the running disks, or the "
     "definition's (?inactive=1)", None),
    ("post", "/v1/domains/{ref}/disks", "attach-disk ({disk, live, config})",
     {"type": "object", "required": ["disk"], "properties": {
         "disk": {"$ref": "#/components/schemas/Disk"}, "live": {"type": "boolean"},
         "config": {"type": "boolean"}}}),
    ("post", "/v1/domains/{ref}/disks/detach", "detach-disk by target or source path",
     {"$ref": "#/components/schemas/DetachBody"}),
    ("post", "/v1/domains/{ref}/media", "change-media: insert (path) or eject (path null)",
     {"type": "object", "required": ["target"], "properties": {
         "target": {"type": "string"}, "path": {"type": ["string", "null"]},
         "force": {"type": "boolean"}, "live": {"type": "boolean"},
         "config": {"type": "boolean"}}}),
    ("post", "/v1/domains/{ref}/interfaces", "attach-interface ({interface, live, config})",
     {"type": "object", "required": ["interface"], "properties": {
         "interface": {"$ref": "#/components/schemas/Nic"}, "live": {"type": "boolean"},
         "config": {"type": "boolean"}}}),
    ("post", "/v1/domains/{ref}/interfaces/detach", "detach-interface by MAC",
     {"type": "object", "required": ["mac"], "properties": {
         "mac": {"type": "string"}, "live": {"type": "boolean"},
         "config": {"type": "boolean"}}}),
    ("put", "/v1/domains/{ref}/vcpus", "setvcpus (maximum=true: the ceiling, config only)",
     {"type": "object", "required": ["count"], "properties": {
         "count": {"type": "integer"}, "maximum": {"type": "boolean"},
         "live": {"type": "boolean"}, "config": {"type": "boolean"}}}),
    ("put", "/v1/domains/{ref}/memory", "setmem (balloon live) / setmaxmem (maximum=true)",
     {"$ref": "#/components/schemas/MemoryBody"}),
    ("post", "/v1/domains/{ref}/memory", "Memory hot-add: a DIMM of size_mib",
     {"$ref": "#/components/schemas/MemoryBody"}),
    ("post", "/v1/domains/{ref}/migrate", "Live-migrate to another daemon (this daemon "
     "drives it; see docs/migration.md)", None),
    ("get", "/v1/domains/{ref}/job", "domjobinfo: the outgoing migration now running "
     "(type none when there is none)", None),
    ("delete", "/v1/domains/{ref}/job", "domjobabort: cancel the outgoing migration (the "
     "domain keeps running here)", None),
    ("post", "/v1/domains/{ref}/job/postcopy", "migrate-postcopy: switch the outgoing "
     "migration (started with postcopy) to post-copy", None),
    ("post", "/v1/migrations/incoming", "Destination: validate a migrating domain, start "
     "its QEMU waiting for the stream; answers {id, uri}", None),
    ("post", "/v1/migrations/offline", "Destination: check a definition sent by migrate "
     "--offline; with copy_storage create its disks' images and serve them by NBD "
     "(answers {id, nbd}); defined by finish", None),
    ("post", "/v1/migrations/{id}/finish", "Destination: run the fully received domain, "
     "or keep it paused (offline: define it)",
     {"type": "object", "properties": {"persistent": {"type": "boolean"},
                                       "paused": {"type": "boolean"}}}),
    ("get", "/v1/migrations/{id}", "Destination: the incoming migration (the source's "
     "keepalive: {id, domain, incoming, state, reason}; 404 when it is gone)", None),
    ("delete", "/v1/migrations/{id}", "Destination: remove an unfinished incoming "
     "migration (idempotent)", None),
    ("post", "/v1/domains/{ref}/clone", "virt-clone: a new domain with copied (or linked) "
     "disks, new UUID and MACs (NDJSON progress with Accept: application/x-ndjson)",
     {"type": "object", "required": ["name"], "properties": {
         "name": {"type": "string"}, "files": {"type": "array", "items": {"type": "string"}},
         "auto": {"type": "boolean"}, "linked": {"type": "boolean"},
         "force": {"type": "boolean"},
         "macs": {"type": "array", "items": {"type": "string"}}}}),
    ("put", "/v1/domains/{ref}/guest/time", "Guest agent: set the guest clock (now=true: "
     "the host's; time=SECONDS; neither: from its RTC)",
     {"type": "object", "properties": {"now": {"type": "boolean"}, "time": {"type": "number"}}}),
    *_STATS_OPERATIONS,
    *VIRSH_OPERATIONS,
    *LIMITS_OPERATIONS,
    ("get", "/v1/cluster", "cluster status: etcd members, health, quorum, leader "
     "({configured: false} outside a cluster)", None),
    ("get", "/v1/cluster/hosts", "cluster list: every member host with state, role, "
     "capacity, VMs and last heartbeat", None),
    ("post", "/v1/cluster/init", "cluster init: a new cluster with this host's etcd member "
     "(or on the administrator's etcd_endpoints)", None),
    ("post", "/v1/cluster/join", "cluster join: join through a member's daemon (via)", None),
    ("post", "/v1/cluster/admit", "Member: admit a joining host (sign its CSR, add its etcd "
     "member); called by the joiner's daemon", None),
    ("put", "/v1/domains/{ref}/ha", "ha enable/disable: fence this VM with the host's "
     "lease (cluster only)", None),
    ("post", "/v1/cluster/leave", "cluster leave: this host leaves (its etcd member is "
     "removed)", None),
    ("post", "/v1/cluster/hosts/{name}/evacuate", "cluster evacuate: the host in "
     "maintenance, its running VMs live-migrated to the hosts placement picks (policy "
     "for local disks: migrate=refuse, stop, copy-storage; dry_run: the plan)", None),
    ("post", "/v1/cluster/hosts/{name}/restore", "cluster restore: the VMs an evacuation "
     "moved back, maintenance off", None),
    ("get", "/v1/tokens", "API tokens (never their secrets); unix socket only", None),
    ("post", "/v1/tokens", "Create an API token; the answer holds the secret, shown once; "
     "unix socket only", {"type": "object", "properties": {
         "name": {"type": "string"}, "expires_days": {"type": "number", "minimum": 0}}}),
    ("delete", "/v1/tokens/{name}", "Revoke an API token; unix socket only", None),
    ("get", "/v1/tls", "The TLS listener's certificate: paths and fingerprint; unix socket only",
     None),
    ("post", "/v1/tls/setup", "Make a CA and a server certificate; unix socket only",
     {"type": "object", "properties": {"hostnames": {"type": "array",
                                                     "items": {"type": "string"}},
                                       "force": {"type": "boolean"}}}),
]


#: path parameters that take one of a few words
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "kind": {"enum": ["schedinfo", "memtune", "blkiotune"]},
    "disk": {"type": "string", "description": "the disk's target (vda) or source path"}}


def _operation(method: str, path: str, summary: str, body: dict[str, Any] | None
               ) -> dict[str, Any]:
    # the XML reads answer XML; a PUT of XML (managedsave-define) answers JSON
    media = "application/xml" if path.endswith("/xml") and method == "get" \
        else "application/json"
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": method + "_" + "_".join(
            part.strip("{}") for part in path.strip("/").split("/")).replace(".", "_"),
        "responses": {
            "200": {"description": "success", "content": {media: {}}},
            "default": {"description": "error",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    }
    parameters = [_REF] if "{ref}" in path else []
    for name in ("pool", "volume", "net", "nic", "name", "disk", "kind"):
        if "{" + name + "}" in path:
            parameters.append({"name": name, "in": "path", "required": True,
                               "schema": _PATH_SCHEMAS.get(name, {"type": "string"})})
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": body}}}
    return operation


def _request_models() -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], Any]]:
    """(method, path) -> the body model and the query model the route parses with:
    the document's request schemas come from the models the daemon validates with."""
    from virtkit.api import (
        auth,
        clone_routes,
        cluster_routes,
        device_routes,
        guest_routes,
        install_routes,
        migration_routes,
        network_routes,
        snapshot_routes,
        stats_routes,
        storage_routes,
        webui,
    )
    from virtkit.api import domain_requests as d
    from virtkit.api import requests as r

    dom, pool, vol, net, guest = ("/v1/domains/{ref}", "/v1/pools/{pool}",
                                  "/v1/pools/{pool}/volumes/{volume}", "/v1/networks/{net}",
                                  "/v1/domains/{ref}/guest")
    dev, snap = device_routes, snapshot_routes
    bodies: dict[tuple[str, str], Any] = {
        ("post", "/v1/domains"): d.DomainDefineBody, ("post", "/v1/domains/create"):
        r.DefineBody, ("post", "/v1/domains/restore"): d.RestoreBody,
        ("put", dom): d.UpdateBody, ("put", dom + "/autostart"): r.AutostartBody,
        ("post", dom + "/start"): d.StartBody, ("post", dom + "/shutdown"): d.ShutdownBody,
        ("post", dom + "/reboot"): d.ShutdownBody, ("post", dom + "/save"): d.PathBody,
        **{("post", f"{dom}/{action}"): r.EmptyBody
           for action in ("destroy", "suspend", "resume", "reset")},
        ("post", dom + "/interfaces/{nic}/link"): d.LinkBody,
        ("post", dom + "/snapshots"): snap.CreateBody,
        ("post", dom + "/snapshots/{name}/revert"): snap.RevertBody,
        ("post", dom + "/clone"): clone_routes.CloneBody,
        ("post", "/v1/migrations/{id}/finish"): migration_routes.FinishBody,
        ("post", dom + "/migrate"): migration_routes.MigrateBody,
        ("post", "/v1/migrations/incoming"): r.IncomingBody,
        ("post", "/v1/migrations/offline"): r.OfflineIncomingBody,
        ("post", dom + "/disks"): dev.AttachDiskBody,
        ("post", dom + "/disks/detach"): dev.DetachDiskBody,
        ("post", dom + "/media"): dev.MediaBody,
        ("post", dom + "/interfaces"): dev.AttachInterfaceBody,
        ("post", dom + "/interfaces/detach"): dev.DetachInterfaceBody,
        ("put", dom + "/vcpus"): dev.VcpusBody, ("put", dom + "/memory"): dev.MemoryBody,
        ("post", dom + "/memory"): dev.AttachMemoryBody,
        ("post", dom + "/devices/attach"): dev.DeviceXmlBody,
        ("post", dom + "/devices/detach"): dev.DeviceXmlBody,
        ("put", pool + "/autostart"): r.AutostartBody,
        ("post", pool + "/volumes"): storage_routes.CreateVolumeBody,
        ("post", vol + "/resize"): storage_routes.ResizeBody,
        ("post", vol + "/clone"): storage_routes.CloneVolumeBody,
        ("post", pool + "/import"): storage_routes.ImportBody,
        ("post", vol + "/upload-fd"): storage_routes.FdBody,
        ("post", vol + "/download-fd"): storage_routes.FdBody,
        ("put", net + "/autostart"): r.AutostartBody,
        ("post", net + "/update"): network_routes.UpdateBody,
        ("post", net + "/forwards"): network_routes.ForwardBody,
        ("post", guest + "/command"): guest_routes.CommandBody,
        ("post", guest + "/fsfreeze"): guest_routes.MountpointsBody,
        ("post", guest + "/fstrim"): guest_routes.FstrimBody,
        ("post", guest + "/exec"): guest_routes.ExecBody,
        ("post", guest + "/user-password"): guest_routes.PasswordBody,
        ("put", guest + "/vcpus"): guest_routes.CountBody,
        ("put", guest + "/time"): guest_routes.TimeBody,
        ("put", dom + "/vcpupin"): stats_routes.VcpupinBody,
        ("put", dom + "/emulatorpin"): stats_routes.PinBody,
        ("put", "/v1/host/ksm"): stats_routes.KsmBody,
        ("post", "/v1/tokens"): auth.TokenBody, ("post", "/v1/tls/setup"): auth.TlsSetupBody,
        ("post", "/web/login"): webui.LoginBody,
        ("post", "/v1/cluster/init"): cluster_routes.InitBody,
        ("put", "/v1/domains/{ref}/ha"): r.AutostartBody,
        ("post", "/v1/cluster/join"): cluster_routes.JoinBody,
        ("post", "/v1/cluster/admit"): cluster_routes.AdmitBody,
        **LIMITS_BODIES,
    }
    queries: dict[tuple[str, str], Any] = {
        ("get", "/v1/audit"): d.AuditQuery, ("get", "/v1/domains"): r.DomainListQuery,
        ("get", "/v1/pools"): r.ListQuery, ("get", "/v1/networks"): r.ListQuery,
        ("get", dom): r.XmlQuery, ("get", dom + "/spec"): r.XmlQuery,
        ("get", dom + "/xml"): r.XmlQuery, ("delete", dom): d.UndefineQuery,
        ("get", dom + "/console/log"): d.ConsoleLogQuery,
        ("get", dom + "/console"): d.ConsoleQuery, ("get", "/v1/events"): d.EventsQuery,
        ("delete", vol): r.ForceQuery, ("delete", dom + "/snapshots/{name}"): snap.DeleteQuery,
        ("get", dom + "/disks"): dev.DisksQuery, ("get", "/v1/domstats"):
        stats_routes.DomstatsQuery, ("get", "/v1/nodedevs"): stats_routes.NodedevQuery,
        ("get", "/v1/osinfo"): install_routes.OsinfoQuery,
        ("get", guest + "/file"): guest_routes.FileQuery,
        ("put", guest + "/file"): guest_routes.FileQuery,
        **LIMITS_QUERIES,
    }
    return bodies, queries


#: the spec objects the define routes carry, by path
_SPEC_SCHEMAS = {"/v1/domains": "Domain", "/v1/domains/create": "Domain",
                 "/v1/domains/{ref}": "Domain", "/v1/pools": "Pool", "/v1/networks": "Network"}


def _model_body(method: str, path: str, model: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(
        ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    schema.pop("title", None)
    spec = _SPEC_SCHEMAS.get(path)
    if spec is not None and "spec" in schema.get("properties", {}):
        schema["properties"]["spec"] = {"$ref": f"#/components/schemas/{spec}"}
    return schema


def _query_parameters(model: Any) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required,
             "schema": {key: value for key, value in field.items() if key != "title"}}
            for name, field in schema.get("properties", {}).items()]


@functools.cache
def openapi_document() -> dict[str, Any]:
    from virtkit.api.openapi_results import result_schemas

    paths: dict[str, dict[str, Any]] = {}
    bodies, queries = _request_models()
    answers, defs = result_schemas()
    for method, path, summary, body in OPERATIONS:
        model = bodies.get((method, path))
        if model is not None:
            body = _model_body(method, path, model, defs)
        operation = _operation(method, path, summary, body)
        answer = answers.get((method, path))
        if answer is not None:
            operation["responses"]["200"]["content"]["application/json"]["schema"] = answer
        query = queries.get((method, path))
        if query is not None:
            operation["parameters"] = [*operation.get("parameters", []),
                                       *_query_parameters(query)]
        paths.setdefault(path, {})[method] = operation
    domain_schema = Domain.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = domain_schema.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "virtkit API", "version": __version__,
                 "description": "The one service API of virtkitd; the CLI and web UI use it. "
                 "On the unix socket no credentials are needed; on the TLS listener every "
                 "request needs 'Authorization: Bearer <API token>'."},
        "paths": paths,
        "security": [{}, {"token": []}],
        "components": {"securitySchemes": {"token": {
            "type": "http", "scheme": "bearer",
            "description": "an API token from 'virtkit token create' (TLS listener only)"}},
            "schemas": {
            **defs,
            **definitions,
            "Domain": domain_schema,
            "Pool": Pool.model_json_schema(),
            "Network": Network.model_json_schema(),
            "SpecBody": {"type": "object", "properties": {
                "spec": {"$ref": "#/components/schemas/Domain"}, "yaml": {"type": "string"}}},
            "DefineBody": {"type": "object", "properties": {
                "spec": {"$ref": "#/components/schemas/Domain"}, "yaml": {"type": "string"},
                "xml": {"type": "string", "description": "libvirt domain XML"},
                "force": {"type": "boolean",
                          "description": "drop what virtkit cannot honour, with warnings"},
                "new_disks": {"type": "array", "description": "volumes to create before "
                              "the (new) domain is defined, each attached as a disk; all or "
                              "nothing, also across a daemon crash",
                              "items": {"type": "object", "required": ["volume", "capacity"],
                                        "properties": {
                                            "pool": {"type": "string"},
                                            "volume": {"type": "string"},
                                            "capacity": {"type": ["integer", "string"]},
                                            "format": {"enum": ["qcow2", "raw"]}}}}}},
            "ShutdownBody": {"type": "object", "properties": {
                "timeout": {"type": "number", "minimum": 0}, "wait": {"type": "boolean"},
                "mode": {"type": "string", "description": "acpi, agent, or agent,acpi"}}},
            "DetachBody": {"type": "object", "required": ["target"], "properties": {
                "target": {"type": "string"}, "live": {"type": "boolean"},
                "config": {"type": "boolean"}}},
            "MemoryBody": {"type": "object", "required": ["size_mib"], "properties": {
                "size_mib": {"type": "integer"}, "maximum": {"type": "boolean"},
                "live": {"type": "boolean"}, "config": {"type": "boolean"}}},
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string"}, "message": {"type": "string"},
                "fix": {"type": "string"}, "details": {"type": "object"}}},
        }},
    }
