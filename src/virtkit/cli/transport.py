"""How the CLI reaches a daemon: the connection URI and one transport per scheme.

``virtkit -c URI`` (``--connect``; ``$VIRTKIT_DEFAULT_URI``) picks the daemon:

- none, ``virtkit:///`` -- the local daemon of ``--root``/``$VIRTKIT_ROOT`` (the default);
  ``virtkit:///system`` the system daemon (/var/lib/virtkit), ``virtkit:///session``
  the per-user one (~/.local/share/virtkit);
- ``virtkit+ssh://[user@]host[:port][/system | /path/to/virtkitd.sock][?keyfile=F&
  known_hosts=F&no_verify=1]`` -- the remote daemon's unix socket, forwarded by
  ``ssh -N -L`` for the duration of the command (virsh's qemu+ssh);
- ``virtkit+tls://host[:port]`` -- the daemon's TLS listener, with an API token.

libvirt's URIs are accepted as aliases (:data:`LIBVIRT_SCHEMES`): ``qemu:///system``
and ``qemu:///session`` are the local daemons, ``qemu+ssh://[user@]host/system`` is
``virtkit+ssh://``, ``qemu+tls://host/system`` is ``virtkit+tls://``.

A transport opens connected sockets (:meth:`Transport.open`) and says which headers
every request carries; the HTTP, streaming and WebSocket clients run over any of them.
Every failure to connect is one :class:`DaemonUnreachable` naming the problem and the fix.
``ssl`` is imported only for TLS: the local path stays fast to start.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from virtkit.errors import DaemonUnreachable, InvalidSpec, VirtkitError
from virtkit.unixsock import connect_unix

TYPE_CHECKING = False  # typing costs every CLI call ~3 ms to import
if TYPE_CHECKING:
    import ssl
    from typing import Any

URI_ENV = "VIRTKIT_DEFAULT_URI"
TOKEN_ENV, TOKEN_FILE_ENV = "VIRTKIT_TOKEN", "VIRTKIT_TOKEN_FILE"
CA_ENV, FINGERPRINT_ENV = "VIRTKIT_TLS_CA", "VIRTKIT_TLS_FINGERPRINT"
TLS_PORT = 16515
SYSTEM_ROOT = Path("/var/lib/virtkit")
SYSTEM_SOCKET = SYSTEM_ROOT / "virtkitd.sock"
SSH_SETUP_TIMEOUT = 30.0
_SSH_QUERY = {"keyfile", "known_hosts", "no_verify"}
#: libvirt's schemes (what virsh -c takes) -> virtkit's
LIBVIRT_SCHEMES = {"qemu": "virtkit", "qemu+unix": "virtkit", "qemu+ssh": "virtkit+ssh",
                   "qemu+tls": "virtkit+tls"}


class Uri:
    """A parsed connection URI (a plain class: dataclasses cost start-up time)."""

    __slots__ = ("host", "port", "query", "scheme", "socket", "text", "user")

    def __init__(self, text: str, scheme: str, *, host: str = "", port: int | None = None,
                 user: str | None = None, socket: str = "",
                 query: dict[str, str] | None = None) -> None:
        self.text, self.scheme, self.host, self.port = text, scheme, host, port
        self.user, self.socket, self.query = user, socket, query or {}

    @property
    def remote(self) -> bool:
        return self.scheme != "virtkit"

    def __repr__(self) -> str:
        return (f"Uri({self.scheme!r}, host={self.host!r}, port={self.port!r}, "
                f"user={self.user!r}, socket={self.socket!r}, query={self.query!r})")


def _bad(text: str, why: str) -> InvalidSpec:
    return InvalidSpec(f"bad connection URI {text!r}: {why}",
                       fix="use virtkit:///system, virtkit+ssh://[user@]host[:port][/socket] "
                           "or virtkit+tls://host[:port]")


def _check_libvirt_path(text: str, scheme: str, path: str) -> None:
    """A libvirt URI names the driver instance in its path: /system or /session
    (locally), /system on another host (a remote session daemon's socket is in a
    home this client does not know)."""
    allowed = ("/system", "/session") if scheme in ("qemu", "qemu+unix") else ("/system",)
    if path not in allowed:
        raise _bad(text, f"{scheme}:// takes the path {' or '.join(allowed)}, not "
                   f"'{path or '(none)'}'" + ("; for another socket use virtkit+ssh://host"
                                              "/path/to/virtkitd.sock"
                                              if scheme == "qemu+ssh" else ""))


def parse_uri(text: str) -> Uri:
    """Parse a connection URI; anything unexpected is refused, naming the part."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _bad(text, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme in LIBVIRT_SCHEMES:
        _check_libvirt_path(text, scheme, unquote(parts.path))
        scheme = LIBVIRT_SCHEMES[scheme]
    if scheme not in ("virtkit", "virtkit+ssh", "virtkit+tls"):
        raise _bad(text, f"unknown scheme '{parts.scheme}'" if parts.scheme
                   else "no scheme")
    if parts.fragment:
        raise _bad(text, "a URI has no #fragment here")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    path = unquote(parts.path)
    if scheme == "virtkit":
        if parts.netloc:
            raise _bad(text, "a local URI has no host (virtkit:///system); "
                       "for a remote host use virtkit+ssh:// or virtkit+tls://")
        if path not in ("", "/", "/system", "/session"):
            raise _bad(text, f"unknown local path '{path}' (use /system or /session)")
        if query:
            raise _bad(text, "a local URI takes no ?options")
        return Uri(text, scheme, socket=path.strip("/"))
    host = parts.hostname or ""
    if not host:
        raise _bad(text, "no host name")
    if host.startswith("-"):
        raise _bad(text, f"host '{host}' starts with '-'")
    if scheme == "virtkit+tls":
        if parts.username or parts.password:
            raise _bad(text, "virtkit+tls:// authenticates with an API token, not a user name")
        if path not in ("", "/", "/system"):
            raise _bad(text, f"virtkit+tls:// takes no path ('{path}')")
        if query:
            raise _bad(text, f"virtkit+tls:// takes no ?options ({', '.join(query)}); "
                       "use --ca, --tls-fingerprint and --token")
        return Uri(text, scheme, host=host, port=port or TLS_PORT)
    unknown = set(query) - _SSH_QUERY
    if unknown:
        raise _bad(text, f"unknown option(s) {', '.join(sorted(unknown))} "
                   f"(known: {', '.join(sorted(_SSH_QUERY))})")
    if parts.password:
        raise _bad(text, "no passwords in URIs: virtkit+ssh:// uses ssh keys")
    if path in ("", "/", "/system"):
        remote = str(SYSTEM_SOCKET)
    elif path.startswith("/") and ":" not in path:
        remote = path
    else:
        raise _bad(text, f"'{path}' is not an absolute socket path (or /system)")
    return Uri(text, scheme, host=host, port=port, user=unquote(parts.username or "") or None,
               socket=remote, query=query)


