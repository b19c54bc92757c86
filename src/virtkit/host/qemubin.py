"""Find the QEMU binaries and learn what they support.

virtkit builds QEMU command lines itself, so it must know the binary it will
run: its version, its machine types (and which alias such as ``q35`` means
which versioned type), its accelerators, whether it has ``-sandbox``, and
where the UEFI firmware (OVMF) lives.

Asking QEMU costs tens of milliseconds per question (``-machine help`` alone
~50 ms), so the binary's answers are cached in-process per binary path and
mtime: an upgraded binary is re-probed, a repeated question is free.  The four
questions run in parallel.  Firmware is looked up afresh on every call because
it is a few file reads and ``apt-get install ovmf`` must show up without a
restart.

Binaries come from ``PATH`` unless ``VIRTKIT_QEMU`` / ``VIRTKIT_QEMU_IMG`` name
them.  Missing binaries raise :class:`~virtkit.errors.HostError` with the
Debian package to install.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from virtkit.errors import HostError

QEMU_SYSTEM = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
ENV_QEMU = "VIRTKIT_QEMU"
ENV_QEMU_IMG = "VIRTKIT_QEMU_IMG"
INSTALL_QEMU = "apt-get install qemu-system-x86"
INSTALL_QEMU_IMG = "apt-get install qemu-utils"
INSTALL_OVMF = "apt-get install ovmf"

QUERY_TIMEOUT = 15.0
"""Seconds a capability query may take; generous because a loaded host is slow, not broken."""

# Firmware descriptor directories in QEMU's precedence order (docs/interop/firmware.json):
# a file in a later directory replaces the same-named file in an earlier one.
FIRMWARE_DESCRIPTOR_DIRS = ("/usr/share/qemu/firmware", "/etc/qemu/firmware")
OVMF_DIRS = ("/usr/share/OVMF", "/usr/share/qemu")

Version = tuple[int, int, int]

_VERSION_RE = re.compile(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?")
_ALIAS_RE = re.compile(r"\(alias of ([^)\s]+)\)")
# Debian's OVMF file-name tags for secure-boot images whose VARS come with keys enrolled.
_ENROLLED_TAGS = (".ms.", ".snakeoil.")


@dataclass(frozen=True)
class MachineType:
    """One line of ``-machine help``: a machine type, or an alias naming one."""

    name: str
    description: str
    alias_of: str | None = None
    is_default: bool = False
    deprecated: bool = False


@dataclass(frozen=True)
class Firmware:
    """A UEFI firmware image and the variable-store template that goes with it."""

    code: Path
    vars_template: Path | None
    secure_boot: bool = False
    enrolled_keys: bool = False
    description: str = ""
    descriptor: Path | None = None


@dataclass(frozen=True)
class ToolInfo:
    """A located binary and its version (used for ``qemu-img``)."""

    path: Path
    version: Version
    version_text: str


@dataclass(frozen=True)
class QemuInfo:
    """What one ``qemu-system-x86_64`` binary supports, plus the host's OVMF firmware."""

    path: Path
    version: Version
    version_text: str
    machines: tuple[MachineType, ...]
    accelerators: frozenset[str]
    sandbox: bool
    firmware: tuple[Firmware, ...] = field(default=())

    @property
    def machine_names(self) -> frozenset[str]:
        """Every name ``-machine`` accepts: versioned types and aliases."""
        return frozenset(m.name for m in self.machines)

    @property
    def aliases(self) -> dict[str, str]:
        """Alias -> versioned machine type, e.g. ``{"q35": "pc-q35-7.2", ...}``."""
        return {m.name: m.alias_of for m in self.machines if m.alias_of}

    @property
    def default_machine(self) -> str | None:
        """The machine type QEMU uses without ``-machine``, if it names one."""
        return next((m.name for m in self.machines if m.is_default), None)

    def resolve_machine(self, name: str) -> str:
        """The versioned machine type behind ``name`` (``q35`` -> ``pc-q35-7.2``).

        Pinning the versioned type keeps a guest's hardware stable across QEMU
        upgrades, which is why virtkit stores the resolved name.  Raises
        HostError when this QEMU does not know ``name``.
        """
        if name not in self.machine_names:
            raise HostError(f"{self.path} does not support machine type {name!r}",
                            fix=f"choose one of: {', '.join(sorted(self.aliases))}")
        return self.aliases.get(name, name)

    def supports_accel(self, accel: str) -> bool:
        """Whether ``-accel <accel>`` is compiled into this binary."""
        return accel in self.accelerators


