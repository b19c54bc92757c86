"""Firewall rules of virtual networks, in virtkit's own nftables table.

All rules live in ``table inet virtkit``; virtkit never reads or writes anyone
else's tables.  Each network owns a few *base chains* of its own in that table
(named ``vk-<uuid>-<role>``), each hooked directly into netfilter, so adding or
removing one network never edits a chain another network uses.  Every rule also
carries the comment ``virtkit:<uuid>``.

``apply`` sends one script to ``nft -f -``; nft runs a script as a single
transaction, so the network's rules are replaced atomically (the chains are
created if missing, flushed and refilled; chains of a role the network no longer
needs are deleted).  ``remove`` deletes this network's chains only.

NAT network (bridge ``BR``, subnet ``S``):

- ``postrouting`` (srcnat): masquerade ``S`` to any destination outside ``S``
  leaving by any interface but ``BR`` (multicast and broadcast excepted), and
  hairpin-masquerade port-forwarded traffic between two guests.
- ``forward`` (filter): guests may go out, replies may come back, forwarded
  ports reach their guest; new connections from outside into ``BR`` and
  spoofed sources from ``BR`` are rejected.
- ``prerouting``/``output`` (dstnat): DNAT of each port forward (``0.0.0.0``
  = any local address, matched with ``fib daddr type local``).

Isolated network: ``forward`` drops everything routed to or from ``BR``.

Note: a DROP in another table (e.g. a host firewall's forward chain) still
drops our traffic; nftables gives no table the last word.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from virtkit.errors import HostError, InvalidSpec
from virtkit.model.network import Network, NetworkMode, PortForward
from virtkit.network import netns as ns

FAMILY = "inet"
TABLE = "virtkit"
NFT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ChainSpec:
    """A base chain: its role (name suffix), netfilter type, hook and priority."""

    role: str
    type: str
    hook: str
    priority: int


#: every role a network's chain can have; priorities are filter=0, srcnat=100, dstnat=-100
ROLES = (
    ChainSpec("forward", "filter", "forward", 0),
    ChainSpec("postrouting", "nat", "postrouting", 100),
    ChainSpec("prerouting", "nat", "prerouting", -100),
    ChainSpec("output", "nat", "output", -100),
)


def chain_name(net: Network, role: str) -> str:
    return f"vk-{net.uuid}-{role}"


def _parts(net: Network) -> tuple[str, str]:
    if net.mode is NetworkMode.BRIDGE or not net.bridge or net.subnet is None:
        raise InvalidSpec(f"network {net.name!r} has no bridge and subnet of its own to "
                          "firewall", fix="only nat and isolated networks get nft rules")
    return net.bridge, net.subnet


def _quoted(name: str) -> str:
    return json.dumps(name)  # interface names are [A-Za-z0-9_.-]: this only adds quotes


def _forward_match(forward: PortForward, *, local_output: bool) -> str:
    where = ("fib daddr type local" if forward.host_address == "0.0.0.0"  # noqa: S104 - a test
             else f"ip daddr {forward.host_address}")
    if local_output:
        where += " ip daddr != 127.0.0.0/8"
    return (f"{where} {forward.proto} dport {forward.host_port} "
            f"dnat ip to {forward.guest_ip}:{forward.target_port}")


def rules(net: Network) -> dict[str, list[str]]:
    """The rules of each of ``net``'s chains, by role (without the comment)."""
    bridge, subnet = _parts(net)
    br = _quoted(bridge)
    if net.mode is NetworkMode.ISOLATED:
        return {"forward": [f"iifname {br} oifname {br} accept",
                            f"iifname {br} drop",
                            f"oifname {br} drop"]}
    forward = [
        f"iifname {br} oifname {br} accept",
        f"iifname {br} ip saddr {subnet} accept",
        f"iifname {br} reject",
        f"oifname {br} ip daddr {subnet} ct state established,related accept",
        *(f"oifname {br} ip daddr {f.guest_ip} {f.proto} dport {f.target_port} "
          "ct status dnat accept" for f in net.forwards),
        f"oifname {br} reject",
    ]
    postrouting = [
        f"ip saddr {subnet} ip daddr 224.0.0.0/24 return",
        f"ip saddr {subnet} ip daddr 255.255.255.255 return",
        f"ip saddr {subnet} ip daddr != {subnet} oifname != {br} masquerade",
        f"ip saddr {subnet} ip daddr {subnet} oifname {br} ct status dnat masquerade",
    ]
    return {
        "forward": forward,
        "postrouting": postrouting,
        "prerouting": [_forward_match(f, local_output=False) for f in net.forwards],
        "output": [_forward_match(f, local_output=True) for f in net.forwards],
    }


def rule_comment(net: Network, role: str, index: int, rule: str) -> str:
    """``virtkit:<uuid> <fingerprint>``: whose rule it is, and a hash of what it should be
    (its chain, position and text), so :func:`problems` notices a changed rule without
    having to parse nft's normalised expressions."""
    digest = hashlib.sha256(f"{role}\0{index}\0{rule}".encode()).hexdigest()[:12]
    return f"{net.owner_tag} {digest}"


def _delete_chain(name: str) -> list[str]:
    # add (no-op if present), flush (older kernels refuse to delete non-empty chains), delete
    where = f"{FAMILY} {TABLE} {name}"
    return [f"add chain {where}", f"flush chain {where}", f"delete chain {where}"]


