"""The TLS listener: the same API over TCP, for remote clients with an API token.

``virtkitd --listen-tls HOST:PORT`` (or ``VIRTKITD_LISTEN_TLS``) serves the app on
TCP with TLS; there is no way to serve it on TCP without TLS.  The certificate and key
default to the ones ``virtkit tls setup`` makes under ``<root>/tls/``; the daemon
refuses to start the listener without them and says how to make them.  Every
request on it needs a token (see :mod:`virtkit.api.auth`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from virtkit.errors import InvalidSpec, VirtkitError
from virtkit.service.tls import server_context

DEFAULT_PORT = 16515


@dataclass(frozen=True)
class TlsListen:
    host: str
    port: int
    cert: Path
    key: Path


def parse_address(text: str, default_port: int = DEFAULT_PORT,
                  option: str = "--listen-tls") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` (the default port) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise InvalidSpec(f"{option} {text!r}: give HOST:PORT, e.g. 0.0.0.0:{default_port}",
                          field=option.lstrip("-"))
    return host, port


def check(listen: TlsListen) -> ssl.SSLContext:
    """The server's TLS context, or a VirtkitError naming the missing piece and the fix."""
    for what, path in (("certificate", listen.cert), ("key", listen.key)):
        if not path.is_file():
            raise VirtkitError(
                f"the TLS listener needs a {what}: {path} does not exist",
                fix="run 'virtkit tls setup --hostname HOST' first (or give --tls-cert and "
                    "--tls-key)")
    try:
        return server_context(listen.cert, listen.key)
    except (ssl.SSLError, OSError) as exc:
        raise VirtkitError(f"cannot use {listen.cert} and {listen.key}: {exc}",
                           fix="give a PEM certificate and its unencrypted key, or re-run "
                               "'virtkit tls setup --force'") from None


async def start(runner: web.AppRunner, listen: TlsListen,
                option: str = "--listen-tls") -> web.TCPSite:
    context = check(listen)
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=context,
                       reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise VirtkitError(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
                           fix=f"choose another {option} address or port") from None
    return site
