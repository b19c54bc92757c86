"""Where one virtkit instance keeps its state, sockets and logs.

The state root is ``$VIRTKIT_ROOT`` when set, ``/var/lib/virtkit`` for root,
and ``~/.local/share/virtkit`` for other users (libvirt's system and session
modes).  Everything an instance owns lives below it, so setting
``VIRTKIT_ROOT`` isolates a whole instance and several can run side by side.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """The state root for this process, following the rules above."""
    override = os.environ.get("VIRTKIT_ROOT")
    if override:
        return Path(override).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/virtkit")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "virtkit"


class StatePaths:
    """The files and folders below one state root.

    A plain class, not a dataclass: the CLI imports this module at start-up and
    ``dataclasses`` (with ``inspect``) costs several milliseconds there.
    """

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"StatePaths({self.root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatePaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def database(self) -> Path:
        return self.root / "virtkit.db"

    @property
    def socket(self) -> Path:
        return self.root / "virtkitd.sock"

    @property
    def socket_ro(self) -> Path:
        """The read-only socket (libvirt's libvirt-sock-ro): reads only, see api/auth.py."""
        return self.root / "virtkitd-ro.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "virtkitd.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "log" / "virtkitd.log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def nvram(self) -> Path:
        return self.root / "nvram"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def images(self) -> Path:
        """The folder of the ``default`` storage pool (libvirt's /var/lib/libvirt/images)."""
        return self.root / "images"

    @property
    def networks(self) -> Path:
        """Per-network state: dnsmasq config, leases, hosts files."""
        return self.root / "networks"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def managed_save(self) -> Path:
        """Managed save images (virsh managedsave), one ``<uuid>.save`` per domain."""
        return self.root / "save"

    def run_dir(self, uuid: str) -> Path:
        return self.run / uuid

    def make(self) -> None:
        """Create the folders (private to the owner, as they hold sockets and disks' names)."""
        for folder in (self.root, self.run, self.nvram, self.cache, self.logs,
                       self.managed_save):
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        # dnsmasq drops to 'nobody' before it reads its hosts files: let it through.
        self.root.chmod(0o711)
        self.networks.mkdir(exist_ok=True, mode=0o711)


def state_paths(root: Path | None = None) -> StatePaths:
    return StatePaths(root or default_root())
