"""What a Connect request resolves to, whichever provider resolves it.

``check_options`` checks the shape of Connect options (known keys, string values) before a
provider reads them; ``Target`` is the resolved request that the state machine keeps and
records, and ``Place`` one NordVPN country (and city) in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nordwgd.errors import InvalidArgument


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
    regions: tuple[str, ...] = ()  # provider regions as the caller named them (PIA)

    def describe(self) -> str:
        parts = [label for label in (p.label for p in self.places) if label]
        parts.extend(self.regions)
        if self.group:
            parts.append(self.group)
        parts.extend(self.servers)
        return ", ".join(parts) or "anywhere"


def check_options(options: Mapping[str, object], allowed: Sequence[str]) -> dict[str, str]:
    """The options as stripped strings; InvalidArgument naming the first bad key."""
    checked: dict[str, str] = {}
    for key, value in options.items():
        if key not in allowed:
            raise InvalidArgument(f"unknown option {key!r} (expected one of: {', '.join(allowed)})")
        if not isinstance(value, str):
            raise InvalidArgument(f"option {key!r} must be a string, not {type(value).__name__}")
        checked[key] = value.strip()
    return checked
