"""PIA behind the planner interface: regions instead of countries, a new key per connect.

``resolve`` checks Connect options at once (``region``, ``country``, ``server``); ``check``
matches them against the verified region list (unknown names with suggestions, offline
regions, regions without port forwarding while it is wanted); ``plan`` picks a random
WireGuard server of the region, makes a key pair and registers it with addKey.

The region list is kept in ``<state_dir>/pia-regions`` as it came (signature included) and is
verified again each time it is read; a list that does not verify is never used.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from nordwgd.config import Config, MetaServer
from nordwgd.errors import ApiUnavailable, AuthFailed, ConfigError, InvalidArgument, NoServer
from nordwgd.files import write_atomic
from nordwgd.model import Endpoint, Pinholes, Secret, Server, TunnelParams
from nordwgd.provider.pia import login, regions
from nordwgd.provider.pia.api import AddKeyAnswer, PiaApi, shipped
from nordwgd.provider.pia.regions import PiaServer, Region, RegionList
from nordwgd.redact import register_secret
from nordwgd.target import Target, check_options

log = logging.getLogger(__name__)

# "country" and "city" name regions too: clients written for NordVPN send them
OPTION_KEYS = ("region", "country", "city", "server")
REGIONS_FILE = "pia-regions"
FAILURE_MEMORY_SECONDS = 600.0
SERVERS_PER_PLAN = 3  # addKey is tried on this many servers before the attempt fails
PIA_KEEPALIVE = 25
ALL_IPV4 = IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class ForwardingHost:
    """Where port forwarding is asked for: the tunnel's gateway, by the server's name."""

    gateway: IPv4Address
    cn: str


def generate_keypair() -> tuple[Secret, str]:
    """A fresh WireGuard key pair: (private key, base64 public key)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    value = base64.b64encode(raw).decode()
    register_secret(value)
    return Secret(value), base64.b64encode(public).decode()


