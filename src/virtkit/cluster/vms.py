"""VMs in etcd: cluster-wide names, specs with their desired state, and ownership.

Keys (JSON values; docs/architecture.md, "The cluster"):

- ``/virtkit/names/<name>``: the name's holder (``uuid``, ``host`` that defines it,
  ``memory_mib``, ``vcpus``, ``group``); no lease: a VM's name stays taken while its
  host is down.  This is also the placement ledger (memory committed per host).  A
  placement first *reserves* the name (``uuid`` null) by a txn that also checks that
  no name key changed since the ledger was read, so two placements cannot both fill
  the same room.
- ``/virtkit/specs/<uuid>``: the VM's spec and desired state (``running``/``shutoff``);
  no lease.
- ``/virtkit/owner/<uuid>``: ``{"host": H}`` on host H's lease: the one host that may
  run the VM.  Made with the name; moved by a migration's destination in one txn
  (:func:`take_over`) before it resumes the guest (live) or defines it (offline);
  gone with the host's lease when the
  host dies, and made again by the host's daemon when it comes back (:func:`adopt`).

Every write is a txn whose compares make it a compare-and-swap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtkit.cluster.etcd import Compare, Etcd, KeyValue, Op
from virtkit.cluster.hosts import PREFIX, encode
from virtkit.errors import Conflict

NAMES = PREFIX + "names/"
SPECS = PREFIX + "specs/"
OWNERS = PREFIX + "owner/"
#: ``/virtkit/maintenance/<host>``: the host is evacuated (placement skips it)
MAINTENANCE = PREFIX + "maintenance/"
#: a reservation older than this is a placement whose placer died: free again
RESERVATION_TTL = 120.0


@dataclass(frozen=True)
class Local:
    """One VM of this host's store, as etcd records it."""

    name: str
    uuid: str
    spec: dict[str, Any]
    running: bool


def need_of(spec: dict[str, Any]) -> dict[str, Any]:
    """What a stored spec asks of its host (the ledger's part of a name key)."""
    memory = spec.get("memory") or {}
    vcpus = spec.get("vcpus") or {}
    return {"memory_mib": int(memory.get("current", 0) if isinstance(memory, dict)
                              else memory),
            "vcpus": int(vcpus.get("current", 1) if isinstance(vcpus, dict) else vcpus),
            "group": spec.get("anti_affinity")}


def _name_value(name: str, uuid: str | None, host: str, spec: dict[str, Any],
                **extra: Any) -> bytes:
    return encode({"name": name, "uuid": uuid, "host": host, **need_of(spec), **extra})


def _clash(name: str, current: KeyValue | None, host: str) -> Conflict:
    holder = current.json() if current is not None else {}
    where = holder.get("host", "?")
    if where == host:
        return Conflict(f"a VM named {name!r} is already being defined on this host "
                        f"({host})", fix="wait for it, or choose another name")
    return Conflict(f"the name {name!r} is taken in the cluster: a VM of that name is "
                    f"on host {where}", fix=f"choose another name, or manage that VM "
                    f"(its commands reach host {where} from any host)", host=where)


async def ledger(etcd: Etcd) -> tuple[list[dict[str, Any]], int]:
    """Every name key's value, and the revision they were read at."""
    done = await etcd.txn([], [Op.get(NAMES, prefix=True)])
    rows = [kv.json() for kv in (done.ranges[0] if done.ranges else [])]
    return rows, done.revision


async def reserve(etcd: Etcd, name: str, host: str, spec: dict[str, Any],
                  seen: int) -> bytes | None:
    """Reserve ``name`` on ``host`` if no name key was made or changed after revision
    ``seen`` (the ledger the placement weighed); None when one was (weigh again);
    Conflict when the name is taken."""
    key = NAMES + name
    value = _name_value(name, None, host, spec, reserved=_now())
    done = await etcd.txn([Compare.version(key, "=", 0),
                           Compare.mod_revision_all(NAMES, "<", seen + 1)],
                          [Op.put(key, value)], [Op.get(key)])
    if done.succeeded:
        return value
    current = done.ranges[0][0] if done.ranges and done.ranges[0] else None
    if current is not None:
        if _stale(current):
            await etcd.txn([Compare.mod_revision(key, "=", current.mod_revision)],
                           [Op.delete(key)])
            return None
        raise _clash(name, current, "")  # said from the cluster's view: "on host H"
    return None


def _now() -> float:
    return time.time()


def _stale(kv: KeyValue) -> bool:
    value = kv.json()
    return value.get("uuid") is None and _now() - float(value.get("reserved", 0)) \
        > RESERVATION_TTL


async def unreserve(etcd: Etcd, name: str, reservation: bytes) -> None:
    await etcd.txn([Compare.value(NAMES + name, "=", reservation)],
                   [Op.delete(NAMES + name)])


async def check_name(etcd: Etcd, name: str, uuid: str | None, host: str) -> None:
    """Before a define here: Conflict when another host (or VM) holds ``name``."""
    current = await etcd.get(NAMES + name)
    if current is None or _stale(current):
        return
    value = current.json()
    if value.get("host") == host and (value.get("uuid") in (None, uuid) or uuid is None):
        return
    raise _clash(name, current, host)


