"""PIA's signed region list: verify the signature, parse the regions, choose a region and server.

On the wire the list is one line of compact JSON, a blank line, then the base64 RSA-SHA256
signature of exactly that first line (line-wrapped or not). ``verify`` accepts a list only when
the signature checks out with PIA's public key; nothing of an unverified list is ever parsed.
"""

from __future__ import annotations

import binascii
import difflib
import json
import random
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from nordwgd.errors import ApiUnavailable, InvalidArgument, NoServer, UnknownLocation

WIREGUARD_API_PORT = 1337
META_PORT = 443
MAX_SUGGESTIONS = 5


class SignatureInvalid(ApiUnavailable):
    """The region list's signature does not verify: the list is refused whole."""


@dataclass(frozen=True)
class PiaServer:
    """One server of a region: its address and the name its certificate carries."""

    ip: IPv4Address
    cn: str


@dataclass(frozen=True)
class Region:
    id: str  # "uk", "swiss", "de_berlin"
    name: str  # "UK London"
    country: str  # ISO-2 code, upper case
    dns: str
    port_forward: bool
    geo: bool  # a virtual location
    offline: bool
    wireguard: tuple[PiaServer, ...]
    meta: tuple[PiaServer, ...]


@dataclass(frozen=True)
class RegionList:
    regions: tuple[Region, ...]
    wireguard_port: int = WIREGUARD_API_PORT  # where addKey listens
    meta_port: int = META_PORT

    def by_id(self, region_id: str) -> Region | None:
        for region in self.regions:
            if region.id == region_id:
                return region
        return None


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """PIA's region list key (PEM); ValueError when it is no RSA public key."""
    key = load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def verify(wire: bytes, key: rsa.RSAPublicKey) -> bytes:
    """The signed first line of ``wire``; SignatureInvalid when it is not PIA's list."""
    body, separator, rest = wire.partition(b"\n")
    if not separator or not body.strip():
        raise SignatureInvalid(
            "the region list has no signature (expected JSON, a blank line, then the signature)"
        )
    signature_text = b"".join(rest.split())
    try:
        signature = b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the region list's signature is not base64") from None
    if not signature:
        raise SignatureInvalid("the region list has no signature")
    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid(
            "the region list's signature does not verify with PIA's public key; "
            "the list is not used"
        ) from None
    return body


