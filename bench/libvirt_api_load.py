#!/usr/bin/python3
"""The libvirt side of bench_api.py: N threads, each with its own libvirt-python
connection, calling what ``virsh list --all`` or ``virsh dominfo`` calls.

Run by bench_api.py with the system Python (Debian's python3-libvirt lives there,
not in the project's venv); prints one JSON object: wall seconds and per-call
latencies.  libvirt-python releases the GIL while it waits for libvirtd, so the
threads really are concurrent clients.

    list:    listAllDomains(0), then state() of each domain (virsh list --all)
    dominfo: lookupByName, info(), UUIDString(), OSType(), autostart(),
             isPersistent(), hasManagedSaveImage() (virsh dominfo's calls,
             without the security label)
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import libvirt  # type: ignore[import-not-found]


def call_list(conn: libvirt.virConnect, _name: str) -> None:
    for dom in conn.listAllDomains(0):
        dom.state()


def call_dominfo(conn: libvirt.virConnect, name: str) -> None:
    dom = conn.lookupByName(name)
    dom.info()
    dom.UUIDString()
    dom.OSType()
    dom.autostart()
    dom.isPersistent()
    dom.hasManagedSaveImage()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--op", choices=("list", "dominfo"), required=True)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda *_: None, None)
    conns = [libvirt.open(args.uri) for _ in range(args.clients)]
    call = call_list if args.op == "list" else call_dominfo
    for conn in conns:  # warm every connection once
        call(conn, args.names[0])
    latencies: list[list[float]] = [[] for _ in conns]
    barrier = threading.Barrier(len(conns) + 1)

    def client(index: int) -> None:
        conn = conns[index]
        barrier.wait()
        for i in range(args.requests):
            name = args.names[(index + i) % len(args.names)]
            began = time.perf_counter()
            call(conn, name)
            latencies[index].append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for conn in conns:
        conn.close()
    print(json.dumps({"wall_s": wall, "latencies": [x for per in latencies for x in per],
                      "libvirt_version": libvirt.getVersion()}))


if __name__ == "__main__":
    main()
