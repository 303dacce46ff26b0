"""Which local bridges (containers and virtual machines) count as part of this host.

Docker, Podman and libvirt name their bridges in known ways; the firewall matches these names
as nft interface-name patterns (a trailing ``*`` is a wildcard), so a network made after the
rules were loaded is covered without loading them again. ``[split] bridges`` replaces the list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nordwgd.errors import InvalidArgument

# docker0 and Docker's user networks (br-<12 hex digits>), Podman (podman0, podman1, ... and
# cni-podman0 with CNI), libvirt (virbr0, virbr1, ...)
DEFAULT_BRIDGES: tuple[str, ...] = ("br-*", "cni-podman*", "docker0", "podman*", "virbr*")
_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,15}\*?")


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


def present(
    patterns: tuple[str, ...], links: Iterable[tuple[str, str]] | None = None
) -> tuple[str, ...]:
    """The bridges of this network namespace that ``patterns`` match, sorted.

    ``links`` is (name, kind) of every link; read over netlink when not given (not from
    /sys/class/net, which shows the namespace that mounted /sys, not necessarily ours).
    """
    if links is None:
        links = _links()
    return tuple(
        sorted(name for name, kind in links if kind == "bridge" and matches(name, patterns))
    )


def _links() -> list[tuple[str, str]]:
    # pyroute2's synchronous API runs an event loop of its own, which it cannot do in a thread
    # that runs one already (the daemon's): one netlink dump in a short-lived thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_dump_links).result(timeout=5)


def _dump_links() -> list[tuple[str, str]]:
    from pyroute2 import IPRoute, NetlinkError

    try:
        with IPRoute() as ipr:
            return [(str(link.get_attr("IFLA_IFNAME")), _kind(link)) for link in ipr.get_links()]
    except (OSError, NetlinkError):
        return []


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind or "")