async def claim(etcd: Etcd, host: str, lease: int, vm: Local, *,
                reservation: bytes | None = None) -> None:
    """Record a VM just defined here: its name, spec and ownership, in one txn.  The
    name must be free, reserved for this host (``reservation``), or already this VM's
    here (a redefinition); else Conflict naming the holder."""
    key = NAMES + vm.name
    current = await etcd.get(key)
    if current is not None and _stale(current) and reservation is None:
        await etcd.txn([Compare.mod_revision(key, "=", current.mod_revision)],
                       [Op.delete(key)])
        current = None
    if current is None:
        guard = Compare.version(key, "=", 0)
    else:
        held = current.json()
        ours = held.get("host") == host and (
            held.get("uuid") == vm.uuid or current.value == reservation
            or held.get("uuid") is None)
        if not ours:
            raise _clash(vm.name, current, host)
        guard = Compare.mod_revision(key, "=", current.mod_revision)
    spec_value = await etcd.get(SPECS + vm.uuid)
    desired = spec_value.json().get("desired") if spec_value is not None else None
    done = await etcd.txn(
        [guard],
        [Op.put(key, _name_value(vm.name, vm.uuid, host, vm.spec)),
         Op.put(SPECS + vm.uuid, encode({"name": vm.name, "uuid": vm.uuid, "spec": vm.spec,
                                         "desired": desired or (
                                             "running" if vm.running else "shutoff")})),
         Op.put(OWNERS + vm.uuid, encode({"host": host, "name": vm.name}), lease)],
        [Op.get(key)])
    if not done.succeeded:
        raise _clash(vm.name, done.ranges[0][0] if done.ranges and done.ranges[0]
                     else None, host)


async def release(etcd: Etcd, name: str, uuid: str) -> None:
    """After an undefine here: the name, spec and ownership go (if still this VM's)."""
    current = await etcd.get(NAMES + name)
    compare = [Compare.mod_revision(NAMES + name, "=", current.mod_revision)] \
        if current is not None and current.json().get("uuid") == uuid else []
    names = [Op.delete(NAMES + name)] if compare else []
    await etcd.txn(compare, [*names, Op.delete(SPECS + uuid), Op.delete(OWNERS + uuid)])


async def set_desired(etcd: Etcd, uuid: str, desired: str,
                      spec: dict[str, Any] | None = None) -> bool:
    """The VM's desired state (and spec, after an edit), by CAS; False when the VM has
    no spec key (not a cluster VM)."""
    for _ in range(5):
        current = await etcd.get(SPECS + uuid)
        if current is None:
            return False
        value = current.json()
        value["desired"] = desired
        if spec is not None:
            value["spec"] = spec
        if await etcd.swap(SPECS + uuid, current.mod_revision, encode(value)):
            return True
    raise Conflict(f"the desired state of VM {uuid} keeps changing under this update",
                   fix="try again")


async def locate(etcd: Etcd, ref: str) -> dict[str, Any] | None:
    """Where VM ``ref`` (name or uuid) is: ``name``, ``uuid``, ``host`` (its owner while
    it has one, else the host that defines it) and ``owned``; None if the cluster has
    no such VM."""
    held = await etcd.get(NAMES + ref)
    uuid = held.json().get("uuid") if held is not None else ref
    owner = await etcd.get(OWNERS + uuid) if uuid else None
    if held is None and owner is None:
        return None
    name_value = held.json() if held is not None else {}
    owner_value = owner.json() if owner is not None else {}
    host = owner_value.get("host") or name_value.get("host")
    return {"name": name_value.get("name") or owner_value.get("name") or ref, "uuid": uuid,
            "host": host, "owned": owner is not None}


async def take_over(etcd: Etcd, uuid: str, host: str, lease: int) -> KeyValue | None:
    """A migration's destination makes itself the owner, in one txn, before it resumes
    the guest: the owner key moves from the source's lease to ours (and the name key's
    host with it).  Returns the previous owner key (for :func:`give_back`), None when
    the VM is not a cluster VM.  Conflict when the key changed while we looked."""
    owner = await etcd.get(OWNERS + uuid)
    spec = await etcd.get(SPECS + uuid)
    if spec is None:
        return None
    name = spec.json()["name"]
    held = await etcd.get(NAMES + name)
    compares = [Compare.mod_revision(OWNERS + uuid, "=", owner.mod_revision)
                if owner is not None else Compare.version(OWNERS + uuid, "=", 0)]
    ops = [Op.put(OWNERS + uuid, encode({"host": host, "name": name}), lease)]
    if held is not None and held.json().get("uuid") == uuid:
        compares.append(Compare.mod_revision(NAMES + name, "=", held.mod_revision))
        ops.append(Op.put(NAMES + name, encode({**held.json(), "host": host})))
    done = await etcd.txn(compares, ops)
    if not done.succeeded:
        raise Conflict(f"the ownership of VM {name!r} changed during its migration",
                       fix="see 'virtkit list --all'; the source keeps running it")
    if owner is not None:
        return owner
    # no owner key (the source's lease lapsed): what give_back needs is where the name was
    return KeyValue(OWNERS + uuid, encode({"absent": True, "host": (
        held.json().get("host") if held is not None else None)}))


