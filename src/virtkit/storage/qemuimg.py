"""A thin wrapper over ``qemu-img`` whose JSON output is parsed, never scraped."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from virtkit.errors import HostError, InvalidSpec


def qemu_img() -> str:
    """The qemu-img binary, or a HostError saying how to install it."""
    import os

    binary = os.environ.get("VIRTKIT_QEMU_IMG") or shutil.which("qemu-img")
    if not binary:
        raise HostError("qemu-img is not installed", fix="apt-get install qemu-utils")
    return binary


def image_info(path: str, *, force_share: bool = True) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``path`` (``-U`` so a running VM's image can be read)."""
    argv = [qemu_img(), "info", "--output=json"]
    if force_share:
        argv.append("-U")
    argv.append(path)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown"
        raise InvalidSpec(f"cannot read disk image {path}: {message}")
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def detect_format(path: str) -> str:
    """The format qemu-img sees in ``path`` (raw, qcow2, vmdk ...)."""
    return str(image_info(path).get("format", "raw"))
