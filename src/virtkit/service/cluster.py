"""Cluster membership (docs/cluster.md): init, join (and admitting a joiner), leave,
the host table and etcd's status.

This host's cluster settings live in ``<root>/cluster/config.json``; its certificates
in ``<root>/cluster/pki/``; its etcd member's data in ``<root>/cluster/etcd/``.  The
cluster's truth is in etcd (cluster/hosts.py names the keys).

Joining: the joiner makes a key and a CSR and asks a member's daemon (over its API:
the unix socket on the same machine, or HTTPS with an API token) to admit it.  The
member signs the CSR with the cluster CA, adds an etcd voter while the cluster has
fewer than ``MAX_VOTERS`` (else the joiner is a client-only host), records the member
key by compare-and-swap and answers with everything the joiner needs to start its
etcd member.  A voter also receives the CA key, so any voter can admit the next host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from virtkit import __version__
from virtkit.cluster.etcd import (
    Compare,
    Etcd,
    EtcdError,
    EtcdUnavailable,
    Op,
    Tls,
    endpoint_url,
)
from virtkit.cluster.fence import Fencer, HaVms
from virtkit.cluster.guard import FenceTarget, GuardLink
from virtkit.cluster.hosts import (
    CLUSTER_KEY,
    HOSTS,
    MEMBERS,
    HostAgent,
    cluster_domains,
    encode,
    host_table,
)
from virtkit.cluster.member import CLIENT_PORT, PEER_PORT, MemberConfig, MemberProcess
from virtkit.cluster.vms import need_of
from virtkit.errors import Conflict, InvalidSpec, StateError, VirtkitError
from virtkit.host.nodefacts import memory_stats
from virtkit.model.domain import Domain
from virtkit.service.clusterapi import ClusterApi
from virtkit.service.clusterpki import ClusterPki
from virtkit.service.clustervms import ClusterVms, host_facts
from virtkit.service.forward import CLUSTER_API_PORT
from virtkit.service.peer import Peer, use_cluster_tls
from virtkit.store.db import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

#: etcd voters at most; later hosts are client-only (3 tolerate one failure; 5, two)
MAX_VOTERS = 3
#: how long a new member may take to answer
MEMBER_START_TIMEOUT = 30.0
#: starts of a member that exits while it starts, before the join or init fails
MEMBER_START_ATTEMPTS = 3
#: how long an admission waits for etcd to accept one more voter
MEMBER_ADD_PATIENCE = 20.0
TRANSIENT_REFUSALS = ("unhealthy cluster", "not enough started members")
#: how often the member process is checked (and restarted when it died)
SUPERVISE_INTERVAL = 2.0
#: how often the etcd client's endpoints are synced with the member list
ENDPOINT_SYNC = 10.0
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RUNNING_STATES = ("running", "paused", "in shutdown")


async def _patiently(change: Callable[[], Awaitable[T]]) -> T:
    """A change of etcd's members; etcd refuses one while a member joined or came back
    less than 5 s ago or has not started ("unhealthy cluster", "not enough started
    members"): retried a while."""
    deadline = time.monotonic() + MEMBER_ADD_PATIENCE
    while True:
        try:
            return await change()
        except EtcdError as exc:
            transient = any(text in exc.message for text in TRANSIENT_REFUSALS)
            if not transient or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def check_host_name(name: str) -> str:
    if not _HOST_NAME.match(name):
        raise InvalidSpec(f"host name {name!r}: use lower-case letters, digits and '-' "
                          "(at most 63, as a DNS label)", field="name")
    return name


def default_host_name() -> str:
    short = socket.gethostname().split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]", "-", short).strip("-") or "host"


