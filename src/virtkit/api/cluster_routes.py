"""REST routes of the cluster (docs/cluster.md): status, hosts, init, join, leave, and
``admit``, which a joining host's daemon calls on a member's daemon."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field

from virtkit.api.common import json_response
from virtkit.api.requests import AutostartBody, Body, EmptyBody, body_of
from virtkit.errors import StateError
from virtkit.service import evacuate
from virtkit.service.cluster import ClusterService
from virtkit.service.clustervms import ClusterVms

routes = web.RouteTableDef()
CLUSTER = web.AppKey("cluster", ClusterService)
Port = Annotated[int, Field(ge=1, le=65535)]


class InitBody(Body):
    """cluster init: a new cluster whose first etcd member this host runs, or (with
    ``etcd_endpoints``) on an etcd the administrator runs."""

    name: str | None = None
    address: str | None = None
    cluster: str | None = None
    etcd_endpoints: list[str] | None = None
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    client_port: Port = 2379
    peer_port: Port = 2380
    #: the cluster API other hosts forward requests to (mutual TLS)
    api_port: Port = 16516


class JoinBody(Body):
    """cluster join: ``via`` names a member's daemon as migrate's destination does:
    ``{"socket": PATH}`` or ``{"url": "https://host:16515", "token": T, "ca": PEM}``."""

    via: dict[str, Any]
    address: str
    name: str | None = None
    api_port: Port = 16516


class AdmitBody(Body):
    name: str
    address: str
    csr: str


def _cluster(request: web.Request) -> ClusterService:
    return request.app[CLUSTER]


@routes.get("/v1/cluster")
async def status(request: web.Request) -> web.Response:
    return json_response(await _cluster(request).status())


@routes.get("/v1/cluster/hosts")
async def hosts(request: web.Request) -> web.Response:
    return json_response(await _cluster(request).hosts())


@routes.post("/v1/cluster/init")
async def init(request: web.Request) -> web.Response:
    body = await body_of(request, InitBody)
    tls = None
    if body.etcd_ca:
        tls = {"ca": body.etcd_ca, "cert": body.etcd_cert or "", "key": body.etcd_key or ""}
    result = await _cluster(request).init(
        name=body.name, address=body.address, cluster=body.cluster,
        endpoints=body.etcd_endpoints, tls=tls, client_port=body.client_port,
        peer_port=body.peer_port, api_port=body.api_port)
    return json_response(result, status=201)


@routes.post("/v1/cluster/join")
async def join(request: web.Request) -> web.Response:
    body = await body_of(request, JoinBody)
    result = await _cluster(request).join(via=body.via, name=body.name, address=body.address,
                                          api_port=body.api_port)
    return json_response(result, status=201)


@routes.post("/v1/cluster/admit")
async def admit(request: web.Request) -> web.Response:
    body = await body_of(request, AdmitBody)
    return json_response(await _cluster(request).admit(name=body.name, address=body.address,
                                                       csr=body.csr))


@routes.post("/v1/cluster/leave")
async def leave(request: web.Request) -> web.Response:
    return json_response(await _cluster(request).leave())


def _vms(request: web.Request) -> ClusterVms:
    vms = _cluster(request).vms
    if vms is None or not vms.active:
        raise StateError("this host is in no cluster",
                         fix="virtkit cluster init, or virtkit cluster join URI")
    return vms


class EvacuateBody(Body):
    """cluster evacuate: ``policy`` for VMs with disks only the host sees (``migrate``:
    refuse them; ``stop``; ``copy-storage``: copy their disks), ``stop_timeout`` (s)
    before a stopped guest is destroyed, ``dry_run`` (the plan only), ``only`` (these
    VMs alone)."""

    policy: Literal["migrate", "stop", "copy-storage"] = "migrate"
    stop_timeout: Annotated[float, Field(ge=0)] = evacuate.STOP_TIMEOUT
    dry_run: bool = False
    only: list[str] | None = None


@routes.post("/v1/cluster/hosts/{name}/evacuate")
async def evacuate_host(request: web.Request) -> web.Response:
    """cluster evacuate: maintenance on; the host's running VMs live-migrated away,
    copied or stopped per policy."""
    body = await body_of(request, EvacuateBody)
    return json_response(await evacuate.evacuate(
        _vms(request), request.match_info["name"], policy=body.policy,
        stop_timeout=body.stop_timeout, dry_run=body.dry_run, only=body.only))


@routes.post("/v1/cluster/hosts/{name}/restore")
async def restore_host(request: web.Request) -> web.Response:
    """cluster restore: the evacuated VMs back, maintenance off."""
    await body_of(request, EmptyBody)
    return json_response(await evacuate.restore(_vms(request), request.match_info["name"]))


@routes.put("/v1/domains/{ref}/ha")
async def set_ha(request: web.Request) -> web.Response:
    body = await body_of(request, AutostartBody)
    return json_response(_cluster(request).set_ha(request.match_info["ref"], body.enabled))
