"""virtkit.network: virtual networks (nat, isolated, bridge) as a library.

model.py (the Network spec), links.py (bridges, taps, subnets via pyroute2),
dnsmasq.py (DHCP/DNS per network), nftables.py (virtkit's own ``inet virtkit``
table), netns.py (doing all of it inside a named network namespace) and
backend.py (NetworkBackend: start/stop/status/repair with undo).
"""
