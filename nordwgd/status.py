"""What nordwgd reports about itself: one frozen value, published once per transition.

The state machine replaces its ``Status`` whole at every change and hands the new value to its
subscribers; nothing outside the machine can change it. Front ends choose their own names for
the fields (the D-Bus adapter maps them to properties in ``nordwgd.bus.convert``), so adding a
field is one line here plus one line in each front end that shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nordwgd.model import Server
from nordwgd.states import Blocking, ErrorCause, State

RECENT_LIMIT = 5
"""How many recently used locations ``Status.recent_locations`` keeps."""


@dataclass(frozen=True)
class Location:
    """Where a tunnel went: a country and city, as ``Connect`` accepts them back."""

    country: str
    country_code: str
    city: str

    @classmethod
    def of(cls, server: Server) -> Location:
        return cls(server.country, server.country_code, server.city)


def remember(recent: tuple[Location, ...], location: Location) -> tuple[Location, ...]:
    """``recent`` with ``location`` moved (or added) to the front, at most RECENT_LIMIT long."""
    return (location, *(known for known in recent if known != location))[:RECENT_LIMIT]


def location_properties(location: Location) -> dict[str, object]:
    return {
        "country": location.country,
        "country_code": location.country_code,
        "city": location.city,
    }


@dataclass(frozen=True)
class Status:
    state: State = State.DISCONNECTED
    error_cause: ErrorCause = ErrorCause.NONE
    blocking: Blocking = Blocking.OPEN
    lockdown: bool = False
    allow_lan: bool = False
    mode: str = "host"
    server: Server | None = None  # the server of the tunnel being made or in use
    interface: str = ""
    tunnel_address: str = ""  # with its prefix length, e.g. "10.5.0.2/32"
    connected_since: int = 0  # microseconds since the epoch; 0 when not connected
    version: str = ""
    # Counters of the tunnel in use: they change without a transition (clients poll them).
    latest_handshake: int = 0  # microseconds since the epoch; 0 before the first one
    rx_bytes: int = 0
    tx_bytes: int = 0
    forwarded_port: int = 0  # 0 when the provider forwards no port
    # The locations of the latest connections, most recent first (kept across restarts).
    recent_locations: tuple[Location, ...] = ()
    provider: str = "nordvpn"  # the VPN service of the config: "nordvpn" or "pia"

    def without_counters(self) -> Status:
        """This status with the counters zeroed: equal values mean no transition happened."""
        return replace(self, latest_handshake=0, rx_bytes=0, tx_bytes=0)


# The tunnel fields that a new or vanished tunnel resets.
NO_TUNNEL: dict[str, object] = {
    "server": None,
    "interface": "",
    "tunnel_address": "",
    "connected_since": 0,
    "latest_handshake": 0,
    "rx_bytes": 0,
    "tx_bytes": 0,
    "forwarded_port": 0,
}


def server_properties(server: Server | None) -> dict[str, object]:
    """A server as plain values (the D-Bus ``Server`` property, ``ListServers``); {} for none."""
    if server is None:
        return {}
    return {
        "hostname": server.hostname,
        "name": server.name,
        "country": server.country,
        "country_code": server.country_code,
        "city": server.city,
        "load": server.load,
        "endpoint": str(server.endpoint),
        "public_key": server.public_key or "",
        "groups": list(server.groups),
    }
