"""The planner: "give me tunnel parameters for attempt N".

Connect options (``country``, ``city``, ``group``, ``server``) are checked and resolved at once
(``resolve``), so that a bad request fails the D-Bus call rather than the connection later.
Planning then asks the NordVPN API for candidates, ranks them, skips the servers that failed,
fetches the credentials with the token and renders the WireGuard parameters.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TypeVar

from nordwgd import diagnose
from nordwgd.config import Config
from nordwgd.errors import InvalidArgument, NordwgdError, NoServer, NotLoggedIn, UnknownLocation
from nordwgd.model import Credentials, IPAddress, Secret, Server, TunnelParams
from nordwgd.provider.nordvpn.api import NordVpnApi
from nordwgd.provider.nordvpn.catalog import Catalog
from nordwgd.provider.nordvpn.selection import select_servers
from nordwgd.provider.nordvpn.wgconf import tunnel_params
from nordwgd.target import Place, Target, check_options
from nordwgd.token import delete_token, load_token

log = logging.getLogger(__name__)

OPTION_KEYS = ("country", "city", "group", "server")

_A = TypeVar("_A")
_B = TypeVar("_B")


# Servers that failed (no handshake, failed health) are tried last for this long.
FAILURE_MEMORY_SECONDS = 600.0
RECOMMENDATIONS_LIMIT = 20
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def normalize_hostname(text: str) -> str:
    """``de1001`` -> ``de1001.nordvpn.com``; InvalidArgument for something that is no host name."""
    name = text.strip().lower().rstrip(".")
    if not _HOSTNAME.fullmatch(name) or len(name) > 253:
        raise InvalidArgument(f"option 'server': {text!r} is not a server host name")
    return name if "." in name else f"{name}.nordvpn.com"


class Planner:
    """Resolves requests, and plans attempts against the NordVPN API (the NordVPN provider)."""

    name = "nordvpn"
    pinholes: tuple[tuple[IPAddress, int], ...] = ()  # [api] addresses are pinned already

    def __init__(
        self,
        config: Config,
        api: NordVpnApi,
        catalog: Catalog,
        *,
        token: Callable[[], Secret | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self._config = config
        self._api = api
        self._catalog = catalog
        self._token = token or (lambda: load_token(config))
        self._clock = clock
        self._seed = seed
        self._failures: dict[str, float] = {}
        self._candidates: tuple[Target, list[list[Server]]] | None = None
        self._credentials: Credentials | None = None

    # -- requests --------------------------------------------------------------------------

    def resolve(self, options: Mapping[str, object]) -> Target:
        """A Target for Connect options; no option (or only empty ones) = the configured default.

        Raises InvalidArgument (bad key, type or value) or UnknownLocation (with suggestions).
        """
        given = {key: value for key, value in check_options(options, OPTION_KEYS).items() if value}
        random_top = self._config.location.random_top
        if not given:
            return self._resolve_default(random_top)
        group = self._catalog.resolve_group(given["group"]).identifier if "group" in given else None
        servers = (normalize_hostname(given["server"]),) if "server" in given else ()
        places: tuple[Place, ...] = ()
        if "city" in given:
            places = (self._city_place(given["city"], given.get("country")),)
        elif "country" in given:
            country = self._catalog.resolve_country(given["country"])
            places = (Place(country.id, None, country.name),)
        return Target(places, group, servers, random_top, tuple(sorted(given.items())))

    def _resolve_default(self, random_top: int) -> Target:
        location = self._config.location
        countries = [self._catalog.resolve_country(text) for text in location.countries]
        places: list[Place] = []
        if location.cities:
            scope = countries[0].name if len(countries) == 1 else None
            places = [self._city_place(text, scope) for text in location.cities]
        else:
            places = [Place(country.id, None, country.name) for country in countries]
        groups = [self._catalog.resolve_group(text).identifier for text in location.groups]
        if len(groups) > 1:
            log.warning("[location] group: only the first group (%s) is used", groups[0])
        servers = tuple(normalize_hostname(text) for text in location.servers)
        return Target(tuple(places), groups[0] if groups else None, servers, random_top, ())

    def _city_place(self, city_text: str, country_text: str | None) -> Place:
        city = self._catalog.resolve_city(city_text, country_text)
        country = self._catalog.country_by_id(city.country_id)
        label = f"{city.name}, {country.name}" if country is not None else city.name
        return Place(city.country_id, city.id, label)

    # -- attempts --------------------------------------------------------------------------

    def mark_failed(self, hostname: str) -> None:
        """Try ``hostname`` only after every other server for a while."""
        self._failures[hostname.lower()] = self._clock()

    def recently_failed(self) -> frozenset[str]:
        now = self._clock()
        for name, when in list(self._failures.items()):
            if now - when > FAILURE_MEMORY_SECONDS:
                del self._failures[name]
        return frozenset(self._failures)

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams:
        """Parameters for the best server of ``target`` not in ``exclude``.

        Attempt 0 fetches fresh credentials and candidates; later attempts of the same target
        reuse them. Raises NotLoggedIn, AuthFailed, ApiUnavailable, NoServer, UnknownLocation.
        """
        fetch_credentials = attempt == 0 or self._credentials is None
        fetch_candidates = attempt == 0 or self._candidates is None or self._candidates[0] != target
        if fetch_credentials and fetch_candidates:
            # Two independent API calls: overlap them (the token is checked first, so a
            # missing login is still reported at once).
            token = await self._load_token()
            self._credentials, candidates = await _concurrently(
                self._api.credentials(token), self._fetch_candidates(target)
            )
            self._candidates = (target, candidates)
        elif fetch_credentials:
            self._credentials = await self._fetch_credentials()
        elif fetch_candidates:
            self._candidates = (target, await self._fetch_candidates(target))
        credentials = self._credentials
        assert credentials is not None and self._candidates is not None
        hard = {name.lower() for name in exclude}
        ranked = select_servers(
            self._candidates[1],
            pinned_hostnames=target.servers,
            exclude=hard | self.recently_failed(),
            random_top=target.random_top,
            seed=self._seed,
            request=target.describe(),
        )
        problems: list[str] = []
        for server in ranked:
            if server.hostname.lower() in hard:
                continue
            try:
                params = tunnel_params(
                    credentials,
                    server,
                    dns=self._config.dns.servers,
                    ipv6_tunnel=self._config.network.ipv6 == "tunnel",
                )
            except NoServer as error:
                problems.append(error.message)
                continue
            log.info(
                "attempt %d: %s (load %d%%) for %s",
                attempt,
                server.hostname,
                server.load,
                target.describe(),
            )
            return params
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise NoServer(f"no other server left for {target.describe()}{detail}")

    async def forget_credentials(self) -> None:
        """The token changed: fetch credentials again at the next attempt."""
        self._credentials = None

    async def require_login(self) -> None:
        await self._load_token()

    async def logout(self) -> None:
        removed = await asyncio.to_thread(delete_token, self._config.paths.state_dir)
        log.info("logout: %s", "stored token deleted" if removed else "no stored token")
        self._credentials = None

    async def check(self, target: Target) -> None:
        """Host names are looked up now; everything else was checked by ``resolve``."""
        if target.servers:
            await self.check_servers(target)

    async def aclose(self) -> None:
        await self._api.aclose()

    async def countries(self) -> list[tuple[str, str, str]]:
        countries = self._catalog.countries
        return [(c.code, c.name, str(c.id)) for c in sorted(countries, key=lambda c: c.name)]

    async def cities(self, country: str) -> list[tuple[str, str]]:
        found = self._catalog.resolve_country(country)
        return [(city.name, str(city.id)) for city in sorted(found.cities, key=lambda c: c.name)]

    async def groups(self) -> list[tuple[str, str]]:
        groups = self._catalog.groups
        return [(g.identifier, g.title) for g in sorted(groups, key=lambda g: g.title)]

    async def public_address(self, *, through_tunnel: bool) -> dict[str, object]:
        """What the API sees of this host (Diagnose): address, location, protected or not."""
        if not through_tunnel:
            return await diagnose.public_address(self._api.insights)
        # Unmarked, like the user's traffic: the address the world sees through the tunnel.
        # (The daemon's own client is marked and would report the uplink's address.)
        tunnelled = NordVpnApi(self._config.api)
        try:
            return await diagnose.public_address(tunnelled.insights)
        finally:
            await tunnelled.aclose()

    async def refresh(self) -> None:
        """Forget cached server data and failures; fetch fresh credentials when logged in."""
        self._candidates = None
        self._failures.clear()
        self._credentials = None
        self._api.forget_server_lists()
        if await asyncio.to_thread(self._token) is not None:
            self._credentials = await self._fetch_credentials()

    async def _fetch_credentials(self) -> Credentials:
        return await self._api.credentials(await self._load_token())

    async def _load_token(self) -> Secret:
        token = await asyncio.to_thread(self._token)
        if token is None:
            raise NotLoggedIn(
                "no NordVPN access token: log in with 'nordwgctl login' or set token_file"
            )
        return token

    def _country_scope(self, hostname: str, target: Target) -> int:
        """The country whose server list ``hostname`` is looked up in (UnknownLocation if none)."""
        if len(target.places) == 1:
            return target.places[0].country_id
        return self._catalog.country_of_hostname(hostname).id

    async def check_servers(self, target: Target) -> None:
        """Refuse host names the API does not know, with suggestions, while Connect is called.

        Only a definite answer refuses: when the API cannot be asked now, the connection
        attempt itself will report what is wrong.
        """
        for hostname in target.servers:
            try:
                await self._api.server_by_hostname(hostname, self._country_scope(hostname, target))
            except UnknownLocation:
                raise
            except NordwgdError as error:
                log.info("could not check server %s now: %s", hostname, error)

    async def _fetch_candidates(self, target: Target) -> list[list[Server]]:
        lists: list[list[Server]] = []
        pin_error: NordwgdError | None = None
        for hostname in target.servers:
            try:
                scope = self._country_scope(hostname, target)
                lists.append([await self._api.server_by_hostname(hostname, scope)])
            except (UnknownLocation, NoServer) as error:
                # A pinned server that is gone is not fatal while other places remain.
                log.warning("pinned server %s: %s", hostname, error)
                pin_error = error
        if target.servers and not target.places and target.group is None:
            if not lists and pin_error is not None:
                raise pin_error
            return lists
        recommended = await self._recommendations(target.places, target.group)
        if target.group is not None and not any(s.usable for r in recommended for s in r):
            # Some groups (Double VPN, Onion) have no NordLynx server at all: like the official
            # client, take the recommended servers of the same places instead of failing.
            log.warning(
                "no NordLynx server in group %s for %s; using the recommended servers",
                target.group,
                target.describe(),
            )
            recommended = await self._recommendations(target.places, None)
        return lists + recommended

    async def _recommendations(
        self, places: tuple[Place, ...], group: str | None
    ) -> list[list[Server]]:
        lists: list[list[Server]] = []
        for place in places or (None,):
            lists.append(
                await self._api.recommendations(
                    country_id=place.country_id if place else None,
                    city_id=place.city_id if place else None,
                    group=group,
                    limit=RECOMMENDATIONS_LIMIT,
                )
            )
        return lists

    async def servers(self, options: Mapping[str, object], limit: int) -> list[Server]:
        """Recommended servers for a ListServers filter (same keys as Connect)."""
        checked = check_options(options, OPTION_KEYS)
        target = self.resolve(checked) if any(checked.values()) else Target()
        lists: list[list[Server]] = []
        if target.servers:
            hostname = target.servers[0]
            scope = self._country_scope(hostname, target)
            lists.append([await self._api.server_by_hostname(hostname, scope)])
        if target.places or target.group or not target.servers:
            lists.extend(await self._fetch_candidates(replace(target, servers=())))
        merged: list[Server] = []
        seen: set[str] = set()
        for server in (s for servers in lists for s in servers):
            if server.usable and server.hostname not in seen:
                seen.add(server.hostname)
                merged.append(server)
        return merged[:limit] if limit > 0 else merged


async def _concurrently(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    """Both results; the first failure is raised as it is and the other call is cancelled."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # nothing for a finished task
    return tasks[0].result(), tasks[1].result()
