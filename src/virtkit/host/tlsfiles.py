"""The certificate files of ``virtkit tls setup`` and the web console, made with the
``openssl`` command (Debian's openssl package; no Python crypto dependency).

Everything is made in a private temporary folder and moved into place at the end,
so a failure leaves nothing half-written and a key is never readable by others, not
even briefly.  Keys are ECDSA P-256; the CA is valid 10 years, a server certificate
825 days (the longest most TLS clients accept).  The policy (whether to replace a
certificate, which names it carries) is the service's: service/tls.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from virtkit.errors import HostError

CA_DAYS = 3650
SERVER_DAYS = 825


class CertFolder:
    """A folder with a CA and one certificate signed by it: ``ca.pem``, ``ca-key.pem``,
    ``NAME.pem``, ``NAME-key.pem`` (the daemon's TLS folder: server; the cluster's: host)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self._name = name

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.folder / f"{self._name}.pem"

    @property
    def key(self) -> Path:
        return self.folder / f"{self._name}-key.pem"


def openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise HostError("the openssl command is missing", fix="apt-get install openssl")
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostError(f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}")



def issue(folder: Path, names: list[str], entries: list[str]) -> bool:
    """A server certificate for ``names`` (subjectAltName ``entries``) signed by the
    folder's CA, made first when there is none; whether a new CA was made."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    ca_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    work = Path(tempfile.mkdtemp(prefix=".setup-", dir=folder))
    try:
        new_ca = not (ca_path.exists() and ca_key_path.exists())
        ca, ca_key = (work / "ca.pem", work / "ca-key.pem") if new_ca \
            else (ca_path, ca_key_path)
        if new_ca:
            make_ca(ca, ca_key, names[0])
        _make_server(work, ca, ca_key, names[0], entries)
        for path in work.glob("*-key.pem"):
            path.chmod(0o600)
        for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
            if (work / name).exists():
                os.replace(work / name, folder / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return new_ca


def self_signed(folder: Path, cert: Path, key: Path, names: list[str],
                entries: list[str]) -> None:
    """A self-signed server certificate ``cert`` with its ``key`` (the web console's)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    work = Path(tempfile.mkdtemp(prefix=".web-", dir=folder))
    try:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
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


def make_ca(ca: Path, ca_key: Path, host: str) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(ca_key))
    ca_key.chmod(0o600)
    openssl("req", "-x509", "-new", "-key", str(ca_key), "-sha256",
             "-days", str(CA_DAYS), "-subj", f"/O=virtkit/CN=virtkit CA {host}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", "-out", str(ca))


def _make_server(work: Path, ca: Path, ca_key: Path, host: str,
                 entries: list[str]) -> None:
    key, csr, ext = work / "server-key.pem", work / "server.csr", work / "ext.cnf"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(key))
    key.chmod(0o600)
    openssl("req", "-new", "-key", str(key), "-subj", f"/O=virtkit/CN={host}",
             "-out", str(csr))
    ext.write_text("[v3]\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\n"
                   f"subjectAltName={','.join(entries)}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-set_serial", "0x" + secrets.token_hex(16), "-days", str(SERVER_DAYS),
             "-sha256", "-extfile", str(ext), "-extensions", "v3",
             "-out", str(work / "server.pem"))
    with contextlib.suppress(FileNotFoundError):
        csr.unlink()
