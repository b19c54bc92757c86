"""Remote connections with real processes: a daemon with a TLS listener, the real CLI
with -c virtkit+tls://, a private sshd for virtkit+ssh://, and every refusal.

One daemon serves the module (TLS set up over its unix socket, then restarted with
--listen-tls on a free port).  The sshd is started and stopped by PID by its fixture.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.cli.client import ApiError, Client
from virtkit.cli.transport import parse_uri, tls_transport
from virtkit.images.tinyguest import BOOT_MARKER, TinyGuest
from virtkit.service.tls import TlsService
from virtkit.service.tokens import split_token
from virtkit.store.db import Store

from .conftest import DaemonHandle, free_port, running_daemon, start_daemon, wait_for


class Remote:
    """The TLS side of the module's daemon: URI, CA, tokens, and a CLI runner."""

    def __init__(self, daemon: DaemonHandle, port: int, token_file: Path) -> None:
        self.daemon, self.port, self.token_file = daemon, port, token_file
        self.uri = f"virtkit+tls://127.0.0.1:{port}"
        self.ca = daemon.root / "tls" / "ca.pem"
        self.config = Path(tempfile.mkdtemp(prefix="vk-cfg-"))

    def env(self, **extra: str) -> dict[str, str]:
        """No VIRTKIT_ROOT: the CLI can reach the daemon only through the URI."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VIRTKIT_") and k != "XDG_CONFIG_HOME"}
        return {**env, "NO_COLOR": "1", "XDG_CONFIG_HOME": str(self.config),
                "VIRTKIT_NO_AUTOSTART": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                **extra}

    def cli(self, *args: str, check: bool = True, auth: bool = True,
            env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        options = ["-c", self.uri, "--ca", str(self.ca), "--token-file",
                   str(self.token_file)] if auth else []
        result = subprocess.run([sys.executable, "-m", "virtkit.cli.main", *options, *args],
                                env=env or self.env(), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"virtkit {' '.join(args)} failed: {result.stderr}")
        return result

    def client(self, token: str | None = None) -> Client:
        transport = tls_transport(parse_uri(self.uri), token=token or
                                  self.token_file.read_text().strip(), ca=self.ca)
        return Client(transport=transport, timeout=60)


@pytest.fixture(scope="module")
def remote(tiny_guest: TinyGuest) -> Iterator[Remote]:
    with running_daemon(tiny_guest) as daemon:
        daemon.cli("tls", "setup", "--hostname", "127.0.0.1")
        token_file = daemon.root / "client-token"
        daemon.cli("token", "create", "--name", "tests", "--output", str(token_file))
        assert token_file.stat().st_mode & 0o077 == 0
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(10)
        port = free_port()
        daemon.process = start_daemon(daemon.root, extra=("--listen-tls", f"127.0.0.1:{port}"))
        handle = Remote(daemon, port, token_file)
        try:
            yield handle
        finally:
            shutil.rmtree(handle.config, ignore_errors=True)


def test_tls_setup_files(remote: Remote) -> None:
    tls = remote.daemon.root / "tls"
    for key in ("ca-key.pem", "server-key.pem"):
        assert (tls / key).stat().st_mode & 0o777 == 0o600
    info = remote.daemon.cli("tls", "show", "--json")
    assert json.loads(info.stdout)["fingerprint"].count(":") == 31


@pytest.mark.qemu
def test_domain_lifecycle_over_tls(remote: Remote, tmp_path: Path) -> None:
    spec = tmp_path / "rvm.json"
    data = remote.daemon.spec("rvm")
    spec.write_text(json.dumps(data))
    # a remote caller may name pool volumes only (docs/remote.md): not the host's files
    refused = remote.cli("define", str(spec), check=False)
    assert refused.returncode != 0 and "pool volumes only" in refused.stderr, refused.stderr
    # so the kernel and initrd go up as volumes of the default pool, over TLS
    for key in ("kernel", "initrd"):
        source = Path(data["boot"][key])
        name = f"rvm-{key}"
        size = f"{(source.stat().st_size >> 20) + 1}M"
        remote.cli("vol-create-as", "default", name, size, "--format", "raw")
        remote.cli("vol-upload", name, str(source), "--pool", "default")
        data["boot"][key] = str(remote.daemon.root / "images" / name)
    spec.write_text(json.dumps(data))
    remote.cli("define", str(spec))
    assert "rvm" in remote.cli("list", "--all").stdout
    assert "shut off" in remote.cli("dominfo", "rvm").stdout
    events = subprocess.Popen(
        [sys.executable, "-m", "virtkit.cli.main", "-c", remote.uri, "--ca", str(remote.ca),
         "--token-file", str(remote.token_file), "event", "rvm", "--count", "1"],
        env=remote.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let it subscribe (a WebSocket over TLS)
        remote.cli("start", "rvm")
        out, err = events.communicate(timeout=30)
        assert events.returncode == 0, err
        assert "event 'started' for domain 'rvm'" in out
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
    remote.daemon.wait_booted("rvm")
    assert "running" in remote.cli("dominfo", "rvm").stdout
    assert BOOT_MARKER in remote.cli("console", "rvm", "--log").stdout
    # the interactive console: the real CLI over a TLS WebSocket, typed into, read back,
    # left with Ctrl-]
    console = subprocess.Popen(
        [sys.executable, "-m", "virtkit.cli.main", "-c", remote.uri, "--ca", str(remote.ca),
         "--token-file", str(remote.token_file), "console", "rvm"],
        env=remote.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        assert console.stdin is not None and console.stdout is not None
        console.stdin.write(b"echo over-$((40+2))-tls\n")
        console.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 30
        while b"over-42-tls" not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([console.stdout], [], [], 1.0)[0]:
                chunk = os.read(console.stdout.fileno(), 65536)
                assert chunk, console.stderr.read() if console.stderr else b""
                seen += chunk
        console.stdin.write(b"\x1d")
        console.stdin.flush()
        assert console.wait(10) == 0
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()
    remote.cli("destroy", "rvm")
    assert remote.daemon.state("rvm") == "shutoff"
    remote.cli("undefine", "rvm")
    for key in ("kernel", "initrd"):
        remote.cli("vol-delete", f"rvm-{key}", "--pool", "default")


def test_remote_callers_name_pool_volumes_only(remote: Remote, tmp_path: Path) -> None:
    """Over TLS a token holder may name volumes of storage pools, keep the paths a local
    user already named, and nothing else of the host; pools are defined locally only."""
    image = tmp_path / "host.raw"
    image.write_bytes(b"\0" * 65536)
    remote.daemon.define("kept")  # local: the kernel and initrd are host files
    client = remote.client()
    row = client.get(client.domain_path("kept"))
    spec = {**row["spec"], "memory": {"current": 192}}
    client.request("PUT", client.domain_path("kept"), {"spec": spec,
                                                      "version": row["version"]})
    row = client.get(client.domain_path("kept"))
    for change, field in (({"disks": [{"path": str(image), "format": "raw"}]},
                           "disks[0].path"),
                          ({"boot": {**spec["boot"], "initrd": str(image)}}, "boot.initrd")):
        with pytest.raises(ApiError) as caught:
            client.request("PUT", client.domain_path("kept"),
                           {"spec": {**row["spec"], **change}, "version": row["version"]})
        assert caught.value.http_status == 403, caught.value
        assert "pool volumes only" in str(caught.value) and field in str(caught.value)
    remote.daemon.client.post("/v1/pools/default/volumes", {"name": "kept.raw",
                                                            "capacity": 1 << 20,
                                                            "format": "raw"})
    client.request("PUT", client.domain_path("kept"), {"spec": {
        **row["spec"], "disks": [{"pool": "default", "volume": "kept.raw"}]},
        "version": row["version"]})
    with pytest.raises(ApiError) as caught:
        client.post("/v1/pools", {"spec": {"name": "mine", "type": "dir",
                                           "target": str(tmp_path)}})
    assert caught.value.http_status == 403, caught.value
    remote.daemon.cli("undefine", "kept")
    remote.daemon.cli("vol-delete", "kept.raw", "--pool", "default")


def test_vol_upload_and_download_stream_over_tls(remote: Remote, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source, back = tmp_path / "up.raw", tmp_path / "down.raw"
    source.write_bytes(data)
    remote.cli("vol-create-as", "default", "remote-up.raw", "4M", "--format", "raw")
    out = remote.cli("vol-upload", "remote-up.raw", str(source), "--pool", "default")
    assert "Uploaded" in out.stdout
    remote.cli("vol-download", "remote-up.raw", str(back), "--pool", "default")
    assert back.read_bytes()[:len(data)] == data
    remote.cli("vol-delete", "remote-up.raw", "--pool", "default")


def test_the_daemon_refuses_descriptors_of_a_remote_client(remote: Remote,
                                                           tmp_path: Path) -> None:
    """Asked directly (not through the CLI, which never asks remotely), the daemon says
    'unsupported' over TLS and when the stated client is not the socket's peer."""
    volumes = "/v1/pools/default/volumes"
    remote.daemon.client.post(volumes, {"name": "fd.raw", "capacity": 1 << 20,
                                        "format": "raw"})
    with open(tmp_path / "x", "wb+") as handle:
        with pytest.raises(ApiError) as info:
            remote.client().post(f"{volumes}/fd.raw/upload-fd", {"fd": handle.fileno()})
        assert info.value.code == "unsupported"
        with pytest.raises(ApiError) as info:
            remote.daemon.client.post(f"{volumes}/fd.raw/upload-fd", {
                "fd": handle.fileno(), "client": {"pid": 1, "boot_id": "elsewhere"}})
        assert info.value.code == "unsupported"
    remote.daemon.client.request("DELETE", f"{volumes}/fd.raw")


