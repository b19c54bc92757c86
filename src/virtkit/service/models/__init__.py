"""The typed service boundary: what service methods take and return.

One module per service area (networks.py, snapshots.py, stats.py, host.py,
guest.py, tokens.py, clones.py).  A result is a :class:`~.base.Result`; the API
answers ``result.wire()`` (api/common.json_response does it), and the OpenAPI
document takes the response schemas from the same classes (api/openapi.py).
"""
