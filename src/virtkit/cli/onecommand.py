"""Build only the argument parser of the command being run.

The whole tree (about 145 commands and 630 options in 17 modules) cost every CLI call
about 18 ms to import and build, although a call runs one command.  :data:`COMMANDS`
says which module registers each top-level command; :func:`command_word` finds the
command in ``argv``; and :class:`OneCommand` stands in for argparse's sub-parsers
object so that a module's ``register()`` builds that one command for real and every
other one as a no-op.  Anything unexpected (no command word, an unknown one, an
option argparse would have to expand, a table entry that no longer holds) falls back
to the full tree, so the table can only make a call slower, never wrong;
tests/unit/test_cli_onecommand.py keeps it in step with the full tree.
"""

from __future__ import annotations

# typing costs every CLI call ~3 ms to import, and these names are annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


#: the ``register()`` owner of each top-level command: a module of virtkit.cli, or
#: ``main`` (main.build_parser's own) or ``install`` (main._register_install)
_OWNERS: dict[str, tuple[str, ...]] = {
    "domains": ("list", "define", "create", "undefine", "start", "shutdown", "reboot",
                "destroy", "suspend", "resume", "reset", "save", "restore", "dominfo",
                "domstate", "vncdisplay", "autostart", "dumpspec", "dumpxml", "console",
                "edit"),
    "admin": ("token", "tls"),
    "storage": ("pool-define", "pool-dumpxml", "pool-define-as", "pool-build", "pool-start",
                "pool-destroy", "pool-delete", "pool-refresh", "pool-undefine",
                "pool-autostart", "pool-list", "pool-info", "vol-create-as", "vol-list",
                "vol-info", "vol-path", "vol-delete", "vol-wipe", "vol-resize", "vol-clone",
                "vol-import", "vol-convert", "vol-upload", "vol-download"),
    "networks": ("net-define", "net-dumpxml", "net-define-as", "net-start", "net-destroy",
                 "net-undefine", "net-autostart", "net-list", "net-info", "net-dhcp-leases",
                 "net-update", "net-port-forward", "domiflist", "domifaddr", "domif-setlink"),
    "guest": ("guest", "guestinfo", "domhostname", "domfsfreeze", "domfsthaw",
              "domfsfreeze-status", "domfstrim", "set-user-password", "guestvcpus", "domtime",
              "qemu-agent-command"),
    "devices": ("attach-device", "detach-device", "domblklist", "attach-disk", "detach-disk",
                "change-media", "attach-interface", "detach-interface", "setvcpus", "setmem",
                "setmaxmem", "attach-memory"),
    "clone": ("clone",),
    "cluster": ("cluster", "ha"),
    "migrate": ("migrate", "domjobinfo", "migrate-postcopy", "domjobabort"),
    "snapshots": ("snapshot-create-as", "snapshot-list", "snapshot-info", "snapshot-revert",
                  "snapshot-delete", "snapshot-current"),
    "stats": ("domstats", "vcpuinfo", "vcpupin", "emulatorpin", "nodedev-list", "top"),
    "virshcompat": ("screenshot", "send-key", "domid", "domname", "domuuid", "vcpucount",
                    "domblkinfo", "desc", "metadata", "domblkstat", "domifstat", "dommemstat",
                    "nodememstats", "nodecpustats", "hostname", "uri", "version", "sysinfo",
                    "capabilities", "domcapabilities"),
    "blockjobs": ("blockcommit", "blockpull", "blockjob", "blockresize", "blockcopy"),
    "virtxml": ("xml",),
    "managedsave": ("managedsave", "managedsave-remove", "managedsave-dumpxml",
                    "managedsave-define", "managedsave-edit"),
    "limits": ("schedinfo", "memtune", "blkiotune", "blkdeviotune"),
    "install": ("install", "osinfo"),
    "main": ("host", "nodeinfo", "event", "audit", "repairs", "completion"),
}

#: command name -> the owner that registers it
COMMANDS: dict[str, str] = {name: owner for owner, names in _OWNERS.items() for name in names}

#: global options without a value (those with one are main.GLOBAL_OPTIONS)
_FLAGS = {"-r", "--readonly"}


def command_word(argv: list[str], valued: dict[str, str]) -> str | None:
    """The command ``argv`` runs when it is one of :data:`COMMANDS` and every option
    before it is spelled in full (``valued``: the global options that take a value);
    else None (``--help``, ``--version``, an abbreviated option, an unknown command)."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _FLAGS:
            index += 1
        elif word in valued:
            index += 2
        elif word.startswith("--") and word.partition("=")[0] in valued and "=" in word:
            index += 1
        elif word.startswith("-"):
            return None
        else:
            return word if word in COMMANDS else None
    return None


class _Ignored:
    """What a skipped command's parser, argument or group is: every call and attribute
    gives itself back, so ``register()`` code runs through it without building anything."""

    def __getattr__(self, _name: str) -> _Ignored:
        return self

    def __call__(self, *_args: Any, **_kwargs: Any) -> _Ignored:
        return self


class OneCommand:
    """argparse's sub-parsers object, building only the parser of ``name``."""

    def __init__(self, sub: Any, name: str) -> None:
        self._sub = sub
        self._name = name

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name == self._name or self._name in kwargs.get("aliases", ()):
            return self._sub.add_parser(name, **kwargs)
        return _Ignored()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._sub, attribute)
