"""The configuration of nordwgd: frozen dataclasses loaded from /etc/nordwgd/nordwgd.toml.

The loader (``load_config``) validates strictly: unknown keys, wrong types and bad values
raise ConfigError naming the file, the key, the line and what is wrong.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

from nordwgd.errors import ConfigError, InvalidArgument
from nordwgd.lanranges import LAN_NETWORKS, LAN_RANGES, describe, within
from nordwgd.model import NORDLYNX_DNS, IPAddress, IPNetwork
from nordwgd.split.bridges import DEFAULT_BRIDGES, check_patterns
from nordwgd.split.cgroups import check_slice_name

DEFAULT_CONFIG_PATH = Path("/etc/nordwgd/nordwgd.toml")
# A config is a few KiB; anything past this is not one (and /dev/zero would never end).
MAX_CONFIG_BYTES = 1024 * 1024
DEFAULT_API_ADDRESSES: tuple[IPAddress, ...] = (
    IPv4Address("104.16.208.203"),
    IPv4Address("104.19.159.190"),
)

Backend = Literal["auto", "kernel", "userspace"]
ProviderName = Literal["nordvpn", "pia"]
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
    # What AllowLan opens (each inside nordwgd.lanranges); empty = every local range. Listed
    # networks are also routed around the tunnel (for LANs behind a router of the uplink).
    lan: tuple[IPNetwork, ...] = ()
    forward_from: tuple[IPNetwork, ...] = ()  # gateway mode: hosts whose traffic is forwarded
    ipv6: Ipv6Policy = "block"
    fwmark: int = 0xCA6C  # marks the daemon's own sockets (WireGuard UDP, API HTTPS)
    table: int = 51820  # routing table of the tunnel
    namespace: str = "nordwgd"  # namespace mode: the network namespace holding the tunnel


@dataclass(frozen=True)
class SplitConfig:
    """[split]: apps that leave outside the tunnel, and local bridges forwarded through it."""

    excluded_slice: str = "nordwgd-excluded.slice"  # processes in it leave by the uplink
    bridges: tuple[str, ...] = DEFAULT_BRIDGES  # interface names, a trailing * is a wildcard


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
class MetaServer:
    """A PIA meta server: where the token and region list are fetched, by address and name."""

    cn: str  # the name its certificate carries, e.g. "london402"
    address: IPAddress

    def __str__(self) -> str:
        return f"{self.cn}@{self.address}"


# Meta servers from PIA's region list, to fetch the first list from; later lists bring their own.
DEFAULT_PIA_META: tuple[MetaServer, ...] = (
    MetaServer("london402", IPv4Address("212.102.63.129")),
    MetaServer("frankfurt405", IPv4Address("212.102.57.1")),
    MetaServer("zurich402", IPv4Address("212.102.37.176")),
    MetaServer("amsterdam425", IPv4Address("195.78.54.3")),
    MetaServer("toronto414", IPv4Address("154.3.40.3")),
)


@dataclass(frozen=True)
class PiaConfig:
    """[pia]: how Private Internet Access is reached without DNS (provider = "pia")."""

    meta: tuple[MetaServer, ...] = DEFAULT_PIA_META  # "cn@address" in the file
    api_host: str = "www.privateinternetaccess.com"  # token service (login, logout)
    api_addresses: tuple[IPAddress, ...] = ()  # pinned; empty = tokens come from meta servers
    api_ca_file: Path | None = None  # CA of api_host; None = system CAs
    ca_file: Path | None = None  # CA of PIA's own servers; None = PIA's CA, shipped with nordwgd
    regions_key_file: Path | None = None  # PEM key the region list is signed with; None = PIA's
    timeout: float = 10.0  # seconds per request
    token_lifetime: float = 24 * 3600.0  # how long PIA keeps a token valid


@dataclass(frozen=True)
class PortForwardConfig:
    """[port_forward]: a port opened on the VPN server and forwarded through the tunnel (PIA)."""

    enabled: bool = False
    hook: tuple[str, ...] = ()  # run (no shell) on each new port, and with 0 when it goes
    hook_timeout: float = 30.0
    bind_interval: float = 900.0  # PIA releases a port not bound again within 15 minutes
    renew_before: float = 7 * 86400.0  # ask for a new port signature when less time remains
    forward_to: str = ""  # gateway mode: "LAN-ADDRESS:PORT" the forwarded port is sent on to


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
    split: SplitConfig = field(default_factory=SplitConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    pia: PiaConfig = field(default_factory=PiaConfig)
    port_forward: PortForwardConfig = field(default_factory=PortForwardConfig)
    provider: ProviderName = "nordvpn"
    token_file: Path | None = None  # a 0600 file holding the token; refused otherwise
    log_level: str = "info"
    source: Path | None = None  # the file this was loaded from (None = built-in defaults)


# --- loading -------------------------------------------------------------------------------

T = TypeVar("T")
S = TypeVar("S", bound=str)

BACKENDS: tuple[Backend, ...] = ("auto", "kernel", "userspace")
MODES: tuple[Mode, ...] = ("host", "namespace", "gateway")
PROVIDERS: tuple[ProviderName, ...] = ("nordvpn", "pia")
IPV6_POLICIES: tuple[Ipv6Policy, ...] = ("block", "tunnel")
LOG_LEVELS = ("debug", "info", "warning", "error")

IFNAMSIZ = 16  # the kernel's buffer, so names hold at most 15 characters
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_MAX_U32 = 2**32 - 1
# Tables 253 (default), 254 (main) and 255 (local) belong to the kernel.
_RESERVED_TABLES = (253, 254, 255)


# TOML key -> dataclass field, per section, where the names differ (the file speaks of one
# "country" whether it holds one name or a list).
KEY_TO_FIELD: Mapping[str, Mapping[str, str]] = {
    "location": {"country": "countries", "city": "cities", "group": "groups", "server": "servers"},
}


class _KeyLines:
    """Line numbers of keys and table headers in TOML text (tomllib reports none).

    A line-based scan is enough for config files: it finds ``[section]`` headers and
    ``key =`` / ``dotted.key =`` assignments and skips multi-line strings.
    """

    _HEADER = re.compile(r"\s*\[\[?\s*(?P<name>[^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(
        r"""\s*(?P<key>(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
        r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
    )
    _PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        section = ""
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_string:
                in_string = quotes % 2 == 0
                continue
            header = self._HEADER.match(line)
            if header:
                section = self._dotted(header["name"])
                self._lines.setdefault(section, number)
            else:
                key = self._KEY.match(line)
                if key:
                    name = self._dotted(key["key"])
                    self._lines.setdefault(f"{section}.{name}" if section else name, number)
            in_string = quotes % 2 == 1

    @classmethod
    def _dotted(cls, text: str) -> str:
        return ".".join(part.strip("\"'") for part in cls._PART.findall(text))

    def line_of(self, key: str) -> int:
        """The line of ``key``, else of its nearest enclosing table, else 1."""
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        while parts:
            line = self._lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return 1


@dataclass(frozen=True)
class _Source:
    path: Path
    lines: _KeyLines

    def error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.lines.line_of(key)}: {key}: {what}")


