"""The location catalog: NordVPN's countries, cities, server groups and technologies.

The data ships in ``data/`` exactly as the API sends it (``/v1/servers/countries``,
``/v1/servers/groups``, ``/v1/technologies``) and is refreshed by
``python -m nordwgd.provider.nordvpn.catalog refresh``. Names typed by people are resolved here:
case, accents, ``_`` and ``-`` do not matter; ISO codes, API ids and short group names work; a
miss comes with suggestions.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import json
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nordwgd.config import DEFAULT_CONFIG_PATH, load_config
from nordwgd.errors import (
    ApiUnavailable,
    ConfigError,
    InvalidArgument,
    NordwgdError,
    UnknownLocation,
)
from nordwgd.files import write_atomic

DATA_DIRECTORY = Path(__file__).resolve().parents[2] / "data"  # nordwgd/data

ApiObject = dict[str, Any]  # one JSON object of an API body, its keys checked by parse_body


@dataclass(frozen=True, eq=False)  # identity: used as a dict key
class _Source:
    """One catalog file: the API path it mirrors and the keys every entry must have."""

    api_path: str
    file_name: str
    required: Mapping[str, type | tuple[type, ...]]


COUNTRIES = _Source(
    "/v1/servers/countries", "countries.json", {"id": int, "name": str, "code": str, "cities": list}
)
GROUPS = _Source(
    "/v1/servers/groups", "groups.json", {"id": int, "title": str, "identifier": str, "type": dict}
)
TECHNOLOGIES = _Source(
    "/v1/technologies", "technologies.json", {"id": int, "name": str, "identifier": str}
)
SOURCES = (COUNTRIES, GROUPS, TECHNOLOGIES)
_CITY_KEYS: Mapping[str, type | tuple[type, ...]] = {"id": int, "name": str, "dns_name": str}

# The country code a NordVPN host name starts with: "de" of de1001, "ca" of ca-us2.
_HOSTNAME_COUNTRY = re.compile(r"[a-z]{2}(?=[0-9-])")
# Names people use that are not in the API's data.
COUNTRY_ALIASES: Mapping[str, str] = {
    "uk": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "usa": "US",
    "america": "US",
    "united states of america": "US",
    "holland": "NL",
    "korea": "KR",
    "czechia": "CZ",
    "uae": "AE",
}
GROUP_ALIASES: Mapping[str, str] = {
    "p2p": "legacy_p2p",
    "double": "legacy_double_vpn",
    "double vpn": "legacy_double_vpn",
    "obfuscated": "legacy_obfuscated_servers",
    "obfuscation": "legacy_obfuscated_servers",
    "onion": "legacy_onion_over_vpn",
    "tor": "legacy_onion_over_vpn",
    "dedicated": "legacy_dedicated_ip",
    "dedicated ip": "legacy_dedicated_ip",
    "standard": "legacy_standard",
    "americas": "the_americas",
}


@dataclass(frozen=True)
class City:
    id: int
    name: str
    dns_name: str
    country_id: int
    country_code: str


@dataclass(frozen=True)
class Country:
    id: int
    name: str
    code: str  # ISO 3166-1 alpha-2, as the API writes it ("GB" for the United Kingdom)
    cities: tuple[City, ...]


@dataclass(frozen=True)
class Group:
    id: int
    title: str
    identifier: str  # "legacy_p2p", "europe"
    type_identifier: str  # "legacy_group_category" or "regions"


@dataclass(frozen=True)
class Technology:
    id: int
    name: str
    identifier: str  # "wireguard_udp" is NordLynx


def normalize(text: str) -> str:
    """The form names are compared in: no accents, casefolded, punctuation as spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()
    plain = re.sub(r"['\u2019]", "", plain)  # "People's" and "Peoples" are the same
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain).split())


def group_names(identifier: str, title: str) -> set[str]:
    """Every normalized name that people type for a group, as the official client accepts them.

    The title ("Double VPN", "double_vpn"), the identifier ("legacy_double_vpn"), the identifier
    without its "legacy_" prefix ("double_vpn"), and the short names of GROUP_ALIASES ("double").
    """
    names = {normalize(identifier), normalize(title), normalize(identifier.removeprefix("legacy_"))}
    names |= {normalize(alias) for alias, target in GROUP_ALIASES.items() if target == identifier}
    names.discard("")
    return names


