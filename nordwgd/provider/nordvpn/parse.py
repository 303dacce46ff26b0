"""Pure parsers from NordVPN API response bytes to nordwgd values.

Every malformed response raises ApiUnavailable naming the endpoint, the JSON path of the
offending value and what is wrong with it; secret values are never quoted. Shapes follow the
captured responses described in the fixtures README.

A server whose wireguard_udp entry is missing, or carries no well-formed public key, parses
with ``public_key=None``: it is not usable for NordLynx and selection skips it. In a list of
servers an entry that is malformed in itself is skipped (and logged) so that one bad server
does not make the whole API unusable; a list in which every entry is malformed is an error.

Only what a tunnel needs is required of a server: its host name, entry address, load and
status. Everything else is taken as it comes, because the API has changed shape over the
years (captures of 2017 and 2020 are in testing/fixtures): groups without an ``identifier``,
a location without a city, no ``ipv6_station``, technologies without ``metadata``, a public key
with stray white space. A missing id, name or city is shown empty; a group, technology or
metadata entry of an unknown shape is passed over.
"""

from __future__ import annotations

import binascii
import gc
import json
import logging
import re
import socket
from base64 import b64decode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, NoReturn, TypeVar

from nordwgd.errors import ApiUnavailable
from nordwgd.model import Credentials, IPAddress, Secret, Server
from nordwgd.redact import register_secret

log = logging.getLogger(__name__)

WIREGUARD_IDENTIFIER = "wireguard_udp"
KEY_BYTES = 32
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*")
# Dotted-quad IPv4 as ipaddress accepts it (decimal octets 0-255, no leading zeros).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")

T = TypeVar("T")


@dataclass(frozen=True)
class Insights:
    """What the API sees of the caller: address, location, and whether it is a NordVPN server."""

    ip: IPAddress
    protected: bool
    country: str = ""
    country_code: str = ""
    city: str = ""
    isp: str = ""


@dataclass(frozen=True)
class ApiError:
    """The ``{"errors": {"code": ..., "message": ...}}`` body of a failed call."""

    code: int
    message: str


