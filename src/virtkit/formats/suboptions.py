"""virt-install's comma-separated sub-option strings: ``path=/a.img,size=10,bus=virtio``.

Split on commas outside quotes; each piece is ``key=value`` or a bare word.  Bare
words keep their position so that each option can give them a meaning of its own
(the first word of ``--disk`` is the path, every word of ``--boot`` a boot device,
``+vmx`` in ``--cpu`` a feature).  Unknown keys are refused with the closest known
one, as virt-install does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from virtkit.errors import InvalidSpec

_TRUE = {"on", "yes", "true", "1"}
_FALSE = {"off", "no", "false", "0"}


def split_commas(text: str) -> list[str]:
    """Split ``text`` on commas that are not inside single or double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
            else:
                current.append(char)
        elif char in "\"'":
            quote = char
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote:
        raise InvalidSpec(f"unbalanced {quote} quote in {text!r}",
                          fix="close the quote, or drop it")
    parts.append("".join(current))
    return [part for part in parts if part != ""]


def closest(word: str, choices: list[str] | set[str]) -> str:
    """' (did you mean 'x'?)' for the nearest of ``choices``, or ''."""
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclass
class SubOptions:
    """The parsed sub-options of one occurrence of one option."""

    option: str  # e.g. "--disk", for error messages
    text: str
    values: dict[str, str] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, option: str, text: str, known: set[str]) -> SubOptions:
        parsed = cls(option, text)
        for piece in split_commas(text):
            key, sep, value = piece.partition("=")
            if not sep:
                parsed.words.append(piece)
                continue
            if key not in known:
                raise InvalidSpec(
                    f"{option}: unknown sub-option '{key}'{closest(key, known)}",
                    fix=f"valid sub-options of {option}: {', '.join(sorted(known))}")
            if key in parsed.values:
                raise InvalidSpec(f"{option}: sub-option '{key}' is given twice in {text!r}",
                                  fix="give each sub-option once")
            parsed.values[key] = value
        return parsed

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.values

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean sub-option: ``readonly``, ``readonly=on`` / ``off`` / ``yes`` ..."""
        if key in self.words:
            self.words.remove(key)
            return True
        value = self.values.get(key)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidSpec(f"{self.option}: {key}={value} is not on or off",
                          fix=f"write {key}=on or {key}=off")

    def integer(self, key: str, *, minimum: int = 0) -> int | None:
        value = self.values.get(key)
        if value is None:
            return None
        return to_int(self.option, key, value, minimum=minimum)

    def number(self, key: str) -> float | None:
        value = self.values.get(key)
        if value is None:
            return None
        try:
            result = float(value)
        except ValueError:
            raise InvalidSpec(f"{self.option}: {key}={value} is not a number",
                              fix=f"write e.g. {key}=10") from None
        if result <= 0:
            raise InvalidSpec(f"{self.option}: {key}={value} must be above 0",
                              fix=f"write e.g. {key}=10")
        return result

    def refuse_words(self, allowed: int = 0) -> None:
        """Refuse bare words beyond the first ``allowed`` ones."""
        extra = self.words[allowed:]
        if extra:
            raise InvalidSpec(f"{self.option}: cannot read {extra[0]!r} in {self.text!r}",
                              fix="write sub-options as key=value, e.g. "
                                  f"{self.option} {next(iter(sorted(self.values)), 'key')}=...")


def to_int(option: str, key: str, value: str, *, minimum: int = 0) -> int:
    try:
        result = int(value)
    except ValueError:
        raise InvalidSpec(f"{option}: {key}={value} is not a whole number",
                          fix=f"write e.g. {key}={max(minimum, 1)}") from None
    if result < minimum:
        raise InvalidSpec(f"{option}: {key}={value} must be at least {minimum}",
                          fix=f"write e.g. {key}={max(minimum, 1)}")
    return result
