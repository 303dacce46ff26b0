"""Replacing and removing files so that a crash leaves the old state or the new one.

Every file nordwgd writes goes through here, and these are the rules, in one place:

- the data goes to a temporary file beside the target, created with its final mode (O_EXCL,
  so it is never looser than asked, whatever the umask) and with a unique name (two writers
  never share it);
- the data is fsynced before the rename replaces the target, so the new name never points at
  a file whose content is not on disk;
- the directory is fsynced after the rename (or after a removal), so the change of name
  itself survives a power cut, and the last of two quick writes is the one found afterwards;
- a failed write leaves no temporary file behind.

Blocking file I/O: from the event loop, call these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data``, mode ``mode`` from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)
            file.write(data)
            file.flush()
            os.fsync(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def remove(path: Path) -> bool:
    """Remove ``path`` for good; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_directory(path.parent)
    return True


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