async def give_back(etcd: Etcd, uuid: str, previous: KeyValue, lease: int) -> None:
    """Undo :func:`take_over` when the guest could not be resumed (or, offline, the VM
    not defined) here: the source keeps it, so it owns it again, and its name key names
    it again (only while the owner key is still ours)."""
    before = json.loads(previous.value) if previous.value else {"absent": True}
    source = before.get("host")
    ops = [Op.delete(OWNERS + uuid)] if before.get("absent") \
        else [Op.put(OWNERS + uuid, previous.value, previous.lease)]
    spec = await etcd.get(SPECS + uuid)
    if spec is not None:
        name = spec.json()["name"]
        held = await etcd.get(NAMES + name)
        if held is not None and held.json().get("uuid") == uuid and source:
            ops.append(Op.put(NAMES + name, encode({**held.json(), "host": source})))
    await etcd.txn([Compare.lease(OWNERS + uuid, "=", lease)], ops)


async def adopt(etcd: Etcd, host: str, lease: int, local: list[Local]) -> list[str]:
    """Make etcd hold this host's VMs (at start, after the lease was lost and taken
    anew, and every few seconds): a VM whose name is free is claimed; one whose owner
    key is gone gets it back on our lease (only if absent: never taken from another
    host).  Returns what could not be recorded (name clashes)."""
    names = {kv.key.removeprefix(NAMES): kv for kv in await etcd.range(NAMES)}
    owners = {kv.key.removeprefix(OWNERS): kv for kv in await etcd.range(OWNERS)}
    problems = []
    for vm in local:
        held = names.get(vm.name)
        value = held.json() if held is not None else None
        if value is None or (value.get("uuid") is None and value.get("host") == host):
            try:
                await claim(etcd, host, lease, vm)
            except Conflict as exc:
                problems.append(str(exc))
        elif value.get("uuid") != vm.uuid:
            problems.append(f"VM {vm.name!r} ({vm.uuid}) here: the name is held in the "
                            f"cluster by {value.get('uuid')} on host {value.get('host')}")
        elif value.get("host") == host:
            owner = owners.get(vm.uuid)
            if owner is None or (owner.lease != lease and owner.json().get("host") == host):
                await etcd.txn(
                    [Compare.version(OWNERS + vm.uuid, "=", 0) if owner is None
                     else Compare.mod_revision(OWNERS + vm.uuid, "=", owner.mod_revision)],
                    [Op.put(OWNERS + vm.uuid, encode({"host": host, "name": vm.name}),
                            lease)])
    return problems


async def forget_gone(etcd: Etcd, host: str, local: Callable[[], set[str]]) -> list[str]:
    """Release the names this host holds for VMs it no longer has (undefined while
    etcd was away, transient ones that ended).  ``local()`` is asked after etcd was
    read, so a VM defined in between is never taken for gone."""
    held = [kv for kv in await etcd.range(NAMES)
            if kv.json().get("host") == host and kv.json().get("uuid")]
    if not held:
        return []
    present = local()
    gone = []
    for kv in held:
        value = kv.json()
        if value["uuid"] in present:
            continue
        done = await etcd.txn([Compare.mod_revision(kv.key, "=", kv.mod_revision)],
                              [Op.delete(kv.key), Op.delete(SPECS + value["uuid"]),
                               Op.delete(OWNERS + value["uuid"])])
        if done.succeeded:
            gone.append(value["name"])
    return gone


async def ensure_owner(etcd: Etcd, host: str, lease: int, vm: Local) -> None:
    """Before a start here: this host must own the VM (the key made on our lease when
    it is absent and the name is ours).  Conflict naming the owner when another host
    owns it: a VM never runs on two hosts."""
    key = OWNERS + vm.uuid
    done = await etcd.txn([Compare.version(key, "=", 0)], [],
                          [Op.get(key), Op.get(NAMES + vm.name)])
    if done.succeeded:  # no owner: ours if the name is (else adopt has a problem to say)
        held = await etcd.get(NAMES + vm.name)
        value = held.json() if held is not None else {}
        if held is not None and (value.get("uuid") != vm.uuid or value.get("host") != host):
            raise _clash(vm.name, held, host)
        if held is None:
            await claim(etcd, host, lease, vm)
            return
        made = await etcd.txn([Compare.version(key, "=", 0)],
                              [Op.put(key, encode({"host": host, "name": vm.name}), lease)])
        if made.succeeded:
            return
        done = await etcd.txn([], [Op.get(key)])
    owner = done.ranges[0][0] if done.ranges and done.ranges[0] else None
    holder = owner.json().get("host") if owner is not None else None
    if holder != host:
        raise Conflict(f"VM {vm.name!r} is owned by host {holder} in the cluster: it may "
                       "run only there", fix=f"start it from any host (it runs on {holder}),"
                       " or migrate it here first", host=holder)
