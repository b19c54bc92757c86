"""libvirt storage pool XML in and out: ``virsh pool-dumpxml`` / ``virsh pool-define``.

Pure, like :mod:`.libvirt_xml` (same refusal rule).

Mapping
-------
- ``<pool type='dir'>`` with ``<target><path>`` <-> ``type: dir``, ``target``.
- ``<pool type='logical'>``: ``<source><name>`` (the volume group; the pool's name
  when absent, as libvirt does) <-> ``target``, ``<source><device path=>`` <->
  ``source_devices``; ``<target><path>/dev/VG`` and ``<format type='lvm2'>`` are
  accepted silently.
- virtkit's ``iso`` pools (install media) and ``shared-dir`` pools (a folder every
  host mounts) are written as ``type='dir'`` with ``<metadata><virtkit:pool
  type='iso'/>`` (or ``'shared-dir'``); autostart goes there too.
- ``<pool type='netfs'>`` with ``<source><host name=><dir path=><format
  type='nfs'>`` <-> ``type: netfs``, ``source_host``, ``source_path``.  virtkit
  mounts nothing (QEMU reaches the export through libnfs), so ``<target><path>`` is
  accepted silently and written as ``/var/lib/virtkit/netfs/NAME``: where libvirt,
  given this XML, would mount the export.
- ``<pool type='rbd'>`` with ``<source><host name= port=>`` (one per monitor),
  ``<name>`` (the Ceph pool) and ``<auth type='ceph' username=><secret uuid=>`` <->
  ``type: rbd``, ``source_hosts``, ``source_name``, ``auth_username``,
  ``auth_secret_uuid``.  virtkit has no secret store: the secret's UUID is kept for
  pool-dumpxml, the key is read from the user's Ceph keyring on each host; a secret
  named by ``usage`` only is refused (there is no UUID to keep).  ``<config>``
  options and a ``<target>`` are refused (rbd pools have none in libvirt either).
- Accepted silently: ``capacity``, ``allocation``, ``available`` (facts, not
  settings) and ``target/permissions`` (virtkit makes its folders itself).
- Other pool types (fs, disk, iscsi, zfs ...) cannot be imported, even
  with force; other source elements (adapter, auth ...) are refused.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats.libvirt_common import VIRTKIT_NS, XmlReader, libvirt_text, parse_document
from virtkit.model.pool import Pool, PoolType


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _pool_root(pool: Pool, kind: str) -> ET.Element:
    """``<pool type=kind>`` with its name, uuid and, where libvirt has no word for it,
    virtkit's metadata: the pool type libvirt lacks (iso, shared-dir) and autostart."""
    root = ET.Element("pool", type=kind)
    _sub(root, "name", pool.name)
    _sub(root, "uuid", pool.uuid)
    if pool.type in (PoolType.ISO, PoolType.SHARED_DIR) or pool.autostart:
        ours = _sub(_sub(root, "metadata"), "virtkit:pool", **{"xmlns:virtkit": VIRTKIT_NS})
        if pool.type in (PoolType.ISO, PoolType.SHARED_DIR):
            ours.set("type", pool.type.value)
        if pool.autostart:
            _sub(ours, "virtkit:autostart", "yes")
    return root


def pool_to_xml(pool: Pool) -> str:
    """The libvirt pool XML of ``pool``, pretty-printed like ``virsh pool-dumpxml``."""
    logical = pool.type is PoolType.LOGICAL
    if pool.type is PoolType.NETFS:
        return _netfs_xml(pool)
    if pool.type is PoolType.RBD:
        return _rbd_xml(pool)
    root = _pool_root(pool, "logical" if logical else "dir")
    source = _sub(root, "source")
    if logical:
        for device in pool.source_devices:
            _sub(source, "device", path=device)
        _sub(source, "name", pool.target)
        _sub(source, "format", type="lvm2")
    target = _sub(root, "target")
    _sub(target, "path", f"/dev/{pool.target}" if logical else pool.target)
    ET.indent(root, space="  ")
    return libvirt_text(root)


def _netfs_xml(pool: Pool) -> str:
    root = _pool_root(pool, "netfs")
    server, path = pool.netfs_source()
    source = _sub(root, "source")
    _sub(source, "host", name=server)
    _sub(source, "dir", path=path)
    _sub(source, "format", type="nfs")
    _sub(_sub(root, "target"), "path", f"/var/lib/virtkit/netfs/{pool.name}")
    ET.indent(root, space="  ")
    return libvirt_text(root)


def _rbd_xml(pool: Pool) -> str:
    root = _pool_root(pool, "rbd")
    ref = pool.rbd_source()
    source = _sub(root, "source")
    for host, port in ref.monitors:
        _sub(source, "host", name=host, port=str(port))
    _sub(source, "name", ref.pool)
    if ref.user:
        auth = _sub(source, "auth", type="ceph", username=ref.user)
        if pool.auth_secret_uuid:
            _sub(auth, "secret", uuid=pool.auth_secret_uuid)
    ET.indent(root, space="  ")
    return libvirt_text(root)


