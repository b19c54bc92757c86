"""Copying the disks of a shut-off domain for ``migrate --offline --copy-storage-all``.

The destination serves each image it created (runtime/storagecopy.create_images)
with a ``qemu-nbd`` process of its own on the migration address, writable, for
one client; the source writes the guest-visible content of its image into it with
``qemu-img convert -n --target-is-zero`` (zeros are skipped: the new image reads
as zeros), with progress.  No QEMU runs on either side.  Any failure kills the
``qemu-nbd`` processes and removes the images, as for a live copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

from virtkit.errors import HostError, QemuError, TimeoutExpired
from virtkit.storage import qemuimg

START_TIMEOUT = 10.0


def _qemu_nbd() -> str:
    binary = os.environ.get("VIRTKIT_QEMU_NBD") or shutil.which("qemu-nbd")
    if not binary:
        raise HostError("qemu-nbd is not installed on the destination",
                        fix="apt-get install qemu-utils")
    return binary


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


async def _listening(address: str, port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise QemuError(f"qemu-nbd exited with status {process.returncode} at start")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(address, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise TimeoutExpired(f"qemu-nbd did not listen on {address}:{port} in time")


class Servers:
    """The destination's ``qemu-nbd`` processes, one per image being received."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []

    async def serve(self, address: str, disks: list[dict[str, Any]]) -> dict[str, Any]:
        """Serve each ``{"device", "path", "format"}``; where the source connects."""
        exports = {}
        try:
            for disk in disks:
                port = _free_port(address)
                process = await asyncio.create_subprocess_exec(
                    _qemu_nbd(), "--persistent", "--shared=1", "--cache=writeback",
                    "-f", str(disk["format"]), "-b", address, "-p", str(port),
                    "-x", str(disk["device"]), str(disk["path"]),
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
                self._processes.append(process)
                await _listening(address, port, process)
                exports[str(disk["device"])] = port
        except BaseException:
            await self.stop()
            raise
        return {"host": address, "ports": exports}

    async def stop(self) -> None:
        """Stop the servers (SIGTERM: qemu-nbd closes its image cleanly) and reap them."""
        for process in self._processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        self._processes.clear()


def plan(disks: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """``(device id, path here, path there)`` -> what the destination creates."""
    planned = []
    for device, source, target in disks:
        info = qemuimg.image_info(source, force_share=False)
        planned.append({"device": device, "path": target, "format": info.get("format"),
                        "size": int(info["virtual-size"]), "source": source})
    return planned


def send(disk: dict[str, Any], host: str, port: int,
         progress: Callable[[float, float], None] | None = None) -> None:
    """Write the guest-visible content of ``disk["source"]`` (its whole chain) into the
    destination's export (blocking; run it in a thread).  ``progress`` may raise to
    stop the copy (qemu-img is then killed)."""
    source = str(disk["source"])
    target = f"driver=nbd,server.type=inet,server.host={host},server.port={port}," \
             f"export={disk['device']}"
    argv = ["convert", "-p", "-n", "--target-is-zero", "-f", str(disk["format"]), source,
            "--target-image-opts", target]
    returncode, stderr = qemuimg.run_with_progress(argv, progress)
    if returncode != 0:
        raise qemuimg.error_from_stderr("copy to the destination", source, stderr)


def sync(paths: list[str]) -> None:
    """fsync the received images: the copy is durable before the domain is defined."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