def apply_script(net: Network) -> str:
    """The nft script that (re)installs ``net``'s chains in one transaction."""
    wanted = rules(net)
    lines = [f"add table {FAMILY} {TABLE}"]
    for spec in ROLES:
        name = chain_name(net, spec.role)
        if spec.role not in wanted:
            lines += _delete_chain(name)
            continue
        lines.append(f"add chain {FAMILY} {TABLE} {name} {{ type {spec.type} hook {spec.hook} "
                     f"priority {spec.priority}; policy accept; }}")
        lines.append(f"flush chain {FAMILY} {TABLE} {name}")
        lines += [f"add rule {FAMILY} {TABLE} {name} {rule} "
                  f"comment {_quoted(rule_comment(net, spec.role, index, rule))}"
                  for index, rule in enumerate(wanted[spec.role])]
    return "\n".join(lines) + "\n"


def remove_script(net: Network) -> str:
    """The nft script that deletes every chain of ``net`` (and nothing else)."""
    lines = [f"add table {FAMILY} {TABLE}"]
    for spec in ROLES:
        lines += _delete_chain(chain_name(net, spec.role))
    return "\n".join(lines) + "\n"


def _nft(args: list[str], netns: str | None, *, script: str | None = None,
         binary: str = "nft") -> subprocess.CompletedProcess[str]:
    program = shutil.which(binary)
    if program is None:
        raise HostError(f"nft program {binary!r} not found",
                        fix="install it: apt-get install nftables")
    try:
        return subprocess.run([*ns.command_prefix(netns), program, *args], input=script,
                              capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise HostError(f"nft {' '.join(args)} did not finish within {NFT_TIMEOUT:.0f} s",
                        fix="check the host's netfilter state with 'nft list ruleset'") from None


def _run_script(script: str, netns: str | None, what: str) -> None:
    result = _nft(["-f", "-"], netns, script=script)
    if result.returncode != 0:
        raise HostError(f"nft refused the rules to {what}: {result.stderr.strip()}",
                        fix="run virtkit as root on a kernel with nf_tables (nat, fib, reject)")


def apply(net: Network, *, netns: str | None = None) -> None:
    """Install or replace ``net``'s rules atomically (and enable forwarding for nat)."""
    if net.mode is NetworkMode.NAT:
        enable_forwarding(netns)
    _run_script(apply_script(net), netns, f"set up network {net.name!r}")


def remove(net: Network, *, netns: str | None = None) -> None:
    """Delete ``net``'s chains; other networks' chains and other tables stay untouched."""
    _run_script(remove_script(net), netns, f"remove network {net.name!r}")


def enable_forwarding(netns: str | None = None) -> bool:
    """Set net.ipv4.ip_forward=1 in ``netns`` (needed by NAT); True if it was off.

    It is never switched back off: other networks or the admin may rely on it.
    """
    if ns.read_sysctl(netns, "net.ipv4.ip_forward") == "1":
        return False
    ns.write_sysctl(netns, "net.ipv4.ip_forward", "1")
    return True


def list_table(netns: str | None = None) -> list[dict[str, Any]]:
    """The objects of our table as nft's JSON list (empty when the table does not exist)."""
    result = _nft(["-j", "list", "table", FAMILY, TABLE], netns)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return []
        raise HostError(f"nft cannot list table {FAMILY} {TABLE}: {result.stderr.strip()}",
                        fix="run virtkit as root")
    objects: list[dict[str, Any]] = json.loads(result.stdout).get("nftables", [])
    return objects


def problems(net: Network, *, netns: str | None = None) -> list[str]:
    """What is missing or different in ``net``'s chains (empty = all present and current)."""
    wanted = rules(net)
    objects = list_table(netns)
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    present: dict[str, list[str]] = {}
    for obj in objects:
        rule = obj.get("rule")
        if rule:  # every rule of the chain: a foreign one is a difference too
            present.setdefault(rule["chain"], []).append(str(rule.get("comment", "")))
    found = []
    for spec in ROLES:
        name = chain_name(net, spec.role)
        chain = chains.get(name)
        if spec.role not in wanted:
            if chain is not None:
                found.append(f"chain {name} should not exist")
            continue
        expected = [rule_comment(net, spec.role, i, r) for i, r in enumerate(wanted[spec.role])]
        if chain is None:
            found.append(f"chain {name} is missing")
        elif (chain.get("type"), chain.get("hook"), chain.get("prio")) != (
                spec.type, spec.hook, spec.priority):
            found.append(f"chain {name} is not a {spec.type} chain on {spec.hook}")
        elif present.get(name, []) != expected:
            found.append(f"chain {name} has {len(present.get(name, []))} rules where "
                         f"{len(expected)} are expected, or they differ")
    if net.mode is NetworkMode.NAT and ns.read_sysctl(netns, "net.ipv4.ip_forward") != "1":
        found.append("net.ipv4.ip_forward is 0")
    return found


def check(net: Network, *, netns: str | None = None) -> bool:
    """Whether all of ``net``'s rules are in place."""
    return not problems(net, netns=netns)


def chains_of(net: Network, *, netns: str | None = None) -> list[str]:
    """Names of ``net``'s chains present in our table."""
    prefix = f"vk-{net.uuid}-"
    return sorted(o["chain"]["name"] for o in list_table(netns)
                  if "chain" in o and o["chain"]["name"].startswith(prefix))
