"""virt-xml's device options, parsed by virt-install's translator (one parser for both).

``virtkit xml DOMAIN --add-device --disk /img/x.qcow2,bus=virtio`` gives the same
``--disk`` text to :class:`virtkit.formats.virtinstall._Translator` that ``virtkit
install`` would, and takes the device it makes.  For ``--edit`` only the
sub-options written count: ``--edit --disk cache=none`` changes the cache, nothing
else.  Pure: no I/O, so the CLI parses before asking the daemon anything.
"""

from __future__ import annotations

import re
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats.virtinstall import _Translator, build_argparser

#: virt-xml's device options virtkit takes -> the spec key they fill
DEVICE_OPTIONS = {"--disk": "disks", "--network": "nics", "--graphics": "graphics"}
#: what ``--edit N`` / ``--remove-device --disk SEL`` may match on, per option
SELECT_KEYS = {"--disk": ("target", "path", "volume"), "--network": ("mac", "network",
                                                                      "bridge"),
               "--graphics": ("type",)}
_KEEP = "/virtkit-xml-unchanged"
_DISK_SOURCE = re.compile(r"(^|,)(path|vol|source\.file|size|pool)=|^/")
_NIC_SOURCE = re.compile(r"(^|,)(network|bridge|type|source)=|^(network|bridge|user|default)"
                         r"(,|$|[:=])")


def device_fields(option: str, text: str, *, edit: bool = False) -> dict[str, Any]:
    """The spec fields of one virt-install device option (``edit``: only those the text
    names)."""
    if option not in DEVICE_OPTIONS:
        raise InvalidSpec(f"virtkit xml: {option} is not a device option it edits",
                          fix=f"use one of {', '.join(DEVICE_OPTIONS)}")
    translator = _Translator(build_argparser().parse_args([]))
    if option == "--graphics":
        translator.args.graphics = text
        translator._graphics()
        return dict(translator.domain["graphics"])
    if option == "--network":
        nic = translator._nic(text) or {}
        if edit and not _NIC_SOURCE.search(text):
            nic.pop("network", None)  # the translator's default, not the user's
        return nic
    keep = edit and not _DISK_SOURCE.search(text)
    disk = translator._disk(f"{text},path={_KEEP}" if keep and text else
                            (f"path={_KEEP}" if keep else text), 0) or {}
    if translator.new_disks:
        raise InvalidSpec("virtkit xml --disk: size= would create a new image",
                          fix="create it first (virtkit vol-create-as POOL NAME SIZE), "
                              "then --disk vol=POOL/NAME")
    if keep:
        disk.pop("path", None)
        if not re.search(r"(^|,)device=", text):
            disk.pop("device", None)
    return disk


def select(items: list[dict[str, Any]], selector: str | None, option: str) -> list[int]:
    """The positions ``--edit`` / ``--remove-device`` act on: none given -> the first;
    ``N`` (from 1), ``all``, or ``KEY=VALUE`` (target=vda, mac=..., path=...)."""
    if not items:
        raise InvalidSpec(f"the domain has no {option.lstrip('-')} device",
                          fix="add one with --add-device")
    if selector is None or selector == "1":
        return [0]
    if selector == "all":
        return list(range(len(items)))
    if selector.isdecimal():
        index = int(selector) - 1
        if not 0 <= index < len(items):
            raise InvalidSpec(f"{option} {selector}: the domain has {len(items)} such "
                              "device(s)", fix=f"give a number from 1 to {len(items)}")
        return [index]
    key, sep, value = selector.partition("=")
    if not sep or key not in SELECT_KEYS[option]:
        raise InvalidSpec(f"cannot select a device by {selector!r}",
                          fix=f"give N, all, or one of {', '.join(SELECT_KEYS[option])}=VALUE")
    found = [i for i, item in enumerate(items) if str(item.get(key)) == value]
    if not found:
        raise InvalidSpec(f"no {option.lstrip('-')} device has {key}={value}",
                          fix="see 'virtkit domblklist' / 'virtkit domiflist'")
    return found


__all__ = ["DEVICE_OPTIONS", "device_fields", "select"]
