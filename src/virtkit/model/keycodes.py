"""Key codes for ``send-key``: virsh's codesets translated to QEMU's key numbers.

QMP ``send-key`` takes "qnum" numbers: the PC keyboard's set 1 (XT) scancodes, with an
``0xe0``-prefixed extended key folded to ``0x80 | code``, as libvirt sends them.  virsh
accepts keys in several codesets (``--codeset``, default ``linux``); these are
translated the way libvirt's keymap tables do:

- ``linux``: Linux input event codes (``KEY_LEFTCTRL`` or ``29``); codes 1-88 are the
  set 1 scancodes themselves, the rest (arrows, right-hand modifiers ...) are extended;
- ``xt``, ``atset1``: set 1 scancodes; an extended key as ``0xe0XX`` (or qnum's ``0xXX|0x80``);
- ``qnum``, ``rfb``: QEMU's numbers as they are (RFB's extended key events use them);
- ``usb``: USB HID keyboard usage IDs (``0x04`` is A).

PURE: no I/O; the service turns keys into QMP arguments with :func:`translate`.
"""

from __future__ import annotations

from virtkit.errors import InvalidSpec

CODESETS = ("linux", "xt", "atset1", "qnum", "rfb", "usb")
#: virsh's codesets virtkit has no table for (refused, naming the ones it has)
UNSUPPORTED = ("win32", "osx", "atset2", "atset3", "xt_kbd")
#: QEMU and libvirt send at most this many keys at once
MAX_KEYS = 16

# Linux codes 1..88 in order (84 is unassigned); each is also its set 1 scancode.
_BASE = (
    "ESC", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "MINUS", "EQUAL", "BACKSPACE", "TAB",
    "Q", "W", "E", "R", "T", "Y", "U", "I", "O", "P", "LEFTBRACE", "RIGHTBRACE", "ENTER",
    "LEFTCTRL", "A", "S", "D", "F", "G", "H", "J", "K", "L", "SEMICOLON", "APOSTROPHE", "GRAVE",
    "LEFTSHIFT", "BACKSLASH", "Z", "X", "C", "V", "B", "N", "M", "COMMA", "DOT", "SLASH",
    "RIGHTSHIFT", "KPASTERISK", "LEFTALT", "SPACE", "CAPSLOCK", "F1", "F2", "F3", "F4", "F5", "F6",
    "F7", "F8", "F9", "F10", "NUMLOCK", "SCROLLLOCK", "KP7", "KP8", "KP9", "KPMINUS", "KP4", "KP5",
    "KP6", "KPPLUS", "KP1", "KP2", "KP3", "KP0", "KPDOT", "-", "ZENKAKUHANKAKU", "102ND", "F11",
    "F12"
)
#: the other Linux keys with a PC scancode: name -> (Linux code, qnum)
_EXTENDED = {
    "RO": (89, 0x73), "KATAKANAHIRAGANA": (93, 0x70), "HENKAN": (92, 0x79),
    "MUHENKAN": (94, 0x7B), "KPENTER": (96, 0x9C), "RIGHTCTRL": (97, 0x9D),
    "KPSLASH": (98, 0xB5), "SYSRQ": (99, 0x54), "RIGHTALT": (100, 0xB8),
    "HOME": (102, 0xC7), "UP": (103, 0xC8), "PAGEUP": (104, 0xC9), "LEFT": (105, 0xCB),
    "RIGHT": (106, 0xCD), "END": (107, 0xCF), "DOWN": (108, 0xD0), "PAGEDOWN": (109, 0xD1),
    "INSERT": (110, 0xD2), "DELETE": (111, 0xD3), "MUTE": (113, 0xA0),
    "VOLUMEDOWN": (114, 0xAE), "VOLUMEUP": (115, 0xB0), "POWER": (116, 0xDE),
    "KPEQUAL": (117, 0x59), "PAUSE": (119, 0xC6), "KPCOMMA": (121, 0x7E), "YEN": (124, 0x7D),
    "LEFTMETA": (125, 0xDB), "RIGHTMETA": (126, 0xDC), "COMPOSE": (127, 0xDD),
    "SLEEP": (142, 0xDF), "WAKEUP": (143, 0xE3),
}
#: Linux key name (without KEY_) -> (Linux code, qnum)
LINUX: dict[str, tuple[int, int]] = {
    **{name: (code, code) for code, name in enumerate(_BASE, start=1) if name != "-"},
    **_EXTENDED}
