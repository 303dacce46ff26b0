"""The planner: "give me tunnel parameters for attempt N".

Connect options (``country``, ``city``, ``group``, ``server``) are checked and resolved at once
(``resolve``), so that a bad request fails the D-Bus call rather than the connection later.
Planning then asks the NordVPN API for candidates, ranks them, skips the servers that failed,
fetches the credentials with the token and renders the WireGuard parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

OPTION_KEYS = ("country", "city", "group", "server")


@dataclass(frozen=True)
class Place:
    """One resolved country (and optionally city) to take servers from."""

    country_id: int
    city_id: int | None = None
    label: str = ""


@dataclass(frozen=True)
class Target:
    """A resolved connection request. Empty fields mean "anywhere"."""

    places: tuple[Place, ...] = ()
    group: str | None = None  # group identifier, e.g. "legacy_p2p"
    servers: tuple[str, ...] = ()  # hostnames, tried first
    random_top: int = 0
    options: tuple[tuple[str, str], ...] = ()  # what the caller asked for (recorded)

    def describe(self) -> str:
        parts = [label for label in (p.label for p in self.places) if label]
        if self.group:
            parts.append(self.group)
        parts.extend(self.servers)
        return ", ".join(parts) or "anywhere"