_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _describe(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is(value: object, kind: type) -> bool:
    # bool is an int in Python, but never an acceptable integer in these documents.
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


class _Context:
    """Where in which response a value sits, for error messages (the path is built lazily)."""

    __slots__ = ("key", "parent", "source")

    def __init__(self, source: str, parent: _Context | None = None, key: str | int = "") -> None:
        self.source = source
        self.parent = parent
        self.key = key

    @property
    def path(self) -> str:
        if self.parent is None:
            return ""
        base = self.parent.path
        if isinstance(self.key, int):
            return f"{base}[{self.key}]"
        return f"{base}.{self.key}" if base else self.key

    def at(self, key: str | int) -> _Context:
        return _Context(self.source, self, key)

    def fail(self, what: str) -> NoReturn:
        path = self.path
        where = f"{path}: " if path else ""
        raise ApiUnavailable(f"unusable answer from the NordVPN API ({self.source}): {where}{what}")

    def expect(self, value: object, kind: type[T]) -> T:
        if _is(value, kind):
            return value  # type: ignore[return-value]
        self.fail(f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(value)}")

    def field(self, obj: dict[str, Any], key: str, kind: type[T]) -> T:
        try:
            value = obj[key]
        except KeyError:
            self.at(key).fail("missing")
        if _is(value, kind):
            return value  # type: ignore[no-any-return]
        return self.at(key).expect(value, kind)


def decode_json(data: bytes, source: str, *, quote: bool = True) -> Any:
    """The decoded JSON document, or ApiUnavailable when the body is not JSON.

    ``quote=False`` keeps the body's first characters out of the message: a body that holds
    secrets (the credentials) may start with one.
    """
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        snippet = data[:40].decode("utf-8", "replace").strip()
        if not snippet:
            detail = " (empty body)"
        elif quote:
            detail = f" (starts with {snippet!r})"
        else:
            detail = f" ({len(data)} bytes)"
        raise ApiUnavailable(
            f"unusable answer from the NordVPN API ({source}): not JSON{detail}"
        ) from None
    except RecursionError:
        raise ApiUnavailable(
            f"unusable answer from the NordVPN API ({source}): JSON nested too deeply"
        ) from None


def parse_error(data: bytes) -> ApiError | None:
    """The API's error object in a failed call's body, or None when there is none."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    errors = document.get("errors")
    if not isinstance(errors, dict):
        return None
    code, message = errors.get("code"), errors.get("message")
    if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
        return None
    return ApiError(code, message)


def _ip(ctx: _Context, value: object) -> IPAddress:
    text = ctx.expect(value, str)
    try:
        return ip_address(text)
    except ValueError:
        ctx.fail(f"{text[:64]!r} is not an IP address")


def _ipv4(ctx: _Context, value: object) -> IPv4Address:
    address = _ip(ctx, value)
    if not isinstance(address, IPv4Address):
        ctx.fail(f"{address} is not an IPv4 address")
    return address


def _wireguard_key(value: str) -> bytes | None:
    try:
        raw = b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def _public_key(metadata: list[Any]) -> str | None:
    """The well-formed public key among a wireguard_udp entry's metadata, if any."""
    for item in metadata:
        # Metadata values are not always strings; only a well-formed key counts. The API has
        # sent keys with a leading tab, which the official client strips too.
        if isinstance(item, dict) and item.get("name") == "public_key":
            value = item.get("value")
            if isinstance(value, str):
                value = value.strip()
                if _wireguard_key(value) is not None:
                    return value
    return None


def _wireguard(technologies: object) -> tuple[str | None, bool]:
    """(public key or None, pivot online) of the server's wireguard_udp entry.

    Entries of another shape are passed over; a wireguard_udp entry without a pivot status
    or metadata list makes the server unusable, not malformed.
    """
    if not isinstance(technologies, list):
        return None, False
    for entry in technologies:
        if not isinstance(entry, dict) or entry.get("identifier") != WIREGUARD_IDENTIFIER:
            continue
        pivot = entry.get("pivot")
        online = isinstance(pivot, dict) and pivot.get("status") == "online"
        metadata = entry.get("metadata", [])
        return (_public_key(metadata) if isinstance(metadata, list) else None), online
    return None, False


def _groups(groups: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(identifiers, titles) of the server's groups; older answers have titles only."""
    identifiers: list[str] = []
    titles: list[str] = []
    for group in groups if isinstance(groups, list) else ():
        if not isinstance(group, dict):
            continue
        identifier, title = group.get("identifier"), group.get("title")
        if isinstance(identifier, str):
            identifiers.append(identifier)
        if isinstance(title, str):
            titles.append(title)
    return tuple(identifiers), tuple(titles)


def _optional(ctx: _Context, obj: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """``obj[key]`` when present (and then of ``kind``), else ``default``."""
    value = obj.get(key)
    return default if value is None else ctx.at(key).expect(value, kind)


def parse_server(obj: object, source: str = "server", *, _ctx: _Context | None = None) -> Server:
    """One server object (already decoded from JSON)."""
    ctx = _ctx or _Context(source)
    server = ctx.expect(obj, dict)
    load = ctx.field(server, "load", int)
    if not 0 <= load <= 100:
        ctx.at("load").fail(f"{load} is not a load between 0 and 100")
    hostname = ctx.field(server, "hostname", str)
    if not _HOSTNAME.fullmatch(hostname):
        ctx.at("hostname").fail(f"{hostname[:64]!r} is not a host name")
    ipv6_text = server.get("ipv6_station", "")
    ipv6: IPv6Address | None = None
    if ipv6_text not in ("", None):
        address = _ip(ctx.at("ipv6_station"), ipv6_text)
        if not isinstance(address, IPv6Address):
            ctx.at("ipv6_station").fail(f"{address} is not an IPv6 address")
        ipv6 = address
    locations = ctx.field(server, "locations", list)
    if not locations:
        ctx.at("locations").fail("empty")
    lctx = ctx.at("locations").at(0)
    location = lctx.expect(locations[0], dict)
    cctx = lctx.at("country")
    country = lctx.field(location, "country", dict)
    city = _optional(cctx, country, "city", dict, {})  # not every location had a city
    identifiers, titles = _groups(server.get("groups"))
    public_key, wireguard_online = _wireguard(server.get("technologies"))
    return Server(
        id=_optional(ctx, server, "id", int, 0),
        name=_optional(ctx, server, "name", str, ""),
        hostname=hostname,
        station=_ipv4(ctx.at("station"), ctx.field(server, "station", str)),
        ipv6_station=ipv6,
        load=load,
        status=ctx.field(server, "status", str),
        country=cctx.field(country, "name", str),
        country_code=cctx.field(country, "code", str),
        country_id=_optional(cctx, country, "id", int, 0),
        city=_optional(cctx.at("city"), city, "name", str, ""),
        city_id=_optional(cctx.at("city"), city, "id", int, 0),
        groups=identifiers,
        group_titles=titles,
        public_key=public_key,
        wireguard_online=wireguard_online,
    )


def _plain_server(obj: object) -> Server | None:
    """``obj`` as a Server when it is plainly well-formed, else None.

    The common case in a list of thousands, checked with exact type tests and no error
    context. It accepts only what ``parse_server`` accepts and builds the same Server; anything
    out of the ordinary (a missing key, an IPv4 address not in plain dotted form) answers None
    and ``parse_server`` decides, so its error messages stay the only ones.
    """
    if type(obj) is not dict:
        return None
    get = obj.get
    load, hostname, station = get("load"), get("hostname"), get("station")
    if type(load) is not int or not 0 <= load <= 100:
        return None
    if type(hostname) is not str or not _HOSTNAME.fullmatch(hostname):
        return None
    if type(station) is not str or not _IPV4.fullmatch(station):
        return None
    ipv6_text = get("ipv6_station", "")
    ipv6: IPv6Address | None = None
    if type(ipv6_text) is str and ipv6_text:
        try:
            ipv6 = IPv6Address(ipv6_text)
        except ValueError:
            return None
    elif ipv6_text is not None and ipv6_text != "":
        return None
    locations, group_list, technologies = get("locations"), get("groups"), get("technologies")
    if type(locations) is not list or not locations or type(locations[0]) is not dict:
        return None
    country = locations[0].get("country")
    if type(country) is not dict:
        return None
    city = country.get("city")
    if type(city) is not dict or type(group_list) is not list or type(technologies) is not list:
        return None
    identifiers: list[str] = []
    titles: list[str] = []
    for group in group_list:
        if type(group) is not dict:
            return None
        identifier, title = group.get("identifier"), group.get("title")
        if type(identifier) is not str or type(title) is not str:
            return None
        identifiers.append(identifier)
        titles.append(title)
    public_key: str | None = None
    wireguard_online = False
    for entry in technologies:
        if type(entry) is not dict or type(technology := entry.get("identifier")) is not str:
            return None
        if technology != WIREGUARD_IDENTIFIER:
            continue
        pivot = entry.get("pivot")
        if type(pivot) is not dict or type(pivot_status := pivot.get("status")) is not str:
            return None
        metadata = entry.get("metadata", [])
        if type(metadata) is not list:
            return None
        public_key, wireguard_online = _public_key(metadata), pivot_status == "online"
        break
    server_id, name, status = get("id"), get("name"), get("status")
    country_name, country_code = country.get("name"), country.get("code")
    country_id, city_name, city_id = country.get("id"), city.get("name"), city.get("id")
    if not (
        type(server_id) is int
        and type(name) is str
        and type(status) is str
        and type(country_name) is str
        and type(country_code) is str
        and type(country_id) is int
        and type(city_name) is str
        and type(city_id) is int
    ):
        return None
    return Server(
        id=server_id,
        name=name,
        hostname=hostname,
        station=IPv4Address(socket.inet_pton(socket.AF_INET, station)),
        ipv6_station=ipv6,
        load=load,
        status=status,
        country=country_name,
        country_code=country_code,
        country_id=country_id,
        city=city_name,
        city_id=city_id,
        groups=tuple(identifiers),
        group_titles=tuple(titles),
        public_key=public_key,
        wireguard_online=wireguard_online,
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large answer is decoded and parsed.

    Decoding a full server list creates about a million containers, none of them in a cycle;
    the collector would walk the growing heap again and again, which took more than a third
    of the time. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _server_list(data: bytes, source: str) -> tuple[list[Server], ApiUnavailable | None]:
    """(well-formed servers, first error) of a server list; the decoded document dies here."""
    ctx = _Context(source)
    document = ctx.expect(decode_json(data, source), list)
    servers: list[Server] = []
    first_error: ApiUnavailable | None = None
    for index, obj in enumerate(document):
        server = _plain_server(obj)
        if server is None:
            try:
                server = parse_server(obj, _ctx=ctx.at(index))
            except ApiUnavailable as error:
                first_error = first_error or error
                log.warning("skipping a malformed server: %s", error)
                continue
        servers.append(server)
    return servers, first_error


def parse_servers(data: bytes, source: str = "servers") -> list[Server]:
    """A JSON array of server objects, in the API's order; malformed entries are skipped."""
    # The decoded document must be gone before collection resumes, or the collector's next
    # run walks all of it once.
    with _gc_paused():
        servers, first_error = _server_list(data, source)
    if first_error is not None and not servers:
        raise first_error
    return servers


def parse_credentials(data: bytes, source: str = "credentials") -> Credentials:
    """The credentials object; only the NordLynx private key is kept (as a Secret)."""
    ctx = _Context(source)
    document = ctx.expect(decode_json(data, source, quote=False), dict)
    key = ctx.field(document, "nordlynx_private_key", str)
    if _wireguard_key(key) is None:
        # Never quote the value: it is the account's private key.
        ctx.at("nordlynx_private_key").fail(
            f"not a base64 WireGuard key of {KEY_BYTES} bytes ({len(key)} characters)"
        )
    # Belt and braces: should the key ever reach a log record, the redaction filter knows it.
    register_secret(key)
    return Credentials(private_key=Secret(key))


def parse_insights(data: bytes, source: str = "insights") -> Insights:
    ctx = _Context(source)
    document = ctx.expect(decode_json(data, source), dict)

    def text(key: str) -> str:
        value = document.get(key, "")
        return "" if value is None else ctx.at(key).expect(value, str)

    return Insights(
        ip=_ip(ctx.at("ip"), ctx.field(document, "ip", str)),
        protected=ctx.field(document, "protected", bool),
        country=text("country"),
        country_code=text("country_code"),
        city=text("city"),
        isp=text("isp"),
    )


def parse_object_list(
    data: bytes, source: str, required: dict[str, type] | None = None
) -> list[dict[str, Any]]:
    """A JSON array of objects, each holding ``required`` keys of the given types."""
    ctx = _Context(source)
    document = ctx.expect(decode_json(data, source), list)
    result: list[dict[str, Any]] = []
    for index, item in enumerate(document):
        here = ctx.at(index)
        obj = here.expect(item, dict)
        for key, kind in (required or {}).items():
            here.field(obj, key, kind)
        result.append(obj)
    return result


def parse_countries(data: bytes) -> list[dict[str, Any]]:
    countries = parse_object_list(data, "countries", {"id": int, "name": str, "code": str})
    ctx = _Context("countries")
    for index, country in enumerate(countries):
        cities = ctx.at(index).field(country, "cities", list)
        for city_index, city in enumerate(cities):
            here = ctx.at(index).at("cities").at(city_index)
            city = here.expect(city, dict)
            here.field(city, "id", int)
            here.field(city, "name", str)
    return countries


def parse_groups(data: bytes) -> list[dict[str, Any]]:
    return parse_object_list(data, "groups", {"id": int, "title": str, "identifier": str})


def parse_technologies(data: bytes) -> list[dict[str, Any]]:
    return parse_object_list(data, "technologies", {"id": int, "name": str, "identifier": str})
