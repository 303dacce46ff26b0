"""The fake NordVPN fleet: the servers and accounts the fake API serves.

A fleet is plain data (``ServerSpec`` per server, access tokens with their NordLynx private
keys). The fake API turns it into server objects shaped like the real API's; the namespaced
test world starts one WireGuard peer per server, with the private key ``server_keypair``
derives from the fleet's seed and the hostname.

Station addresses come only from 203.0.113.0/24 and 198.18.0.0/15.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

DEFAULT_SEED = 0


def fixture_bytes(name: str) -> bytes:
    """The verbatim bytes of a captured API response under nordwgd/testing/fixtures/."""
    return resources.files("nordwgd.testing").joinpath("fixtures", name).read_bytes()


@cache
def _countries() -> tuple[dict[str, Any], ...]:
    loaded = json.loads(fixture_bytes("countries.json"))
    return tuple(loaded)


@cache
def _groups() -> dict[str, dict[str, Any]]:
    return {group["identifier"]: group for group in json.loads(fixture_bytes("groups.json"))}


def country_record(code: str) -> dict[str, Any]:
    """The countries-fixture entry for an ISO code (KeyError names the code when unknown)."""
    for country in _countries():
        if country["code"] == code:
            return country
    raise KeyError(f"country code {code!r} is not in the countries fixture")


def city_record(code: str, city: str) -> dict[str, Any]:
    for record in country_record(code)["cities"]:
        if record["name"] == city:
            return dict(record)
    raise KeyError(f"city {city!r} is not in country {code!r} of the countries fixture")


def group_record(identifier: str) -> dict[str, Any]:
    try:
        return _groups()[identifier]
    except KeyError:
        raise KeyError(f"group {identifier!r} is not in the groups fixture") from None


@dataclass(frozen=True)
class ServerSpec:
    hostname: str  # "de1001.nordvpn.com"
    station: str  # entry IPv4, e.g. "203.0.113.11"
    public_key: str | None  # base64 WireGuard public key; None = server has no NordLynx key
    country_code: str  # "DE"; ids and names come from the countries fixture
    city: str  # "Frankfurt"
    groups: tuple[str, ...] = ("legacy_standard", "europe")  # identifiers from the groups fixture
    load: int = 10
    status: str = "online"
    wireguard_status: str = "online"


@dataclass(frozen=True)
class Fleet:
    servers: tuple[ServerSpec, ...]
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> nordlynx_private_key

    def write(self, path: Path) -> None:
        """Write the fleet as JSON, mode 0600 (it holds tokens and private keys)."""
        document = {
            "servers": [asdict(spec) for spec in self.servers],
            "tokens": dict(self.tokens),
        }
        data = json.dumps(document, indent=1).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)

    @classmethod
    def read(cls, path: Path) -> Fleet:
        document = json.loads(path.read_bytes())
        servers = tuple(
            ServerSpec(**{**entry, "groups": tuple(entry["groups"])})
            for entry in document["servers"]
        )
        tokens = {str(token): str(key) for token, key in document["tokens"].items()}
        return cls(servers=servers, tokens=tokens)

    def by_hostname(self, hostname: str) -> ServerSpec:
        for spec in self.servers:
            if spec.hostname == hostname:
                return spec
        raise KeyError(hostname)

    def stations(self) -> frozenset[str]:
        return frozenset(spec.station for spec in self.servers)


def _keypair_from_private(private: X25519PrivateKey) -> tuple[str, str]:
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


def generate_keypair() -> tuple[str, str]:
    """A fresh X25519 key pair as WireGuard writes them: (private_b64, public_b64)."""
    return _keypair_from_private(X25519PrivateKey.generate())


def derived_keypair(seed: int, label: str) -> tuple[str, str]:
    """A deterministic key pair for ``label`` in the fleet made from ``seed`` (tests only)."""
    material = hashlib.sha256(f"nordwgd-fleet/{seed}/{label}".encode()).digest()
    return _keypair_from_private(X25519PrivateKey.from_private_bytes(material))


def server_keypair(seed: int, hostname: str) -> tuple[str, str]:
    """Key pair of a server of ``default_fleet(seed)``; world peers use the private half."""
    return derived_keypair(seed, f"server/{hostname}")


def default_token(seed: int = DEFAULT_SEED) -> str:
    """The access token accepted by ``default_fleet(seed)``: 64 hex digits like a real one."""
    return hashlib.sha256(f"nordwgd-fleet/{seed}/token".encode()).hexdigest()


# (hostname, station, country, city, groups, load, status, wireguard status, has key)
_DEFAULT_LAYOUT: tuple[tuple[str, str, str, str, tuple[str, ...], int, str, str, bool], ...] = (
    (
        "de1001.nordvpn.com",
        "203.0.113.11",
        "DE",
        "Frankfurt",
        ("legacy_standard", "legacy_p2p", "europe"),
        12,
        "online",
        "online",
        True,
    ),
    (
        "de1002.nordvpn.com",
        "203.0.113.12",
        "DE",
        "Frankfurt",
        ("legacy_standard", "europe"),
        27,
        "online",
        "online",
        True,
    ),
    (
        "de1003.nordvpn.com",
        "203.0.113.13",
        "DE",
        "Frankfurt",
        ("legacy_standard", "europe"),
        4,
        "offline",
        "offline",
        True,
    ),
    (
        "de1004.nordvpn.com",
        "203.0.113.14",
        "DE",
        "Frankfurt",
        ("legacy_standard", "legacy_p2p", "europe"),
        6,
        "online",
        "offline",
        True,
    ),
    (
        "de1010.nordvpn.com",
        "203.0.113.21",
        "DE",
        "Berlin",
        ("legacy_standard", "europe"),
        19,
        "online",
        "online",
        True,
    ),
    (
        "de1011.nordvpn.com",
        "203.0.113.22",
        "DE",
        "Berlin",
        ("legacy_standard", "legacy_p2p", "europe"),
        44,
        "online",
        "online",
        True,
    ),
    (
        "nl801.nordvpn.com",
        "203.0.113.31",
        "NL",
        "Amsterdam",
        ("legacy_standard", "legacy_p2p", "europe"),
        15,
        "online",
        "online",
        True,
    ),
    (
        "nl802.nordvpn.com",
        "203.0.113.32",
        "NL",
        "Amsterdam",
        ("legacy_standard", "europe"),
        52,
        "online",
        "online",
        True,
    ),
    (
        "nl803.nordvpn.com",
        "203.0.113.33",
        "NL",
        "Amsterdam",
        ("legacy_standard", "europe"),
        9,
        "maintenance",
        "online",
        True,
    ),
    (
        "uk2001.nordvpn.com",
        "203.0.113.41",
        "GB",
        "London",
        ("legacy_standard", "legacy_p2p", "europe"),
        18,
        "online",
        "online",
        True,
    ),
    (
        "uk2002.nordvpn.com",
        "203.0.113.42",
        "GB",
        "London",
        ("legacy_standard", "europe"),
        63,
        "online",
        "online",
        True,
    ),
    (
        "us5001.nordvpn.com",
        "203.0.113.51",
        "US",
        "New York",
        ("legacy_standard", "the_americas"),
        23,
        "online",
        "online",
        True,
    ),
    (
        "us5002.nordvpn.com",
        "203.0.113.52",
        "US",
        "New York",
        ("legacy_standard", "legacy_p2p", "the_americas"),
        58,
        "online",
        "online",
        True,
    ),
    (
        "us5010.nordvpn.com",
        "203.0.113.61",
        "US",
        "Los Angeles",
        ("legacy_standard", "the_americas"),
        35,
        "online",
        "online",
        True,
    ),
    (
        "us5011.nordvpn.com",
        "203.0.113.62",
        "US",
        "Los Angeles",
        ("legacy_standard", "legacy_p2p", "the_americas"),
        71,
        "online",
        "offline",
        True,
    ),
    (
        "jp501.nordvpn.com",
        "203.0.113.71",
        "JP",
        "Tokyo",
        ("legacy_standard", "asia_pacific"),
        22,
        "online",
        "online",
        True,
    ),
    (
        "jp502.nordvpn.com",
        "203.0.113.72",
        "JP",
        "Tokyo",
        ("legacy_standard", "legacy_p2p", "asia_pacific"),
        41,
        "online",
        "online",
        True,
    ),
    # Double VPN servers carry no NordLynx key: the group exists but has no NordLynx server.
    (
        "de-nl1.nordvpn.com",
        "198.18.0.11",
        "DE",
        "Frankfurt",
        ("legacy_double_vpn", "europe"),
        8,
        "online",
        "online",
        False,
    ),
    (
        "nl-uk2.nordvpn.com",
        "198.18.0.12",
        "NL",
        "Amsterdam",
        ("legacy_double_vpn", "europe"),
        14,
        "online",
        "online",
        False,
    ),
    (
        "us-ca3.nordvpn.com",
        "198.18.0.13",
        "US",
        "New York",
        ("legacy_double_vpn", "the_americas"),
        30,
        "online",
        "online",
        False,
    ),
)


def default_fleet(seed: int = DEFAULT_SEED) -> Fleet:
    """A small fleet over DE, NL, GB, US and JP with every case selection has to handle.

    Online and offline servers, NordLynx pivots offline, a group (Double VPN) whose servers
    have no NordLynx key, and varied loads. ``seed`` changes keys and token, and shuffles
    loads a little so tests do not depend on one ordering by accident (seed 0 = as listed).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    servers: list[ServerSpec] = []
    for hostname, station, code, city, groups, load, status, wg_status, has_key in _DEFAULT_LAYOUT:
        if seed != DEFAULT_SEED:
            load = max(0, min(100, load + rng.randint(-3, 3)))
        public_key = server_keypair(seed, hostname)[1] if has_key else None
        servers.append(
            ServerSpec(
                hostname=hostname,
                station=station,
                public_key=public_key,
                country_code=code,
                city=city,
                groups=groups,
                load=load,
                status=status,
                wireguard_status=wg_status,
            )
        )
    account_private, _ = derived_keypair(seed, "account")
    return Fleet(servers=tuple(servers), tokens={default_token(seed): account_private})


