"""virt-install's command line -> an :class:`InstallRequest`.

``virtkit install`` takes virt-install's options (``--opt value`` and ``--opt=value``,
comma-separated sub-options, the old aliases such as ``--ram``), so a line copied
from a guide works with only the program name changed.  This module is pure: it
reads the words of the command line and builds the request; the service creates the
disks, finds kernels on install media, defines and boots the VM.

The request keeps what virt-install keeps apart: the *final* domain (what stays
defined), the *install-time* changes for the first boot (boot from the CD, the
installer's kernel, the cloud-init seed), and the disks to create first.
"""

from __future__ import annotations

import argparse
import keyword
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats import virtinstall_devices as devices
from virtkit.formats.suboptions import SubOptions, closest, to_int
from virtkit.formats.virtinstall_options import (
    FLAG_OPTIONS,
    OPTIONAL_VALUE,
    REFUSED,
    SUBOPTIONS,
    VALUE_OPTIONS,
    keys_of,
)

__all__ = ["FLAG_OPTIONS", "OPTIONAL_VALUE", "REFUSED", "SUBOPTIONS", "VALUE_OPTIONS",
           "InstallRequest", "NewDisk", "all_option_names", "build_argparser",
           "parse_command_line"]

DEFAULT_MEMORY_MIB = 1024
INSTALL_METHODS = ("--cdrom", "--location", "--pxe", "--import")


@dataclass
class NewDisk:
    """A disk the install creates before defining the VM (and removes if it fails)."""

    index: int  # position in the domain's disk list
    size_bytes: int
    format: str
    pool: str | None = None  # a new volume in this pool ...
    volume: str | None = None
    path: str | None = None  # ... or a new file at this path
    sparse: bool = True


@dataclass
class InstallRequest:
    """Everything ``virtkit install`` asks of the daemon; JSON-ready via :meth:`to_dict`."""

    domain: dict[str, Any]  # the final spec, as load_domain takes it
    method: str  # import | cdrom | location | pxe | kernel | livecd | none
    new_disks: list[NewDisk] = field(default_factory=list)
    install_media: str | None = None  # the ISO of --cdrom / --livecd
    location: str | None = None  # --location: ISO, directory or URL
    extra_args: str | None = None
    initrd_inject: list[str] = field(default_factory=list)
    os_variant: str | None = None
    cloud_init: dict[str, str] | None = None
    autoconsole: bool = True
    wait_minutes: float | None = None  # None: not given; negative: wait forever
    noreboot: bool = False
    dry_run: bool = False
    print_xml: bool = False
    quiet: bool = False
    default_nic: bool = False  # no --network given: the NIC is on 'default' if it exists
    default_disk: bool = False  # no --disk/--nodisks: a disk of the OS's recommended size
    #: asked for what only the host can say it has: host_devices, security, numatune
    host_checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstallRequest:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpec(f"install request: unknown field(s) {sorted(unknown)}",
                              fix=f"valid fields: {', '.join(sorted(known))}")
        if not isinstance(data.get("domain"), dict):
            raise InvalidSpec("install request: 'domain' must be an object", field="domain")
        disks = [NewDisk(**disk) for disk in data.get("new_disks", [])]
        return cls(**{**data, "new_disks": disks})


class _Parser(argparse.ArgumentParser):
    """argparse that raises InvalidSpec instead of printing and exiting."""

    def error(self, message: str) -> Any:
        raise InvalidSpec(f"install: {message}", fix="see 'virtkit install --help'")


def build_argparser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virtkit install", add_help=False, allow_abbrev=False)
    for option, (aliases, repeat) in VALUE_OPTIONS.items():
        if option in OPTIONAL_VALUE:
            parser.add_argument(option, *aliases, nargs="?", const="", dest=_dest(option),
                                metavar="OPTS")
        else:
            parser.add_argument(option, *aliases, action="append" if repeat else "store",
                                dest=_dest(option), metavar="OPTS")
    for option, aliases in FLAG_OPTIONS.items():
        parser.add_argument(option, *aliases, action="store_true", dest=_dest(option))
    # virt-install's --print-xml takes an optional step number.
    parser.add_argument("--print-xml-step", dest="print_xml_step", help=argparse.SUPPRESS)
    return parser


def _dest(option: str) -> str:
    name = option.lstrip("-").replace("-", "_")
    return f"{name}_" if keyword.iskeyword(name) else name


