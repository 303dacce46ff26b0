"""A cgroup of its own for each test container.

Without a systemd on the host, ``systemd-nspawn --keep-unit`` puts the container's cgroups
("payload" for the container, "supervisor" for itself) under the cgroup it was started in.
Containers started from one cgroup would then share every unit's cgroup: one container's
systemd would kill, wait for, or lose track of processes of another container's unit with
the same name (a stop that times out with "Processes still around after final SIGKILL", a
tunnel that outlives its stopped service). Each container is started from a fresh child of
the current cgroup, in the hierarchies systemd tracks processes in.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUP = Path("/proc/self/cgroup")


def _tracking_mounts() -> dict[str, Path]:
    """Mount points of the unified hierarchy ("") and of the named systemd one ("name=systemd")."""
    mounts: dict[str, Path] = {}
    for line in MOUNTINFO.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, kind = before.split(), after.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2":
            mounts.setdefault("", Path(fields[4]))
        elif kind[0] == "cgroup" and "name=systemd" in kind[2].split(","):
            mounts.setdefault("name=systemd", Path(fields[4]))
    return mounts


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy, keyed as in ``_tracking_mounts``."""
    paths = {}
    for line in OWN_CGROUP.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def make_private(name: str) -> list[Path]:
    """Create ``name`` under this process's cgroup in each tracking hierarchy; the directories
    made (empty when there is nothing to do: the container then shares its parent's cgroup)."""
    made = []
    own = _own_paths()
    for key, mount in _tracking_mounts().items():
        if key not in own:
            continue
        directory = mount / own[key].lstrip("/") / name
        with contextlib.suppress(OSError):
            directory.mkdir()
            made.append(directory)
    return made


def remove(directories: list[Path]) -> None:
    """Remove what ``make_private`` made and the cgroups the container made below it, deepest
    first; a cgroup that still holds a process stays."""
    for top in directories:
        below = sorted((Path(root) for root, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for directory in below:
            with contextlib.suppress(OSError):
                directory.rmdir()