def parse(body: bytes) -> RegionList:
    """The regions of a verified list body; ApiUnavailable naming the first bad field."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiUnavailable(f"the region list is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise ApiUnavailable("the region list is not a JSON object")
    regions_raw = document.get("regions")
    if not isinstance(regions_raw, list):
        raise ApiUnavailable("the region list has no 'regions' array")
    regions = tuple(_region(item, f"regions[{i}]") for i, item in enumerate(regions_raw))
    groups = document.get("groups")
    return RegionList(
        regions=regions,
        wireguard_port=_group_port(groups, "wg", WIREGUARD_API_PORT),
        meta_port=_group_port(groups, "meta", META_PORT),
    )


def _group_port(groups: object, name: str, default: int) -> int:
    try:
        port = groups[name][0]["ports"][0]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return default
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    raise ApiUnavailable(f"the region list: groups.{name}[0].ports[0] is not a port ({port!r})")


def _field(item: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = item.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiUnavailable(
            f"the region list: {where}.{key} must be a {kind.__name__} (got {value!r:.40})"
        )
    return value


def _region(item: object, where: str) -> Region:
    if not isinstance(item, dict):
        raise ApiUnavailable(f"the region list: {where} is not an object")
    servers = item.get("servers", {})
    if not isinstance(servers, dict):
        raise ApiUnavailable(f"the region list: {where}.servers is not an object")
    country = _field(item, "country", str, where).upper()
    return Region(
        id=_field(item, "id", str, where),
        name=_field(item, "name", str, where),
        country=country,
        dns=str(item.get("dns", "")),
        port_forward=bool(item.get("port_forward", False)),
        geo=bool(item.get("geo", False)),
        offline=bool(item.get("offline", False)),
        wireguard=_servers(servers.get("wg", []), f"{where}.servers.wg"),
        meta=_servers(servers.get("meta", []), f"{where}.servers.meta"),
    )


def _servers(items: object, where: str) -> tuple[PiaServer, ...]:
    if not isinstance(items, list):
        raise ApiUnavailable(f"the region list: {where} is not an array")
    servers = []
    for index, item in enumerate(items):
        spot = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ApiUnavailable(f"the region list: {spot} is not an object")
        ip = _field(item, "ip", str, spot)
        cn = _field(item, "cn", str, spot)
        try:
            address = IPv4Address(ip)
        except ValueError:
            raise ApiUnavailable(
                f"the region list: {spot}.ip {ip!r} is not an IPv4 address"
            ) from None
        if not cn or any(ch.isspace() or ch in "/\\" for ch in cn):
            raise ApiUnavailable(f"the region list: {spot}.cn {cn!r} is not a certificate name")
        servers.append(PiaServer(address, cn))
    return tuple(servers)


# --- choosing ----------------------------------------------------------------------------


def match_regions(regions: RegionList, text: str) -> tuple[Region, ...]:
    """The regions ``text`` names: an id, a name or an ISO country code (any case).

    UnknownLocation with "did you mean" suggestions when nothing matches.
    """
    wanted = text.strip()
    folded = wanted.casefold()
    if not folded:
        raise InvalidArgument("empty region name")
    for region in regions.regions:
        if region.id.casefold() == folded or region.name.casefold() == folded:
            return (region,)
    by_country = tuple(r for r in regions.regions if r.country.casefold() == folded)
    if by_country:
        return by_country
    names = [r.id for r in regions.regions] + [r.name for r in regions.regions]
    folded_names = {name.casefold(): name for name in names}
    close = difflib.get_close_matches(folded, list(folded_names), n=3, cutoff=0.6)
    # a word of a name ("london" in "UK London") is a good hint too
    partial = [n for n in names if folded in n.casefold() and n.casefold() not in close]
    suggestions = [folded_names[c] for c in close] + partial
    raise UnknownLocation(f"unknown PIA region {wanted!r}", list(dict.fromkeys(suggestions))[:3])


def usable(
    regions: Sequence[Region], *, port_forward: bool, all_regions: RegionList, asked: str
) -> tuple[Region, ...]:
    """``regions`` without the offline ones (and those without port forwarding when wanted)."""
    online = tuple(region for region in regions if not region.offline and region.wireguard)
    if not online:
        names = ", ".join(region.id for region in regions)
        raise NoServer(f"PIA region {asked!r} ({names}) is offline or has no WireGuard server")
    if not port_forward:
        return online
    forwarding = tuple(region for region in online if region.port_forward)
    if forwarding:
        return forwarding
    raise NoServer(
        f"PIA region {asked!r} offers no port forwarding, and port_forward.enabled is on; "
        f"regions with port forwarding: {', '.join(with_port_forwarding(all_regions, online))}"
    )


def with_port_forwarding(regions: RegionList, near: Sequence[Region]) -> list[str]:
    """Ids of online regions with port forwarding, the closest in name to ``near`` first."""
    offering = [r for r in regions.regions if r.port_forward and not r.offline and r.wireguard]
    words = {word.casefold() for region in near for word in region.name.split()}

    def closeness(region: Region) -> tuple[int, float, str]:
        same_word = any(word.casefold() in words for word in region.name.split())
        score = max(
            (difflib.SequenceMatcher(None, region.name, other.name).ratio() for other in near),
            default=0.0,
        )
        return (0 if same_word else 1, -score, region.id)

    return [region.id for region in sorted(offering, key=closeness)[:MAX_SUGGESTIONS]]


def pick_server(
    regions: Sequence[Region], exclude: frozenset[str], rng: random.Random
) -> tuple[Region, PiaServer]:
    """A random WireGuard server among ``regions`` whose name is not in ``exclude``."""
    choices = [
        (region, server)
        for region in regions
        for server in region.wireguard
        if server.cn.casefold() not in exclude
    ]
    if not choices:
        names = ", ".join(region.id for region in regions)
        raise NoServer(f"no other WireGuard server left in PIA region {names}")
    return rng.choice(choices)
