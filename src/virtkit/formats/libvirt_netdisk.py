"""libvirt's network disks (``<disk type='network'>``) <-> virtkit's network disk URLs.

Pure, like the rest of formats/.  Two protocols, the two QEMU reaches in user space
(model/netdisk.py):

- ``<source protocol='rbd' name='POOL/IMAGE'>`` with one ``<host name= port=>`` per
  Ceph monitor and ``<auth username=>`` (under ``<disk>`` as older libvirt writes it,
  or under ``<source>``) <-> ``rbd://[USER@]MON:PORT,.../POOL/IMAGE``.  The secret
  the auth names is not kept (virtkit has no secret store: the key comes from the
  user's Ceph keyring on the host).  A disk with no host is refused: libvirt would
  read the monitors from ceph.conf, virtkit needs them in the definition.
- ``<source protocol='nfs' name='/EXPORT/PATH'>`` with one ``<host name=>`` ->
  ``nfs://SERVER/EXPORT/PATH`` (read only; such disks are written as volumes or files).

Other protocols (iscsi, gluster, nbd, http ...), ``<snapshot>``, ``<config>`` and
``<reconnect>`` are refused by location, as everything else the reader cannot honour.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from virtkit.model.netdisk import (
    RbdRef,
    is_rbd_path,
    nfs_url,
    parse_monitor,
    parse_rbd_url,
)

if TYPE_CHECKING:
    from virtkit.formats.libvirt_common import XmlReader

PROTOCOLS = ("rbd", "nfs")


def network_disk_out(element: ET.Element, path: str) -> None:
    """Write ``<source protocol=...>`` (and ``<auth>``) of a network disk into the
    ``<disk type='network'>`` element (rbd URLs; see the module docstring)."""
    ref = parse_rbd_url(path)
    if ref.user:
        ET.SubElement(element, "auth", username=ref.user)
    source = ET.SubElement(element, "source", protocol="rbd", name=f"{ref.pool}/{ref.image}")
    for host, port in ref.monitors:
        ET.SubElement(source, "host", name=host, port=str(port))


def is_network_disk(path: str | None) -> bool:
    """Whether ``dumpxml`` writes this disk as ``<disk type='network'>``."""
    return is_rbd_path(path)


def network_source_in(reader: XmlReader, disk: ET.Element, source: ET.Element | None,
                      spec: dict[str, Any]) -> bool:
    """Read a network disk's source into ``spec["path"]``; False (with a refusal
    recorded) when it cannot be honoured."""
    protocol = source.get("protocol", "") if source is not None else ""
    if source is None or protocol not in PROTOCOLS:
        where = reader.where(source, "protocol") if source is not None \
            else reader.where(disk, "type")
        reader.refuse(where, "network disks are rbd (Ceph) or nfs")
        return False
    reader.check(source, attrs=("protocol", "name", "tls", "index"), children=("host", "auth"),
                 silent=("seclabel",))
    hosts = source.findall("host")
    for host in hosts:
        reader.check(host, attrs=("name", "port", "transport"))
        if host.get("transport", "tcp") != "tcp":
            reader.refuse(reader.where(host, "transport"), "monitors and servers use tcp")
            return False
    name = (source.get("name") or "").strip()
    if not hosts or not name:
        reader.refuse(reader.where(source, "name") if hosts else f"{reader.where(source)}/host",
                      f"a {protocol} disk needs its image name and at least one host")
        return False
    try:
        if protocol == "nfs":
            if len(hosts) != 1:
                reader.refuse(f"{reader.where(source)}/host", "an nfs disk has one server")
                return False
            spec["path"] = nfs_url(hosts[0].get("name", ""), "/" + name.lstrip("/"))
            return True
        user = _auth_user(reader, disk, source)
        pool, _, image = name.partition("/")
        monitors = tuple(parse_monitor(_host_text(h)) for h in hosts)
        spec["path"] = parse_rbd_url(RbdRef(monitors, pool, image or None, user).url).url
    except ValueError as exc:
        reader.refuse(reader.where(source, "name"), str(exc))
        return False
    if spec["path"].startswith("rbd://") and parse_rbd_url(spec["path"]).image is None:
        reader.refuse(reader.where(source, "name"), "an rbd disk's name is POOL/IMAGE")
        return False
    spec.setdefault("format", "raw")
    return True


def _host_text(host: ET.Element) -> str:
    name, port = host.get("name", ""), host.get("port")
    shown = f"[{name}]" if ":" in name else name
    return f"{shown}:{port}" if port else shown


def _auth_user(reader: XmlReader, disk: ET.Element, source: ET.Element) -> str | None:
    auth = disk.find("auth")
    if auth is None:
        auth = source.find("auth")
    if auth is None:
        return None
    reader.check(auth, attrs=("username",), children=("secret",))
    secret = auth.find("secret")
    if secret is not None:
        reader.check(secret, attrs=("type", "uuid", "usage"))
    return auth.get("username") or None
