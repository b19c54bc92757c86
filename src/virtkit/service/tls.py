"""``virtkit tls setup``: a private CA and a server certificate for the TLS listener.

The files are made by host/tlsfiles.py (the ``openssl`` command), under
``<root>/tls/``: ``ca.pem`` (give it to clients), ``ca-key.pem``, ``server.pem``,
``server-key.pem`` (keys 0600).

Keys are ECDSA P-256; the CA is valid 10 years, the server certificate 825 days
(the longest most TLS clients accept) with every host name and address it is
reached by as subjectAltName.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import ssl
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, InvalidSpec
from virtkit.host import tlsfiles

_DNS_RE = re.compile(r"^(?=.{1,253}$)(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def default_hostnames() -> list[str]:
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def san_entries(hostnames: list[str]) -> list[str]:
    """subjectAltName entries (``DNS:x``/``IP:y``); a name that is neither is refused."""
    entries = []
    for name in hostnames:
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            if not _DNS_RE.match(name):
                raise InvalidSpec(f"{name!r} is not a host name or an IP address",
                                  field="hostname") from None
            entries.append(f"DNS:{name.lower()}")
    return list(dict.fromkeys(entries))


def fingerprint(pem: str) -> str:
    """SHA-256 of a PEM certificate's DER bytes, as AB:CD:... (what --tls-fingerprint pins)."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class TlsService(tlsfiles.CertFolder):
    """The CA and server certificate of one daemon (``folder`` = ``<root>/tls``)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "server")

    def info(self) -> dict[str, Any]:
        if not self.cert.exists():
            return {"configured": False, "folder": str(self.folder)}
        pem = self.cert.read_text()
        return {"configured": True, "folder": str(self.folder), "ca": str(self.ca),
                "cert": str(self.cert), "key": str(self.key), "fingerprint": fingerprint(pem),
                "ca_pem": self.ca.read_text() if self.ca.exists() else None}

    def setup(self, hostnames: list[str] | None = None, *, force: bool = False) -> dict[str, Any]:
        """Make the CA (unless one exists) and a server certificate for ``hostnames``."""
        names = list(dict.fromkeys([*(hostnames or []), *default_hostnames()]))
        entries = san_entries(names)
        if self.cert.exists() and not force:
            raise Conflict(f"a server certificate already exists in {self.folder}",
                           fix="add --force to issue a new one (the CA is kept)")
        new_ca = tlsfiles.issue(self.folder, names, entries)
        return {**self.info(), "hostnames": names, "new_ca": new_ca}

    def web_certificate(self, hostnames: list[str] | None = None) -> tuple[Path, Path]:
        """The web console's certificate and key: the server certificate of ``tls setup``
        when there is one, else a self-signed one made once (``web.pem``, ``web-key.pem``).
        """
        if self.cert.exists() and self.key.exists():
            return self.cert, self.key
        cert, key = self.folder / "web.pem", self.folder / "web-key.pem"
        if cert.exists() and key.exists():
            return cert, key
        names = list(dict.fromkeys([*(hostnames or []), *default_hostnames()]))
        entries = san_entries(names)
        tlsfiles.self_signed(self.folder, cert, key, names, entries)
        return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS listener's context: TLS 1.2 or newer, the given certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
