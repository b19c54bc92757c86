"""Who is asking: the API marks a request that came over the network (a token over TLS,
a web console session) so the path policy (host/pathpolicy.py) limits it to pool
volumes.  A context variable, so it follows the request into the worker threads it
starts (``asyncio.to_thread`` copies the context) and never leaks into another one."""

from __future__ import annotations

from virtkit.host.pathpolicy import as_remote_caller, remote_caller, remote_may_define_pools

__all__ = ["as_remote_caller", "remote_caller", "remote_may_define_pools"]
