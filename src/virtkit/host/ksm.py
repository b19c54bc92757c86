"""Kernel samepage merging (KSM): ``/sys/kernel/mm/ksm``.

KSM lets the kernel merge identical pages of different processes (guest RAM of
VMs booted from one image).  ``run`` is 0 (stopped), 1 (merging) or 2 (stop and
unmerge everything); ``pages_shared`` is how many merged pages exist and
``pages_sharing`` how many more places use them, so ``pages_sharing`` pages are
saved.  QEMU marks guest RAM mergeable (MADV_MERGEABLE) by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from virtkit.errors import HostError

SYS = Path("/sys")
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
            "pages_to_scan", "sleep_millisecs")


def _folder(sys_root: Path) -> Path:
    folder = sys_root / "kernel" / "mm" / "ksm"
    if not folder.is_dir():
        raise HostError(f"this kernel has no KSM ({folder} is missing)",
                        fix="use a kernel built with CONFIG_KSM=y (Debian's is)")
    return folder


def status(sys_root: Path = SYS) -> dict[str, Any]:
    """run state and counters, with the memory saved in MiB."""
    folder = _folder(sys_root)
    result: dict[str, Any] = {"run": int((folder / "run").read_text().strip())}
    for name in COUNTERS:
        try:
            result[name] = int((folder / name).read_text().strip())
        except (OSError, ValueError):
            result[name] = None
    result["enabled"] = result["run"] == 1
    page = os.sysconf("SC_PAGE_SIZE")
    result["saved_mib"] = round((result["pages_sharing"] or 0) * page / 2**20, 1)
    return result


def set_run(value: int, sys_root: Path = SYS) -> dict[str, Any]:
    """Write ``run`` (0 stop, 1 merge, 2 unmerge all); needs root."""
    if value not in (0, 1, 2):
        raise ValueError("KSM run is 0, 1 or 2")
    folder = _folder(sys_root)
    try:
        (folder / "run").write_text(f"{value}\n")
    except PermissionError:
        raise HostError(f"cannot switch KSM: writing {folder / 'run'} needs root",
                        fix="run virtkitd as root (the system daemon), or echo 1 > "
                            f"{folder / 'run'} as root") from None
    except OSError as exc:
        raise HostError(f"cannot switch KSM: {exc.strerror}") from None
    return status(sys_root)
