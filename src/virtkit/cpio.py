"""newc cpio archives, the format the Linux kernel unpacks as an initramfs.

Used to build the test guest's initramfs and to append files to an installer's initrd
(``--initrd-inject``): the kernel unpacks concatenated archives in order, later files
replacing earlier ones.
"""

from __future__ import annotations


class CpioWriter:
    """A minimal writer for the newc (SVR4, no CRC) cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        """Append one header + name + data, each padded to 4 bytes as newc requires."""
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._inode += 1
        self._chunks += [header, encoded, b"\0" * (-(len(header) + len(encoded)) % 4)]
        self._chunks += [data, b"\0" * (-len(data) % 4)]

    def directory(self, name: str) -> None:
        """Add a directory (mode 0755)."""
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link pointing at ``target``."""
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        """Add a character device node (mode 0600)."""
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, with its trailer, padded to 512 bytes."""
        self._entry("TRAILER!!!", 0)
        blob = b"".join(self._chunks)
        return blob + b"\0" * (-len(blob) % 512)
