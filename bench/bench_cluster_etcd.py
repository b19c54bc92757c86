#!/usr/bin/env python3
"""etcd through virtkit's gateway client (cluster/etcd.py): the figures the cluster
stands on.

    python bench/bench_cluster_etcd.py [--members 3] [--rounds 300]

Starts ``--members`` etcd members on 127.0.0.1 (free ports, TLS with client
certificates from a throw-away cluster CA made as ``cluster init`` makes it), then
measures, through one client with every endpoint: compare-and-swap txn latency
(``swap`` on mod_revision), lease keepalive latency, and watch put->event latency;
then SIGKILLs the leader and measures how long until a CAS write succeeds again.
Prints one JSON object.  Everything it started is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from virtkit.cluster.etcd import Etcd, EtcdUnavailable, Tls
from virtkit.service.clusterpki import ClusterPki


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
            "n": len(ordered)}


def _start(folder: Path, count: int, pki: ClusterPki) -> list[tuple[str, subprocess.Popen[bytes],
                                                                    str]]:
    ports = [(_port(), _port()) for _ in range(count)]
    initial = ",".join(f"m{i}=https://127.0.0.1:{p}" for i, (_c, p) in enumerate(ports))
    tls = ["--cert-file", str(pki.cert), "--key-file", str(pki.key), "--trusted-ca-file",
           str(pki.ca), "--client-cert-auth", "--peer-cert-file", str(pki.cert),
           "--peer-key-file", str(pki.key), "--peer-trusted-ca-file", str(pki.ca),
           "--peer-client-cert-auth"]
    started = []
    for index, (client, peer) in enumerate(ports):
        url = f"https://127.0.0.1:{client}"
        log = open(folder / f"m{index}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            ["etcd", "--name", f"m{index}", "--data-dir", str(folder / f"m{index}"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", f"https://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}",
             "--initial-cluster", initial, "--logger", "zap", "--log-outputs", "stderr",
             *tls], stdout=log, stderr=log, start_new_session=True)
        log.close()
        started.append((f"m{index}", process, url))
    return started


async def _measure(urls: list[str], pki: ClusterPki, rounds: int,
                   members: list[tuple[str, subprocess.Popen[bytes], str]]) -> dict[str, Any]:
    async with Etcd(urls, tls=Tls(pki.ca, pki.cert, pki.key), deadline=30) as etcd:
        deadline = time.monotonic() + 30
        while True:
            try:
                await etcd.put("/bench/ready", "1")
                break
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await etcd.put("/bench/cas", "0")
        cas = []
        for i in range(rounds):
            current = await etcd.get("/bench/cas")
            assert current is not None
            began = time.perf_counter()
            assert await etcd.swap("/bench/cas", current.mod_revision, str(i))
            cas.append(time.perf_counter() - began)
        lease = await etcd.lease_grant(5)
        keepalive = []
        for _ in range(rounds):
            began = time.perf_counter()
            await etcd.lease_keepalive(lease)
            keepalive.append(time.perf_counter() - began)
        watch = []
        seen: asyncio.Queue[float] = asyncio.Queue()

        async def watcher() -> None:
            async for _event in etcd.watch("/bench/w/"):
                seen.put_nowait(time.perf_counter())

        task = asyncio.create_task(watcher())
        await asyncio.sleep(0.5)
        for i in range(min(rounds, 100)):
            began = time.perf_counter()
            await etcd.put(f"/bench/w/{i}", "x")
            watch.append(await asyncio.wait_for(seen.get(), 5) - began)
        task.cancel()
        status = await etcd.endpoint_status(urls[0])
        listed = {m["ID"]: m["name"] for m in await etcd.members()}
        result: dict[str, Any] = {"cas_txn": _quantiles(cas), "keepalive": _quantiles(keepalive),
                                  "watch_put_to_event": _quantiles(watch)}
        if len(members) >= 3:
            leader = next(m for m in members if m[0] == listed[status["leader"]])
            etcd._current = members.index(leader)
            current = await etcd.get("/bench/cas")
            assert current is not None
            os.kill(leader[1].pid, signal.SIGKILL)
            began = time.perf_counter()
            await etcd.swap("/bench/cas", current.mod_revision, "after")
            result["leader_kill_to_write_s"] = round(time.perf_counter() - began, 2)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vk-bench-etcd-"))
    pki = ClusterPki(folder / "pki")
    pki.make_ca("bench")
    pki.install_cert(pki.sign(pki.make_csr("bench"), "bench", "127.0.0.1"))
    members = _start(folder, args.members, pki)
    try:
        result = asyncio.run(_measure([m[2] for m in members], pki, args.rounds, members))
        print(json.dumps({"members": args.members, **result}, indent=2))
    finally:
        for _name, process, _url in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
