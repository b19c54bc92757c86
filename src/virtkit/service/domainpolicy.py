"""The choices behind the domain requests that depend on optional services.

A daemon may run without a cluster or without a provisioning service (unit-test
containers, a daemon without pools).  What such an absence means for a request is
decided here, once, not in the API's handlers: a cluster-wide list outside a
cluster is this host's list, dominfo names the host only in a cluster, and
``new_disks`` or ``--remove-all-storage`` without a provisioning service are
refused (501), and ``new_disks`` beside libvirt XML is refused (400): neither is
ever silently ignored.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeAlias

from virtkit.errors import InvalidSpec, Unsupported
from virtkit.service.domains import DomainService
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.domains import (
    DomainInfo,
    DomainSummary,
    Undefined,
    UndefinedWithStorage,
)

if TYPE_CHECKING:  # the daemon builds them; this module only calls them
    from virtkit.service.cluster import ClusterService
    from virtkit.service.provision import ProvisionService

#: ``list --cluster``'s rows: this host's summaries with ``host`` added, and the other
#: hosts' published VMs (name, uuid, state, pid, host); service/cluster.py builds them
ClusterRow: TypeAlias = dict[str, Any]


def require_provision(provision: ProvisionService | None, asked: str) -> ProvisionService:
    """The provisioning service, or a refusal naming what was asked of it."""
    if provision is None:
        raise Unsupported(f"this daemon does not provision storage ({asked})",
                          fix=f"leave out {asked}")
    return provision


async def list_domains(domains: DomainService, cluster: ClusterService | None, *,
                       include_inactive: bool, cluster_wide: bool
                       ) -> list[DomainSummary] | list[ClusterRow]:
    """virsh list [--all]; ``cluster_wide`` (list --cluster) adds the other hosts' VMs
    in a cluster, and is this host's list outside one."""
    rows = domains.list_domains(include_inactive=include_inactive)
    if not cluster_wide or cluster is None:
        return rows
    return await cluster.with_other_hosts([row.wire() for row in rows],
                                          include_inactive=include_inactive)


def info(domains: DomainService, cluster: ClusterService | None, ref: str, *,
         secrets: bool = False) -> DomainInfo:
    """dominfo; in a cluster it names this host (``host``)."""
    answer = domains.info(ref, secrets=secrets)
    if cluster is not None and cluster.host_name is not None:
        answer.host = cluster.host_name
    return answer


async def define(domains: DomainService, provision: ProvisionService | None, *,
                 spec: SpecDocument | str | None = None, xml: str | None = None,
                 force: bool = False, new_disks: list[Any] | None = None) -> DomainInfo:
    """define from libvirt XML (the answer has ``warnings``), or from a spec, with
    ``new_disks`` made first as pool volumes by the provisioning service."""
    if xml is not None:
        if new_disks is not None:
            raise InvalidSpec("new_disks is not taken with libvirt XML", field="new_disks",
                              fix="send the domain as a spec (or YAML) with new_disks, or "
                                  "create the volumes first (virtkit vol-create-as)")
        return await asyncio.to_thread(domains.define_xml, xml, force=force)
    if spec is None:
        raise InvalidSpec("send the domain as {\"spec\": {...}}, {\"yaml\": \"...\"} "
                          "or {\"xml\": \"...\"}", field="spec")
    if new_disks is not None:
        return await require_provision(provision, "new_disks").define_with_new_disks(
            spec, new_disks)
    return await asyncio.to_thread(domains.define, spec)


async def undefine(domains: DomainService, provision: ProvisionService | None, ref: str, *,
                   nvram: bool = False, snapshots_metadata: bool = False,
                   managed_save: bool = False, remove_all_storage: bool = False
                   ) -> Undefined | UndefinedWithStorage:
    """undefine; ``remove_all_storage`` through the provisioning service (its volumes
    go too), refused without one."""
    if remove_all_storage:
        return await require_provision(provision, "remove_all_storage").undefine_with_storage(
            ref, nvram=nvram, snapshots_metadata=snapshots_metadata,
            managed_save=managed_save)
    return await domains.undefine(ref, nvram=nvram, snapshots_metadata=snapshots_metadata,
                                  managed_save=managed_save)
