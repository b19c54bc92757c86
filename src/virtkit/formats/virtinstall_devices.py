"""virt-install's device options that map onto whole spec fields: --sound, --video,
--channel and --filesystem (split from virtinstall.py, which keeps the translator).  A share without
``driver.type`` is virtiofs where the host has virtiofsd, else 9p (decided by the
daemon when it defines the VM)."""

from __future__ import annotations

import argparse
from typing import Any

from virtkit.errors import InvalidSpec
from virtkit.formats.suboptions import SubOptions, closest
from virtkit.formats.virtinstall_options import keys_of
from virtkit.model.tuning import normalize_pci

SOUND_MODELS = {"default": "ich9", "ich9": "ich9", "ich6": "hda", "hda": "hda",
                "ac97": "ac97", "es1370": "es1370"}
VIDEO_MODELS = {"default": "vga", "vga": "vga", "std": "vga", "virtio": "virtio",
                "qxl": "qxl", "bochs": "bochs", "cirrus": "cirrus"}


def sound_and_video(args: argparse.Namespace, graphics: dict[str, Any] | None
                    ) -> dict[str, Any]:
    """--sound MODEL (cards on a silent audio back end) and --video MODEL: spec fields."""
    out: dict[str, Any] = {}
    cards = []
    for text in args.sound or []:
        opts = SubOptions.parse("--sound", text, keys_of("--sound"))
        model = opts.get("model") or (opts.words.pop(0) if opts.words else "default")
        opts.refuse_words()
        if model == "none":
            continue
        if model not in SOUND_MODELS:
            raise InvalidSpec(f"--sound {text}: virtkit's sound cards are ich9, ich6 (hda), "
                              f"ac97 and es1370{closest(model, set(SOUND_MODELS))}",
                              fix="write e.g. --sound ich9, or --sound none")
        cards.append({"model": SOUND_MODELS[model]})
    if cards:
        out["sound"] = cards
    if args.video:
        opts = SubOptions.parse("--video", args.video, keys_of("--video"))
        model = opts.get("model") or opts.get("model.type") or \
            (opts.words.pop(0) if opts.words else "default")
        opts.refuse_words()
        if model == "none":
            if (graphics or {}).get("type") == "vnc":
                raise InvalidSpec("--video none leaves VNC nothing to show",
                                  fix="drop --video none, or add --graphics none")
            return out
        if model not in VIDEO_MODELS:
            raise InvalidSpec(f"--video {args.video}: virtkit's display adapters are vga, "
                              f"virtio, qxl, bochs and cirrus{closest(model, set(VIDEO_MODELS))}",
                              fix="write e.g. --video virtio")
        out["video"] = VIDEO_MODELS[model]
    return out


def filesystems(texts: list[str]) -> dict[str, Any]:
    """--filesystem SOURCE,TARGET (or source=, target=, accessmode=, readonly=on): host
    folders shared over virtio-9p."""
    shared = []
    for text in texts:
        opts = SubOptions.parse("--filesystem", text, keys_of("--filesystem"))
        readonly = opts.flag("readonly")
        source = opts.get("source") or opts.get("source.dir") or \
            (opts.words.pop(0) if opts.words else None)
        target = opts.get("target") or opts.get("target.dir") or \
            (opts.words.pop(0) if opts.words else None)
        opts.refuse_words()
        if opts.get("type", "mount") != "mount":
            raise InvalidSpec(f"--filesystem {text}: virtkit shares host folders (type=mount)",
                              fix="drop type=")
        driver = {"path": "9p", "virtiofs": "virtiofs", None: "auto"}.get(
            opts.get("driver.type"))
        if driver is None:
            raise InvalidSpec(f"--filesystem {text}: driver.type is virtiofs or path (9p)",
                              fix="write driver.type=virtiofs, or leave it out")
        if not source or not target:
            raise InvalidSpec(f"--filesystem {text}: give the host folder and the guest's "
                              "mount tag", fix="write --filesystem /srv/share,share")
        entry: dict[str, Any] = {"source": source, "target": target}
        if driver != "auto":
            entry["driver"] = driver
        mode = opts.get("accessmode") or opts.get("mode")
        if mode is not None:
            entry["accessmode"] = mode
        if readonly:
            entry["readonly"] = True
        shared.append(entry)
    return {"filesystems": shared} if shared else {}


def channel(text: str) -> dict[str, Any] | None:
    """--channel unix,target.type=virtio,name=NAME[,path=SOCKET]: a named virtio port
    (the guest agent's is always there; spicevmc needs SPICE)."""
    if text == "none":
        return None
    opts = SubOptions.parse("--channel", text, keys_of("--channel"))
    kind = opts.get("type") or (opts.words.pop(0) if opts.words else "unix")
    name = opts.get("name") or opts.get("target.name")
    target = opts.get("target_type") or opts.get("target.type") or "virtio"
    if name == "org.qemu.guest_agent.0":
        return None  # virtkit always gives the guest agent its channel
    if kind != "unix" or target != "virtio" or not name:
        raise InvalidSpec(f"--channel {text}: virtkit's channels are named virtio ports on "
                          "unix sockets" + (" (spicevmc needs SPICE)" if kind == "spicevmc"
                                            else ""),
                          fix="write --channel unix,target.type=virtio,name=NAME")
    path = opts.get("path") or opts.get("source.path")
    return {"name": name, **({"path": path} if path else {})}


def parallel(text: str) -> dict[str, Any]:
    """--parallel file,path=FILE: a parallel port writing to a host file."""
    opts = SubOptions.parse("--parallel", text, keys_of("--parallel"))
    kind = opts.get("type") or (opts.words.pop(0) if opts.words else "file")
    path = opts.get("path") or opts.get("source.path")
    opts.refuse_words()
    if kind != "file" or not path:
        raise InvalidSpec(f"--parallel {text}: virtkit's parallel ports write to a host file",
                          fix="write --parallel file,path=/var/log/vm-lpt.log")
    return {"path": path}


def pci_address(text: str) -> str:
    """--host-device as virt-install takes a PCI device: 01:00.0, 0000:01:00.0 or the
    node device name pci_0000_01_00_0 (USB ids and vendor:product are refused)."""
    value = text.split(",")[0].strip()
    if value.startswith("pci_") and value.count("_") == 4:
        _, domain, bus, slot, function = value.split("_")
        value = f"{domain}:{bus}:{slot}.{function}"
    try:
        return normalize_pci(value)
    except ValueError:
        raise InvalidSpec(f"--host-device {text}: virtkit passes PCI devices through, named "
                          "by address", fix="write --host-device 0000:01:00.0 (see "
                          "'virtkit nodedev-list --cap pci')") from None