def all_option_names() -> list[str]:
    names = []
    for option, (aliases, _) in VALUE_OPTIONS.items():
        names += [option, *[a for a in aliases if a.startswith("--")]]
    for option, aliases in FLAG_OPTIONS.items():
        names += [option, *[a for a in aliases if a.startswith("--")]]
    return sorted(names)


def parse_command_line(argv: list[str]) -> InstallRequest:
    """virt-install's words (without the program name) -> an install request."""
    argv = _normalise_print_xml(argv)
    args, unknown = build_argparser().parse_known_args(argv)
    if unknown:
        word = unknown[0]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            raise InvalidSpec(f"install: unknown option '{name}'"
                              f"{closest(name, all_option_names())}",
                              fix="see 'virtkit install --help' for the options")
        raise InvalidSpec(f"install: unexpected argument {word!r}",
                          fix="every value belongs to an option, e.g. --name NAME; quote "
                              "values that contain spaces")
    for flag, reason in REFUSED.items():
        if getattr(args, _dest(flag)):
            raise InvalidSpec(f"install: {flag} is not supported: {reason}")
    return _Translator(args).request()


def _normalise_print_xml(argv: list[str]) -> list[str]:
    """``--print-xml 2`` (a step number) -> ``--print-xml --print-xml-step 2``."""
    out: list[str] = []
    words = iter(range(len(argv)))
    for index in words:
        word = argv[index]
        if word.startswith("--print-xml="):
            out += ["--print-xml", "--print-xml-step", word.split("=", 1)[1]]
        elif word == "--print-xml" and index + 1 < len(argv) and argv[index + 1].isdecimal():
            out += ["--print-xml", "--print-xml-step", argv[index + 1]]
            next(words, None)
        else:
            out.append(word)
    return out