def _raw_tls(remote: Remote, headers: dict[str, str], path: str = "/v1/domains"
             ) -> tuple[int, dict[str, str]]:
    context = ssl.create_default_context(cafile=str(remote.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", remote.port, context=context,
                                             timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_refusals(remote: Remote, tmp_path: Path) -> None:
    # no token: the daemon answers 401 (and the CLI says so before asking)
    status, body = _raw_tls(remote, {})
    assert status == 401 and "needs an API token" in body["message"]
    status, body = _raw_tls(remote, {"Authorization": "Basic cm9vdDpyb290"})
    assert status == 401
    no_token = remote.cli("-c", remote.uri, "--ca", str(remote.ca), "list", auth=False,
                          check=False)
    assert no_token.returncode == 1 and "no API token" in no_token.stderr
    # a wrong token
    wrong = remote.cli("list", check=False, env=remote.env(
        VIRTKIT_TOKEN="vkt_0123456789ab_" + "A" * 43))
    assert wrong.returncode == 1 and "the API token is not valid" in wrong.stderr
    assert wrong.stderr.count("\n") == 1  # one line
    # revoked, expired
    revoked = remote.daemon.client.post("/v1/tokens", {"name": "gone"})["token"]
    assert remote.client(revoked).get("/v1/version")
    remote.daemon.cli("token", "revoke", "gone")
    out = remote.cli("list", check=False, env=remote.env(VIRTKIT_TOKEN=revoked))
    assert out.returncode == 1 and "'gone' was revoked" in out.stderr
    short = remote.daemon.client.post("/v1/tokens", {"name": "short",
                                                     "expires_days": 0.5 / 86400})["token"]
    time.sleep(0.6)
    out = remote.cli("list", check=False, env=remote.env(VIRTKIT_TOKEN=short))
    assert out.returncode == 1 and "'short' expired" in out.stderr
    listing = remote.daemon.cli("token", "list", "--all").stdout
    assert "revoked" in listing and "expired" in listing and "vkt_" not in listing
    # tokens are managed only locally, even with a valid token
    status, body = _raw_tls(remote, {"Authorization": f"Bearer "
                                     f"{remote.token_file.read_text().strip()}"}, "/v1/tokens")
    assert status == 403 and body["error"] == "forbidden"
    # a CA that did not sign the server's certificate
    other = TlsService(tmp_path / "other")
    other.setup(["127.0.0.1"])
    out = remote.cli("-c", remote.uri, "--ca", str(other.ca), "--token-file",
                     str(remote.token_file), "list", auth=False, check=False)
    assert out.returncode == 1 and "is not trusted by the CA in" in out.stderr
    assert "--ca" in out.stderr
    # a wrong pinned fingerprint; the right one works without a CA
    bad_pin = ":".join(["00"] * 32)
    out = remote.cli("-c", remote.uri, "--tls-fingerprint", bad_pin, "--token-file",
                     str(remote.token_file), "list", auth=False, check=False)
    assert out.returncode == 1 and "not the pinned" in out.stderr
    pin = json.loads(remote.daemon.cli("tls", "show", "--json").stdout)["fingerprint"]
    remote.cli("-c", remote.uri, "--tls-fingerprint", pin, "--token-file",
               str(remote.token_file), "list", auth=False)
    # plain HTTP to the TLS port gets no HTTP answer at all
    with socket.create_connection(("127.0.0.1", remote.port), timeout=10) as plain:
        plain.sendall(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := plain.recv(4096):
                answer += chunk
    assert not answer.startswith(b"HTTP/")
    # nothing listening
    out = remote.cli("-c", f"virtkit+tls://127.0.0.1:{free_port()}", "--ca", str(remote.ca),
                     "--token-file", str(remote.token_file), "list", auth=False, check=False)
    assert out.returncode == 1 and "nothing listens on" in out.stderr


def test_daemon_refuses_tls_with_a_missing_certificate(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "virtkit.api.daemon", "--root", str(tmp_path / "r"),
         "--listen-tls", f"127.0.0.1:{free_port()}", "--tls-cert", str(tmp_path / "no.pem"),
         "--tls-key", str(tmp_path / "no-key.pem")], capture_output=True, text=True,
        timeout=30, check=False)
    assert result.returncode != 0
    assert "needs a certificate" in result.stderr and "virtkit tls setup" in result.stderr


def test_the_documented_tls_setup_order_works(tmp_path: Path) -> None:
    """remote.md's server steps as written: the listener first (its first start makes
    the CA and certificate), then a token, then a client.  And the other order a user
    may try: 'tls setup' first (which starts a plain daemon), then the listener, which
    refuses naming the PID to stop; doing what it says works."""
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    daemon = start_daemon(root, extra=("--listen-tls", f"127.0.0.1:{port}",
                                       "--tls-hostname", "kvm1.example"))
    started = []
    try:
        assert "made a TLS server certificate" in (root / "daemon.stderr").read_text()
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        token = tmp_path / "laptop.token"
        subprocess.run([sys.executable, "-m", "virtkit.cli.main", "token", "create", "--name",
                        "laptop", "-o", str(token)], env=env, check=True, timeout=60,
                       capture_output=True)
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTKIT_")}
        listed = subprocess.run(
            [sys.executable, "-m", "virtkit.cli.main", "-c", f"virtkit+tls://127.0.0.1:{port}",
             "--ca", str(root / "tls" / "ca.pem"), "--token-file", str(token), "list", "--all"],
            env={**client_env, "VIRTKIT_NO_AUTOSTART": "1"}, capture_output=True, text=True,
            timeout=60, check=False)
        assert listed.returncode == 0, listed.stderr
        assert "kvm1.example" in subprocess.run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
             str(root / "tls" / "server.pem")], capture_output=True, text=True,
            check=True).stdout
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        # the other order: a CLI command starts a plain daemon; the listener is refused
        other = tmp_path / "other"
        env = {**os.environ, "VIRTKIT_ROOT": str(other)}
        env.pop("VIRTKIT_NO_AUTOSTART", None)
        subprocess.run([sys.executable, "-m", "virtkit.cli.main", "tls", "setup"], env=env,
                       check=True, timeout=60, capture_output=True)
        plain_pid = int((other / "virtkitd.pid").read_text())
        started.append(plain_pid)
        refused = subprocess.run(
            [sys.executable, "-m", "virtkit.api.daemon", "--root", str(other),
             "--listen-tls", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
            check=False)
        assert refused.returncode != 0 and f"kill {plain_pid}" in refused.stderr
        os.kill(plain_pid, signal.SIGTERM)
        wait_gone(plain_pid)
        daemon = start_daemon(other, extra=("--listen-tls", f"127.0.0.1:{port}"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int) -> None:
    """Wait until process ``pid`` (not our child: /proc tells) has exited."""
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1] == "Z"
        except OSError:
            return True
    wait_for(gone, 30, f"pid {pid} to exit")


def test_store_keeps_only_hashes(remote: Remote) -> None:
    token = remote.token_file.read_text().strip()
    store = Store(remote.daemon.root / "virtkit.db")
    try:
        rows = store.list_tokens()
    finally:
        store.close()
    parts = split_token(token)  # the secret may itself hold '_' (urlsafe base64)
    assert parts is not None and len(parts[1]) >= 40
    assert rows and all(parts[1] not in (r.hash + r.id + r.name) for r in rows)


# -- ssh ------------------------------------------------------------------------------------

def test_ssh(remote: Remote, sshd: tuple[int, Path], tmp_path: Path) -> None:
    port, keys = sshd
    sock = remote.daemon.root / "virtkitd.sock"
    query = f"?keyfile={keys}/client_key&known_hosts={keys}/known_hosts"
    uri = f"virtkit+ssh://root@127.0.0.1:{port}{sock}{query}"
    env = remote.env()
    spec = tmp_path / "svm.json"
    spec.write_text(json.dumps(remote.daemon.spec("svm")))

    def cli(*args: str, target: str = uri) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "virtkit.cli.main", "-c", target, *args],
                              env=env, capture_output=True, text=True, timeout=60,
                              check=False)

    before = set(Path(tempfile.gettempdir()).glob("virtkit-ssh-*"))
    out = cli("define", str(spec))
    assert out.returncode == 0, out.stderr
    assert "svm" in cli("list", "--all").stdout
    # tokens are local-admin operations: ssh reaches the local socket, so they work
    assert cli("token", "list").returncode == 0
    # vol-upload through a forwarded socket streams (the peer is sshd, not us)
    data = os.urandom(1 << 20)
    (tmp_path / "s.raw").write_bytes(data)
    assert cli("vol-create-as", "default", "ssh-up.raw", "1M", "--format", "raw") \
        .returncode == 0
    out = cli("vol-upload", "ssh-up.raw", str(tmp_path / "s.raw"), "--pool", "default")
    assert out.returncode == 0, out.stderr
    assert cli("vol-download", "ssh-up.raw", str(tmp_path / "b.raw"), "--pool", "default") \
        .returncode == 0
    assert (tmp_path / "b.raw").read_bytes() == data
    assert cli("vol-delete", "ssh-up.raw", "--pool", "default").returncode == 0
    assert cli("undefine", "svm").returncode == 0
    # failures: each one line naming the problem
    out = cli("list", target=f"virtkit+ssh://root@127.0.0.1:{port}/nonexistent.sock{query}")
    assert out.returncode == 1 and "could not connect to /nonexistent.sock" in out.stderr
    out = cli("list", target=f"virtkit+ssh://root@127.0.0.1:{port}{sock}"
              f"?keyfile={keys}/host_key&known_hosts={keys}/known_hosts")
    assert out.returncode == 1 and "ssh refused the login" in out.stderr
    out = cli("list", target=f"virtkit+ssh://root@127.0.0.1:{port}{sock}"
              f"?keyfile={keys}/client_key&known_hosts=/dev/null")
    assert out.returncode == 1 and "host key" in out.stderr
    out = cli("list", target=f"virtkit+ssh://root@127.0.0.1:{free_port()}{sock}{query}")
    assert out.returncode == 1 and "cannot reach sshd" in out.stderr
    # every ssh forward was ended and its folder removed
    assert set(Path(tempfile.gettempdir()).glob("virtkit-ssh-*")) == before
