"""DNS through /etc/resolv.conf (or ``dns.resolv_conf``) when systemd-resolved is not running.

Before writing, the file is backed up byte for byte into the runtime directory together with
what it was (a regular file and its mode, a symlink and its target, or absent), so that restore
puts back exactly that, also from a new process after a crash.

The new file replaces the old one by an atomic rename, except where the path (or, for a
symlink, its target) is a mount point: ``ip netns exec`` bind-mounts
``/etc/netns/<ns>/resolv.conf`` over ``/etc/resolv.conf`` and a rename onto a mount point fails
with EBUSY, so there the file is rewritten in place. Functions here block; callers run them in a
worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nordwgd.errors import DnsFailed
from nordwgd.files import write_atomic
from nordwgd.model import IPAddress
from nordwgd.runstate import Journal, Step

log = logging.getLogger(__name__)

BACKUP_NAME = "resolv.conf.backup"
META_NAME = "resolv.conf.backup.json"
HEADER = "# Written by nordwgd while the VPN tunnel is up; restored when it goes down.\n"


def render(servers: Sequence[IPAddress]) -> bytes:
    """The managed resolv.conf: only the tunnel resolvers."""
    lines = [HEADER] + [f"nameserver {server}\n" for server in servers]
    return "".join(lines).encode()


def apply(journal: Journal, path: Path, servers: Sequence[IPAddress]) -> None:
    """Back up ``path``, record the backup, then write the managed file."""
    try:
        step = _backup(journal.runtime_dir, path)
    except OSError as exc:
        raise DnsFailed(f"cannot back up {path}: {exc}") from exc
    journal.record(step)
    log.info("[#] write %s with nameservers %s", path, " ".join(map(str, servers)))
    try:
        _write(path, render(servers), mode=step["file_mode"])
    except OSError as exc:
        raise DnsFailed(f"cannot write {path}: {exc}") from exc


def restore(step: Step) -> None:
    """Put the file back exactly as recorded, then drop the backup."""
    path = Path(step["path"])
    log.info("[#] restore %s", path)
    try:
        if step["symlink"] is not None and not step["in_place"]:
            _replace_with_symlink(path, step["symlink"])
        elif not step["existed"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            original = Path(step["backup"]).read_bytes()
            _write(path, original, mode=step["file_mode"])
    except OSError as exc:
        raise DnsFailed(f"cannot restore {path}: {exc}") from exc
    _drop_backup(Path(step["backup"]).parent)


def recorded_backup(runtime_dir: Path) -> Step | None:
    """The backup description left in ``runtime_dir``, for a cleanup without a usable journal."""
    try:
        data: Any = json.loads((runtime_dir / META_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("mode") != "resolvconf":
        return None
    return data


def _backup(runtime_dir: Path, path: Path) -> Step:
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    backup = runtime_dir / BACKUP_NAME
    symlink: str | None = None
    existed = True
    file_mode = 0o644
    content = b""
    try:
        info = path.lstat()
    except FileNotFoundError:
        existed = False
    else:
        if stat.S_ISLNK(info.st_mode):
            symlink = str(path.readlink())
        if path.exists():
            file_mode = stat.S_IMODE(path.stat().st_mode)
            content = path.read_bytes()
    in_place = _is_mount_point(path) or (symlink is not None and _is_mount_point(path.resolve()))
    step: Step = {
        "step": "dns",
        "mode": "resolvconf",
        "path": str(path),
        "existed": existed,
        "symlink": symlink,
        "file_mode": file_mode,
        "in_place": in_place,
        "backup": str(backup),
    }
    write_atomic(backup, content, mode=0o600)
    write_atomic(runtime_dir / META_NAME, json.dumps(step).encode(), mode=0o600)
    return step


def _drop_backup(runtime_dir: Path) -> None:
    for name in (META_NAME, BACKUP_NAME):
        with contextlib.suppress(FileNotFoundError):
            (runtime_dir / name).unlink()


def _write(path: Path, data: bytes, *, mode: int) -> None:
    if path.is_symlink() and _is_mount_point(path.resolve()):
        _write_in_place(path.resolve(), data)
        return
    if _is_mount_point(path):
        _write_in_place(path, data)
        return
    try:
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _write_in_place(path, data)


def _write_in_place(path: Path, data: bytes) -> None:
    with path.open("r+b") as file:
        file.truncate(0)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _replace_with_symlink(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(path)


def _is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point in this mount namespace (file bind mounts included)."""
    wanted = str(path.absolute())
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and _unescape(fields[4]) == wanted:
            return True
    return False


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field
