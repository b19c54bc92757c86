"""The cluster's CA and its hosts' certificates (openssl, as ``tls setup``: service/tls.py).

Files under ``<root>/cluster/pki/``: ``ca.pem``, ``ca-key.pem`` (voters only: any
voter can admit a new host), ``host.pem``, ``host-key.pem``.  A host certificate is
both a server certificate (its etcd's client and peer ports) and a client one (its
daemon's etcd client, the peer connections), with the host's address as IP SAN.
A joining host makes its key itself and sends only a CSR: its key never travels.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import ssl
import tempfile
from pathlib import Path

from virtkit.host import tlsfiles
from virtkit.host.tlsfiles import openssl
from virtkit.service.tls import fingerprint, san_entries

HOST_DAYS = 3650


class ClusterPki(tlsfiles.CertFolder):
    """The cluster's CA and this host's certificate (``<root>/cluster/pki``)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "host")

    def _ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def make_ca(self, cluster: str) -> str:
        """A new cluster CA; its fingerprint."""
        self._ensure()
        tlsfiles.make_ca(self.ca, self.ca_key, f"cluster {cluster}")
        return fingerprint(self.ca.read_text())

    def install_ca(self, ca_pem: str, ca_key_pem: str | None) -> None:
        self._ensure()
        _write(self.ca, ca_pem, 0o644)
        if ca_key_pem:
            _write(self.ca_key, ca_key_pem, 0o600)

    def make_csr(self, name: str) -> str:
        """A fresh host key (kept here) and a CSR for it."""
        self._ensure()
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(self.key))
        self.key.chmod(0o600)
        csr = self.folder / "host.csr"
        openssl("req", "-new", "-key", str(self.key), "-subj", f"/O=virtkit/CN={name}",
                 "-out", str(csr))
        text = csr.read_text()
        csr.unlink()
        return text

    def sign(self, csr_pem: str, name: str, address: str) -> str:
        """A host certificate for ``csr_pem``: the SAN (what peers check) is chosen here
        from the admitted name and address, never taken from the request."""
        entries = san_entries([address, name, "127.0.0.1"])
        work = Path(tempfile.mkdtemp(prefix=".sign-", dir=self.folder))
        try:
            (work / "host.csr").write_text(csr_pem)
            (work / "ext.cnf").write_text(
                "[v3]\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n"
                f"subjectAltName={','.join(entries)}\n")
            openssl("x509", "-req", "-in", str(work / "host.csr"), "-CA", str(self.ca),
                     "-CAkey", str(self.ca_key), "-set_serial", "0x" + secrets.token_hex(16),
                     "-days", str(HOST_DAYS), "-sha256", "-extfile", str(work / "ext.cnf"),
                     "-extensions", "v3",
                     "-out", str(work / "host.pem"))
            return (work / "host.pem").read_text()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def install_cert(self, cert_pem: str) -> None:
        _write(self.cert, cert_pem, 0o644)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def server_context(pki: ClusterPki) -> ssl.SSLContext:
    """The cluster API listener's TLS (mutual): this host's certificate, and only
    clients whose certificate the cluster CA signed (another host's daemon)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.cert, pki.key)
    return context


def client_context(pki: ClusterPki) -> ssl.SSLContext:
    """How this host's daemon calls another's cluster API: it trusts only the cluster
    CA (the owner's certificate names its address) and shows its own certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.cert, pki.key)
    return context
