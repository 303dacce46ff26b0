"""The planner against the fake NordVPN API over real HTTPS (in-process, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from ipaddress import ip_address

import pytest

from nordwgd import errors
from nordwgd.config import ApiConfig, Config, LocationConfig
from nordwgd.model import Secret
from nordwgd.provider.nordvpn.api import NordVpnApi
from nordwgd.provider.nordvpn.catalog import Catalog
from nordwgd.provider.nordvpn.planner import Planner, normalize_hostname
from nordwgd.target import Place, Target
from nordwgd.testing.fakeapi import FakeApi, parse_query
from nordwgd.testing.fleet import Fleet, default_fleet, default_token
from nordwgd.testing.pki import Pki, make_pki

GERMANY, NETHERLANDS = 81, 153
BERLIN = 2181458


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return default_fleet()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def fake(fleet: Fleet, pki: Pki) -> Iterator[FakeApi]:
    with FakeApi(fleet, pki) as api:
        yield api


def api_config(fake: FakeApi, pki: Pki) -> ApiConfig:
    host, port = fake.addresses[0]
    return ApiConfig(
        addresses=(ip_address(host),), port=port, ca_file=pki.ca_cert, timeout=2.0, attempts=1
    )


class Token:
    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self) -> Secret | None:
        return None if self.value is None else Secret(self.value)


@pytest.fixture
def token() -> Token:
    return Token(default_token())


@pytest.fixture
async def api(fake: FakeApi, pki: Pki) -> AsyncIterator[NordVpnApi]:
    client = NordVpnApi(api_config(fake, pki), backoff=0.01, max_delay=0.05)
    yield client
    await client.aclose()


def make_planner(
    api: NordVpnApi, catalog: Catalog, token: Token, config: Config | None = None
) -> Planner:
    return Planner(config or Config(), api, catalog, token=token, seed=1)


@pytest.fixture
def planner(api: NordVpnApi, catalog: Catalog, token: Token) -> Planner:
    return make_planner(api, catalog, token)


# -- resolving requests ------------------------------------------------------------------


def test_resolve_country_by_code_and_name(planner: Planner) -> None:
    assert planner.resolve({"country": "de"}).places == (Place(GERMANY, None, "Germany"),)
    assert planner.resolve({"country": "Netherlands"}).places[0].country_id == NETHERLANDS


def test_resolve_city_within_country(planner: Planner) -> None:
    target = planner.resolve({"country": "Germany", "city": "berlin"})
    assert target.places == (Place(GERMANY, BERLIN, "Berlin, Germany"),)
    assert target.options == (("city", "berlin"), ("country", "Germany"))


def test_resolve_group_and_server(planner: Planner) -> None:
    target = planner.resolve({"group": "P2P", "server": "NL801"})
    assert target.group == "legacy_p2p"
    assert target.servers == ("nl801.nordvpn.com",)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"contry": "DE"}, "'contry'"),
        ({"country": 81}, "'country'"),
        ({"server": "de 1001"}, "'server'"),
    ],
)
def test_bad_options_name_the_key(planner: Planner, options: dict[str, object], named: str) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        planner.resolve(options)
    assert named in str(raised.value)
    assert not isinstance(raised.value, errors.UnknownLocation)


def test_unknown_country_suggests(planner: Planner) -> None:
    with pytest.raises(errors.UnknownLocation) as raised:
        planner.resolve({"country": "Germny"})
    assert "Germany" in raised.value.suggestions


def test_empty_options_use_the_configured_location(
    api: NordVpnApi, catalog: Catalog, token: Token
) -> None:
    config = Config(location=LocationConfig(countries=("NL",), groups=("p2p",), random_top=3))
    planner = make_planner(api, catalog, token, config)
    target = planner.resolve({"country": "", "city": " "})
    assert target.places == (Place(NETHERLANDS, None, "Netherlands"),)
    assert target.group == "legacy_p2p"
    assert target.random_top == 3
    assert target.options == ()


def test_hostname_normalisation() -> None:
    assert normalize_hostname("DE1001") == "de1001.nordvpn.com"
    assert normalize_hostname("de1001.nordvpn.com.") == "de1001.nordvpn.com"
    with pytest.raises(errors.InvalidArgument):
        normalize_hostname("../etc")


# -- planning attempts -------------------------------------------------------------------


async def test_plan_takes_the_least_loaded_usable_server(planner: Planner, fleet: Fleet) -> None:
    params = await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())
    assert params.server is not None
    # de1003 (load 4) is offline and de1004 (load 6) has NordLynx offline.
    assert params.server.hostname == "de1001.nordvpn.com"
    assert str(params.endpoint) == "203.0.113.11:51820"
    assert params.peer_public_key == next(
        s.public_key for s in fleet.servers if s.hostname == "de1001.nordvpn.com"
    )
    assert params.private_key.reveal() == fleet.tokens[default_token()]
    assert params.dns == Config().dns.servers
    assert str(params.address) == "10.5.0.2/32"


async def test_later_attempts_skip_excluded_and_reuse_the_fetch(
    planner: Planner, fake: FakeApi
) -> None:
    target = planner.resolve({"country": "DE"})
    await planner.plan(target, 0, frozenset())
    fetched = len(fake.requests)
    second = await planner.plan(target, 1, frozenset({"de1001.nordvpn.com"}))
    third = await planner.plan(target, 2, frozenset({"de1001.nordvpn.com", "de1010.nordvpn.com"}))
    assert second.server is not None and third.server is not None
    assert second.server.hostname == "de1010.nordvpn.com"
    assert third.server.hostname == "de1002.nordvpn.com"
    assert len(fake.requests) == fetched  # no new API calls for the same attempt series


async def test_every_server_excluded_is_no_server(planner: Planner) -> None:
    target = planner.resolve({"country": "DE", "city": "Berlin"})
    with pytest.raises(errors.NoServer):
        await planner.plan(target, 1, frozenset({"de1010.nordvpn.com", "de1011.nordvpn.com"}))


async def test_recently_failed_servers_come_last(planner: Planner) -> None:
    target = planner.resolve({"country": "DE", "city": "Berlin"})
    planner.mark_failed("de1010.nordvpn.com")
    params = await planner.plan(target, 0, frozenset())
    assert params.server is not None and params.server.hostname == "de1011.nordvpn.com"
    planner.mark_failed("de1011.nordvpn.com")
    # When everything failed recently, they are tried again rather than giving up.
    params = await planner.plan(target, 0, frozenset())
    assert params.server is not None and params.server.hostname == "de1010.nordvpn.com"
    await planner.refresh()
    assert planner.recently_failed() == frozenset()


async def test_group_filter(planner: Planner) -> None:
    params = await planner.plan(planner.resolve({"country": "US", "group": "p2p"}), 0, frozenset())
    assert params.server is not None
    assert params.server.hostname == "us5002.nordvpn.com"  # us5011 has NordLynx offline


async def test_pinned_server(planner: Planner) -> None:
    params = await planner.plan(planner.resolve({"server": "jp502"}), 0, frozenset())
    assert params.server is not None and params.server.hostname == "jp502.nordvpn.com"


async def test_a_server_is_looked_up_in_its_own_country(planner: Planner, fake: FakeApi) -> None:
    # The API has no host name filter: the country the name starts with keeps the list small.
    fake.clear_requests()
    params = await planner.plan(planner.resolve({"server": "jp502"}), 0, frozenset())
    assert params.server is not None and params.server.country_code == "JP"
    lookups = [query for _, path, query, _ in fake.requests if path == "/v1/servers"]
    japan = planner.resolve({"country": "JP"}).places[0].country_id
    assert lookups and all(f"={japan}" in query for query in lookups), lookups


async def test_check_servers_refuses_unknown_names_with_suggestions(planner: Planner) -> None:
    await planner.check_servers(planner.resolve({"server": "de1001"}))
    with pytest.raises(errors.UnknownLocation) as refused:
        await planner.check_servers(planner.resolve({"server": "de1099"}))
    assert refused.value.suggestions
    assert all(name.startswith("de10") for name in refused.value.suggestions)


async def test_check_servers_accepts_when_the_api_cannot_answer(
    planner: Planner, fake: FakeApi
) -> None:
    fake.set_fault("500")
    await planner.check_servers(planner.resolve({"server": "de1099"}))  # decided later


async def test_pinned_server_first_then_the_country(
    api: NordVpnApi, catalog: Catalog, token: Token
) -> None:
    config = Config(location=LocationConfig(countries=("DE",), servers=("de1002",)))
    planner = make_planner(api, catalog, token, config)
    target = planner.resolve({})
    first = await planner.plan(target, 0, frozenset())
    assert first.server is not None and first.server.hostname == "de1002.nordvpn.com"
    second = await planner.plan(target, 1, frozenset({"de1002.nordvpn.com"}))
    assert second.server is not None and second.server.hostname == "de1001.nordvpn.com"


async def test_unknown_pinned_server(planner: Planner) -> None:
    with pytest.raises(errors.UnknownLocation):
        await planner.plan(planner.resolve({"server": "de9999"}), 0, frozenset())


async def test_group_without_nordlynx_falls_back_to_the_recommended_servers(
    planner: Planner, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    target = planner.resolve({"group": "Double VPN", "country": "DE"})
    params = await planner.plan(target, 0, frozenset())
    assert params.server is not None
    assert params.server.country_code == "DE"
    assert "legacy_double_vpn" not in params.server.groups
    assert params.server.usable
    assert "no NordLynx server in group legacy_double_vpn" in caplog.text


async def test_group_fallback_with_every_server_excluded_is_no_server(
    planner: Planner, fleet: Fleet
) -> None:
    target = planner.resolve({"group": "Double VPN", "country": "DE"})
    german = frozenset(spec.hostname for spec in fleet.servers if spec.country_code == "DE")
    with pytest.raises(errors.NoServer):
        await planner.plan(target, 0, german)


async def test_no_token_is_not_logged_in(api: NordVpnApi, catalog: Catalog, fake: FakeApi) -> None:
    planner = make_planner(api, catalog, Token(None))
    with pytest.raises(errors.NotLoggedIn):
        await planner.plan(Target(), 0, frozenset())
    assert fake.requests == []


async def test_refused_token_is_auth_failed(api: NordVpnApi, catalog: Catalog) -> None:
    planner = make_planner(api, catalog, Token("0" * 64))
    with pytest.raises(errors.AuthFailed):
        await planner.plan(Target(), 0, frozenset())


def saw_requests(fake: FakeApi, paths: set[str], within: float = 30.0) -> bool:
    """Whether the fake API sees a request for each of ``paths`` within ``within`` s (blocks)."""
    deadline = time.monotonic() + within
    while not paths <= {seen for _, seen, _, _ in fake.requests}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_credentials_and_servers_are_asked_for_together(
    catalog: Catalog, token: Token, fake: FakeApi, pki: Pki
) -> None:
    credentials = "/v1/users/services/credentials"
    fake.set_fault("hang", paths=credentials)
    # The hang must outlast the check: with a short request timeout the credentials call could
    # end (and the attempt with it) before a loaded machine has sent the server request.
    api = NordVpnApi(replace(api_config(fake, pki), timeout=120.0), backoff=0.01, max_delay=0.05)
    planner = make_planner(api, catalog, token)
    attempt = asyncio.create_task(planner.plan(planner.resolve({"country": "DE"}), 0, frozenset()))
    try:
        # While the credentials call hangs, the server list is asked for all the same. The two
        # requests reach the fake in either order.
        wanted = {credentials, "/v1/servers/recommendations"}
        assert await asyncio.to_thread(saw_requests, fake, wanted), fake.requests
        assert not attempt.done()
    finally:
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt
        await api.aclose()


async def test_a_failed_credentials_call_fails_the_plan_while_servers_answer(
    planner: Planner, fake: FakeApi
) -> None:
    fake.set_fault("500", paths="/v1/users/services/credentials")
    with pytest.raises(errors.ApiUnavailable, match="credentials"):
        await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())


async def test_a_failed_server_list_fails_the_plan_while_credentials_answer(
    planner: Planner, fake: FakeApi
) -> None:
    fake.set_fault("garbage", paths="/v1/servers/recommendations")
    with pytest.raises(errors.ApiUnavailable, match="recommendations"):
        await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())
    # The next attempt series asks again and succeeds.
    fake.set_fault(None)
    params = await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())
    assert params.server is not None


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", errors.ApiUnavailable),
        ("garbage", errors.ApiUnavailable),
        ("empty", errors.NoServer),
    ],
)
async def test_api_faults_are_typed(
    planner: Planner, fake: FakeApi, fault: str, error: type[errors.NordwgdError]
) -> None:
    fake.set_fault(fault, paths="/v1/servers")
    with pytest.raises(error):
        await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())


async def test_list_servers_are_usable_and_filtered(planner: Planner) -> None:
    servers = await planner.servers({"country": "DE"}, 20)
    names = [s.hostname for s in servers]
    assert names[0] == "de1001.nordvpn.com"
    assert "de1003.nordvpn.com" not in names  # offline
    assert all(s.country_code == "DE" and s.usable for s in servers)
    one = await planner.servers({"server": "uk2001"}, 20)
    assert [s.hostname for s in one] == ["uk2001.nordvpn.com"]


def _server_list_queries(fake: FakeApi) -> list[dict[str, str]]:
    return [
        dict(parse_query(query)) for _, path, query, _ in fake.requests if path == "/v1/servers"
    ]


async def test_list_servers_by_name_downloads_only_its_country(
    planner: Planner, fake: FakeApi
) -> None:
    fake.clear_requests()
    found = await planner.servers({"server": "nl801"}, 20)
    assert [s.hostname for s in found] == ["nl801.nordvpn.com"]
    # The API has no host name filter; the look-up is scoped to the name's country.
    assert _server_list_queries(fake) == [{"filters[country_id]": str(NETHERLANDS), "limit": "0"}]


async def test_server_name_without_a_country_is_refused_without_a_download(
    planner: Planner, fake: FakeApi
) -> None:
    fake.clear_requests()
    for name in ("server1", "zz1001", "x-1"):
        with pytest.raises(errors.UnknownLocation, match="start with the code of their country"):
            await planner.servers({"server": name}, 20)
        with pytest.raises(errors.UnknownLocation):
            await planner.check_servers(planner.resolve({"server": name}))
    assert _server_list_queries(fake) == []


async def test_concurrent_listings_share_one_download(planner: Planner, fake: FakeApi) -> None:
    fake.clear_requests()
    answers = await asyncio.gather(*(planner.servers({"server": "de1001"}, 20) for _ in range(20)))
    assert all([s.hostname for s in answer] == ["de1001.nordvpn.com"] for answer in answers)
    assert len(_server_list_queries(fake)) == 1
    # Asked again soon after: the list is still the same, and not downloaded again.
    await planner.check_servers(planner.resolve({"server": "de1002"}))
    assert len(_server_list_queries(fake)) == 1


async def test_an_api_of_2020_shape_still_connects(
    fleet: Fleet, pki: Pki, catalog: Catalog, token: Token
) -> None:
    """Server objects as the API sent them in 2020 (no group identifiers, a tab before the key)."""
    with FakeApi(fleet, pki, shape="2020") as fake:
        api = NordVpnApi(api_config(fake, pki), backoff=0.01, max_delay=0.05)
        try:
            planner = make_planner(api, catalog, token)
            params = await planner.plan(planner.resolve({"country": "DE"}), 0, frozenset())
            spec = fleet.by_hostname(params.server.hostname)
            assert params.peer_public_key == spec.public_key
            found = await planner.servers({"server": "de1001", "group": "p2p"}, 20)
            assert found and found[0].hostname == "de1001.nordvpn.com"
            assert all("P2P" in server.group_titles for server in found[1:])
        finally:
            await api.aclose()


async def test_ipv6_tunnel_routes_both_families(
    api: NordVpnApi, catalog: Catalog, token: Token
) -> None:
    config = Config()
    config = replace(config, network=replace(config.network, ipv6="tunnel"))
    planner = make_planner(api, catalog, token, config)
    params = await planner.plan(planner.resolve({"country": "GB"}), 0, frozenset())
    assert {str(n) for n in params.allowed_ips} == {"0.0.0.0/0", "::/0"}
