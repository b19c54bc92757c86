"""SPICE in libvirt domain XML, as virt-manager writes it by default, read into virtkit's
one display: VNC.

virt-manager (and virt-install) give a new VM ``<graphics type='spice'>`` plus SPICE's
plumbing: the agent channel ``<channel type='spicevmc'>``, USB redirection
``<redirdev type='spicevmc'>`` and ``<audio type='spice'>``.  Refusing the document for
that would make every virt-manager VM need ``--force``, and dropping the display would
leave the guest headless; instead the display becomes VNC (same listen address, port
and password) and the plumbing is left out, each with a warning the caller shows.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from virtkit.formats.libvirt_common import XmlReader

#: SPICE-only attributes of <graphics> that have no VNC meaning: ignored, listed once
SPICE_ATTRS = ("tlsPort", "defaultMode", "passwdValidTo", "connected", "sharePolicy")
#: SPICE-only children of <graphics> (compression, streaming, clipboard, OpenGL ...)
SPICE_CHILDREN = ("image", "jpeg", "zlib", "playback", "streaming", "clipboard", "mouse",
                  "filetransfer", "gl", "channel")
VNC_FIX = "connect with a VNC viewer (virtkit vncdisplay) or the web console"


def spice_graphics(reader: XmlReader, graphics: ET.Element) -> ET.Element:
    """A VNC ``<graphics>`` element standing for SPICE ``graphics``, with a warning.

    The listen address, a fixed port, the password and the keymap carry over; a
    ``<listen type='none'>`` (SPICE with local OpenGL) becomes VNC's default, localhost.
    """
    vnc = ET.Element("graphics", {"type": "vnc"})
    reader._paths[id(vnc)] = reader.where(graphics)  # refusals name the SPICE element
    for attr in ("port", "autoport", "listen", "passwd", "keymap"):
        if graphics.get(attr) is not None:
            vnc.set(attr, graphics.get(attr, ""))
    for listen in graphics.findall("listen"):
        if listen.get("type", "address") == "none":
            continue
        copy = ET.SubElement(vnc, "listen", dict(listen.attrib))
        reader._paths[id(copy)] = reader.where(listen)
    ignored = sorted({name for name in graphics.attrib if name in SPICE_ATTRS}
                     | {child.tag for child in graphics if child.tag in SPICE_CHILDREN})
    for name in graphics.attrib:
        if name not in SPICE_ATTRS and vnc.get(name) is None and name != "type":
            reader.refuse(reader.where(graphics, name))
    if any(child.tag == "gl" and child.get("enable") == "yes" for child in graphics):
        reader.note(f"{reader.where(graphics)}: SPICE's OpenGL (virgl) is not used; "
                    "the VNC display is not accelerated")
    reader.note(f"{reader.where(graphics)}: the SPICE display became VNC (virtkit's "
                "display)" + (f"; its SPICE-only settings are left out ({', '.join(ignored)})"
                              if ignored else "") + f": {VNC_FIX}")
    return vnc


def spice_plumbing(reader: XmlReader, device: ET.Element) -> None:
    """A spicevmc channel or USB redirection, or SPICE audio: left out, with a warning."""
    what = {"channel": "the SPICE agent channel (clipboard, resolution)",
            "redirdev": "USB redirection over SPICE",
            "audio": "sound over SPICE"}[device.tag]
    reader.note(f"left out {reader.where(device)}: {what}, meaningless without SPICE")