LINUX_TO_QNUM = {code: qnum for code, qnum in LINUX.values()}

# USB HID usage IDs 0x04.. in order, as Linux key names ("-": no key).
_USB = (
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S",
    "T", "U", "V", "W", "X", "Y", "Z", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "ENTER",
    "ESC", "BACKSPACE", "TAB", "SPACE", "MINUS", "EQUAL", "LEFTBRACE", "RIGHTBRACE", "BACKSLASH",
    "-", "SEMICOLON", "APOSTROPHE", "GRAVE", "COMMA", "DOT", "SLASH", "CAPSLOCK", "F1", "F2", "F3",
    "F4", "F5", "F6", "F7", "F8", "F9", "F10", "F11", "F12", "SYSRQ", "SCROLLLOCK", "PAUSE",
    "INSERT", "HOME", "PAGEUP", "DELETE", "END", "PAGEDOWN", "RIGHT", "LEFT", "DOWN", "UP",
    "NUMLOCK", "KPSLASH", "KPASTERISK", "KPMINUS", "KPPLUS", "KPENTER", "KP1", "KP2", "KP3", "KP4",
    "KP5", "KP6", "KP7", "KP8", "KP9", "KP0", "KPDOT", "102ND", "COMPOSE", "POWER", "KPEQUAL"
)
_USB_MODIFIERS = (
    "LEFTCTRL", "LEFTSHIFT", "LEFTALT", "LEFTMETA", "RIGHTCTRL", "RIGHTSHIFT", "RIGHTALT",
    "RIGHTMETA"
)
USB_TO_QNUM: dict[int, int] = {
    **{usage: LINUX[name][1] for usage, name in enumerate(_USB, start=4) if name != "-"},
    **{usage: LINUX[name][1] for usage, name in enumerate(_USB_MODIFIERS, start=0xE0)}}


def _number(text: str) -> int | None:
    """``29``, ``0x1d`` (virsh reads numbers with strtol base 0): the value, else None."""
    try:
        value = int(text, 0)
    except ValueError:
        return None
    return value if value >= 0 else None


def _one(codeset: str, key: str) -> int:
    number = _number(key)
    if codeset == "linux":
        if number is None:
            name = key.upper().removeprefix("KEY_")
            if name not in LINUX:
                raise InvalidSpec(f"unknown key {key!r} in the linux codeset",
                                  field="keys", fix="use Linux key names such as KEY_LEFTCTRL, "
                                  "KEY_C, KEY_F2, or their numbers (29, 46, 60)")
            return LINUX[name][1]
        if number in LINUX_TO_QNUM:
            return LINUX_TO_QNUM[number]
    elif number is None:
        raise InvalidSpec(f"key {key!r}: the {codeset} codeset takes numbers only",
                          field="keys", fix="give a number, or use --codeset linux with "
                          "KEY_* names")
    elif codeset in ("xt", "atset1"):
        if number < 0x80:
            return number
        if number >> 8 == 0xE0 and (number & 0xFF) < 0x80:
            return 0x80 | (number & 0xFF)
    elif codeset in ("qnum", "rfb"):
        if number < 0x100:
            return number
    elif number in USB_TO_QNUM:  # usb
        return USB_TO_QNUM[number]
    raise InvalidSpec(f"key {key!r} has no PC scancode in the {codeset} codeset",
                      field="keys")


def translate(codeset: str, keys: list[str]) -> list[int]:
    """virsh send-key's KEYCODE words in ``codeset`` -> QEMU's qnum numbers."""
    codeset = codeset.lower()
    if codeset in UNSUPPORTED:
        raise InvalidSpec(f"codeset {codeset!r} is not supported by virtkit",
                          field="codeset", fix="use one of " + ", ".join(CODESETS))
    if codeset not in CODESETS:
        raise InvalidSpec(f"unknown codeset {codeset!r}", field="codeset",
                          fix="use one of " + ", ".join(CODESETS))
    if not keys:
        raise InvalidSpec("send-key needs at least one key", field="keys")
    if len(keys) > MAX_KEYS:
        raise InvalidSpec(f"at most {MAX_KEYS} keys at once, got {len(keys)}", field="keys",
                          fix="send the rest with another send-key")
    codes = [_one(codeset, key) for key in keys]
    if len(set(codes)) != len(codes):
        raise InvalidSpec("a key is given twice in one send-key", field="keys")
    return codes