def _describe(value: object) -> str:
    """How a TOML value is named in messages: its TOML type and, for scalars, the value."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _got(value: object) -> str:
    return f"(got {_describe(value)})"


# Each parser checks one raw TOML value and returns it converted; ``key`` is for messages.
Parser = Callable[[_Source, str, object], T]


def _string(src: _Source, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise src.error(key, f"must be a string {_got(value)}")
    return value


def _nonempty_string(src: _Source, key: str, value: object) -> str:
    text = _string(src, key, value)
    if not text.strip():
        raise src.error(key, "must not be empty")
    return text


def _boolean(src: _Source, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise src.error(key, f"must be a boolean, true or false {_got(value)}")
    return value


def _integer(src: _Source, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise src.error(key, f"must be an integer {_got(value)}")
    return value


def _int_range(low: int, high: int, exclude: tuple[int, ...] = ()) -> Parser[int]:
    def parse(src: _Source, key: str, value: object) -> int:
        number = _integer(src, key, value)
        if not low <= number <= high or number in exclude:
            allowed = f"an integer from {low} to {high}"
            if exclude:
                allowed += f", except {', '.join(map(str, exclude))} (kernel tables)"
            raise src.error(key, f"must be {allowed} {_got(value)}")
        return number

    return parse


def _seconds(src: _Source, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise src.error(key, f"must be a number of seconds {_got(value)}")
    if not math.isfinite(value) or value <= 0:
        raise src.error(key, f"must be a positive number of seconds {_got(value)}")
    return float(value)


def _choice(choices: tuple[S, ...]) -> Parser[S]:
    def parse(src: _Source, key: str, value: object) -> S:
        text = _string(src, key, value)
        if text not in choices:
            raise src.error(key, f"must be one of {', '.join(choices)} {_got(value)}")
        return text

    return parse


def _absolute_path(src: _Source, key: str, value: object) -> Path:
    text = _nonempty_string(src, key, value)
    if "\0" in text:
        raise src.error(key, "must not contain a NUL character")
    path = Path(text)
    if not path.is_absolute():
        raise src.error(key, f"must be an absolute path {_got(value)}")
    return path


def _namespace_name(src: _Source, key: str, value: object) -> str:
    # The name becomes /run/netns/<name> and /etc/netns/<name>: no path tricks.
    name = _string(src, key, value)
    if not _NETNS_NAME.fullmatch(name) or name in (".", ".."):
        raise src.error(
            key,
            "must be a network namespace name of 1 to 64 letters, digits, '_', '-' or '.' "
            f"{_got(value)}",
        )
    return name


def _interface_name(src: _Source, key: str, value: object) -> str:
    name = _string(src, key, value)
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise src.error(
            key,
            f"must be a network interface name of 1 to {IFNAMSIZ - 1} letters, digits, "
            f"'_', '-' or '.' {_got(value)}",
        )
    return name


def _hostname(src: _Source, key: str, value: object) -> str:
    name = _string(src, key, value)
    if not _HOSTNAME.fullmatch(name):
        raise src.error(key, f"must be a DNS host name such as api.nordvpn.com {_got(value)}")
    return name


def _address(src: _Source, key: str, value: object) -> IPAddress:
    text = _string(src, key, value)
    try:
        return ip_address(text)
    except ValueError:
        raise src.error(
            key, f"must be an IPv4 or IPv6 address such as 192.0.2.1 {_got(value)}"
        ) from None


def _network(src: _Source, key: str, value: object) -> IPNetwork:
    text = _string(src, key, value)
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise src.error(
            key, f"must be a network in CIDR notation such as 192.168.1.0/24 {_got(value)}"
        ) from None
    raise src.error(key, f"has host bits set; the network is {loose} {_got(value)}")


def _lan_network(src: _Source, key: str, value: object) -> IPNetwork:
    """A network AllowLan may open: private, link-local or local multicast, never public."""
    return _local_network(src, key, value, LAN_RANGES)


def _private_network(src: _Source, key: str, value: object) -> IPNetwork:
    """A private or link-local unicast network (a source of forwarded traffic)."""
    return _local_network(src, key, value, LAN_NETWORKS)


def _local_network(
    src: _Source, key: str, value: object, ranges: tuple[IPNetwork, ...]
) -> IPNetwork:
    network = _network(src, key, value)
    if not within(network, ranges):
        raise src.error(
            key,
            f"{network} is not a private range; only ranges inside {describe(ranges)} "
            "may bypass the tunnel",
        )
    return network


def _http_url(src: _Source, key: str, value: object) -> str:
    text = _string(src, key, value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        valid = False
    if not valid or any(char.isspace() for char in text):
        raise src.error(key, f"must be an http:// or https:// URL with a host name {_got(value)}")
    return text


def _list_of(item: Parser[T], *, nonempty: bool = False) -> Parser[tuple[T, ...]]:
    def parse(src: _Source, key: str, value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise src.error(key, f"must be an array {_got(value)}")
        if nonempty and not value:
            raise src.error(key, "must not be empty")
        return tuple(item(src, f"{key}[{index}]", element) for index, element in enumerate(value))

    return parse


def _names(src: _Source, key: str, value: object) -> tuple[str, ...]:
    """A location filter: one string or an array of strings, none empty."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise src.error(key, f"must be a string or an array of strings {_got(value)}")
    return tuple(
        _nonempty_string(src, f"{key}[{index}]", element).strip()
        for index, element in enumerate(value)
    )


