"""Where a systemd slice lives in the cgroup v2 hierarchy, and how nftables names it.

A unified host mounts cgroup v2 at ``/sys/fs/cgroup``; a hybrid one mounts the v1 controllers
there and cgroup v2 at ``/sys/fs/cgroup/unified``. nftables' ``socket cgroupv2 level N "PATH"``
takes PATH relative to ``/sys/fs/cgroup`` (so ``unified/...`` on a hybrid host) and N as the
depth of the cgroup in the v2 hierarchy (the ``unified`` prefix does not count). nft turns PATH
into the cgroup's id when the rule is loaded: the directory must exist then, and a slice that
is removed and made again has a new id, so its rules must be loaded again.

The level nft wants is absolute: the depth in the whole hierarchy, not in this process's view of
it. A cgroup2 mount of a subtree (its root, in mountinfo, is not "/") adds that subtree's depth.
Inside a cgroup namespace (a container) the depth of the namespace's root cannot be seen; there
the match is written once for each level it could have (``UNKNOWN_DEPTH_LEVELS`` of them): a
socket's ancestor at any other level is another cgroup with another id, so only the right one
can ever match.

Slice names nest by dashes, as systemd reads them: ``nordwgd-excluded.slice`` is the child of
``nordwgd.slice``, so its cgroup is ``nordwgd.slice/nordwgd-excluded.slice``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nordwgd.errors import InvalidArgument

CGROUP_ROOT = Path("/sys/fs/cgroup")
INIT_CGROUP_NS_INODE = 0xEFFFFFFB  # the kernel's PROC_CGROUP_INIT_INO
UNKNOWN_DEPTH_LEVELS = 12
_SLICE = re.compile(r"[A-Za-z0-9_.:\\]+(?:-[A-Za-z0-9_.:\\]+)*\.slice")


@dataclass(frozen=True)
class Hierarchy:
    """The cgroup v2 mount: ``mount`` is the directory, ``prefix`` its path below /sys/fs/cgroup
    as nft wants it ("" on a unified host, "unified" on a hybrid one)."""

    mount: Path
    prefix: str
    depth: int | None = 0  # the depth of the mount's root in the whole hierarchy; None: unknown

    @property
    def kind(self) -> str:
        return "unified" if not self.prefix else "hybrid"


@dataclass(frozen=True)
class CgroupMatch:
    """One cgroup as an nft ``socket cgroupv2`` match, and the id it had when looked up."""

    nft_path: str  # relative to /sys/fs/cgroup, as nft resolves it
    levels: tuple[int, ...]  # its depth in the whole cgroup v2 hierarchy, or the depths it may have
    directory: Path
    inode: int  # the cgroup id: a new one when the cgroup is made again

    def expressions(self) -> tuple[str, ...]:
        return tuple(f'socket cgroupv2 level {level} "{self.nft_path}"' for level in self.levels)


def detect(mountinfo: str | None = None, cgroup_ns: int | None = None) -> Hierarchy | None:
    """The cgroup v2 mount of this process's mount namespace, None when there is none.

    Only mounts at /sys/fs/cgroup or below count: nft resolves paths from there. ``cgroup_ns``
    is the inode of this process's cgroup namespace (read from /proc when not given).
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    if cgroup_ns is None:
        try:
            cgroup_ns = Path("/proc/self/ns/cgroup").stat().st_ino
        except OSError:
            cgroup_ns = INIT_CGROUP_NS_INODE
    found: list[tuple[Path, str]] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) <= separator + 1 or fields[separator + 1] != "cgroup2":
            continue
        mount = Path(_unescape(fields[4]))
        if mount == CGROUP_ROOT or CGROUP_ROOT in mount.parents:
            found.append((mount, _unescape(fields[3])))
    if not found:
        return None
    mount, root = min(found, key=lambda item: len(item[0].parts))  # the outermost one
    depth = len(Path(root).parts) - 1 if cgroup_ns == INIT_CGROUP_NS_INODE else None
    prefix = str(mount.relative_to(CGROUP_ROOT)).strip(".")
    return Hierarchy(mount=mount, prefix=prefix, depth=depth)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def check_slice_name(name: str) -> str:
    """``name`` when it is a valid slice unit name; InvalidArgument otherwise."""
    if len(name) > 255 or not _SLICE.fullmatch(name) or name == "-.slice":
        raise InvalidArgument(f"{name!r} is not a slice unit name (like nordwgd-excluded.slice)")
    return name


def slice_path(name: str) -> str:
    """The cgroup path of slice ``name`` below the v2 root, e.g. ``a.slice/a-b.slice``."""
    check_slice_name(name)
    parts = name.removesuffix(".slice").split("-")
    return "/".join("-".join(parts[: index + 1]) + ".slice" for index in range(len(parts)))


def lookup(hierarchy: Hierarchy, cgroup: str) -> CgroupMatch | None:
    """The match for ``cgroup`` (a path below the v2 root), None when it does not exist."""
    relative = cgroup.strip("/")
    directory = hierarchy.mount / relative
    try:
        inode = directory.stat().st_ino
    except OSError:
        return None
    nft_path = f"{hierarchy.prefix}/{relative}" if hierarchy.prefix else relative
    level = len(Path(relative).parts)
    if hierarchy.depth is None:
        levels = tuple(range(level, level + UNKNOWN_DEPTH_LEVELS))
    else:
        levels = (level + hierarchy.depth,)
    return CgroupMatch(
        nft_path=nft_path,
        levels=levels,
        directory=directory,
        inode=inode,
    )


def members(match: CgroupMatch) -> tuple[str, ...]:
    """The child cgroups of the slice (the units in it: scopes and services), sorted."""
    try:
        entries = list(os.scandir(match.directory))
    except OSError:
        return ()
    return tuple(sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False)))