class Transport:
    """Opens connected sockets to one daemon; the base is the local unix socket."""

    #: True when the daemon runs on this host and may take our file descriptors.
    local = True
    host_header = "localhost"

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    @property
    def label(self) -> str:
        return f"virtkitd at {self.socket_path}"

    def headers(self) -> dict[str, str]:
        return {}

    def open(self, timeout: float) -> socket.socket:
        try:
            return connect_unix(self.socket_path, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"virtkitd is not running at {self.socket_path}",
                                    fix="start it with 'virtkitd'") from exc
        except PermissionError as exc:
            raise DaemonUnreachable(
                f"no permission to use {self.socket_path}",
                fix="join the 'virtkit' group (usermod -aG virtkit $USER), or run as root") \
                from exc

    def diagnose(self) -> VirtkitError | None:
        """A better error for a connection that broke after it was opened (ssh)."""
        return None

    def close(self) -> None:
        """Release what the transport holds (the ssh process)."""


class TlsTransport(Transport):
    """TCP + TLS to the daemon's TLS listener; every request carries the API token."""

    local = False

    def __init__(self, uri: Uri, token: str, ca: Path | None = None,
                 fingerprint: str | None = None) -> None:
        self.uri, self.token, self.ca = uri, token, ca
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.host_header = f"{uri.host}:{uri.port}"

    @property
    def label(self) -> str:
        return f"virtkitd at {self.uri.host}:{self.uri.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _context(self) -> ssl.SSLContext:
        import ssl

        if self.fingerprint:  # pinned: the certificate's hash is the trust
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca is not None:
            try:
                context = ssl.create_default_context(cafile=str(self.ca))
            except (OSError, ssl.SSLError) as exc:
                raise DaemonUnreachable(f"cannot read the CA certificate {self.ca}: {exc}",
                                        fix="copy the server's <root>/tls/ca.pem there, or "
                                            "give --ca FILE") from None
        else:
            context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def open(self, timeout: float) -> socket.socket:
        import ssl

        host, port = self.uri.host, int(self.uri.port or TLS_PORT)
        where = f"{host}:{port}"
        context = self._context()
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except socket.gaierror as exc:
            raise DaemonUnreachable(f"cannot resolve host '{host}': {exc.strerror}",
                                    fix="check the host name in the URI") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(f"nothing listens on {where}",
                                    fix=f"start 'virtkitd --listen-tls 0.0.0.0:{port}' on "
                                        f"{host}, or correct the port in the URI") from None
        except TimeoutError:
            raise DaemonUnreachable(f"{where} did not answer within {timeout:.0f} s",
                                    fix="check the host is up and no firewall drops the "
                                        "port") from None
        except OSError as exc:
            raise DaemonUnreachable(f"cannot reach {where}: {exc.strerror or exc}",
                                    fix="check the host is up and reachable") from None
        try:
            sock = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise self._verify_error(exc) from None
        except (ssl.SSLError, ConnectionResetError, TimeoutError, OSError) as exc:
            raw.close()
            raise DaemonUnreachable(f"the TLS handshake with {where} failed: {exc}",
                                    fix=f"check that {port} is virtkitd's --listen-tls "
                                        "port") from None
        if self.fingerprint:
            seen = cert_fingerprint(sock.getpeercert(binary_form=True) or b"")
            if seen != self.fingerprint:
                sock.close()
                raise DaemonUnreachable(
                    f"the certificate of {where} has fingerprint {seen}, not the pinned "
                    f"{self.fingerprint}",
                    fix="check the fingerprint 'virtkit tls setup' printed on the server "
                        "(a changed certificate may mean someone is in the middle)")
        return sock

    def _verify_error(self, exc: Any) -> DaemonUnreachable:
        where = f"{self.uri.host}:{self.uri.port}"
        reason = str(getattr(exc, "verify_message", "") or exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return DaemonUnreachable(
                f"the certificate of {where} is not for '{self.uri.host}' ({reason})",
                fix=f"on the server: 'virtkit tls setup --force --hostname {self.uri.host}' "
                    "and restart virtkitd; or connect by a name the certificate has")
        trusted = f"the CA in {self.ca}" if self.ca else "the system's CAs"
        return DaemonUnreachable(
            f"the certificate of {where} is not trusted by {trusted} ({reason})",
            fix="copy the server's <root>/tls/ca.pem and give it with --ca FILE (or "
                f"${CA_ENV}), or pin --tls-fingerprint from 'virtkit tls setup'")


def normalize_fingerprint(text: str) -> str:
    digits = text.replace(":", "").replace(" ", "").lower()
    if digits.startswith("sha256"):
        digits = digits[6:].lstrip("=/")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise InvalidSpec(f"--tls-fingerprint {text!r}: give the SHA-256 fingerprint "
                          "(64 hex digits, colons allowed) 'virtkit tls setup' printed")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()


def cert_fingerprint(der: bytes) -> str:
    import hashlib

    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def ssh_command(uri: Uri, local_socket: Path) -> list[str]:
    """The ssh command that forwards ``local_socket`` to the remote daemon's socket.

    BatchMode: never a password or host key prompt (the CLI is not interactive for
    ssh); the local end is made 0600 in a private folder.
    """
    argv = ["ssh", "-N", "-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindMask=0177", "-o", "ConnectTimeout=15",
            "-o", "ServerAliveInterval=15", "-L", f"{local_socket}:{uri.socket}"]
    if uri.port:
        argv += ["-p", str(uri.port)]
    if uri.user:
        argv += ["-l", uri.user]
    if uri.query.get("keyfile"):
        argv += ["-i", uri.query["keyfile"], "-o", "IdentitiesOnly=yes"]
    if uri.query.get("known_hosts"):
        argv += ["-o", f"UserKnownHostsFile={uri.query['known_hosts']}"]
    if uri.query.get("no_verify", "0") not in ("", "0"):
        argv += ["-o", "StrictHostKeyChecking=no"]
    return [*argv, "--", uri.host]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SshTransport(Transport):
    """The remote daemon's unix socket, forwarded by an ``ssh -N -L`` started on first use
    and ended (by its PID) by :meth:`close`."""

    local = False

    def __init__(self, uri: Uri) -> None:
        self.uri = uri
        self.host_header = "localhost"
        self._folder: Path | None = None
        self._process: Any = None
        self.socket_path = Path("/nonexistent")  # the forward's local end, once started

    @property
    def where(self) -> str:
        user = f"{self.uri.user}@" if self.uri.user else ""
        port = f" port {self.uri.port}" if self.uri.port else ""
        return f"{user}{self.uri.host}{port}"

    @property
    def label(self) -> str:
        return f"virtkitd on {self.where} ({self.uri.socket})"

    def open(self, timeout: float) -> socket.socket:
        if self._process is None:
            self._start()
        try:
            return connect_unix(self.socket_path, timeout=timeout)
        except OSError as exc:
            raise self.diagnose() or DaemonUnreachable(
                f"the ssh forward to {self.where} is gone: {exc}") from None

    def _start(self) -> None:
        import subprocess
        import tempfile

        self._folder = Path(tempfile.mkdtemp(prefix="virtkit-ssh-"))
        self.socket_path = self._folder / "virtkitd.sock"
        argv = ssh_command(self.uri, self.socket_path)
        with open(self._folder / "ssh.stderr", "wb") as stderr:
            try:
                self._process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    preexec_fn=_die_with_parent)  # the CLI is single-threaded
            except FileNotFoundError:
                self.close()
                raise DaemonUnreachable("virtkit+ssh:// needs the ssh command",
                                        fix="apt-get install openssh-client") from None
        deadline = time.monotonic() + SSH_SETUP_TIMEOUT
        while not self.socket_path.exists():
            if self._process.poll() is not None:
                error = self._login_error()
                self.close()
                raise error
            if time.monotonic() > deadline:
                self.close()
                raise DaemonUnreachable(
                    f"ssh to {self.where} did not connect within {SSH_SETUP_TIMEOUT:.0f} s",
                    fix=f"run 'ssh {self._hint()}' by hand to see why")
            time.sleep(0.02)

    def _stderr(self) -> str:
        if self._folder is None:
            return ""
        try:
            return (self._folder / "ssh.stderr").read_text(errors="replace").strip()
        except OSError:
            return ""

    def _hint(self) -> str:
        port = f"-p {self.uri.port} " if self.uri.port else ""
        user = f"{self.uri.user}@" if self.uri.user else ""
        return f"{port}{user}{self.uri.host}"

    def _login_error(self) -> DaemonUnreachable:
        text = self._stderr()
        last = text.splitlines()[-1] if text else f"exit status {self._process.returncode}"
        lowered = text.lower()
        if "permission denied" in lowered:
            fix = (f"virtkit runs ssh with BatchMode=yes (no password prompts): set up key "
                   f"login (ssh-copy-id {self._hint()}) or an ssh-agent, or name a key with "
                   "?keyfile=PATH in the URI")
            return DaemonUnreachable(f"ssh refused the login to {self.where}: {last}", fix=fix)
        if "host key verification failed" in lowered or "host key" in lowered:
            return DaemonUnreachable(
                f"ssh does not know the host key of {self.where}: {last}",
                fix=f"connect once with 'ssh {self._hint()}' to check and accept its key "
                    "(or ?known_hosts=FILE in the URI)")
        if "could not resolve" in lowered:
            return DaemonUnreachable(f"cannot resolve host '{self.uri.host}': {last}",
                                     fix="check the host name in the URI")
        if "connection refused" in lowered or "timed out" in lowered or "no route" in lowered:
            return DaemonUnreachable(f"cannot reach sshd on {self.where}: {last}",
                                     fix=f"check that sshd runs on {self.uri.host} and the "
                                         "port is right")
        return DaemonUnreachable(f"ssh to {self.where} failed: {last}",
                                 fix=f"run 'ssh {self._hint()}' by hand to see why")

    def diagnose(self) -> VirtkitError | None:
        """ssh reports a failed remote connect on its stderr a moment after closing ours."""
        deadline = time.monotonic() + 1.0
        while True:
            text = self._stderr().lower()
            if "open failed" in text or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if "open failed" not in text:
            return None
        where, sock = self.uri.host, self.uri.socket
        # sshd does not say why (no socket, no daemon, no permission, forwarding off)
        return DaemonUnreachable(
            f"sshd on {where} could not connect to {sock} (is virtkitd running there?)",
            fix=f"start virtkitd on {where}; name its socket if it is elsewhere "
                f"(virtkit+ssh://{where}/path/to/virtkitd.sock); the ssh user needs access "
                "to it (root or the 'virtkit' group) and sshd must allow forwarding "
                "(AllowStreamLocalForwarding, AllowTcpForwarding)")

    def close(self) -> None:
        import shutil
        import subprocess

        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "virtkit"


