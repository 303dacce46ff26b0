"""The configuration of nordwgd: frozen dataclasses loaded from /etc/nordwgd/nordwgd.toml.

The loader (``load_config``) validates strictly: unknown keys, wrong types and bad values
raise ConfigError naming the file, the key, the line and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from nordwgd.model import NORDLYNX_DNS, IPAddress, IPNetwork

DEFAULT_CONFIG_PATH = Path("/etc/nordwgd/nordwgd.toml")
DEFAULT_API_ADDRESSES: tuple[IPAddress, ...] = (
    IPv4Address("104.16.208.203"),
    IPv4Address("104.19.159.190"),
)

Backend = Literal["auto", "kernel", "userspace"]
Ipv6Policy = Literal["block", "tunnel"]
Mode = Literal["host", "namespace", "gateway"]


@dataclass(frozen=True)
class LocationConfig:
    """[location]: where to connect when Connect() is called without options."""

    countries: tuple[str, ...] = ()  # names, ISO codes or ids, as the user wrote them
    cities: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # titles or identifiers ("P2P", "legacy_p2p") or ids
    servers: tuple[str, ...] = ()  # hostnames, tried first
    random_top: int = 0  # 0 = best first; N = random among the N least loaded


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: resolvers used while connected (only reachable through the tunnel)."""

    servers: tuple[IPAddress, ...] = NORDLYNX_DNS
    resolv_conf: Path = Path("/etc/resolv.conf")  # used when systemd-resolved is not running


@dataclass(frozen=True)
class NetworkConfig:
    """[network]: the tunnel interface, backend and what the firewall lets through."""

    interface: str = "nordlynx"
    backend: Backend = "auto"
    mode: Mode = "host"
    lockdown: bool = False
    allow_lan: bool = False
    lan: tuple[IPNetwork, ...] = ()  # routed via the uplink; allowed when allow_lan (private only)
    forward_from: tuple[IPNetwork, ...] = ()  # gateway mode: hosts whose traffic is forwarded
    ipv6: Ipv6Policy = "block"
    fwmark: int = 0xCA6C  # marks the daemon's own sockets (WireGuard UDP, API HTTPS)
    table: int = 51820  # routing table of the tunnel


@dataclass(frozen=True)
class HealthConfig:
    """[health]: how a connection is judged alive."""

    urls: tuple[str, ...] = ()  # HTTP(S) URLs fetched through the tunnel; empty = handshake only
    attempts: int = 3  # consecutive failed checks before failing over
    interval: float = 60.0  # seconds between checks while connected
    timeout: float = 5.0  # seconds per probe
    handshake_timeout: float = 5.0  # seconds to wait for the first handshake of a server
    handshake_max_age: float = 180.0  # a handshake older than this means the tunnel is dead


@dataclass(frozen=True)
class ApiConfig:
    """[api]: how the NordVPN API is reached without DNS."""

    host: str = "api.nordvpn.com"
    addresses: tuple[IPAddress, ...] = DEFAULT_API_ADDRESSES
    port: int = 443
    ca_file: Path | None = None  # extra CA bundle (tests and the demo); None = system CAs
    timeout: float = 10.0  # seconds per request, connect included
    attempts: int = 3  # rounds over all addresses before giving up


@dataclass(frozen=True)
class PathsConfig:
    """[paths]: where state lives (systemd sets these through StateDirectory/RuntimeDirectory)."""

    state_dir: Path = Path("/var/lib/nordwgd")
    runtime_dir: Path = Path("/run/nordwgd")


@dataclass(frozen=True)
class Config:
    location: LocationConfig = field(default_factory=LocationConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    token_file: Path | None = None  # a 0600 file holding the token; refused otherwise
    log_level: str = "info"
    source: Path | None = None  # the file this was loaded from (None = built-in defaults)


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Load and validate the TOML config at ``path``; a missing file gives the defaults."""
    raise NotImplementedError("the config loader is being written")
