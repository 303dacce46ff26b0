"""Which local bridges (containers and virtual machines) count as part of this host.

Docker, Podman and libvirt name their bridges in known ways; the firewall matches these names
as nft interface-name patterns (a trailing ``*`` is a wildcard), so a network made after the
rules were loaded is covered without loading them again. ``[split] bridges`` replaces the list.
"""

from __future__ import annotations

import re
from pathlib import Path

from nordwgd.errors import InvalidArgument

# docker0 and Docker's user networks (br-<12 hex digits>), Podman (podman0, podman1, ... and
# cni-podman0 with CNI), libvirt (virbr0, virbr1, ...)
DEFAULT_BRIDGES: tuple[str, ...] = ("br-*", "cni-podman*", "docker0", "podman*", "virbr*")
_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,15}\*?")
_SYS_NET = Path("/sys/class/net")


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """``patterns`` when every one is an interface name or a prefix followed by ``*``."""
    for pattern in patterns:
        if not _PATTERN.fullmatch(pattern):
            raise InvalidArgument(
                f"bridges: {pattern!r} is not an interface name or a name prefix ending in *"
            )
    return tuple(sorted(set(patterns)))


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether interface ``name`` is matched by one of ``patterns``, as nft matches them."""
    return any(
        name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
        for pattern in patterns
    )


def present(patterns: tuple[str, ...], sys_net: Path = _SYS_NET) -> tuple[str, ...]:
    """The bridges of this network namespace's view of /sys that ``patterns`` match."""
    try:
        names = sorted(entry.name for entry in sys_net.iterdir())
    except OSError:
        return ()
    return tuple(
        name for name in names if (sys_net / name / "bridge").is_dir() and matches(name, patterns)
    )