def _hostname_prefix(code: str) -> str:
    return "uk" if code == "GB" else code.lower()


def _region(latitude: float, longitude: float) -> str:
    # Coarse, but enough for realistic group membership in a synthetic fleet.
    if longitude < -30:
        return "the_americas"
    if longitude > 60:
        return "asia_pacific"
    if latitude > 35:
        return "europe"
    return "africa_the_middle_east_and_india"


def large_fleet(n: int, seed: int = DEFAULT_SEED) -> Fleet:
    """``n`` servers spread over every city of the countries fixture (for benchmarks).

    Keys are random 32-byte strings (any 32 bytes are a valid X25519 public key), which keeps
    building a fleet of thousands fast.
    """
    if n > 131072:
        raise ValueError("large_fleet: at most 131072 servers fit in 198.18.0.0/15")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    places = [(country["code"], city) for country in _countries() for city in country["cities"]]
    base = int(IPv4Address("198.18.0.0"))
    servers: list[ServerSpec] = []
    numbers: dict[str, int] = {}
    for index in range(n):
        code, city = places[index % len(places)]
        number = numbers.get(code, 100) + 1
        numbers[code] = number
        groups = ["legacy_standard"]
        if rng.random() < 0.3:
            groups.append("legacy_p2p")
        groups.append(_region(float(city["latitude"]), float(city["longitude"])))
        has_key = rng.random() > 0.05
        servers.append(
            ServerSpec(
                hostname=f"{_hostname_prefix(code)}{number}.nordvpn.com",
                station=str(IPv4Address(base + index + 1)),
                public_key=base64.b64encode(rng.randbytes(32)).decode() if has_key else None,
                country_code=code,
                city=str(city["name"]),
                groups=tuple(groups),
                load=rng.randint(0, 100),
                status="online" if rng.random() > 0.03 else "offline",
                wireguard_status="online" if rng.random() > 0.02 else "offline",
            )
        )
    account_private, _ = derived_keypair(seed, "account")
    return Fleet(servers=tuple(servers), tokens={default_token(seed): account_private})
