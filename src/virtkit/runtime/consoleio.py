"""The display's input and output over QMP: ``screendump`` and ``send-key``.

A screenshot is never written to a path a caller names: QEMU writes it into a memfd
the daemon hands over (``add-fd``, then ``/dev/fdset/N``), and the bytes go back to
the client, which writes its own file.  PNG when this QEMU can (QEMU >= 7.1 with
libpng: ``format: png``), else PPM, QEMU's original format.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from virtkit.errors import QemuError
from virtkit.runtime.launcher import Running

#: the largest screenshot read back (a 4K PPM is 24 MiB)
MAX_SCREENSHOT = 64 * 2**20
#: the display adapter's id on QEMU's command line (qemu/argv.py _display)
VIDEO_DEVICE = "video0"


def _unsupported_png(exc: QemuError) -> bool:
    """QEMU < 7.1 has no 'format'; one built without libpng refuses png."""
    text = exc.message.lower()
    return "format" in text or "png" in text


async def screendump(running: Running, head: int | None = None) -> tuple[bytes, str]:
    """The display of head ``head`` (default: the first) as (image bytes, MIME type).

    QMP takes ``head`` only with ``device``: head 0 is QEMU's default console, any
    other is asked of the one display adapter."""
    monitor = running.monitor
    memfd = os.memfd_create("virtkit-screendump", os.MFD_CLOEXEC)
    try:
        # QEMU opens the fdset O_WRONLY and takes only a descriptor with that access mode
        writer = os.open(f"/proc/self/fd/{memfd}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            monitor.send_fd(writer)
            added = await monitor.add_fd("virtkit screendump")
        finally:
            os.close(writer)
        fdset = int(added["fdset-id"])
        try:
            arguments: dict[str, Any] = {"filename": f"/dev/fdset/{fdset}"}
            if head:
                arguments.update(device=VIDEO_DEVICE, head=head)
            mime = "image/png"
            try:
                await monitor.screendump({**arguments, "format": "png"})
            except QemuError as exc:
                if not _unsupported_png(exc):
                    raise
                await monitor.screendump(arguments)
                mime = "image/x-portable-pixmap"
        finally:
            with contextlib.suppress(QemuError):
                await monitor.remove_fd(fdset)
        size = os.fstat(memfd).st_size
        if size > MAX_SCREENSHOT:
            raise QemuError(f"the screenshot is {size} bytes, over the limit of "
                            f"{MAX_SCREENSHOT}")
        return os.pread(memfd, size, 0), mime
    finally:
        os.close(memfd)


async def send_keys(running: Running, qnums: list[int], hold_ms: int | None = None) -> None:
    """Press ``qnums`` together (in order), hold them, release them in reverse order."""
    arguments: dict[str, Any] = {"keys": [{"type": "number", "data": code} for code in qnums]}
    if hold_ms is not None:
        arguments["hold-time"] = hold_ms
    await running.monitor.send_key(arguments)