class _Table:
    """One TOML table being read: hands out keys and refuses those nobody asked for."""

    def __init__(self, src: _Source, name: str, raw: object, known: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise src.error(name, f"must be a table [{name}] {_got(raw)}")
        prefix = f"{name}." if name else ""
        for key, value in raw.items():
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if not name and isinstance(value, dict):
                sections = ", ".join(k for k in known if k in _SECTIONS)
                raise src.error(key, f"unknown section [{key}] ({hint}known sections: {sections})")
            where = f"[{name}]" if name else "the top level"
            raise src.error(
                f"{prefix}{key}", f"unknown key ({hint}known keys in {where}: {', '.join(known)})"
            )
        self._src = src
        self._prefix = prefix
        self._raw = cast(dict[str, object], raw)

    def get(self, key: str, parse: Parser[T], default: T) -> T:
        if key not in self._raw:
            return default
        return parse(self._src, self._prefix + key, self._raw[key])

    def table(self, name: str) -> object:
        return self._raw.get(name, {})


_SECTIONS: Mapping[str, tuple[str, ...]] = {
    "location": ("country", "city", "group", "server", "random_top"),
    "dns": ("servers", "resolv_conf"),
    "network": (
        "interface",
        "backend",
        "mode",
        "lockdown",
        "allow_lan",
        "lan",
        "forward_from",
        "ipv6",
        "fwmark",
        "table",
        "namespace",
    ),
    "health": ("urls", "attempts", "interval", "timeout", "handshake_timeout", "handshake_max_age"),
    "api": ("host", "addresses", "port", "ca_file", "timeout", "attempts"),
    "split": ("excluded_slice", "bridges"),
    "paths": ("state_dir", "runtime_dir"),
    "pia": (
        "meta",
        "api_host",
        "api_addresses",
        "api_ca_file",
        "ca_file",
        "regions_key_file",
        "timeout",
        "token_lifetime",
    ),
    "port_forward": (
        "enabled",
        "hook",
        "hook_timeout",
        "bind_interval",
        "renew_before",
        "forward_to",
    ),
}
_TOP_LEVEL_KEYS = ("provider", "token_file", "log_level")


def known_keys() -> dict[str, tuple[str, ...]]:
    """Every key the file may hold, by section ("" is the top level)."""
    return {"": _TOP_LEVEL_KEYS, **_SECTIONS}


def _location(t: _Table) -> LocationConfig:
    d = LocationConfig()
    return LocationConfig(
        countries=t.get("country", _names, d.countries),
        cities=t.get("city", _names, d.cities),
        groups=t.get("group", _names, d.groups),
        servers=t.get("server", _names, d.servers),
        random_top=t.get("random_top", _int_range(0, 1000), d.random_top),
    )


def _dns(t: _Table) -> DnsConfig:
    d = DnsConfig()
    return DnsConfig(
        servers=t.get("servers", _list_of(_address, nonempty=True), d.servers),
        resolv_conf=t.get("resolv_conf", _absolute_path, d.resolv_conf),
    )


def _network_section(t: _Table) -> NetworkConfig:
    d = NetworkConfig()
    return NetworkConfig(
        interface=t.get("interface", _interface_name, d.interface),
        backend=t.get("backend", _choice(BACKENDS), d.backend),
        mode=t.get("mode", _choice(MODES), d.mode),
        lockdown=t.get("lockdown", _boolean, d.lockdown),
        allow_lan=t.get("allow_lan", _boolean, d.allow_lan),
        lan=t.get("lan", _list_of(_lan_network), d.lan),
        forward_from=t.get("forward_from", _list_of(_private_network), d.forward_from),
        ipv6=t.get("ipv6", _choice(IPV6_POLICIES), d.ipv6),
        fwmark=t.get("fwmark", _int_range(1, _MAX_U32), d.fwmark),
        table=t.get("table", _int_range(1, _MAX_U32, _RESERVED_TABLES), d.table),
        namespace=t.get("namespace", _namespace_name, d.namespace),
    )


def _health(t: _Table) -> HealthConfig:
    d = HealthConfig()
    return HealthConfig(
        urls=t.get("urls", _list_of(_http_url), d.urls),
        attempts=t.get("attempts", _int_range(1, 1000), d.attempts),
        interval=t.get("interval", _seconds, d.interval),
        timeout=t.get("timeout", _seconds, d.timeout),
        handshake_timeout=t.get("handshake_timeout", _seconds, d.handshake_timeout),
        handshake_max_age=t.get("handshake_max_age", _seconds, d.handshake_max_age),
    )


def _api(t: _Table) -> ApiConfig:
    d = ApiConfig()
    return ApiConfig(
        host=t.get("host", _hostname, d.host),
        addresses=t.get("addresses", _list_of(_address, nonempty=True), d.addresses),
        port=t.get("port", _int_range(1, 65535), d.port),
        ca_file=t.get("ca_file", _absolute_path, d.ca_file),
        timeout=t.get("timeout", _seconds, d.timeout),
        attempts=t.get("attempts", _int_range(1, 100), d.attempts),
    )


def _split(t: _Table) -> SplitConfig:
    d = SplitConfig()
    return SplitConfig(
        excluded_slice=t.get("excluded_slice", _slice_name, d.excluded_slice),
        bridges=t.get("bridges", _bridge_patterns, d.bridges),
    )


def _slice_name(src: _Source, key: str, value: object) -> str:
    try:
        return check_slice_name(_string(src, key, value))
    except InvalidArgument as error:
        raise src.error(key, str(error)) from None


def _bridge_patterns(src: _Source, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise src.error(key, f"expected a list of interface names, got {_got(value)}")
    try:
        return check_patterns(tuple(value))
    except InvalidArgument as error:
        raise src.error(key, str(error)) from None


def _paths(t: _Table) -> PathsConfig:
    d = PathsConfig()
    return PathsConfig(
        state_dir=t.get("state_dir", _absolute_path, d.state_dir),
        runtime_dir=t.get("runtime_dir", _absolute_path, d.runtime_dir),
    )


def _meta_server(src: _Source, key: str, value: object) -> MetaServer:
    text = _string(src, key, value)
    cn, at, address = text.rpartition("@")
    if not at or not _HOSTNAME.fullmatch(cn):
        raise src.error(key, f"must be NAME@ADDRESS such as london402@192.0.2.7 {_got(value)}")
    return MetaServer(cn, _address(src, key, address))


def _command(src: _Source, key: str, value: object) -> tuple[str, ...]:
    argv = _list_of(_nonempty_string)(src, key, value)
    if argv and not Path(argv[0]).is_absolute():
        raise src.error(f"{key}[0]", f"must be an absolute path to a program {_got(argv[0])}")
    return argv


def _lan_target(src: _Source, key: str, value: object) -> str:
    text = _string(src, key, value)
    if not text:
        return text
    host, colon, port = text.rpartition(":")
    network = _private_network(src, key, host + "/32") if colon else None
    if network is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise src.error(
            key, f"must be a private LAN ADDRESS:PORT such as 192.168.1.20:8080 {_got(value)}"
        )
    return text


def _pia(t: _Table) -> PiaConfig:
    d = PiaConfig()
    return PiaConfig(
        meta=t.get("meta", _list_of(_meta_server, nonempty=True), d.meta),
        api_host=t.get("api_host", _hostname, d.api_host),
        api_addresses=t.get("api_addresses", _list_of(_address), d.api_addresses),
        api_ca_file=t.get("api_ca_file", _absolute_path, d.api_ca_file),
        ca_file=t.get("ca_file", _absolute_path, d.ca_file),
        regions_key_file=t.get("regions_key_file", _absolute_path, d.regions_key_file),
        timeout=t.get("timeout", _seconds, d.timeout),
        token_lifetime=t.get("token_lifetime", _seconds, d.token_lifetime),
    )


def _port_forward(t: _Table) -> PortForwardConfig:
    d = PortForwardConfig()
    return PortForwardConfig(
        enabled=t.get("enabled", _boolean, d.enabled),
        hook=t.get("hook", _command, d.hook),
        hook_timeout=t.get("hook_timeout", _seconds, d.hook_timeout),
        bind_interval=t.get("bind_interval", _seconds, d.bind_interval),
        renew_before=t.get("renew_before", _seconds, d.renew_before),
        forward_to=t.get("forward_to", _lan_target, d.forward_to),
    )


def parse_config(text: str, path: Path) -> Config:
    """Validate TOML ``text`` (read from ``path``, which messages name) into a Config."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib ends its messages with "(at line N, column M)"; move the line to the front.
        found = re.search(r"\(at line (\d+), column \d+\)$", str(error))
        line = int(found[1]) if found else max(1, len(text.splitlines()))
        raise ConfigError(f"{path}:{line}: invalid TOML: {error}") from None
    src = _Source(path, _KeyLines(text))
    top = _Table(src, "", document, (*_TOP_LEVEL_KEYS, *_SECTIONS))

    def section(name: str) -> _Table:
        return _Table(src, name, top.table(name), _SECTIONS[name])

    config = Config(
        location=_location(section("location")),
        dns=_dns(section("dns")),
        network=_network_section(section("network")),
        health=_health(section("health")),
        api=_api(section("api")),
        split=_split(section("split")),
        paths=_paths(section("paths")),
        pia=_pia(section("pia")),
        port_forward=_port_forward(section("port_forward")),
        provider=top.get("provider", _choice(PROVIDERS), "nordvpn"),
        token_file=top.get("token_file", _absolute_path, None),
        log_level=top.get("log_level", _choice(LOG_LEVELS), "info"),
        source=path,
    )
    _check_port_forward(src, config)
    return config


def _check_port_forward(src: _Source, config: Config) -> None:
    """Port forwarding settings that cannot work with the rest of the config."""
    forward = config.port_forward
    if forward.enabled and config.provider != "pia":
        raise src.error(
            "port_forward.enabled",
            f'needs provider = "pia" (provider {config.provider} forwards no ports)',
        )
    if forward.forward_to and config.network.mode != "gateway":
        raise src.error(
            "port_forward.forward_to",
            f'needs network.mode = "gateway" (the mode is {config.network.mode!r})',
        )


def read_config_bytes(path: Path) -> bytes | None:
    """The config file's bytes, None when it does not exist, else ConfigError.

    At most MAX_CONFIG_BYTES are read, so /dev/zero or a huge file gives one line naming the
    problem; /dev/null reads as an empty config. A FIFO (whose open would wait for a writer),
    a socket or a directory is refused.
    """
    refused = f"{path}: cannot read the config file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{refused}: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{refused}: it is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise ConfigError(f"{refused}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{refused}: larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB")
    except OSError as error:
        raise ConfigError(f"{refused}: {error.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Load and validate the TOML config at ``path``; a missing file gives the defaults."""
    data = read_config_bytes(path)
    if data is None:
        return Config()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the config file is not valid UTF-8") from None
    return parse_config(text, path)