class ClusterService:
    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self.pki = ClusterPki(folder / "pki")
        self.member = MemberProcess(folder)
        self.config_file = folder / "config.json"
        self.etcd: Etcd | None = None
        self.agent: HostAgent | None = None
        #: fences this host's HA VMs when the lease is not renewed in time
        self.fencer: Fencer | None = None
        self.guard = GuardLink(folder / "guard")
        self.lost: dict[str, float] = {}  # host -> when our watch saw its record go
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        #: this host's VMs in etcd (service/clustervms.py; set by api/forward.install)
        self.vms: ClusterVms | None = None
        #: the cluster API other hosts forward to (service/clusterapi.py)
        self.api = ClusterApi(self)
        use_cluster_tls(self.api.client_tls)  # migrations to cluster hosts (evacuate)

    # -- configuration -------------------------------------------------------------------

    def config(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _save(self, config: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.config_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(config, indent=2))
        os.replace(temporary, self.config_file)

    def _require(self) -> dict[str, Any]:
        config = self.config()
        if config is None or self.etcd is None:
            raise StateError("this host is in no cluster",
                             fix="virtkit cluster init, or virtkit cluster join URI")
        return config

    def _tls(self, config: dict[str, Any]) -> Tls | None:
        tls = config.get("tls")
        if not tls:
            return None
        return Tls(Path(tls["ca"]), Path(tls["cert"]) if tls.get("cert") else None,
                   Path(tls["key"]) if tls.get("key") else None)

    def _member_config(self, config: dict[str, Any], state: str,
                       initial: str | None = None) -> MemberConfig:
        address, name = config["address"], config["host"]
        peer = f"https://{address}:{config.get('peer_port', PEER_PORT)}"
        return MemberConfig(name=name, address=address, data_dir=self.member.data_dir,
                            initial_cluster=initial or f"{name}={peer}", state=state,
                            ca=self.pki.ca, cert=self.pki.cert, key=self.pki.key,
                            client_port=config.get("client_port", CLIENT_PORT),
                            peer_port=config.get("peer_port", PEER_PORT),
                            token=config["cluster"])

    def _report(self) -> dict[str, Any]:
        runtime = self.store.all_runtime()
        domains = self.store.list_domains()
        memory = memory_stats()
        return {"state": "up", "version": __version__,
                "capacity": {"cpus": os.cpu_count() or 1,
                             "memory_mib": memory["total"] // 1024,
                             "free_mib": memory["free"] // 1024},
                "vms": {"defined": len(domains),
                        "running": sum(1 for r in runtime.values()
                                       if r.state in RUNNING_STATES)},
                **host_facts(self)}

    def _domains(self) -> list[dict[str, Any]]:
        """This host's VMs as every host's ``list --all`` shows them."""
        runtime = self.store.all_runtime()
        return [{"name": row.name, "uuid": row.uuid,
                 "state": runtime[row.uuid].state if row.uuid in runtime else "shutoff",
                 **{k: v for k, v in need_of(row.spec).items() if k != "group"}}
                for row in self.store.list_domains()]

    def _ha_vms(self) -> HaVms:
        """This host's HA VMs (spec ``ha: true``), all armed whatever their state, and
        the QEMUs of those that run (a QEMU that exists holds its disks)."""
        ha = frozenset(row.uuid for row in self.store.list_domains() if row.spec.get("ha"))
        runtime = self.store.all_runtime()
        return HaVms(ha, tuple(FenceTarget(uuid, row.pid, row.pid_start)
                               for uuid, row in runtime.items()
                               if row.pid is not None and row.pid_start is not None
                               and uuid in ha),
                     frozenset(uuid for uuid, row in runtime.items() if row.pid is not None))

    def spawn_gate(self, domain: Domain) -> None:
        """Called by the launcher right before it spawns a QEMU (runtime/launcher.py):
        for an HA VM in a cluster, refuse when this host's lease is stale, else arm the
        guard for its UUID first (cluster/fence.py, ``Fencer.admit``)."""
        if not domain.ha or self.config() is None:
            return  # outside a cluster nobody else can start it: nothing to fence
        if self.fencer is None:
            raise StateError(f"cannot start HA VM '{domain.name}' yet: this daemon's "
                             "cluster fencing has not started",
                             requested="start", fix="start it again in a few seconds")
        self.fencer.admit(domain.uuid, domain.name)

    def _agent(self, config: dict[str, Any]) -> HostAgent:
        assert self.etcd is not None
        return HostAgent(self.etcd, config["host"], self._report, self.folder / "lease",
                         domains=self._domains)

    @property
    def host_name(self) -> str | None:
        """This host's name in its cluster (None outside one)."""
        return self.agent.name if self.agent is not None else None

    async def with_other_hosts(self, rows: list[dict[str, Any]], *,
                               include_inactive: bool = True) -> list[dict[str, Any]]:
        """``list --all`` for the whole cluster: this host's ``rows`` (fresh from the
        store) with ``host`` added, then every other host's published VMs.  Outside a
        cluster, ``rows`` unchanged; when etcd cannot be read, this host's alone."""
        host = self.host_name
        if host is None or self.etcd is None:
            return rows
        local = [{**row, "host": host} for row in rows]
        try:
            published = await cluster_domains(self.etcd)
        except EtcdUnavailable as exc:
            log.warning("cluster: list of other hosts' VMs unavailable: %s", exc)
            return local
        others = [{"name": vm["name"], "uuid": vm["uuid"], "state": vm["state"], "pid": None,
                   "host": name, **{k: vm[k] for k in ("vcpus", "memory_mib") if k in vm}}
                  for name, vms in sorted(published.items()) if name != host for vm in vms
                  if include_inactive or vm["state"] in RUNNING_STATES]
        return local + others

    # -- daemon life ---------------------------------------------------------------------

    async def start(self) -> None:
        """At daemon start: our member running, the host lease renewed, the watch on."""
        config = self.config()
        if config is None:
            return
        if config.get("role") == "voter" and not config.get("external"):
            await asyncio.to_thread(self.member.start, self._member_config(config, "existing"))
        self.etcd = Etcd(config["endpoints"], tls=self._tls(config))
        self.agent = self._agent(config)
        try:
            await self.agent.register()
        except VirtkitError as exc:  # etcd away, or our name held by a live lease
            log.warning("cluster: cannot register yet (%s); the agent keeps trying", exc)
        self._run_background(config)
        await self.api.changed()

    def _run_background(self, config: dict[str, Any]) -> None:
        assert self.agent is not None
        agent = self.agent
        self.agent.start()
        if self.fencer is None:
            self.fencer = Fencer(lambda: agent.renewed, self._ha_vms, self.guard,
                                 ttl=agent.ttl)
        self.fencer.start()
        self._tasks.append(asyncio.create_task(self._watch_hosts()))
        self._tasks.append(asyncio.create_task(self._sync_endpoints()))
        if self.vms is not None:
            self._tasks.append(asyncio.create_task(self.vms.run()))
        if config.get("role") == "voter" and not config.get("external"):
            self._tasks.append(asyncio.create_task(self._supervise(config)))

    async def stop(self) -> None:
        """At daemon stop: background work ends; the member and the lease stay (a
        restarted daemon takes them back; a daemon that stays away is seen as down)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.fencer is not None:  # the guard stays armed: see cluster/fence.py
            await self.fencer.stop()
        if self.agent is not None:
            await self.agent.stop()
        if self.etcd is not None:
            await self.etcd.close()

    async def _supervise(self, config: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL)
            if self.member.pid() is None:
                log.warning("cluster: the etcd member ended; starting it again: %s",
                            self.member.log_tail(3))
                try:
                    await asyncio.to_thread(self.member.start,
                                            self._member_config(config, "existing"))
                except VirtkitError as exc:
                    log.error("cluster: cannot restart etcd: %s", exc)

    async def _sync_endpoints(self) -> None:
        """Keep the etcd client (and config.json, for the next start) on every member's
        address: the first host of a cluster was made knowing only its own."""
        while self.etcd is not None:
            try:
                endpoints = await self.etcd.sync_endpoints()
                config = self.config()
                if config is not None and sorted(config.get("endpoints") or []) \
                        != sorted(endpoints):
                    self._save({**config, "endpoints": endpoints})
            except VirtkitError as exc:
                log.debug("cluster: endpoints not synced: %s", exc)
            await asyncio.sleep(ENDPOINT_SYNC)

    async def _recover(self) -> None:
        assert self.vms is not None
        try:
            await self.vms.ha.once()
        except VirtkitError as exc:
            log.warning("cluster: HA restart not done yet: %s", exc)
        except Exception:
            log.exception("cluster: HA restart failed")

    async def _watch_hosts(self) -> None:
        assert self.etcd is not None
        async for event in self.etcd.watch(HOSTS):
            name = event.kv.key.removeprefix(HOSTS)
            if event.type == "DELETE":
                self.lost[name] = time.time()
                log.warning("cluster: host %s is gone (its lease expired or it left)", name)
                if self.vms is not None:  # its HA VMs: restart them now, not at the next look
                    self._tasks.append(asyncio.create_task(self._recover()))
            elif self.lost.pop(name, None) is not None:
                log.info("cluster: host %s is back", name)

    async def _wait_member(self, endpoint: str, tls: Tls | None,
                           config: MemberConfig) -> None:
        """Until our own member answers (or its start failed: the error names its log).

        A member that exits while it starts is started again, up to
        ``MEMBER_START_ATTEMPTS`` times within the timeout: a joining member exits when
        it cannot fetch the cluster from its peers at once (a busy peer, an election),
        and its next start, with the same data folder, goes on from there."""
        deadline = time.monotonic() + MEMBER_START_TIMEOUT
        attempts = 1
        async with Etcd([endpoint], tls=tls, deadline=1.0) as own:
            while True:
                try:
                    await own.endpoint_status(endpoint)
                    await own.get(CLUSTER_KEY)  # a quorum read: the member has caught up
                    return
                except (VirtkitError, OSError, TimeoutError) as exc:
                    exited = self.member.pid() is None
                    if exited and attempts < MEMBER_START_ATTEMPTS \
                            and time.monotonic() < deadline:
                        attempts += 1
                        log.warning("cluster: the etcd member exited while starting "
                                    "(%s); starting it again (attempt %d): %s", exc,
                                    attempts, self.member.log_tail()[-500:])
                        await asyncio.to_thread(self.member.start, config)
                    elif exited or time.monotonic() > deadline:
                        raise VirtkitError(f"the etcd member did not come up: {exc}",
                                           fix=f"see {self.member.log}",
                                           log=self.member.log_tail()) from exc
                await asyncio.sleep(0.2)

    # -- init ----------------------------------------------------------------------------

    async def init(self, *, name: str | None, address: str | None, cluster: str | None,
                   endpoints: list[str] | None = None, tls: dict[str, str] | None = None,
                   client_port: int = CLIENT_PORT, peer_port: int = PEER_PORT,
                   api_port: int = CLUSTER_API_PORT) -> dict[str, Any]:
        async with self._lock:
            if self.config() is not None:
                raise Conflict("this host is already in a cluster",
                               fix="virtkit cluster leave first")
            host = check_host_name(name or default_host_name())
            cluster_name = check_host_name(cluster or "virtkit")
            config: dict[str, Any] = {"cluster": cluster_name, "host": host,
                                      "client_port": client_port, "peer_port": peer_port,
                                      "api_port": api_port}
            if endpoints:
                config.update(role="client", external=True, tls=tls, address=address,
                              endpoints=[endpoint_url(e) for e in endpoints])
            else:
                if not address:
                    raise InvalidSpec("give --address: the IP address other hosts reach "
                                      "this one at", field="address")
                await asyncio.to_thread(self.pki.make_ca, cluster_name)
                csr = await asyncio.to_thread(self.pki.make_csr, host)
                cert = await asyncio.to_thread(self.pki.sign, csr, host, address)
                self.pki.install_cert(cert)
                member = self._member_config({**config, "address": address}, "new")
                config.update(role="voter", external=False, address=address,
                              endpoints=[member.client_url],
                              tls={"ca": str(self.pki.ca), "cert": str(self.pki.cert),
                                   "key": str(self.pki.key)})
                await asyncio.to_thread(self.member.start, member)
                try:
                    await self._wait_member(member.client_url, self._tls(config), member)
                except BaseException:
                    await asyncio.to_thread(self._wipe)
                    raise
            return await self._open(config, creating=True)

    async def _open(self, config: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        """Connect, record the cluster (when creating) and this host, start the agent."""
        self.etcd = Etcd(config["endpoints"], tls=self._tls(config))
        try:
            if creating:
                made = await self.etcd.create(CLUSTER_KEY, encode(
                    {"name": config["cluster"], "created": time.time(),
                     "by": config["host"]}))
                if not made and not config.get("external"):
                    raise Conflict("the new etcd already holds a virtkit cluster")
            members = await self.etcd.members()
            own = next((m["ID"] for m in members if m["name"] == config["host"]), None)
            key = MEMBERS + config["host"]
            # init: the name must be free; join: the admitting host has recorded it
            done = await self.etcd.txn(
                [Compare.version(key, "=" if creating else ">", 0)],
                [Op.put(key, encode({"name": config["host"], "address": config.get("address"),
                                     "role": config["role"], "etcd_id": own,
                                     "joined": time.time()}))])
            if not done.succeeded:
                raise Conflict(f"host {config['host']!r}: " + (
                    "the name is taken in this cluster" if creating
                    else "the admission was withdrawn meanwhile"))
            self.agent = self._agent(config)
            self.api.pending = config  # the first record already names the cluster API
            await self.agent.register()
        except BaseException:
            self.api.pending = None
            await self.etcd.close()
            self.etcd = None
            if not config.get("external"):
                await asyncio.to_thread(self._wipe)
            raise
        self._save(config)
        self._run_background(config)
        await self.api.changed()
        return {"cluster": config["cluster"], "host": config["host"], "role": config["role"],
                "endpoints": config["endpoints"]}

    def _wipe(self) -> None:
        """This host's cluster state gone: member stopped, data, certificates, config."""
        self.member.stop()
        shutil.rmtree(self.member.data_dir, ignore_errors=True)
        self.pki.remove()
        self.config_file.unlink(missing_ok=True)
        (self.folder / "lease").unlink(missing_ok=True)

    # -- admitting a joiner (on a member) ------------------------------------------------

    async def admit(self, *, name: str, address: str, csr: str) -> dict[str, Any]:
        """Called by a joining host's daemon: sign its certificate, add it as an etcd
        voter (or client-only), record it.  Everything it needs comes back."""
        async with self._lock:
            config = self._require()
            assert self.etcd is not None
            check_host_name(name)
            if not self.pki.ca_key.exists():
                raise StateError("this host cannot admit others (it has no cluster CA key)",
                                 fix="join through a voter ('virtkit cluster list' shows "
                                     "the roles)")
            if await self.etcd.get(MEMBERS + name) is not None:
                raise Conflict(f"a host named {name!r} is already a member",
                               fix="choose another name, or 'virtkit cluster leave' there")
            cert = await asyncio.to_thread(self.pki.sign, csr, name, address)
            members = await self.etcd.members()
            voters = [m for m in members if not m["isLearner"]]
            role = "voter" if len(voters) < MAX_VOTERS else "client"
            peer_port = config.get("peer_port", PEER_PORT)
            peer_url = f"https://{address}:{peer_port}"
            # the record first: once a voter is added, the cluster cannot commit
            # anything until that member has started (two voters, one running)
            record = encode({"name": name, "address": address, "role": role,
                             "etcd_id": None, "joined": time.time()})
            if not await self.etcd.create(MEMBERS + name, record):
                raise Conflict(f"a host named {name!r} joined meanwhile")
            member_id = None
            if role == "voter":
                try:
                    member_id = await self._member_add(peer_url)
                except EtcdError as exc:
                    await self.etcd.delete(MEMBERS + name)
                    raise StateError(f"etcd refused the new member: {exc.message}",
                                     fix="wait until every member has started, then "
                                         "join again") from exc
            initial = ",".join(
                [f"{m['name']}={m['peerURLs'][0]}" for m in members if m["name"]]
                + [f"{name}={peer_url}"]) if role == "voter" else None
            endpoints = sorted({url for m in members for url in m["clientURLs"]})
            return {"cluster": config["cluster"], "role": role, "cert": cert,
                    "ca": self.pki.ca.read_text(),
                    "ca_key": self.pki.ca_key.read_text() if role == "voter" else None,
                    "initial_cluster": initial, "endpoints": endpoints,
                    "etcd_id": member_id, "client_port": config.get("client_port", CLIENT_PORT),
                    "peer_port": peer_port}

    async def _member_add(self, peer_url: str) -> int:
        etcd = self.etcd
        assert etcd is not None
        return await _patiently(lambda: etcd.member_add([peer_url]))

    # -- join (on the new host) ----------------------------------------------------------

    async def join(self, *, via: dict[str, Any], name: str | None, address: str,
                   api_port: int = CLUSTER_API_PORT) -> dict[str, Any]:
        async with self._lock:
            if self.config() is not None:
                raise Conflict("this host is already in a cluster",
                               fix="virtkit cluster leave first")
            host = check_host_name(name or default_host_name())
            csr = await asyncio.to_thread(self.pki.make_csr, host)
            peer = Peer(via, what="member")
            try:
                answer = await peer.cluster_admit({"name": host, "address": address,
                                                   "csr": csr})
            except BaseException:
                await asyncio.to_thread(self.pki.remove)
                raise
            finally:
                await peer.close()
            self.pki.install_ca(answer["ca"], answer.get("ca_key"))
            self.pki.install_cert(answer["cert"])
            config: dict[str, Any] = {
                "cluster": answer["cluster"], "host": host, "address": address,
                "role": answer["role"], "external": False,
                "client_port": answer["client_port"], "peer_port": answer["peer_port"],
                "api_port": api_port,
                "tls": {"ca": str(self.pki.ca), "cert": str(self.pki.cert),
                        "key": str(self.pki.key)}, "endpoints": answer["endpoints"]}
            if answer["role"] == "voter":
                member = self._member_config(config, "existing", answer["initial_cluster"])
                config["endpoints"] = [member.client_url, *answer["endpoints"]]
                await asyncio.to_thread(self.member.start, member)
                try:
                    await self._wait_member(member.client_url, self._tls(config), member)
                except BaseException:
                    await self._undo_member(config, answer["etcd_id"])
                    raise
            try:
                return await self._open(config, creating=False)
            except BaseException:
                if answer["role"] == "voter":
                    await self._undo_member(config, answer["etcd_id"])
                raise

    async def _undo_member(self, config: dict[str, Any], member_id: int) -> None:
        """A join that failed after the member was added: remove it again (through the
        other members) so it does not count against the quorum."""
        async with Etcd(config["endpoints"][1:] or config["endpoints"],
                        tls=self._tls(config)) as others:
            with contextlib.suppress(VirtkitError):
                await others.member_remove(member_id)
                await others.delete(MEMBERS + config["host"])
        await asyncio.to_thread(self._wipe)

    # -- leave ---------------------------------------------------------------------------

    async def leave(self) -> dict[str, Any]:
        async with self._lock:
            config = self._require()
            etcd, agent = self.etcd, self.agent
            assert etcd is not None
            assert agent is not None
            host = config["host"]
            members = await etcd.members()
            own = next((m for m in members if m["name"] == host), None)
            others = [m for m in members if m["name"] != host]
            hosts = [kv for kv in await etcd.range(MEMBERS) if kv.key != MEMBERS + host]
            if own is not None and not others and hosts:
                raise StateError(f"{host} is the cluster's only etcd member and other hosts "
                                 "depend on it", fix="let those hosts leave first")
            for task in self._tasks:
                task.cancel()
            self._tasks.clear()
            if self.fencer is not None:
                await self.fencer.stop()
                self.fencer = None
            await asyncio.to_thread(self.guard.stop)  # no lease any more: nothing to guard
            await agent.stop(revoke=True)
            await etcd.txn([], [Op.delete(MEMBERS + host)])
            if own is not None and others:
                # through another member: removing ourselves through our own member
                # would end it before the answer is back
                endpoints = [u for m in others for u in m["clientURLs"]]
                async with Etcd(endpoints, tls=self._tls(config)) as rest:
                    await _patiently(lambda: rest.member_remove(own["ID"]))
            await etcd.close()
            self.etcd = self.agent = None
            await asyncio.to_thread(self._wipe)
            await self.api.changed()
            return {"left": config["cluster"], "host": host,
                    "dissolved": own is not None and not others}

    # -- HA ------------------------------------------------------------------------------

    def set_ha(self, ref: str, enabled: bool) -> dict[str, Any]:
        """Mark a VM highly available (``ha: true`` in its spec): the guard is armed for
        it before the spec says so (and before etcd hears of it), so its QEMU is fenced
        when this host loses its lease; refused while the lease is stale."""
        if enabled and self.agent is None:
            raise StateError("HA needs a cluster: this host is in none",
                             fix="virtkit cluster init, or virtkit cluster join URI")
        row = self.store.get_domain(ref)
        if enabled and self.fencer is not None:
            self.fencer.admit(row.uuid, row.name, action="make highly available VM")
        self.store.update_domain(row.uuid, row.name, dict(row.spec, ha=enabled), None)
        return {"name": row.name, "ha": enabled}

    # -- views ---------------------------------------------------------------------------

    async def hosts(self) -> list[dict[str, Any]]:
        self._require()
        assert self.etcd is not None
        return await host_table(self.etcd, self.lost)

    async def status(self) -> dict[str, Any]:
        config = self.config()
        if config is None or self.etcd is None:
            return {"configured": False}
        members = await self.etcd.members()
        by_id = {m["ID"]: m["name"] for m in members}
        rows, leaders = [], set()
        for member in members:
            row: dict[str, Any] = {"name": member["name"] or "(not started)",
                                   "id": f"{member['ID']:x}",
                                   "endpoints": member["clientURLs"],
                                   "learner": member["isLearner"], "healthy": False}
            for endpoint in member["clientURLs"]:
                try:
                    status = await self.etcd.endpoint_status(endpoint)
                except (VirtkitError, OSError, TimeoutError) as exc:
                    row["error"] = str(exc)
                    continue
                row.update(healthy=True, leader=status["leader"] == member["ID"],
                           raft_index=status["raft_index"], version=status["version"],
                           db_size=status["db_size"])
                if status["leader"]:
                    leaders.add(status["leader"])
                break
            rows.append(row)
        voters = [r for r in rows if not r["learner"]]
        healthy = sum(1 for r in voters if r["healthy"])
        quorum = len(voters) // 2 + 1
        leader = by_id.get(next(iter(leaders))) if len(leaders) == 1 else None
        cluster = await self.etcd.get(CLUSTER_KEY)
        return {"configured": True, "cluster": config["cluster"], "host": config["host"],
                "role": config["role"], "external": bool(config.get("external")),
                "created": cluster.json().get("created") if cluster else None,
                "members": rows, "voters": len(voters), "healthy": healthy,
                "quorum": quorum, "has_quorum": healthy >= quorum, "leader": leader,
                "lease": {"id": f"{self.agent.lease:x}" if self.agent else None,
                          "ttl": self.agent.ttl if self.agent else None},
                # VMs here that etcd could not record (a name another host holds)
                "vm_problems": list(self.vms.problems) if self.vms is not None else []}