def pool_from_xml(text: str, *, force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Read libvirt pool XML into a pool spec dict and warnings (see the module docstring)."""
    root = parse_document(text, "pool", command="virtkit pool-define")
    return _PoolReader(root, force=force).read()


class _PoolReader(XmlReader):
    def __init__(self, root: ET.Element, *, force: bool) -> None:
        super().__init__(root, force=force, reasons={})

    def read(self) -> tuple[dict[str, Any], list[str]]:
        root = self.root
        ours = root.find(f"metadata/{{{VIRTKIT_NS}}}pool")
        kind = root.get("type", "")
        if kind not in ("dir", "logical", "netfs", "rbd"):
            raise InvalidSpec(f"libvirt {kind or 'untyped'} pools cannot be imported: virtkit "
                              "has dir, logical (LVM), netfs (NFS), rbd (Ceph) and iso pools",
                              field="xml",
                              fix="define a dir, logical, netfs or rbd pool (virtkit "
                                  "pool-define-as)")
        self.check(root, attrs=("type",),
                   children=("name", "uuid", "source") + (() if kind == "rbd" else ("target",)),
                   silent=("metadata", "capacity", "allocation", "available"))
        spec: dict[str, Any] = {}
        for tag in ("name", "uuid"):
            element = root.find(tag)
            if element is not None:
                spec[tag] = (element.text or "").strip()
        if kind in ("netfs", "rbd"):
            spec["type"] = kind
        elif kind == "dir":
            ours_type = ours.get("type") if ours is not None else None
            spec["type"] = ours_type if ours_type in ("iso", "shared-dir") else "dir"
        else:
            spec["type"] = "logical"
        source = root.find("source")
        if source is not None:
            self._source(source, spec)
        target = root.find("target")
        if target is not None:
            self.check(target, children=("path",), silent=("permissions",))
            path = (target.findtext("path") or "").strip()
            if kind == "dir" and path:
                spec["target"] = path
        if kind == "logical" and "target" not in spec and "name" in spec:
            spec["target"] = spec["name"]  # libvirt's default volume group name
        if ours is not None and (ours.findtext(f"{{{VIRTKIT_NS}}}autostart") or "") == "yes":
            spec["autostart"] = True
        order = ("name", "uuid", "type", "target", "source_devices", "source_host",
                 "source_path", "source_hosts", "source_name", "auth_username",
                 "auth_secret_uuid", "autostart")
        return {key: spec[key] for key in order if key in spec}, self.finish("pool")

    def _source(self, source: ET.Element, spec: dict[str, Any]) -> None:
        if spec["type"] == "netfs":
            self._netfs_source(source, spec)
            return
        if spec["type"] == "rbd":
            self._rbd_source(source, spec)
            return
        logical = spec["type"] == "logical"
        self.check(source, children=("device", "name", "format") if logical else ())
        devices = []
        for device in source.findall("device"):
            self.check(device, attrs=("path",))
            devices.append(device.get("path", ""))
        if devices and logical:
            spec["source_devices"] = devices
        name = source.findtext("name")
        if name and logical:
            spec["target"] = name.strip()
        fmt = source.find("format")
        if fmt is not None and logical and fmt.get("type", "lvm2") != "lvm2":
            self.refuse(self.where(fmt, "type"), "volume groups are lvm2")

    def _netfs_source(self, source: ET.Element, spec: dict[str, Any]) -> None:
        """One NFS server and folder; glusterfs/cifs formats are refused."""
        self.check(source, children=("host", "dir", "format"))
        host, folder = source.find("host"), source.find("dir")
        if host is not None:
            self.check(host, attrs=("name",))
            spec["source_host"] = host.get("name", "")
        if folder is not None:
            self.check(folder, attrs=("path",))
            spec["source_path"] = folder.get("path", "")
        fmt = source.find("format")
        if fmt is not None and fmt.get("type", "auto") not in ("auto", "nfs"):
            self.refuse(self.where(fmt, "type"), "virtkit's netfs pools are NFS")

    def _rbd_source(self, source: ET.Element, spec: dict[str, Any]) -> None:
        """Monitors, the Ceph pool, and a cephx user with its secret's UUID."""
        self.check(source, children=("host", "name", "auth"))
        hosts = []
        for host in source.findall("host"):
            self.check(host, attrs=("name", "port"))
            host_name, port = host.get("name", ""), host.get("port")
            shown = f"[{host_name}]" if ":" in host_name else host_name
            hosts.append(f"{shown}:{port}" if port else host_name)
        if hosts:
            spec["source_hosts"] = hosts
        ceph_pool = source.findtext("name")
        if ceph_pool is not None:
            spec["source_name"] = ceph_pool.strip()
        auth = source.find("auth")
        if auth is None:
            return
        self.check(auth, attrs=("type", "username"), children=("secret",))
        if auth.get("type", "ceph") != "ceph":
            self.refuse(self.where(auth, "type"), "rbd pools authenticate with cephx "
                        "(type='ceph')")
            return
        if auth.get("username"):
            spec["auth_username"] = auth.get("username")
        secret = auth.find("secret")
        if secret is not None:
            self.check(secret, attrs=("uuid", "usage", "type"))
            if secret.get("uuid"):
                spec["auth_secret_uuid"] = secret.get("uuid")
            elif secret.get("usage"):
                self.refuse(self.where(secret, "usage"), "virtkit has no secret store: give "
                            "the secret's uuid (kept for pool-dumpxml; the key comes from "
                            "the user's Ceph keyring)")
