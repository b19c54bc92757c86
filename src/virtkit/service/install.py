"""``virtkit install``: create the disks, define the VM, boot the installer.

The flow is virt-install's: the *final* configuration is what gets defined; the
first boot runs an *install-time* configuration (boot from the CD, the installer's
kernel and initrd with ``--extra-args``, the network first for PXE, the cloud-init
seed), and when the installer powers the guest off or reboots it, the daemon boots
the final configuration (unless ``--noreboot``).  Unlike virt-install, that second
boot does not depend on the client still being attached.

Everything an install creates (volumes, files, extracted kernels, the definition)
is undone if a later step fails: a failed install leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from virtkit.errors import Conflict, HostError, InvalidSpec, NotFound
from virtkit.model.domain import BootDevice, Disk, Domain, LifecycleAction
from virtkit.model.load import dump_domain, load_domain
from virtkit.service import hostsupport
from virtkit.service.domains import DomainService
from virtkit.service.models.base import SpecDocument
from virtkit.service.models.install import InstallPreview, InstallResult, OsVariant
from virtkit.service.storage import StorageService
from virtkit.storage import qemuimg

if TYPE_CHECKING:  # imported when an install runs: the daemon seldom installs (its RSS)
    from virtkit.formats import osinfo
    from virtkit.formats.virtinstall import InstallRequest, NewDisk

DEFAULT_MEMORY_MIB = 1024

#: an install request as JSON: formats/virtinstall.py's InstallRequest (its
#: ``to_dict`` form; the API checks its types with install_routes.InstallBody), or
#: ``{"argv": [...]}``, virt-install's words; InstallRequest.from_dict reads it
InstallDocument: TypeAlias = dict[str, Any]


def _check_shape(raw: SpecDocument) -> None:
    """The parts of the domain that the install steps read before the model validates
    it: a name, ``disks`` and ``nics`` as lists of objects, ``boot`` as an object.  A
    request shaped otherwise is refused naming the field, never a crash on the way."""
    if not isinstance(raw.get("name"), str):
        raise InvalidSpec("install: domain.name must be a string", field="domain.name")
    for name in ("disks", "nics"):
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise InvalidSpec(f"install: domain.{name} must be a list of objects",
                              field=f"domain.{name}")
    if not isinstance(raw.get("boot", {}), dict):
        raise InvalidSpec("install: domain.boot must be an object", field="domain.boot")


class InstallService:
    """Runs install requests (from ``virtkit install`` or the web wizard)."""

    def __init__(self, domains: DomainService, storage: StorageService, media_dir: Path,
                 osinfo_db: Callable[[], osinfo.OsinfoDb] | None = None) -> None:
        self._domains = domains
        self._storage = storage
        self._media_dir = media_dir
        self._osinfo_db = osinfo_db  # None: the host's database (osinfo.system_db)

    async def install(self, data: InstallDocument) -> InstallResult | InstallPreview:
        """Run an install request, or ``{"argv": [...]}``: virt-install's own options,
        parsed exactly as ``virtkit install`` parses them (the web wizard sends these)."""
        from virtkit.formats.virtinstall import InstallRequest, parse_command_line

        if "argv" in data:
            argv = data["argv"]
            if set(data) != {"argv"} or not isinstance(argv, list) \
                    or not all(isinstance(word, str) for word in argv):
                raise InvalidSpec("argv must be a list of strings, alone in the request",
                                  field="argv")
            data = parse_command_line(argv).to_dict()
        request = InstallRequest.from_dict(data)
        raw = dict(request.domain)
        _check_shape(raw)
        notes = hostsupport.check(request.host_checks)
        more, defaults = await asyncio.to_thread(self._apply_os_variant, request, raw)
        notes += more
        notes += self._default_network(request, raw)
        self._refuse_existing(raw["name"])
        self._name_new_volumes(request, raw)
        await asyncio.to_thread(self._check_paths, request)
        if request.method == "cdrom":  # the drive stays after the install, empty ...
            kept = _cdrom(request.install_media) if defaults.keep_install_media \
                else {"device": "cdrom"}  # ... but Windows installs read it in every stage
            raw["disks"] = [*raw.get("disks", []), kept]
        elif request.method == "livecd":
            raw["disks"] = [*raw.get("disks", []), _cdrom(request.install_media)]
            raw["boot"] = {**raw.get("boot", {}), "order": ["cdrom", "hd"]}
        final = self._validate(raw)
        await asyncio.to_thread(self._domains.check_fits_host, final)
        if request.dry_run or request.print_xml:
            return self._preview(request, final, notes)
        async with contextlib.AsyncExitStack() as undo:
            await asyncio.to_thread(self._create_disks, request, undo)
            defined = await asyncio.to_thread(self._domains.define, raw)
            undo.push_async_callback(self._undefine_quietly, defined.uuid)
            boot_spec, extra = await asyncio.to_thread(
                self._install_phase, request, load_domain(defined.spec), defined.uuid, undo)
            info = await self._domains.start(defined.uuid, boot_spec=boot_spec,
                                             boot_after_install=not request.noreboot)
            undo.pop_all()
        return InstallResult(**info.wire(), method=request.method,
                             install_phase=boot_spec is not None, notes=notes + extra)

    def _osinfo(self) -> osinfo.OsinfoDb:
        if self._osinfo_db is not None:
            return self._osinfo_db()
        from virtkit.formats import osinfo

        return osinfo.system_db()

    def os_variants(self, text: str = "") -> list[OsVariant]:
        """``osinfo-query os``: the OS variants whose names contain ``text``."""
        return [OsVariant.model_validate(entry.to_dict()) for entry in self._osinfo().search(text)]

    # -- checks before anything is created ----------------------------------------------

    def _apply_os_variant(self, request: InstallRequest, raw: SpecDocument
                          ) -> tuple[list[str], osinfo.OsDefaults]:
        """Fill what --os-variant recommends where the command line left it out."""
        from virtkit.formats import osinfo
        from virtkit.formats.virtinstall import NewDisk

        notes: list[str] = []
        variant = request.os_variant
        if variant in (None, "detect"):
            variant, note = self._detect_variant(request, explicit=variant == "detect")
            notes += note
        defaults = osinfo.OsDefaults(memory_mib=DEFAULT_MEMORY_MIB)
        if variant and variant not in ("generic", "none"):
            defaults = self._osinfo().defaults(variant)
        if request.default_disk and defaults.storage_bytes:
            # virt-install adds a disk of the recommended size when none is given
            raw["disks"] = [*raw.get("disks", []), {"device": "disk", "format": "qcow2",
                                                    "pool": "default", "volume": ""}]
            request.new_disks.append(NewDisk(index=len(raw["disks"]) - 1, format="qcow2",
                                             size_bytes=defaults.storage_bytes,
                                             pool="default"))
            notes.append(f"no --disk: a {defaults.storage_bytes / 2**30:g} GiB disk in pool "
                         f"'default', as --os-variant {variant} recommends")
        raw.setdefault("memory", {"current": defaults.memory_mib})
        if defaults.vcpus and "vcpus" not in raw:
            raw["vcpus"] = {"current": defaults.vcpus}
        if not defaults.virtio:
            for disk in raw.get("disks", []):
                if disk.get("device", "disk") == "disk":
                    disk.setdefault("bus", "sata")
            for nic in raw.get("nics", []):
                nic.setdefault("model", "e1000")
        for new in request.new_disks:
            if new.size_bytes <= 0 and defaults.storage_bytes:
                new.size_bytes = defaults.storage_bytes
        return notes, defaults

    def _detect_variant(self, request: InstallRequest, *, explicit: bool
                        ) -> tuple[str | None, list[str]]:
        """The OS variant whose install media the ISO is, by its identifiers (as
        virt-install's detect=on); None with a note when nothing matches."""
        from virtkit.formats import osinfo

        media = request.install_media or request.location
        ids = osinfo.iso_ids(media) if media and os.path.isfile(media) else None
        entry = None
        if ids is not None:
            try:
                entry = self._osinfo().detect(ids)
            except HostError:
                if explicit:
                    raise
        if entry is not None and entry.short_ids:
            return entry.short_ids[0], [f"--os-variant: detected {entry.name} "
                                        f"({entry.short_ids[0]}) from the media"]
        if not explicit:
            return None, []
        what = f"volume id {ids.volume!r}" if ids else "no ISO install media"
        return None, [f"--os-variant detect: no OS recognised ({what}); generic defaults"]

    def _default_network(self, request: InstallRequest, raw: SpecDocument) -> list[str]:
        """Without --network the NIC goes on 'default', as virt-install's does; if that
        network does not exist the VM gets no NIC (virt-install would fall back to an
        unrestricted user-mode NIC, which virtkit never gives a guest)."""
        networks = self._domains.networks
        if not request.default_nic or networks is None:
            return []
        try:
            networks.spec_of("default")
        except NotFound:
            raw["nics"] = []
            return ["there is no network 'default', so the VM has no NIC; create one "
                    "(virtkit net-define-as default ...) or pass --network"]
        return []

    def _refuse_existing(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._domains.spec(name)
            raise Conflict(f"install: domain '{name}' already exists",
                           fix=f"choose another --name, or remove it: virtkit undefine {name}")

    def _name_new_volumes(self, request: InstallRequest, raw: SpecDocument) -> None:
        """New volumes are named after the VM, as virt-install does: NAME.qcow2, NAME-1..."""
        taken: dict[str, set[str]] = {}
        for new in request.new_disks:
            if new.pool is None:
                continue
            if new.pool not in taken:
                taken[new.pool] = {v.name for v in self._storage.list_volumes(new.pool)}
            suffix = "qcow2" if new.format == "qcow2" else "img"
            base, number = raw["name"], 0
            candidate = f"{base}.{suffix}"
            while candidate in taken[new.pool]:
                number += 1
                candidate = f"{base}-{number}.{suffix}"
            taken[new.pool].add(candidate)
            new.volume = candidate
            raw["disks"][new.index]["volume"] = candidate

    def _check_paths(self, request: InstallRequest) -> None:
        """The path policy (host/pathpolicy.py) for the new disks' files and the install
        media, before anything is created or read; then the new files' folders."""
        policy = self._domains.policy
        for new in request.new_disks:
            if new.path is not None:
                policy.check(new.path, field=f"--disk {new.path}", kind="new")
        for option, media in (("--cdrom", request.install_media),
                              ("--location", request.location)):
            if media and media.startswith("/"):
                policy.check(media, field=option,
                             kind="dir" if os.path.isdir(media) else "file")
        self._check_new_files(request)

    @staticmethod
    def _check_new_files(request: InstallRequest) -> None:
        """A new disk at a path: the folder must exist; an existing file must match."""
        for new in request.new_disks:
            if new.path is None:
                continue
            path = Path(new.path)
            if not path.parent.is_dir():
                raise InvalidSpec(f"--disk {new.path}: folder {path.parent} does not exist",
                                  fix=f"create it (mkdir -p {path.parent}) or use another path")
            if path.exists():
                size = qemuimg.image_info(str(path)).get("virtual-size", 0)
                if size != new.size_bytes:
                    raise InvalidSpec(
                        f"--disk {new.path}: the file exists with size {size / 2**30:g} GiB, "
                        f"not the {new.size_bytes / 2**30:g} GiB asked for",
                        fix="drop size= to use the file as it is, or give another path")
                new.size_bytes = 0  # use it as it is: nothing to create

    def _validate(self, raw: SpecDocument) -> Domain:
        """Load the final spec with the new disks pretended present (no files yet)."""
        probe = json.loads(json.dumps(raw))
        for disk in probe.get("disks", []):
            if disk.get("volume") == "":
                disk.pop("pool", None)
                disk["volume"] = None
        try:
            return load_domain(probe)
        except InvalidSpec as exc:
            raise InvalidSpec(f"install: {exc.message}", fix=exc.fix) from None

    def _preview(self, request: InstallRequest, final: Domain,
                 notes: list[str]) -> InstallPreview:
        from virtkit.formats.libvirt_xml import domain_to_xml

        return InstallPreview(name=final.name, method=request.method, dry_run=True,
                              notes=notes, spec=dump_domain(final), xml=domain_to_xml(final))

    # -- creating -------------------------------------------------------------------

    def _create_disks(self, request: InstallRequest, undo: contextlib.AsyncExitStack) -> None:
        for new in request.new_disks:
            if new.size_bytes <= 0:
                continue
            if new.pool is not None and new.volume is not None:
                self._storage.create_volume(new.pool, new.volume, new.size_bytes, new.format,
                                            prealloc=not new.sparse)
                undo.callback(self._delete_volume_quietly, new.pool, new.volume)
            elif new.path is not None:
                self._create_file(new, undo)

    def _create_file(self, new: NewDisk, undo: contextlib.AsyncExitStack) -> None:
        assert new.path is not None
        located = self._storage.locate(new.path)
        if located is not None:  # inside a pool's folder: create it as a volume
            pool, name = located
            self._storage.create_volume(pool, name, new.size_bytes, new.format,
                                        prealloc=not new.sparse)
            undo.callback(self._delete_volume_quietly, pool, name)
            return
        undo.callback(Path(new.path).unlink, missing_ok=True)
        qemuimg.create(new.path, new.format, new.size_bytes, prealloc=not new.sparse)

    def _install_phase(self, request: InstallRequest, final: Domain, uuid: str,
                       undo: contextlib.AsyncExitStack) -> tuple[Domain | None, list[str]]:
        """The configuration of the first boot, or None when the final one boots."""
        from virtkit.storage import installmedia

        notes: list[str] = []
        phase = final.model_copy(deep=True)
        phase.on_reboot = LifecycleAction.DESTROY  # the installer's reboot ends the phase
        changed = False
        if request.method == "cdrom":
            phase.disks[-1] = Disk(**_cdrom(request.install_media))
            phase.boot.order = [BootDevice.CDROM, BootDevice.HD]
            changed = True
        elif request.method == "pxe":
            if not phase.nics:
                raise InvalidSpec("install: --pxe needs a network interface",
                                  fix="drop --nonetworks, or add --network network=default")
            phase.boot.order = [BootDevice.NETWORK, BootDevice.HD]
            changed = True
        elif request.method == "location":
            assert request.location is not None
            folder = self._media_dir / uuid
            undo.callback(installmedia.remove_tree, folder)
            kernel, initrd = installmedia.extract_boot_files(request.location, folder)
            if request.initrd_inject:
                installmedia.inject_into_initrd(initrd, request.initrd_inject)
            phase.boot.kernel, phase.boot.initrd = str(kernel), str(initrd)
            phase.boot.cmdline = request.extra_args
            if Path(request.location).is_file():  # the installer reads packages from it
                phase.disks.append(Disk(**_cdrom(request.location)))
            changed = True
        if request.cloud_init is not None:
            seed, password = self._cloud_init_seed(request, final, uuid, undo)
            phase.disks.append(Disk(**_cdrom(str(seed))))
            if password:
                notes.append(f"generated root password for the first boot: {password}")
            changed = True
        if not changed:
            return None, notes
        return load_domain(dump_domain(phase)), notes

    def _cloud_init_seed(self, request: InstallRequest, final: Domain, uuid: str,
                         undo: contextlib.AsyncExitStack) -> tuple[Path, str | None]:
        from virtkit.storage import installmedia

        config = request.cloud_init or {}
        password: str | None = None
        user_data = config.get("user-data")
        if user_data is not None:
            body = _read(user_data, "--cloud-init user-data")
        else:
            lines = ["#cloud-config", "ssh_pwauth: true", "disable_root: false"]
            if "root-password-file" in config:
                secret = _read(config["root-password-file"],
                               "--cloud-init root-password-file").decode().strip()
                lines += ["chpasswd:", "  expire: false", "  list: |",
                          f"    root:{secret}"]
            elif config.get("root-password-generate") == "on":
                alphabet = string.ascii_letters + string.digits
                password = "".join(secrets.choice(alphabet) for _ in range(16))
                lines += ["chpasswd:", "  expire: true", "  list: |", f"    root:{password}"]
            if "ssh-key" in config:
                key = _read(config["ssh-key"], "--cloud-init ssh-key").decode().strip()
                lines += ["users:", "  - name: root", "    ssh_authorized_keys:",
                          f"      - {key}"]
            body = ("\n".join(lines) + "\n").encode()
        meta = config.get("meta-data")
        meta_data = _read(meta, "--cloud-init meta-data") if meta else (
            f"instance-id: {uuid}\nlocal-hostname: {final.name}\n".encode())
        files = {"user-data": body, "meta-data": meta_data}
        if "network-config" in config:
            files["network-config"] = _read(config["network-config"],
                                            "--cloud-init network-config")
        folder = self._media_dir / uuid
        folder.mkdir(parents=True, exist_ok=True)
        undo.callback(installmedia.remove_tree, folder)
        return installmedia.write_seed_iso(folder / "cidata.iso", files), password

    # -- undo --------------------------------------------------------------------------

    def _delete_volume_quietly(self, pool: str, name: str) -> None:
        with contextlib.suppress(Exception):
            self._storage.delete_volume(pool, name, force=True)

    async def _undefine_quietly(self, uuid: str) -> None:
        with contextlib.suppress(Exception):
            await self._domains.destroy_and_undefine(uuid)


def _cdrom(path: str | None) -> SpecDocument:
    """A CD-ROM drive holding the ISO at ``path`` (which must exist)."""
    if path is None or not os.path.isfile(path):
        raise InvalidSpec(f"install: install media {path} does not exist",
                          fix="give the path of an existing ISO image")
    return {"path": os.path.abspath(path), "device": "cdrom", "format": "raw"}


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidSpec(f"{what}={path}: cannot read it ({exc.strerror})",
                          fix="give an existing file") from None
