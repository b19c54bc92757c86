"""The option tables of virt-install's command line, as ``virtkit install`` reads it.

Pure data, shared by the parser (:mod:`virtkit.formats.virtinstall`) and the bash
completion, so that what completes is what parses: which options take a value and
their aliases, the flags, the options refused outright, and the sub-option keys
(``--disk path=...,size=...``) each option accepts.
"""

from __future__ import annotations

#: Options virtkit recognises but refuses, with the reason.
REFUSED: dict[str, str] = {
    "--paravirt": "virtkit manages full (hardware-assisted or emulated) virtual machines "
                  "only, not Xen paravirtual guests; drop --paravirt",
    "--container": "virtkit manages full (hardware-assisted or emulated) virtual machines "
                   "only, not containers; drop --container",
}

#: virt-install options with a value, each with its aliases; ``True`` = may repeat.
VALUE_OPTIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "--name": (("-n",), False),
    "--memory": (("--ram", "-r"), False),
    "--vcpus": ((), False),
    "--cpuset": ((), False),
    "--cpu": ((), False),
    "--description": ((), False),
    "--metadata": ((), False),
    "--numatune": ((), False),
    "--security": ((), False),
    "--uuid": (("-u",), False),
    "--cdrom": (("-c",), False),
    "--location": (("-l",), False),
    "--extra-args": (("-x",), False),
    "--initrd-inject": ((), True),
    "--os-type": ((), False),
    "--os-variant": (("--osinfo",), False),
    "--boot": ((), False),
    "--cloud-init": ((), False),
    "--disk": ((), True),
    "--filesystem": ((), True),
    "--network": (("-w",), True),
    "--graphics": ((), False),
    "--serial": ((), True),
    "--parallel": ((), True),
    "--channel": ((), True),
    "--console": ((), True),
    "--host-device": (("--hostdev",), True),
    "--sound": (("--soundhw",), True),
    "--watchdog": ((), False),
    "--video": ((), False),
    "--smartcard": ((), True),
    "--redirdev": ((), True),
    "--panic": ((), False),
    "--rng": ((), False),
    "--memballoon": ((), False),
    "--input": ((), True),
    "--controller": ((), True),
    "--virt-type": ((), False),
    "--arch": ((), False),
    "--machine": ((), False),
    "--wait": ((), False),
    "--check": ((), False),
    "--events": ((), False),
    "--features": ((), False),
    "--clock": ((), False),
    "--connect": ((), False),
    "--unattended": ((), False),
    "--install": ((), False),
    "--reinstall": ((), False),
    "--autoconsole": ((), False),
    "--anti-affinity": ((), False),  # virtkit: a cluster's anti-affinity group
}
#: options whose value may be left out (``--cloud-init`` alone takes the defaults).
OPTIONAL_VALUE = {"--cloud-init", "--unattended", "--install", "--reinstall", "--autoconsole"}
#: flags (no value).
FLAG_OPTIONS: dict[str, tuple[str, ...]] = {
    "--import": (), "--pxe": (), "--livecd": (), "--nodisks": (), "--nonetworks": (),
    "--noautoconsole": (), "--hvm": ("-v",), "--paravirt": ("-p",),
    "--container": (), "--noapic": (), "--noacpi": (), "--autostart": (),
    "--print-xml": (), "--dry-run": (), "--noreboot": (), "--transient": (),
    "--force": ("-f",), "--quiet": ("-q",), "--debug": ("-d",),
}

_SERIAL = ["type", "target_type", "target.type", "path", "source.path", "log.file"]

#: The ``key=`` sub-options each option accepts (an unknown key is refused with the
#: closest one); bare words (``--boot cdrom,hd``, ``--cpu host,+vmx``) come on top.
SUBOPTIONS: dict[str, list[str]] = {
    "--memory": ["memory", "maxmemory", "currentMemory", "hotplugmemorymax",
                 "hotplugmemoryslots"],
    "--vcpus": ["vcpus", "maxvcpus", "sockets", "cores", "threads", "dies", "cpuset",
                "placement"],
    "--cpu": ["model", "mode", "match", "vendor", "require", "disable", "force", "forbid",
              "optional", "check", "migratable"],
    "--boot": ["kernel", "initrd", "cmdline", "kernel_args", "kernel.args", "menu",
               "bootmenu.enable", "loader", "firmware", "uefi", "useserial",
               "bios.useserial", "init", "dtb", "nvram", "smbios_mode", "rebootTimeout"],
    "--disk": ["path", "size", "format", "bus", "pool", "vol", "device", "cache", "io",
               "readonly", "sparse", "serial", "target", "perms", "shareable", "discard",
               "boot_order", "boot.order", "target.dev", "target.bus", "driver.io",
               "driver.cache", "driver.type", "driver.discard", "backing_store",
               "source.file"],
    "--network": ["network", "bridge", "model", "mac", "type", "source", "model.type",
                  "mac.address", "link.state", "link_state", "target", "target.dev"],
    "--graphics": ["type", "listen", "port", "password", "passwd", "keymap", "autoport",
                   "listen.type", "listen.address", "tlsport", "gl.enable", "websocket"],
    "--serial": _SERIAL,
    "--console": _SERIAL,
    "--watchdog": ["model", "action"],
    "--sound": ["model"],
    "--parallel": ["type", "path", "source.path"],
    "--channel": ["type", "path", "mode", "name", "target_type", "target.type", "target.name",
                  "source.path", "source.mode"],
    "--filesystem": ["source", "target", "source.dir", "target.dir", "type", "accessmode",
                     "mode", "driver.type", "readonly"],
    "--video": ["model", "model.type", "model.heads", "model.vram"],
    "--security": ["type", "model", "label", "relabel", "baselabel"],
    "--numatune": ["nodeset", "mode", "memory.nodeset", "memory.mode", "memory.placement"],
    "--os-variant": ["name", "short-id", "id", "detect", "require"],
    "--cloud-init": ["root-password-generate", "root-password-file", "disable", "ssh-key",
                     "user-data", "meta-data", "network-config", "clouduser-ssh-key"],
}


def keys_of(option: str) -> set[str]:
    """The sub-option keys of ``option`` (its main name), for SubOptions.parse."""
    return set(SUBOPTIONS[option])