def _read_token_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise DaemonUnreachable(f"cannot read the token file {path}: {exc.strerror}",
                                fix="give the file 'virtkit token create' output was saved "
                                    "in, or --token") from None


def tls_transport(uri: Uri, *, token: str | None = None, token_file: Path | None = None,
                  ca: Path | None = None, fingerprint: str | None = None) -> TlsTransport:
    """The TLS transport with the token and trust found from options, environment and
    the per-host defaults under ~/.config/virtkit/."""
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        file = token_file or (Path(os.environ[TOKEN_FILE_ENV])
                              if os.environ.get(TOKEN_FILE_ENV) else None)
        default = _config_home() / "tokens" / uri.host
        if file is None and default.is_file():
            file = default
        if file is not None:
            token = _read_token_file(file)
    if not token:
        raise DaemonUnreachable(
            f"no API token for {uri.text}",
            fix="create one on the server with 'virtkit token create' and give it with "
                f"--token, ${TOKEN_ENV}, ${TOKEN_FILE_ENV} or ~/.config/virtkit/tokens/"
                f"{uri.host}")
    fingerprint = fingerprint or os.environ.get(FINGERPRINT_ENV) or None
    ca = ca or (Path(os.environ[CA_ENV]) if os.environ.get(CA_ENV) else None)
    if ca is None and fingerprint is None:
        for candidate in (_config_home() / "tls" / uri.host / "ca.pem",
                          _config_home() / "tls" / "ca.pem"):
            if candidate.is_file():
                ca = candidate
                break
    if ca is not None and not ca.is_file():
        raise DaemonUnreachable(f"the CA certificate {ca} does not exist",
                                fix="copy the server's <root>/tls/ca.pem there")
    return TlsTransport(uri, token, ca, fingerprint)


def local_root(uri: Uri) -> Path | None:
    """The state root a local URI names (None: the default, --root or $VIRTKIT_ROOT)."""
    if uri.socket == "system":
        return SYSTEM_ROOT
    if uri.socket == "session":
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data) / "virtkit"
    return None


def remote_transport(uri: Uri, **tls: Any) -> Transport:
    """The transport of a remote URI (ssh or tls)."""
    if uri.scheme == "virtkit+ssh":
        return SshTransport(uri)
    return tls_transport(uri, **tls)