class PiaPlanner:
    """Resolves requests and plans attempts against PIA."""

    name = "pia"

    def __init__(
        self,
        config: Config,
        api: PiaApi | None = None,
        *,
        allow: Callable[[Pinholes], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        credentials_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._api = api or PiaApi(config.pia, fwmark=config.network.fwmark)
        self._allow = allow
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - spreading load, not secrecy
        self._credentials_dir = credentials_dir
        self._state_dir = config.paths.state_dir
        self._key: RSAPublicKey | None = None
        self._regions: RegionList | None = None
        self._token: login.KeptToken | None = None
        self._token_lock = asyncio.Lock()
        self._failures: dict[str, float] = {}
        self._list_meta: tuple[MetaServer, ...] = ()
        self._server_pinhole: Pinholes = ()
        self.pinholes: Pinholes = tuple(
            dict.fromkeys(
                (
                    *((m.address, 443) for m in config.pia.meta),
                    *((address, 443) for address in config.pia.api_addresses),
                )
            )
        )
        self.forwarding: ForwardingHost | None = None
        self._serving: tuple[str, IPv4Address] | None = None  # the last server addKey took

    @property
    def api(self) -> PiaApi:
        return self._api

    def set_allow(self, allow: Callable[[Pinholes], Awaitable[None]]) -> None:
        self._allow = allow

    async def aclose(self) -> None:
        """Nothing stays open between requests."""

    # --- the region list -------------------------------------------------------------

    def _public_key(self) -> RSAPublicKey:
        if self._key is None:
            path = self._config.pia.regions_key_file
            try:
                pem = path.read_bytes() if path else shipped("pia-regions-list-pubkey.pem")
                self._key = regions.load_public_key(pem)
            except (OSError, ValueError) as error:
                raise ConfigError(f"pia.regions_key_file {path}: {error}") from None
        return self._key

    def _use(self, listing: RegionList) -> RegionList:
        """Take ``listing`` (verified); a few of its meta servers are asked first from now on."""
        found = [
            MetaServer(region.meta[0].cn, region.meta[0].ip)
            for region in listing.regions
            if region.meta and not region.offline
        ]
        self._rng.shuffle(found)
        self._list_meta = tuple(found[:4])
        self._regions = listing
        return listing

    def _meta_servers(self) -> list[MetaServer]:
        """Meta servers to ask: those of the last verified list first, then the configured."""
        return list(dict.fromkeys((*self._list_meta, *self._config.pia.meta)))

    async def _open(self) -> None:
        """Make sure the firewall lets the daemon reach every PIA server it may ask now."""
        wanted = tuple(
            dict.fromkeys(
                (
                    *((m.address, 443) for m in self._meta_servers()),
                    *((address, 443) for address in self._config.pia.api_addresses),
                    *self._server_pinhole,
                )
            )
        )
        if wanted != self.pinholes:
            self.pinholes = wanted
            if self._allow is not None:
                await self._allow(wanted)

    def _read_kept(self) -> RegionList | None:
        path = self._state_dir / REGIONS_FILE
        try:
            wire = path.read_bytes()
        except OSError:
            return None
        try:
            return regions.parse(regions.verify(wire, self._public_key()))
        except ApiUnavailable as error:
            log.warning("the kept PIA region list is not used: %s", error)
            return None

    async def region_list(self, *, refresh: bool = False) -> RegionList:
        """The verified region list: kept in memory or on disk, else fetched."""
        if not refresh:
            if self._regions is not None:
                return self._regions
            kept = await asyncio.to_thread(self._read_kept)
            if kept is not None:
                return self._use(kept)
        key = await asyncio.to_thread(self._public_key)
        await self._open()
        wire = await self._api.region_list_wire(self._meta_servers())
        # ~20 ms for PIA's whole list: off the event loop
        parsed = self._use(
            await asyncio.to_thread(lambda: regions.parse(regions.verify(wire, key)))
        )
        try:
            self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, self._state_dir / REGIONS_FILE, wire, mode=0o644)
        except OSError as error:
            log.warning("cannot keep the PIA region list: %s", error)
        log.info("PIA region list: %d regions, signature verified", len(parsed.regions))
        return parsed

    # --- the token -------------------------------------------------------------------

    async def token(self, *, renew: bool = False) -> Secret:
        """A token with hours left: the kept one, else a new one from the login."""
        async with self._token_lock:
            lifetime = self._config.pia.token_lifetime
            now = self._clock()
            if self._token is None and not renew:
                self._token = await asyncio.to_thread(login.load_token, self._state_dir)
            if not renew and self._token is not None and self._token.fresh(lifetime, now):
                return self._token.token
            account = login.require_login(
                await asyncio.to_thread(login.load_login, self._state_dir, self._credentials_dir)
            )
            await self._open()
            token = await self._api.token(account.username, account.password, self._meta_servers())
            self._token = await asyncio.to_thread(login.keep_token, self._state_dir, token, now)
            log.info("PIA: new token for %s", account.username)
            return token

    async def logout(self) -> None:
        """Expire the token at PIA (when the token service is pinned) and forget the login."""
        async with self._token_lock:
            kept = self._token or await asyncio.to_thread(login.load_token, self._state_dir)
            self._token = None
            if kept is not None:
                await self._open()
                try:
                    if not await self._api.expire_token(kept.token):
                        log.info("PIA token forgotten here; it lapses within 24 hours")
                except ApiUnavailable as error:
                    log.warning("PIA did not expire the token: %s", error)
            await asyncio.to_thread(login.forget_token, self._state_dir)
            await asyncio.to_thread(login.delete_login, self._state_dir)

    # --- requests --------------------------------------------------------------------

    def resolve(self, options: Mapping[str, object]) -> Target:
        given = {k: v for k, v in check_options(options, OPTION_KEYS).items() if v}
        texts = tuple(v for k, v in given.items() if k in ("region", "country", "city"))
        if not given:
            texts = self._config.location.countries
            servers = self._config.location.servers
            return Target(regions=texts, servers=tuple(s.lower() for s in servers))
        servers = (given["server"].lower(),) if "server" in given else ()
        return Target(regions=texts, servers=servers, options=tuple(sorted(given.items())))

    def _candidates(self, listing: RegionList, target: Target) -> tuple[Region, ...]:
        want_pf = self._config.port_forward.enabled
        if not target.regions:
            online = tuple(r for r in listing.regions if not r.offline and r.wireguard)
            return regions.usable(
                online, port_forward=want_pf, all_regions=listing, asked="anywhere"
            )
        chosen: list[Region] = []
        for text in target.regions:
            matched = regions.match_regions(listing, text)
            chosen.extend(
                regions.usable(matched, port_forward=want_pf, all_regions=listing, asked=text)
            )
        return tuple(dict.fromkeys(chosen))

    async def check_servers(self, target: Target) -> None:
        """Refuse unknown regions, offline ones, and those without port forwarding if wanted."""
        listing = await self.region_list()
        candidates = self._candidates(listing, target)
        for name in target.servers:
            if not any(s.cn.casefold() == name for r in candidates for s in r.wireguard):
                raise InvalidArgument(f"no WireGuard server {name!r} in {target.describe()}")

    async def check(self, target: Target) -> None:
        await self.check_servers(target)

    async def require_login(self) -> None:
        if self._token is None or not self._token.fresh(
            self._config.pia.token_lifetime, self._clock()
        ):
            found = await asyncio.to_thread(
                login.load_login, self._state_dir, self._credentials_dir
            )
            login.require_login(found)

    def mark_failed(self, hostname: str) -> None:
        self._failures[hostname.casefold()] = self._clock()

    def _recently_failed(self) -> frozenset[str]:
        now = self._clock()
        for name, when in list(self._failures.items()):
            if now - when > FAILURE_MEMORY_SECONDS:
                del self._failures[name]
        return frozenset(self._failures)

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams:
        """Register a new key with a random WireGuard server of the target's regions."""
        listing = await self.region_list()
        candidates = self._candidates(listing, target)
        if target.servers:
            pinned = tuple(
                Region(
                    **{
                        **r.__dict__,
                        "wireguard": tuple(
                            s for s in r.wireguard if s.cn.casefold() in target.servers
                        ),
                    }
                )
                for r in candidates
            )
            candidates = tuple(r for r in pinned if r.wireguard) or candidates
        hard = {name.casefold() for name in exclude}
        skip = hard | self._recently_failed()
        if not any(s.cn.casefold() not in skip for r in candidates for s in r.wireguard):
            skip = set(hard)  # every server failed recently: try them again
        problem: ApiUnavailable | None = None
        for _ in range(SERVERS_PER_PLAN):
            try:
                region, server = regions.pick_server(candidates, frozenset(skip), self._rng)
            except NoServer:
                if problem is not None:
                    raise problem from None
                raise
            try:
                return await self._register(listing, region, server, attempt, target)
            except ApiUnavailable as error:
                log.warning("PIA server %s: %s", server.cn, error)
                self.mark_failed(server.cn)
                skip.add(server.cn.casefold())
                problem = error
        assert problem is not None
        raise problem

    async def _register(
        self, listing: RegionList, region: Region, server: PiaServer, attempt: int, target: Target
    ) -> TunnelParams:
        port = listing.wireguard_port
        # addKey goes to this one server: the firewall must let it through first.
        self._server_pinhole = ((server.ip, port),)
        await self._open()
        private, public = generate_keypair()
        token = await self.token()
        try:
            answer = await self._api.add_key(server, port, token, public)
        except AuthFailed:
            # The kept token may have been expired by PIA early: one new token, one more try.
            log.info("PIA server %s refused the token; fetching a new one", server.cn)
            token = await self.token(renew=True)
            answer = await self._api.add_key(server, port, token, public)
        log.info(
            "attempt %d: PIA %s (%s) for %s", attempt, server.cn, region.name, target.describe()
        )
        self.forwarding = ForwardingHost(answer.server_vip, server.cn)
        self._serving = (server.cn, answer.server_ip)
        return self._params(region, server, private, answer)

    def _params(
        self, region: Region, server: PiaServer, private: Secret, answer: AddKeyAnswer
    ) -> TunnelParams:
        described = Server(
            id=0,
            name=region.name,
            hostname=server.cn,
            station=answer.server_ip,
            ipv6_station=None,
            load=0,
            status="online",
            country=region.name,
            country_code=region.country,
            country_id=0,
            city="",  # a PIA region is one place: its name is in country
            city_id=0,
            groups=(region.id, "port_forward") if region.port_forward else (region.id,),
            group_titles=(),
            public_key=answer.server_key,
        )
        return TunnelParams(
            private_key=private,
            address=answer.peer_ip,
            peer_public_key=answer.server_key,
            endpoint=Endpoint(answer.server_ip, answer.server_port),
            allowed_ips=(ALL_IPV4,),  # PIA carries no IPv6
            dns=answer.dns_servers or self._config.dns.servers,
            keepalive=PIA_KEEPALIVE,
            server=described,
        )

    async def forget_credentials(self) -> None:
        self._token = None

    async def refresh(self) -> None:
        """Renew: a new token and a freshly verified region list."""
        self._failures.clear()
        await self.region_list(refresh=True)
        if await asyncio.to_thread(login.load_login, self._state_dir, self._credentials_dir):
            await self.token(renew=True)

    async def countries(self) -> list[tuple[str, str, str]]:
        listing = await self.region_list()
        ordered = sorted(listing.regions, key=lambda region: region.name)
        return [(r.country, r.name, r.id) for r in ordered if not r.offline]

    async def cities(self, country: str) -> list[tuple[str, str]]:
        return []  # a PIA region is one place; the regions are the countries

    async def groups(self) -> list[tuple[str, str]]:
        return []  # PIA has no server groups

    async def public_address(self, *, through_tunnel: bool) -> dict[str, object]:
        """PIA has no "what is my address" service: through the tunnel it is the server's."""
        if not through_tunnel or self._serving is None:
            return {"public_ip": ""}
        cn, address = self._serving
        return {"public_ip": str(address), "server": cn}

    async def servers(self, options: Mapping[str, object], limit: int) -> list[Server]:
        """The WireGuard servers of the regions a filter names (all regions without one)."""
        listing = await self.region_list()
        target = self.resolve(options) if any(options.values()) else Target()
        found = []
        for region in self._candidates(listing, target):
            for server in region.wireguard:
                found.append(
                    Server(
                        0,
                        region.name,
                        server.cn,
                        server.ip,
                        None,
                        0,
                        "online",
                        region.name,
                        region.country,
                        0,
                        region.name,
                        0,
                        (region.id,),
                        (),
                        None,
                    )
                )
        return found[:limit] if limit > 0 else found
