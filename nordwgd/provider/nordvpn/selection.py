"""Pure server ranking: which NordLynx servers to try, in which order.

Input is what the API returned, one list per requested location (country, city, group or
hostname lookups); output is the list to try, best first. Nothing here does I/O, and the
order is deterministic for a given ``seed``.

Rules, in order:
1. Only usable servers count (online, NordLynx pivot online, public key present); a
   hostname listed twice counts once.
2. One location keeps the API's order (the API already ranks by load); several locations
   are merged and sorted by load (stable, so ties keep the API's order).
3. Pinned hostnames come first, in the order given, as if their load were 0.
4. Recently failed hostnames (``exclude``) move to the end: every other server is tried
   first, and a failed one is tried again only when nothing else is left.
5. ``random_top=N`` shuffles the N best (not the pinned ones) with ``random.Random(seed)``,
   spreading clients over the least loaded servers.
An empty result raises NoServer naming the request and why the listed servers do not count.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from nordwgd.errors import NoServer
from nordwgd.model import Server


def _usable_unique(candidates: Sequence[Sequence[Server]]) -> list[list[Server]]:
    seen: set[str] = set()
    result: list[list[Server]] = []
    for location in candidates:
        kept: list[Server] = []
        for server in location:
            key = server.hostname.lower()
            if server.usable and key not in seen:
                seen.add(key)
                kept.append(server)
        result.append(kept)
    return result


def describe_unusable(servers: Sequence[Server]) -> str:
    """Why none of ``servers`` can be used, in a few words for an error message."""
    if not servers:
        return "the API listed no servers"
    offline = sum(1 for s in servers if s.status != "online")
    keyless = sum(1 for s in servers if s.status == "online" and not s.public_key)
    pivot_down = sum(
        1 for s in servers if s.status == "online" and s.public_key and not s.wireguard_online
    )
    parts = []
    if offline:
        parts.append(f"{offline} not online")
    if keyless:
        parts.append(f"{keyless} without a NordLynx key")
    if pivot_down:
        parts.append(f"{pivot_down} with NordLynx offline")
    noun = "server" if len(servers) == 1 else "servers"
    return f"the API listed {len(servers)} {noun}: " + ", ".join(parts or ["none usable"])


def select_servers(
    candidates: Sequence[Sequence[Server]],
    *,
    pinned_hostnames: Sequence[str] = (),
    exclude: Collection[str] = frozenset(),
    random_top: int = 0,
    seed: int | None = None,
    request: str = "the request",
) -> list[Server]:
    """The servers to try, best first; NoServer when none is usable.

    ``request`` names what was asked for ("country Germany, group P2P") in the error.
    """
    if random_top < 0:
        raise ValueError("random_top must be >= 0")
    locations = _usable_unique(candidates)
    if len(locations) == 1:
        ranked = list(locations[0])
    else:
        ranked = sorted((s for location in locations for s in location), key=lambda s: s.load)
    if not ranked:
        everything = [server for location in candidates for server in location]
        raise NoServer(f"no usable NordLynx server for {request}: {describe_unusable(everything)}")

    pins = [name.lower() for name in pinned_hostnames]
    pinned = sorted(
        (s for s in ranked if s.hostname.lower() in pins),
        key=lambda s: pins.index(s.hostname.lower()),
    )
    rest = [s for s in ranked if s.hostname.lower() not in pins]

    excluded = {name.lower() for name in exclude}
    fresh_pinned = [s for s in pinned if s.hostname.lower() not in excluded]
    fresh_rest = [s for s in rest if s.hostname.lower() not in excluded]
    if random_top > 1:
        rng = random.Random(seed)  # noqa: S311 - load spreading, not security
        top = fresh_rest[:random_top]
        rng.shuffle(top)
        fresh_rest = top + fresh_rest[random_top:]
    retried = [s for s in pinned + rest if s.hostname.lower() in excluded]
    return fresh_pinned + fresh_rest + retried if (fresh_pinned or fresh_rest) else retried


@dataclass(frozen=True)
class Selection:
    """The outcome of ``select_with_fallback``: what to try and whether it is the fallback."""

    servers: tuple[Server, ...]
    fell_back: bool = False
    reason: str = ""  # why the preferred request gave nothing (empty unless fell_back)


def select_with_fallback(
    preferred: Sequence[Sequence[Server]],
    fallback: Sequence[Sequence[Server]] | None = None,
    *,
    request: str,
    fallback_request: str = "the fallback",
    pinned_hostnames: Sequence[str] = (),
    exclude: Collection[str] = frozenset(),
    random_top: int = 0,
    seed: int | None = None,
) -> Selection:
    """Rank ``preferred``; when it has no usable server, rank ``fallback`` and say so.

    For the planner: e.g. a group that has no NordLynx server (Double VPN) with the same
    country without the group as ``fallback``. Without a fallback, or when the fallback has
    nothing either, the preferred request's NoServer is raised.
    """

    def rank(candidates: Sequence[Sequence[Server]], what: str) -> list[Server]:
        return select_servers(
            candidates,
            pinned_hostnames=pinned_hostnames,
            exclude=exclude,
            random_top=random_top,
            seed=seed,
            request=what,
        )

    try:
        return Selection(tuple(rank(preferred, request)))
    except NoServer as first:
        if fallback is None:
            raise
        try:
            servers = rank(fallback, fallback_request)
        except NoServer:
            raise first from None
        return Selection(tuple(servers), fell_back=True, reason=first.message)
