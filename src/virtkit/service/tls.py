"""``virtkit tls setup``: a private CA and a server certificate for the TLS listener.

Made with the ``openssl`` command (Debian's openssl package; no Python crypto
dependency).  Files under ``<root>/tls/``: ``ca.pem`` (give it to clients),
``ca-key.pem``, ``server.pem``, ``server-key.pem`` (keys 0600).  Everything is made in
a private temporary folder and moved into place at the end, so a failure leaves
nothing half-written and a key is never readable by others, not even briefly.

Keys are ECDSA P-256; the CA is valid 10 years, the server certificate 825 days
(the longest most TLS clients accept) with every host name and address it is
reached by as subjectAltName.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from virtkit.errors import Conflict, HostError, InvalidSpec

CA_DAYS = 3650
SERVER_DAYS = 825
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


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise HostError("the openssl command is missing", fix="apt-get install openssl")
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostError(f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}")


class TlsService:
    """The CA and server certificate of one daemon (``folder`` = ``<root>/tls``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

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
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        work = Path(tempfile.mkdtemp(prefix=".setup-", dir=self.folder))
        try:
            new_ca = not (self.ca.exists() and self.ca_key.exists())
            ca, ca_key = (work / "ca.pem", work / "ca-key.pem") if new_ca \
                else (self.ca, self.ca_key)
            if new_ca:
                self._make_ca(ca, ca_key, names[0])
            self._make_server(work, ca, ca_key, names[0], entries)
            for path in work.glob("*-key.pem"):
                path.chmod(0o600)
            for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
                if (work / name).exists():
                    os.replace(work / name, self.folder / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
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
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        work = Path(tempfile.mkdtemp(prefix=".web-", dir=self.folder))
        try:
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", str(work / "web-key.pem"), "-sha256",
                     "-days", str(SERVER_DAYS), "-subj", f"/O=virtkit/CN={names[0]}",
                     "-addext", f"subjectAltName={','.join(entries)}",
                     "-addext", "extendedKeyUsage=serverAuth",
                     "-out", str(work / "web.pem"))
            (work / "web-key.pem").chmod(0o600)
            os.replace(work / "web-key.pem", key)
            os.replace(work / "web.pem", cert)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return cert, key

    @staticmethod
    def _make_ca(ca: Path, ca_key: Path, host: str) -> None:
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(ca_key))
        ca_key.chmod(0o600)
        _openssl("req", "-x509", "-new", "-key", str(ca_key), "-sha256",
                 "-days", str(CA_DAYS), "-subj", f"/O=virtkit/CN=virtkit CA {host}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash", "-out", str(ca))

    @staticmethod
    def _make_server(work: Path, ca: Path, ca_key: Path, host: str,
                     entries: list[str]) -> None:
        key, csr, ext = work / "server-key.pem", work / "server.csr", work / "ext.cnf"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(key))
        key.chmod(0o600)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/O=virtkit/CN={host}",
                 "-out", str(csr))
        ext.write_text("[v3]\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                       "authorityKeyIdentifier=keyid,issuer\n"
                       f"subjectAltName={','.join(entries)}\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", str(SERVER_DAYS),
                 "-sha256", "-extfile", str(ext), "-extensions", "v3",
                 "-out", str(work / "server.pem"))
        with contextlib.suppress(FileNotFoundError):
            csr.unlink()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS listener's context: TLS 1.2 or newer, the given certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
