"""Plain values that flow between the parts of nordwgd: secrets, servers, tunnel parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface

# (address, TCP port) pairs the daemon's own sockets may reach while no tunnel is up
Pinholes = tuple[tuple[IPAddress, int], ...]

WIREGUARD_PORT = 51820
NORDLYNX_ADDRESS = IPv4Interface("10.5.0.2/32")
NORDLYNX_DNS = (IPv4Address("103.86.96.100"), IPv4Address("103.86.99.100"))
KEEPALIVE_SECONDS = 25


class Secret:
    """A string that must never be shown: its repr and str are redacted.

    Call ``reveal()`` only at the point where the value leaves the process for its one
    legitimate use (an HTTP header, a WireGuard UAPI socket, a 0600 file).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Endpoint:
    """Where the encrypted WireGuard UDP goes."""

    address: IPAddress
    port: int = WIREGUARD_PORT

    def __str__(self) -> str:
        if isinstance(self.address, IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Server:
    """One NordVPN server, reduced to what nordwgd uses (parsed from the API's server object)."""

    id: int
    name: str
    hostname: str
    station: IPv4Address
    ipv6_station: IPv6Address | None
    load: int
    status: str
    country: str
    country_code: str
    country_id: int
    city: str
    city_id: int
    groups: tuple[str, ...]  # group identifiers, e.g. "legacy_p2p"
    group_titles: tuple[str, ...]
    public_key: str | None  # base64 WireGuard public key; None when it has no usable NordLynx
    wireguard_online: bool = True

    @property
    def usable(self) -> bool:
        """Usable for NordLynx: online, NordLynx pivot online, and a public key present."""
        return self.status == "online" and self.wireguard_online and bool(self.public_key)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.station, WIREGUARD_PORT)


@dataclass(frozen=True)
class Credentials:
    """What the credentials call returns that nordwgd needs."""

    private_key: Secret  # base64 NordLynx private key


@dataclass(frozen=True)
class TunnelParams:
    """Everything needed to configure one WireGuard peer link to one server."""

    private_key: Secret
    address: IPInterface
    peer_public_key: str
    endpoint: Endpoint
    allowed_ips: tuple[IPNetwork, ...]
    dns: tuple[IPAddress, ...]
    keepalive: int = KEEPALIVE_SECONDS
    server: Server | None = field(default=None, compare=False)
