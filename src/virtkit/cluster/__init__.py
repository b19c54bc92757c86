"""The cluster's lower half: etcd (the client, the supervised member process) and the
host records kept on host leases.  See docs/cluster.md and docs/architecture.md.

Layer: beside ``runtime``, below ``service``; it may use ``model``, ``host``, ``store``,
``errors`` and ``paths``, never ``runtime``, ``service`` or the front ends
(tests/unit/test_layers.py).
"""