def _check_entries(body: object, source: _Source, where: str) -> list[ApiObject]:
    """The parsed body as a list of objects with the expected keys, else ApiUnavailable."""
    if not isinstance(body, list) or not body:
        raise ApiUnavailable(f"{where}: expected a non-empty JSON array of objects")
    for index, entry in enumerate(body):
        _check_keys(entry, source.required, f"{where}: entry {index}")
        if source is COUNTRIES:
            for position, city in enumerate(entry["cities"]):
                _check_keys(city, _CITY_KEYS, f"{where}: entry {index} city {position}")
    return body


def _check_keys(entry: object, keys: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(entry, dict):
        raise ApiUnavailable(f"{where}: expected an object")
    for key, kind in keys.items():
        value = entry.get(key)
        if value is None:
            raise ApiUnavailable(f"{where}: missing key {key!r}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ApiUnavailable(f"{where}: {key!r} has the wrong type")


def parse_body(data: bytes, source: _Source, where: str) -> list[ApiObject]:
    """Decode and check one API body (or catalog file)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiUnavailable(f"{where}: not valid JSON ({error})") from None
    return _check_entries(body, source, where)


class Catalog:
    """Countries, cities, groups and technologies, with lookups by what people type."""

    def __init__(
        self,
        countries: Sequence[Country],
        groups: Sequence[Group],
        technologies: Sequence[Technology] = (),
    ) -> None:
        self.countries = tuple(countries)
        self.groups = tuple(groups)
        self.technologies = tuple(technologies)
        self._country_names: dict[str, Country] = {}
        for country in self.countries:
            self._country_names.setdefault(normalize(country.name), country)
        self._codes = {country.code.upper(): country for country in self.countries}
        self._group_names: dict[str, Group] = {}
        for group in self.groups:
            for name in sorted(group_names(group.identifier, group.title)):
                self._group_names.setdefault(name, group)

    @classmethod
    def load(cls, directory: Path | None = None) -> Catalog:
        """The catalog in ``directory`` (default: the package data), parsed once per content.

        The first call reads the files (blocking); the daemon loads it once at start-up.
        """
        directory = (directory or DATA_DIRECTORY).resolve()
        return _load_cached(directory, _signature(directory))

    @classmethod
    def from_api_bodies(
        cls, countries: list[ApiObject], groups: list[ApiObject], technologies: list[ApiObject]
    ) -> Catalog:
        """A catalog from bodies that passed ``parse_body``."""
        parsed_countries = []
        for entry in countries:
            code = entry["code"].upper()
            cities = tuple(
                City(city["id"], city["name"], city["dns_name"], entry["id"], code)
                for city in entry["cities"]
            )
            parsed_countries.append(Country(entry["id"], entry["name"], code, cities))
        parsed_groups = [
            Group(
                entry["id"],
                entry["title"],
                entry["identifier"],
                str(entry["type"].get("identifier", "")),
            )
            for entry in groups
        ]
        parsed_technologies = [
            Technology(entry["id"], entry["name"], entry["identifier"]) for entry in technologies
        ]
        return cls(parsed_countries, parsed_groups, parsed_technologies)

    def country_by_id(self, country_id: int) -> Country | None:
        return next((c for c in self.countries if c.id == country_id), None)

    def resolve_country(self, text: str) -> Country:
        """A country by name, ISO code, API id or common alias ("UK", "united_states", "81")."""
        key = normalize(text)
        if not key:
            raise InvalidArgument("a country name, ISO code or id is needed (got an empty value)")
        if key.isdigit():
            found = self.country_by_id(int(key))
            if found is not None:
                return found
        found = self._country_names.get(key) or self._codes.get(key.upper())
        if found is None and key in COUNTRY_ALIASES:
            found = self._codes.get(COUNTRY_ALIASES[key])
        if found is not None:
            return found
        names = {normalize(c.name): c.name for c in self.countries}
        raise UnknownLocation(f"unknown country {text!r}", _suggest(key, names))

    def resolve_city(self, text: str, country: str | Country | None = None) -> City:
        """A city by name, DNS name or API id; ``country`` is needed when the name is ambiguous."""
        key = normalize(text)
        if not key:
            raise InvalidArgument("a city name or id is needed (got an empty value)")
        if isinstance(country, str):
            country = self.resolve_country(country)
        countries = (country,) if country is not None else self.countries
        matches = [
            city
            for candidate in countries
            for city in candidate.cities
            if key in (normalize(city.name), normalize(city.dns_name), str(city.id))
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            where = ", ".join(sorted(self._country_name(city.country_id) for city in matches))
            raise InvalidArgument(
                f"city {text!r} exists in several countries ({where}); name the country too"
            )
        names = {normalize(city.name): city.name for c in countries for city in c.cities}
        place = f" in {country.name}" if country is not None else ""
        raise UnknownLocation(f"unknown city {text!r}{place}", _suggest(key, names))

    def resolve_group(self, text: str) -> Group:
        """A server group by title, identifier, id or short name ("p2p", "double vpn", "onion")."""
        key = normalize(text)
        if not key:
            raise InvalidArgument("a group name, identifier or id is needed (got an empty value)")
        if key.isdigit():
            found = next((g for g in self.groups if g.id == int(key)), None)
            if found is not None:
                return found
        found = self._group_names.get(key)
        if found is not None:
            return found
        names = {normalize(g.title): g.title for g in self.groups}
        names.update({normalize(alias): alias for alias in GROUP_ALIASES})
        raise UnknownLocation(f"unknown server group {text!r}", _suggest(key, names))

    def country_of_hostname(self, hostname: str) -> Country:
        """The country a NordVPN host name starts with ("de1001" Germany, "uk2000" the UK).

        The API has no host name filter: a server is looked up in its country's list, never
        in the whole fleet (tens of MB). A name without a known country code is unknown.
        """
        prefix = _HOSTNAME_COUNTRY.match(hostname.strip().lower())
        if prefix is not None:
            try:
                return self.resolve_country(prefix.group())
            except UnknownLocation:
                pass
        raise UnknownLocation(
            f"unknown server {hostname!r}: NordVPN server names start with the code of their "
            "country (de1001, us5000)",
            [],
        )

    def _country_name(self, country_id: int) -> str:
        country = self.country_by_id(country_id)
        return country.name if country is not None else str(country_id)


def _suggest(key: str, names: Mapping[str, str]) -> list[str]:
    """Up to three display names whose normalized form is close to ``key``."""
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    if not close:  # a prefix ("united") is a fair hint too
        close = [name for name in names if name.startswith(key)][:3]
    return [names[name] for name in close]


def _signature(directory: Path) -> tuple[tuple[int, int], ...]:
    """Size and modification time of each file, so a changed catalog is parsed again."""
    signature = []
    for source in SOURCES:
        try:
            info = (directory / source.file_name).stat()
        except OSError:
            signature.append((-1, -1))
        else:
            signature.append((info.st_size, info.st_mtime_ns))
    return tuple(signature)


@functools.lru_cache(maxsize=8)
def _load_cached(directory: Path, signature: tuple[tuple[int, int], ...]) -> Catalog:
    del signature  # only part of the cache key
    bodies = []
    for source in SOURCES:
        path = directory / source.file_name
        try:
            data = path.read_bytes()
            bodies.append(parse_body(data, source, str(path)))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the catalog: {error.strerror}") from None
        except ApiUnavailable as error:
            raise ConfigError(f"the catalog is damaged: {error}") from None
    return Catalog.from_api_bodies(*bodies)


# --- refresh from the API ------------------------------------------------------------------


async def fetch_catalog(config_path: Path) -> dict[_Source, bytes]:
    """Every catalog body from the API, each checked; nothing is written here."""
    from nordwgd.provider.nordvpn.api import NordVpnApi  # the HTTP stack only when refreshing

    config = load_config(config_path)
    api = NordVpnApi(config.api)
    try:
        bodies = {}
        for source in SOURCES:
            data = await api.get_raw(source.api_path)
            parse_body(data, source, f"GET {source.api_path}")
            bodies[source] = data
        return bodies
    finally:
        await api.aclose()


def write_catalog(bodies: Mapping[_Source, bytes], directory: Path) -> list[Path]:
    """Write the bodies verbatim, each file replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source, data in bodies.items():
        target = directory / source.file_name
        write_atomic(target, data, mode=0o644)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nordwgd.provider.nordvpn.catalog",
        description="Maintain the NordVPN location catalog.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="fetch countries, groups and technologies")
    refresh.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    refresh.add_argument("--output", type=Path, default=DATA_DIRECTORY, help="target directory")
    args = parser.parse_args(argv)
    try:
        bodies = asyncio.run(fetch_catalog(args.config))
        for path in write_catalog(bodies, args.output):
            print(f"wrote {path}")
    except NordwgdError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