class _Translator:
    """Turns parsed options into the final domain and the install-time changes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: what only the host can answer (IOMMU, LSM, NUMA nodes): the daemon checks them
        self.host_checks: dict[str, Any] = {}
        self.domain: dict[str, Any] = {}
        self.new_disks: list[NewDisk] = []

    def request(self) -> InstallRequest:
        a = self.args
        if not a.name:
            raise InvalidSpec("install: --name is required", fix="add --name NAME")
        self.domain = {"name": a.name}
        if a.uuid:
            self.domain["uuid"] = a.uuid
        if a.description:
            self.domain["description"] = a.description
        self._memory()
        self._vcpus()
        self._cpu()
        self._platform()
        method = self._method()
        self._boot(method)
        self._disks(method)
        self._networks()
        self._graphics()
        self._devices()
        self.domain.update(devices.sound_and_video(self.args, self.domain.get("graphics")))
        self.domain.update(devices.filesystems(self.args.filesystem or []))
        self._refuse_unsupported()
        if a.autostart:
            self.domain["autostart"] = True
        if a.anti_affinity:  # a cluster: placement puts no two of a group on one host
            self.domain["anti_affinity"] = a.anti_affinity
        if a.transient:
            if a.autostart:
                raise InvalidSpec("install: --transient and --autostart contradict each other",
                                  fix="drop one of them")
            self.domain["transient"] = True
        wait = None
        if a.wait is not None:
            try:
                wait = float(a.wait)
            except ValueError:
                raise InvalidSpec(f"--wait {a.wait}: not a number of minutes",
                                  fix="write --wait 10, or --wait -1 to wait forever") from None
        return InstallRequest(
            domain=self.domain, method=method, new_disks=self.new_disks,
            install_media=a.cdrom, location=a.location, extra_args=a.extra_args,
            initrd_inject=a.initrd_inject or [], os_variant=self._os_variant(),
            cloud_init=self._cloud_init(),
            autoconsole=not a.noautoconsole and a.autoconsole not in ("none",),
            wait_minutes=wait, noreboot=a.noreboot, dry_run=a.dry_run,
            print_xml=a.print_xml, quiet=a.quiet,
            default_nic=not a.network and not a.nonetworks,
            default_disk=not a.disk and not a.nodisks and method not in ("import", "livecd"),
            host_checks={**self.host_checks,
                         **({"host_devices": a.host_device} if a.host_device else {})})

    # -- general ------------------------------------------------------------------

    def _memory(self) -> None:
        """As virt-install reads it (virtinst's _convert_old_memory_options): with
        currentMemory=, memory= (or maxmemory=) is libvirt's <memory>, the ceiling;
        without it, memory= (or the first word) is the RAM at boot and maxmemory= the
        ceiling.  virtkit has no balloon target: the guest boots with the RAM at boot,
        and a ceiling above it is the hot-add ceiling, as hotplugmemorymax= is."""
        text = self.args.memory
        if text is None:
            return  # the service fills osinfo's recommendation, or 1024 MiB
        opts = SubOptions.parse("--memory", text, keys_of("--memory"))
        if opts.words:
            opts.values.setdefault("memory", opts.words.pop(0))
        opts.refuse_words()
        if opts.has("currentMemory"):
            boot, ceiling = opts.get("currentMemory"), opts.get("maxmemory") or opts.get("memory")
        else:
            boot, ceiling = opts.get("memory"), opts.get("maxmemory")
        boot = boot or ceiling
        if boot is None:
            raise InvalidSpec("--memory: give the RAM in MiB, e.g. --memory 1024")
        current = to_int("--memory", "memory", boot, minimum=1)
        memory: dict[str, Any] = {"current": current}
        top = opts.get("hotplugmemorymax") or ceiling
        if top is not None:
            maximum = to_int("--memory", "maxmemory", top, minimum=1)
            if maximum < current:
                raise InvalidSpec(f"--memory {text}: the ceiling {maximum} MiB is below the "
                                  f"{current} MiB at boot", fix="raise maxmemory=, or lower "
                                  "the memory")
            if maximum > current:
                memory["max"] = maximum
        self.domain["memory"] = memory

    def _vcpus(self) -> None:
        text = self.args.vcpus
        cpuset = self._cpuset(self.args.cpuset, "--cpuset")
        if text is None:
            if cpuset is not None:
                self.domain["vcpus"] = {"current": 1, "cpuset": cpuset}
            return
        opts = SubOptions.parse("--vcpus", text, keys_of("--vcpus"))
        if opts.words:
            opts.values.setdefault("vcpus", opts.words.pop(0))
        opts.refuse_words()
        cpuset = self._cpuset(opts.get("cpuset"), "--vcpus cpuset=") or cpuset
        vcpus: dict[str, Any] = {}
        if cpuset is not None:
            vcpus["cpuset"] = cpuset
        for key, target in (("sockets", "sockets"), ("cores", "cores"), ("threads", "threads")):
            value = opts.integer(key, minimum=1)
            if value is not None:
                vcpus[target] = value
        topology = 1
        for part in ("sockets", "cores", "threads"):
            topology *= vcpus.get(part, 1)
        maximum = opts.integer("maxvcpus", minimum=1)
        current = opts.integer("vcpus", minimum=1)
        if current is None:
            current = maximum if maximum is not None else topology
        if maximum is None and topology > current:
            maximum = topology
        total = maximum if maximum is not None else current
        given = any(part in vcpus for part in ("sockets", "cores", "threads"))
        for part in ("cores", "sockets", "threads") if given else ():
            if part not in vcpus:  # filled from the count, cores first, as virt-install does
                vcpus[part] = max(total // (vcpus.get("sockets", 1) * vcpus.get("cores", 1)
                                            * vcpus.get("threads", 1)), 1)
        vcpus["current"] = current
        if maximum is not None and maximum != current:
            vcpus["max"] = maximum
        self.domain["vcpus"] = vcpus

    @staticmethod
    def _cpuset(value: str | None, option: str) -> str | None:
        """A vCPU pinning set (libvirt's syntax, '0-3,^2'); 'auto' needs numad."""
        if value is None:
            return None
        if value == "auto":
            raise InvalidSpec(f"{option}auto: placement by numad is not supported",
                              fix="name the host CPUs, e.g. --cpuset 0-3")
        return value

    def _cpu(self) -> None:
        text = self.args.cpu
        if text is None:
            return
        opts = SubOptions.parse("--cpu", text, keys_of("--cpu"))
        features = [w for w in opts.words if w[:1] in "+-"]
        words = [w for w in opts.words if w[:1] not in "+-"]
        for key, sign in (("require", "+"), ("force", "+"), ("disable", "-"),
                          ("forbid", "-")):
            if opts.has(key):
                features.append(sign + str(opts.get(key)))
        model = opts.get("model") or opts.get("mode") or (words[0] if words else None)
        if len(words) > 1:
            raise InvalidSpec(f"--cpu: cannot read {words[1]!r} in {text!r}",
                              fix="name one CPU model; features are +feat or -feat")
        cpu: dict[str, Any] = {"model": _cpu_model(model or "auto")}
        if features:
            cpu["features"] = features
        self.domain["cpu"] = cpu

    def _platform(self) -> None:
        a = self.args
        if a.arch and a.arch not in ("x86_64", "amd64", "i686"):
            raise InvalidSpec(f"--arch {a.arch}: virtkit runs x86 guests only "
                              "(qemu-system-x86_64)", fix="drop --arch, or use --arch x86_64")
        if a.virt_type:
            accelerators = {"kvm": "kvm", "qemu": "tcg", "tcg": "tcg"}
            if a.virt_type not in accelerators:
                raise InvalidSpec(f"--virt-type {a.virt_type}: virtkit knows kvm and qemu"
                                  f"{closest(a.virt_type, set(accelerators))}",
                                  fix="use --virt-type kvm (hardware) or qemu (emulation)")
            self.domain["accelerator"] = accelerators[a.virt_type]
        if a.machine:
            machine = a.machine.split(",")[0]
            aliases = {"q35": "q35", "pc": "pc", "microvm": "microvm"}
            base = re.sub(r"-[\d.]+$", "", machine)
            base = {"pc-q35": "q35", "pc-i440fx": "pc"}.get(base, base)
            if base not in aliases:
                raise InvalidSpec(f"--machine {a.machine}: virtkit runs q35, pc and microvm "
                                  "machines", fix="use --machine q35 (the default) or pc")
            self.domain["machine"] = aliases[base]
        if a.noacpi:
            self.domain["acpi"] = False  # the model refuses it on q35, saying why
        if a.noapic:
            raise InvalidSpec("install: --noapic: QEMU's x86 machines (q35, pc) always have "
                              "an APIC; virtkit cannot take it away",
                              fix="drop --noapic (a guest that must not use it: boot it "
                                  "with the kernel argument noapic)")
        if a.security:
            opts = SubOptions.parse("--security", a.security, keys_of("--security"))
            kind = opts.get("model") or opts.get("type") or \
                (opts.words[0] if opts.words else "none")
            if kind not in ("none", "dynamic", "static", "selinux", "apparmor", "dac"):
                raise InvalidSpec(f"--security {a.security}: unknown security model {kind!r}",
                                  fix="write --security type=none")
            if kind not in ("none", "dac"):  # the daemon says whether this host has it
                self.host_checks["security"] = "selinux" if kind in ("dynamic", "static") \
                    else kind
        if a.numatune:
            opts = SubOptions.parse("--numatune", a.numatune, keys_of("--numatune"))
            nodeset = opts.get("nodeset") or opts.get("memory.nodeset") or \
                (opts.words.pop(0) if opts.words else None)
            opts.refuse_words()
            if not nodeset:
                raise InvalidSpec("--numatune: name the host NUMA nodes, e.g. --numatune 0",
                                  fix="write --numatune 0 or --numatune nodeset=0-1")
            self.host_checks["numatune"] = nodeset
            mode = opts.get("mode") or opts.get("memory.mode") or "strict"
            if mode not in ("strict", "preferred", "interleave"):
                raise InvalidSpec(f"--numatune mode={mode}: use strict, preferred or "
                                  "interleave", fix="write --numatune 0,mode=strict")
            self.domain["numatune"] = {"nodeset": nodeset, "mode": mode}
        if a.host_device:
            self.domain["hostdevs"] = [{"address": devices.pci_address(text)}
                                       for text in a.host_device]

    # -- install method and boot -----------------------------------------------------

    def _method(self) -> str:
        a = self.args
        boot = self._boot_options()
        chosen = [name for name, given in (
            ("--import", a.import_), ("--cdrom", a.cdrom and not a.livecd),
            ("--location", a.location), ("--pxe", a.pxe),
            ("--livecd", a.livecd)) if given]
        if len(chosen) > 1:
            raise InvalidSpec(f"install: {chosen[0]} and {chosen[1]} cannot be used together: "
                              "give one install method", fix="keep one of " +
                              ", ".join(INSTALL_METHODS))
        if a.livecd and not a.cdrom:
            raise InvalidSpec("install: --livecd needs --cdrom ISO", fix="add --cdrom PATH")
        if a.extra_args and not (a.location or (boot is not None and boot.has("kernel"))):
            raise InvalidSpec("install: --extra-args only works with --location (or --boot "
                              "kernel=...)", fix="add --location ISO|DIR|URL, or drop "
                              "--extra-args")
        if a.initrd_inject and not a.location:
            raise InvalidSpec("install: --initrd-inject only works with --location",
                              fix="add --location ISO|DIR|URL")
        if a.location and a.location.startswith("nfs:"):
            raise InvalidSpec(f"--location {a.location}: virtkit cannot read NFS trees itself",
                              fix="mount the export on the host and give the directory")
        if not chosen and boot is not None and boot.has("kernel"):
            return "kernel"  # a kernel booted directly, kept in the VM
        if not chosen:
            order = boot.words if boot is not None else []
            if self.args.cloud_init is not None and (a.disk or []):
                return "import"
            if not order:
                raise InvalidSpec(
                    "install: an install method must be specified",
                    fix="add one of --cdrom ISO, --location ISO|DIR|URL, --pxe, --import, "
                        "or --boot hd|cdrom|network")
            return "none"
        return {"--import": "import", "--cdrom": "cdrom", "--location": "location",
                "--pxe": "pxe", "--livecd": "livecd"}[chosen[0]]

    def _boot_options(self) -> SubOptions | None:
        if self.args.boot is None:
            return None
        return SubOptions.parse("--boot", self.args.boot, keys_of("--boot"))

    def _boot(self, method: str) -> None:
        opts = self._boot_options()
        boot: dict[str, Any] = {}
        if opts is not None:
            order = []
            devices = {"hd": "hd", "cdrom": "cdrom", "network": "network", "fd": None,
                       "floppy": None}
            for word in list(opts.words):
                if word == "uefi" or word == "efi":
                    self.domain["firmware"] = "uefi"
                    continue
                if word not in devices:
                    raise InvalidSpec(f"--boot: unknown boot device or option '{word}'"
                                      f"{closest(word, set(devices) | {'uefi'})}",
                                      fix="write e.g. --boot cdrom,hd,menu=on or --boot uefi")
                if devices[word] is None:
                    raise InvalidSpec("--boot fd: virtkit VMs have no floppy drive",
                                      fix="boot from hd, cdrom or network")
                order.append(devices[word])
            if order:
                boot["order"] = order
            if opts.flag("menu") or opts.flag("bootmenu.enable"):
                boot["menu"] = True
            if opts.get("firmware") in ("efi", "uefi") or opts.get("loader"):
                self.domain["firmware"] = "uefi"
            elif opts.get("firmware") not in (None, "bios"):
                raise InvalidSpec(f"--boot firmware={opts.get('firmware')}: use efi or bios")
            for key, target in (("kernel", "kernel"), ("initrd", "initrd"),
                                ("cmdline", "cmdline"), ("kernel_args", "cmdline"),
                                ("kernel.args", "cmdline")):
                if opts.has(key):
                    boot[target] = opts.get(key)
            if self.args.extra_args and "kernel" in boot:
                boot["cmdline"] = " ".join(filter(None, [boot.get("cmdline"),
                                                        self.args.extra_args]))
        if boot:
            self.domain["boot"] = boot

    # -- storage --------------------------------------------------------------------

    def _disks(self, method: str) -> None:
        a = self.args
        if a.nodisks and a.disk:
            raise InvalidSpec("install: --nodisks and --disk contradict each other",
                              fix="drop one of them")
        disks: list[dict[str, Any]] = []
        for text in a.disk or []:
            disk = self._disk(text, len(disks))
            if disk is not None:
                disks.append(disk)
        if method == "import" and not any(d.get("device", "disk") == "disk" for d in disks):
            raise InvalidSpec("install: --import needs a disk to boot",
                              fix="add --disk PATH (an existing image)")
        if disks:
            self.domain["disks"] = disks

    def _disk(self, text: str, index: int) -> dict[str, Any] | None:
        if text == "none":
            return None
        opts = SubOptions.parse("--disk", text, keys_of("--disk"))
        path = opts.get("path") or opts.get("source.file")
        if opts.words and opts.words[0] not in ("readonly", "shareable"):
            if path is not None:
                raise InvalidSpec(f"--disk: two paths in {text!r}", fix="give one path")
            path = opts.words.pop(0)
        disk: dict[str, Any] = {}
        device = opts.get("device", "disk")
        if device not in ("disk", "cdrom"):
            raise InvalidSpec(f"--disk device={device}: virtkit has disk and cdrom devices",
                              fix="use device=disk or device=cdrom")
        disk["device"] = device
        for field_name, keys in (("format", ("format", "driver.type")),
                                 ("bus", ("bus", "target.bus")),
                                 ("cache", ("cache", "driver.cache")),
                                 ("aio", ("io", "driver.io"))):
            value = next((found for key in keys if (found := opts.get(key))), None)
            if value is not None:
                disk[field_name] = value
        if opts.flag("readonly") or opts.get("perms") == "ro":
            disk["readonly"] = True
        for key in ("serial",):
            if opts.has(key):
                disk[key] = opts.get(key)
        target = opts.get("target") or opts.get("target.dev")
        if target is not None:
            disk["target"] = target
        opts.flag("shareable")
        opts.refuse_words()
        self._disk_source(opts, disk, path, index)
        return disk

    def _disk_source(self, opts: SubOptions, disk: dict[str, Any], path: str | None,
                     index: int) -> None:
        size = opts.number("size")
        size_bytes = int(size * 2**30) if size is not None else None
        sparse = opts.flag("sparse", default=True)
        vol = opts.get("vol")
        pool = opts.get("pool")
        if vol is not None:
            pool_name, sep, volume = vol.partition("/")
            if not sep or not pool_name or not volume:
                raise InvalidSpec(f"--disk vol={vol}: write vol=POOL/VOLUME",
                                  fix="e.g. vol=default/disk.qcow2")
            if size_bytes is not None:
                raise InvalidSpec("--disk vol= names an existing volume; size= does not "
                                  "apply", fix="drop size=, or use pool=POOL,size=N for a new "
                                  "volume")
            disk.update(pool=pool_name, volume=volume)
            return
        if path is not None:
            if not path.startswith("/"):
                raise InvalidSpec(f"--disk {path}: the path must be absolute",
                                  fix=f"write the full path, e.g. /var/lib/virtkit/{path}")
            if pool is not None:
                raise InvalidSpec("--disk: give path= or pool=, not both",
                                  fix="drop pool=, or drop the path")
            disk["path"] = path
            if size_bytes is not None:
                self.new_disks.append(NewDisk(index=index, size_bytes=size_bytes,
                                              format=disk.get("format", _format_of(path)),
                                              path=path, sparse=sparse))
            return
        if disk["device"] == "cdrom" and size_bytes is None:
            return  # an empty CD-ROM drive
        if size_bytes is None:
            raise InvalidSpec(f"--disk {opts.text}: a new disk needs size= (GiB), and an "
                              "existing one a path or vol=",
                              fix="write e.g. --disk size=10, --disk pool=default,size=10 or "
                                  "--disk path=/images/vm.qcow2")
        fmt = disk.get("format", "qcow2")
        disk["format"] = fmt
        disk.update(pool=pool or "default", volume="")
        self.new_disks.append(NewDisk(index=index, size_bytes=size_bytes, format=fmt,
                                      pool=pool or "default", sparse=sparse))

    # -- network, graphics, devices ---------------------------------------------------

    def _networks(self) -> None:
        a = self.args
        if a.nonetworks and a.network:
            raise InvalidSpec("install: --nonetworks and --network contradict each other",
                              fix="drop one of them")
        if a.nonetworks:
            return
        nics = []
        for text in a.network or ["network=default"]:
            nic = self._nic(text)
            if nic is not None:
                nics.append(nic)
        self.domain["nics"] = nics

    def _nic(self, text: str) -> dict[str, Any] | None:
        if text == "none":
            return None
        # The old syntax: network:default, bridge:br0.
        old = re.fullmatch(r"(network|bridge):([^,]+)(,.*)?", text)
        if old:
            text = f"{old.group(1)}={old.group(2)}{old.group(3) or ''}"
        opts = SubOptions.parse("--network", text, keys_of("--network"))
        nic: dict[str, Any] = {}
        kind = opts.get("type") or (opts.words.pop(0) if opts.words else None)
        source = opts.get("source")
        if opts.has("network") or kind == "network":
            nic["network"] = opts.get("network") or source or "default"
        elif opts.has("bridge") or kind == "bridge":
            bridge = opts.get("bridge") or source
            if not bridge:
                raise InvalidSpec("--network bridge: name the bridge",
                                  fix="write --network bridge=br0")
            nic["bridge"] = bridge
        elif kind == "user":
            nic["type"] = "user"
        elif kind == "default":
            nic["network"] = "default"
        elif kind is not None:
            raise InvalidSpec(f"--network {text}: unknown network type '{kind}'"
                              f"{closest(kind, {'network', 'bridge', 'user', 'default'})}",
                              fix="write network=NAME, bridge=NAME or user")
        else:
            nic["network"] = "default"
        model = opts.get("model") or opts.get("model.type")
        if model is not None:
            aliases = {"virtio": "virtio", "virtio-net-pci": "virtio", "e1000": "e1000",
                       "e1000e": "e1000", "rtl8139": "rtl8139"}
            if model not in aliases:
                raise InvalidSpec(f"--network model={model}: virtkit has virtio, e1000 and "
                                  f"rtl8139 NICs{closest(model, set(aliases))}",
                                  fix="use model=virtio (fastest), e1000 or rtl8139")
            nic["model"] = aliases[model]
        mac = opts.get("mac") or opts.get("mac.address")
        if mac is not None and mac != "RANDOM":
            nic["mac"] = mac
        link = opts.get("link.state") or opts.get("link_state")
        if link is not None:
            nic["link"] = link
        opts.refuse_words()
        return nic

    def _graphics(self) -> None:
        text = self.args.graphics
        if text is None:
            self.domain["graphics"] = {"type": "vnc"}
            return
        opts = SubOptions.parse("--graphics", text, keys_of("--graphics"))
        kind = opts.get("type") or (opts.words.pop(0) if opts.words else "vnc")
        opts.refuse_words()
        if kind == "none":
            self.domain["graphics"] = {"type": "none"}
            return
        if kind != "vnc":
            raise InvalidSpec(f"--graphics {kind}: virtkit's graphical console is VNC"
                              f"{closest(kind, {'vnc', 'none'})}",
                              fix="use --graphics vnc (the web console shows it) or none")
        graphics: dict[str, Any] = {"type": "vnc"}
        listen = opts.get("listen") or opts.get("listen.address")
        if listen is not None:
            graphics["listen"] = listen
        port = opts.integer("port", minimum=-1)
        if port is not None and port != -1:
            graphics["port"] = port
        password = opts.get("password") or opts.get("passwd")
        if password is not None:
            graphics["password"] = password
        if opts.has("keymap"):
            graphics["keymap"] = opts.get("keymap")
        self.domain["graphics"] = graphics

    def _devices(self) -> None:
        a = self.args
        ports: list[dict[str, Any]] = []
        for option, texts in (("--serial", a.serial or []), ("--console", a.console or [])):
            for text in texts:
                opts = SubOptions.parse(option, text, keys_of("--serial"))
                kind = opts.get("type") or (opts.words[0] if opts.words else "pty")
                target = opts.get("target_type") or opts.get("target.type") or "serial"
                if kind not in ("pty", "file") or target not in ("serial", "isa-serial"):
                    raise InvalidSpec(f"{option} {text}: virtkit's serial ports are consoles "
                                      "that can also log to a file (pty, file,path=...)",
                                      fix=f"use {option} pty or {option} file,path=/var/log/"
                                          "vm.log")
                path = opts.get("log.file") or opts.get("path") or opts.get("source.path")
                if kind == "file" and not path:
                    raise InvalidSpec(f"{option} {text}: a file port needs path=",
                                      fix=f"write {option} file,path=/var/log/vm.log")
                if option == "--serial":
                    ports.append({"log_path": path} if path else {})
                elif path and not ports:  # a console alone is the first serial port
                    ports.append({"log_path": path})
        if len(ports) > 1 or any(ports):
            self.domain["serials"] = ports
        parallels = [devices.parallel(text) for text in a.parallel or [] if text != "none"]
        if parallels:
            self.domain["parallels"] = parallels
        channels = [c for c in map(devices.channel, a.channel or []) if c is not None]
        if channels:
            self.domain["channels"] = channels
        if a.watchdog:
            opts = SubOptions.parse("--watchdog", a.watchdog, keys_of("--watchdog"))
            model = opts.get("model") or (opts.words.pop(0) if opts.words else "default")
            model = "i6300esb" if model == "default" else model  # virt-install's default
            if model == "none":
                self.domain["watchdog"] = None
            else:
                watchdog = {"model": model}
                action = opts.get("action") or (opts.words.pop(0) if opts.words else None)
                if action is not None:
                    watchdog["action"] = action
                self.domain["watchdog"] = watchdog
        if a.rng:
            word = a.rng.split(",")[0]
            if word == "none":
                self.domain["rng"] = None
            else:
                device = a.rng.split("device=")[-1].split(",")[0] if "device=" in a.rng \
                    else (word if word.startswith("/") else "/dev/urandom")
                self.domain["rng"] = {"backend": device}
        if a.memballoon:
            self.domain["balloon"] = a.memballoon.split(",")[0] != "none"
        if a.panic and a.panic.split(",")[0] not in ("default", "isa", "pvpanic"):
            raise InvalidSpec(f"--panic {a.panic}: virtkit's panic device is the ISA pvpanic",
                              fix="write --panic default, or drop it")

    def _refuse_unsupported(self) -> None:
        a = self.args
        for option, values in (("--smartcard", a.smartcard), ("--redirdev", a.redirdev)):
            for value in values or []:
                if value != "none":
                    raise InvalidSpec(f"install: {option} {value}: smartcard passthrough and "
                                      "USB redirection travel over a SPICE client connection; "
                                      "virtkit's consoles are VNC and serial",
                                      fix=f"drop {option}")
        for option, values, allowed in (
                ("--input", a.input, {"tablet", "mouse", "keyboard", "type=tablet",
                                      "type=mouse", "type=keyboard"}),
                ("--controller", a.controller, {"usb", "type=usb", "virtio-scsi",
                                                "scsi,model=virtio-scsi"}),
                ("--features", [a.features] if a.features else [], set()),
                ("--clock", [a.clock] if a.clock else [], {"offset=utc", "utc"}),
                ("--events", [a.events] if a.events else [], set()),
                ("--metadata", [a.metadata] if a.metadata else [], set()),
                ("--connect", [a.connect] if a.connect else [], set()),
                ("--unattended", [a.unattended] if a.unattended else [], set()),
                ("--install", [a.install] if a.install else [], set()),
                ("--reinstall", [a.reinstall] if a.reinstall else [], set()),
        ):
            for value in values or []:
                if value.split(",bus=")[0] not in allowed:
                    raise _unsupported(f"{option} {value}", f"{option.lstrip('-')} devices "
                                       "of that kind" if allowed else option.lstrip("-"))

    # -- OS variant and cloud-init -------------------------------------------------------

    def _os_variant(self) -> str | None:
        text = self.args.os_variant
        if text is None:
            return None
        opts = SubOptions.parse("--os-variant", text, keys_of("--os-variant"))
        if opts.get("detect") == "on" and not opts.words and not opts.has("name"):
            return "detect"
        name = opts.get("name") or opts.get("short-id") or opts.get("id") or \
            (opts.words[0] if opts.words else None)
        return name

    def _cloud_init(self) -> dict[str, str] | None:
        text = self.args.cloud_init
        if text is None:
            return None
        opts = SubOptions.parse("--cloud-init", text, keys_of("--cloud-init"))
        config: dict[str, str] = {}
        for key in ("root-password-file", "ssh-key", "user-data", "meta-data",
                    "network-config", "clouduser-ssh-key"):
            value = opts.get(key)
            if value is not None:
                if not value.startswith("/"):
                    raise InvalidSpec(f"--cloud-init {key}={value}: give an absolute path")
                config[key] = value
        if opts.flag("root-password-generate"):
            config["root-password-generate"] = "on"
        if not config:
            config["root-password-generate"] = "on"
        return config


def _unsupported(option: str, what: str) -> InvalidSpec:
    return InvalidSpec(f"install: {option}: virtkit does not support {what} yet",
                       fix=f"drop {option.split()[0]}")


def _cpu_model(model: str) -> str:
    """virt-install's CPU modes -> virtkit's models (host, max, auto, or a named model).

    virt-install's ``host`` is host-model, its default; ``host-model`` maps to virtkit's
    ``auto`` (the host CPU under KVM, ``max`` under TCG), as the libvirt XML reader maps
    ``<cpu mode='host-model'>``.  Only host-passthrough insists on the host CPU."""
    return {"host": "auto", "host-passthrough": "host", "host-model": "auto",
            "host-model-only": "auto", "host-copy": "auto", "maximum": "max", "max": "max",
            "default": "auto", "auto": "auto", "hypervisor-default": "auto"}.get(model, model)


def _format_of(path: str) -> str:
    """The format virt-install picks for a new file: from its extension, else qcow2."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return {"raw": "raw", "img": "raw", "iso": "raw", "qcow2": "qcow2"}.get(suffix, "qcow2")