def parse_version(text: str) -> tuple[Version, str]:
    """Parse ``--version`` output: (``(7, 2, 22)``, ``"7.2.22 (Debian 1:7.2+dfsg-7)"``).

    Raises HostError when no version can be found, since virtkit cannot
    reason about a QEMU it cannot identify.
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _VERSION_RE.search(first)
    if match is None:
        raise HostError(f"cannot parse QEMU version from {first!r}")
    major, minor, micro = match.group(1), match.group(2), match.group(3) or "0"
    return (int(major), int(minor), int(micro)), first[match.start(1):].strip()


def parse_machine_help(text: str) -> tuple[MachineType, ...]:
    """Parse ``-machine help`` lines (``name   description (alias of x) (default)``)."""
    machines: list[MachineType] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Supported machines"):
            continue
        name, _, description = line.strip().partition(" ")
        description = description.strip()
        alias = _ALIAS_RE.search(description)
        clean = _ALIAS_RE.sub("", description)
        flags = ("(default)", "(deprecated)")
        for flag in flags:
            clean = clean.replace(flag, "")
        machines.append(MachineType(
            name=name,
            description=" ".join(clean.split()),
            alias_of=alias.group(1) if alias else None,
            is_default="(default)" in description,
            deprecated="(deprecated)" in description,
        ))
    return tuple(machines)


def parse_accel_help(text: str) -> frozenset[str]:
    """Parse ``-accel help``: the lines after the header, one accelerator each."""
    return frozenset(line.strip() for line in text.splitlines()
                     if line.strip() and not line.rstrip().endswith(":"))


def parse_sandbox_support(help_text: str) -> bool:
    """Whether ``-help`` lists ``-sandbox`` (seccomp support compiled in)."""
    return any(line.startswith("-sandbox") for line in help_text.splitlines())


def _locate(name: str, env_var: str, install: str, env: Mapping[str, str] | None) -> Path:
    """Find a binary: the env override if set, else PATH; HostError naming the fix if absent."""
    environ = os.environ if env is None else env
    override = environ.get(env_var)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise HostError(f"{env_var}={override} is not an executable file",
                        fix=f"point {env_var} at {name}, or unset it to search PATH")
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if found is None:
        raise HostError(f"{name} was not found on PATH", fix=install)
    return Path(found)


def find_qemu_system(env: Mapping[str, str] | None = None) -> Path:
    """Path of ``qemu-system-x86_64`` (``$VIRTKIT_QEMU`` wins over ``PATH``)."""
    return _locate(QEMU_SYSTEM, ENV_QEMU, INSTALL_QEMU, env)


def find_qemu_img(env: Mapping[str, str] | None = None) -> Path:
    """Path of ``qemu-img`` (``$VIRTKIT_QEMU_IMG`` wins over ``PATH``)."""
    return _locate(QEMU_IMG, ENV_QEMU_IMG, INSTALL_QEMU_IMG, env)


def _spawn_all(binary: Path, queries: Sequence[Sequence[str]]) -> list[subprocess.Popen[str]]:
    """Start one process per query; if any cannot start, reap the others and raise HostError."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for args in queries:
            procs.append(subprocess.Popen([str(binary), *args], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    except OSError as spawn_error:
        for proc in procs:
            proc.kill()
            proc.communicate()
        raise HostError(f"cannot run {binary}: {spawn_error.strerror or spawn_error}",
                        fix="reinstall QEMU: " + INSTALL_QEMU) from spawn_error
    return procs


def _query_many(binary: Path, queries: Sequence[Sequence[str]]) -> list[str]:
    """Run ``binary`` once per argument list, in parallel; return each stdout.

    Every process is reaped before returning.  Raises HostError naming the
    first query that exited non-zero or hung.
    """
    outputs: list[str] = []
    failure: HostError | None = None
    for args, proc in zip(queries, _spawn_all(binary, queries), strict=True):
        command = f"{binary} {' '.join(args)}"
        try:
            out, stderr = proc.communicate(timeout=QUERY_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failure = failure or HostError(f"{command} timed out after {QUERY_TIMEOUT:g} s")
            continue
        if proc.returncode != 0:
            failure = failure or HostError(
                f"{command} failed: {stderr.strip() or f'exit status {proc.returncode}'}",
                fix="reinstall QEMU: " + INSTALL_QEMU)
        outputs.append(out)
    if failure is not None:
        raise failure
    return outputs


def _identity(path: Path) -> tuple[int, int, int]:
    """What makes a cached probe stale: mtime, plus size and inode (apt replaces by rename)."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


@functools.lru_cache(maxsize=8)
def _probe_system_binary(path: Path, identity: tuple[int, int, int]) -> QemuInfo:
    """Ask one binary everything at once; cached per path and identity so upgrades re-probe."""
    del identity  # part of the cache key only
    version_out, machine_out, accel_out, help_out = _query_many(
        path, [["--version"], ["-machine", "help"], ["-accel", "help"], ["-help"]])
    version, version_text = parse_version(version_out)
    return QemuInfo(path=path, version=version, version_text=version_text,
                    machines=parse_machine_help(machine_out),
                    accelerators=parse_accel_help(accel_out),
                    sandbox=parse_sandbox_support(help_out))


@functools.lru_cache(maxsize=8)
def _probe_tool_version(path: Path, identity: tuple[int, int, int]) -> ToolInfo:
    del identity  # part of the cache key only
    (out,) = _query_many(path, [["--version"]])
    version, text = parse_version(out)
    return ToolInfo(path=path, version=version, version_text=text)


def qemu_info(env: Mapping[str, str] | None = None, sysroot: Path = Path("/")) -> QemuInfo:
    """Capabilities of the ``qemu-system-x86_64`` virtkit will run, with the host's OVMF.

    Raises HostError (with an install hint) when the binary is missing or broken.
    """
    path = find_qemu_system(env)
    info = _probe_system_binary(path, _identity(path))
    return replace(info, firmware=find_ovmf(sysroot))


def qemu_img_info(env: Mapping[str, str] | None = None) -> ToolInfo:
    """Location and version of ``qemu-img``; HostError with an install hint when missing."""
    path = find_qemu_img(env)
    return _probe_tool_version(path, _identity(path))


def clear_cache() -> None:
    """Forget every cached binary probe (tests; or after replacing a binary in place)."""
    _probe_system_binary.cache_clear()
    _probe_tool_version.cache_clear()


def _under(sysroot: Path, absolute: str | Path) -> Path:
    return sysroot / str(absolute).lstrip("/")


def _read_descriptors(sysroot: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Firmware descriptors by file name; later directories override, empty files mask."""
    chosen: dict[str, Path] = {}
    for directory in FIRMWARE_DESCRIPTOR_DIRS:
        base = _under(sysroot, directory)
        if base.is_dir():
            for entry in base.glob("*.json"):
                chosen[entry.name] = entry
    descriptors: list[tuple[Path, dict[str, Any]]] = []
    for name in sorted(chosen):
        try:
            data = json.loads(chosen[name].read_text())
        except (OSError, ValueError):
            continue  # empty masking file or a broken descriptor: skip it, as QEMU does
        if isinstance(data, dict):
            descriptors.append((chosen[name], data))
    return descriptors


def _firmware_from_descriptor(sysroot: Path, source: Path,
                              data: dict[str, Any]) -> Firmware | None:
    """A Firmware for an x86_64 UEFI flash descriptor whose image exists, else None."""
    targets = data.get("targets") or []
    if "uefi" not in (data.get("interface-types") or []):
        return None
    if not any(isinstance(t, dict) and t.get("architecture") == "x86_64" for t in targets):
        return None
    mapping = data.get("mapping") or {}
    if mapping.get("device") != "flash":
        return None
    code = (mapping.get("executable") or {}).get("filename")
    template = (mapping.get("nvram-template") or {}).get("filename")
    if not isinstance(code, str) or not _under(sysroot, code).is_file():
        return None
    features = data.get("features") or []
    return Firmware(
        code=Path(code),
        vars_template=Path(template) if isinstance(template, str) else None,
        secure_boot="secure-boot" in features,
        enrolled_keys="enrolled-keys" in features,
        description=str(data.get("description", "")),
        descriptor=Path("/") / source.relative_to(sysroot),
    )


def _vars_for(code: Path) -> Path | None:
    """The VARS template matching an OVMF_CODE image (``OVMF_CODE_4M.ms.fd`` -> ``..._4M.ms``)."""
    name = code.name.replace("CODE", "VARS")
    candidates = [code.with_name(name)]
    stem, _, _ = name.partition(".")  # OVMF_VARS_4M.secboot.fd -> OVMF_VARS_4M
    candidates.append(code.with_name(stem + ".fd"))
    return next((c for c in candidates if c.is_file()), None)


def _firmware_from_glob(sysroot: Path) -> list[Firmware]:
    """OVMF_CODE*.fd images found by name, for hosts without firmware descriptors."""
    found: list[Firmware] = []
    for directory in OVMF_DIRS:
        for code in sorted(_under(sysroot, directory).glob("OVMF_CODE*.fd")):
            template = _vars_for(code)
            enrolled = any(tag in code.name for tag in _ENROLLED_TAGS)
            found.append(Firmware(
                code=Path("/") / code.relative_to(sysroot),
                vars_template=Path("/") / template.relative_to(sysroot) if template else None,
                secure_boot=enrolled or "secboot" in code.name,
                enrolled_keys=enrolled,
                description=code.name,
            ))
    return found


def find_ovmf(sysroot: Path = Path("/")) -> tuple[Firmware, ...]:
    """UEFI firmware for x86_64 guests; empty when OVMF is not installed.

    Firmware descriptors (QEMU's own interop format, also used by libvirt) are
    authoritative and come in their priority order (file name, ``/etc``
    overriding ``/usr/share``); when none exist the Debian file names
    ``/usr/share/OVMF/OVMF_CODE*.fd`` are paired with their ``OVMF_VARS*.fd``
    templates, non-secure-boot images first.  Returned paths are host paths,
    even when ``sysroot`` points at a test tree.  Use :func:`select_firmware`
    to pick one.
    """
    from_descriptors = [fw for source, data in _read_descriptors(sysroot)
                        if (fw := _firmware_from_descriptor(sysroot, source, data))]
    if from_descriptors:
        return tuple(from_descriptors)
    globbed = _firmware_from_glob(sysroot)
    return tuple(sorted(globbed, key=lambda fw: fw.secure_boot))


def select_firmware(firmware: Sequence[Firmware], *, secure_boot: bool = False) -> Firmware | None:
    """The highest-priority image with the wanted secure-boot setting, or None.

    Descriptor priority alone would hand every guest a secure-boot build (it
    needs SMM and a q35 machine), so plain UEFI guests ask for
    ``secure_boot=False`` and get the plain image.
    """
    return next((fw for fw in firmware if fw.secure_boot == secure_boot), None)
