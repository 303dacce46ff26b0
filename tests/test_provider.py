"""The NordVPN API client against the fake API over real TLS, for every answer and fault."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from nordwgd.config import ApiConfig
from nordwgd.errors import ApiUnavailable, AuthFailed, NoServer, UnknownLocation
from nordwgd.model import Secret, Server
from nordwgd.provider.nordvpn import parse
from nordwgd.provider.nordvpn.api import OFF_LOOP_BYTES, NordVpnApi
from nordwgd.provider.nordvpn.selection import select_servers
from nordwgd.testing.fakeapi import FakeApi
from nordwgd.testing.fleet import Fleet, default_fleet, default_token, fixture_bytes, large_fleet
from nordwgd.testing.pki import Pki, make_pki

GERMANY, NETHERLANDS, UNITED_STATES = 81, 153, 228
BERLIN = 2181458


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return default_fleet()


@pytest.fixture
def fake(fleet: Fleet, pki: Pki) -> Iterator[FakeApi]:
    with FakeApi(fleet, pki, listen=(("127.0.0.1", 0), ("127.0.0.2", 0))) as api:
        yield api


def config_for(fake: FakeApi, pki: Pki, **changes: object) -> ApiConfig:
    ports = {port for _, port in fake.addresses}
    assert len(ports) == 1, "the fake's addresses must share one port"
    config = ApiConfig(
        addresses=tuple(ip_address(host) for host, _ in fake.addresses),
        port=ports.pop(),
        ca_file=pki.ca_cert,
        timeout=2.0,
        attempts=2,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def client(fake: FakeApi, pki: Pki) -> AsyncIterator[NordVpnApi]:
    api = NordVpnApi(config_for(fake, pki), backoff=0.01, max_delay=0.05)
    yield api
    await api.aclose()


async def test_credentials_with_the_fleet_token(client: NordVpnApi, fake: FakeApi) -> None:
    token = default_token()
    credentials = await client.credentials(Secret(token))
    assert credentials.private_key.reveal() == fake.fleet.tokens[token]
    assert fake.requests[-1][1:] == ("/v1/users/services/credentials", "", True)


async def test_unknown_token_is_auth_failed(client: NordVpnApi, fake: FakeApi) -> None:
    with pytest.raises(AuthFailed) as caught:
        await client.credentials(Secret("0" * 64))
    assert "101301" in str(caught.value)
    # 401 is final: no retry on the other address.
    assert [r for r in fake.requests if r[1].endswith("credentials")] == [
        ("GET", "/v1/users/services/credentials", "", False)
    ]


async def test_recommendations_are_nordlynx_by_load(client: NordVpnApi, fake: FakeApi) -> None:
    servers = await client.recommendations(country_id=GERMANY)
    assert servers, "Germany has online NordLynx servers"
    assert {s.country_code for s in servers} == {"DE"}
    assert all(s.status == "online" for s in servers)
    assert [s.load for s in servers] == sorted(s.load for s in servers)
    expected = sorted(
        (spec.load, spec.hostname)
        for spec in fake.fleet.servers
        if spec.country_code == "DE"
        and spec.status == "online"
        and spec.wireguard_status == "online"
    )
    assert [s.hostname for s in servers] == [hostname for _, hostname in expected]
    query = fake.requests[-1][2]
    assert "wireguard_udp" in query


async def test_recommendations_filter_city_group_and_limit(client: NordVpnApi) -> None:
    berlin = await client.recommendations(country_id=GERMANY, city_id=BERLIN)
    assert {s.city for s in berlin} == {"Berlin"}
    p2p = await client.recommendations(group="legacy_p2p")
    assert p2p and all("legacy_p2p" in s.groups for s in p2p)
    assert len(await client.recommendations(limit=2)) == 2


async def test_group_without_nordlynx_server_gives_no_server(client: NordVpnApi) -> None:
    candidates = await client.recommendations(group="legacy_double_vpn")
    assert candidates, "the API lists Double VPN servers"
    assert not any(s.usable for s in candidates)
    with pytest.raises(NoServer, match="legacy_double_vpn"):
        select_servers([candidates], request="group legacy_double_vpn")


async def test_servers_and_lookup_by_hostname(client: NordVpnApi) -> None:
    dutch = await client.servers(country_id=NETHERLANDS)
    assert {s.hostname for s in dutch} >= {"nl801.nordvpn.com", "nl803.nordvpn.com"}
    found = await client.server_by_hostname("NL801", country_id=NETHERLANDS)
    assert found.hostname == "nl801.nordvpn.com" and found.usable
    with pytest.raises(NoServer, match="maintenance"):
        await client.server_by_hostname("nl803.nordvpn.com", country_id=NETHERLANDS)
    with pytest.raises(UnknownLocation) as caught:
        await client.server_by_hostname("nl8011.nordvpn.com", country_id=NETHERLANDS)
    assert "nl801.nordvpn.com" in caught.value.suggestions


async def test_catalog_endpoints(client: NordVpnApi) -> None:
    countries = await client.countries()
    assert {"DE", "NL", "GB", "US", "JP"} <= {c["code"] for c in countries}
    groups = await client.groups()
    assert "legacy_p2p" in {g["identifier"] for g in groups}
    technologies = await client.technologies()
    assert {"id": 35, "identifier": "wireguard_udp"}.items() <= next(
        t for t in technologies if t["id"] == 35
    ).items()
    assert await client.get_raw("/v1/technologies") == fixture_bytes("technologies.json")


async def test_insights_of_a_caller_outside_the_fleet(client: NordVpnApi) -> None:
    insights = await client.insights()
    assert insights.ip in (IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2"))
    assert insights.protected is False


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("429", "rate limited"),
        ("500", "server error"),
        ("garbage", "not JSON"),
        ("truncated", "before a complete answer"),
        ("wrong-cert", "certificate"),
        ("refuse", "connection"),
    ],
)
async def test_lasting_fault_is_api_unavailable(
    client: NordVpnApi, fake: FakeApi, fault: str, reason: str
) -> None:
    fake.set_fault(fault)
    with pytest.raises(ApiUnavailable, match=reason) as caught:
        await client.recommendations(country_id=GERMANY)
    assert "2 rounds over 2 addresses" in str(caught.value)


@pytest.mark.parametrize("fault", ["429", "500", "garbage", "truncated", "wrong-cert", "refuse"])
async def test_passing_fault_is_retried(client: NordVpnApi, fake: FakeApi, fault: str) -> None:
    fake.set_fault(fault, count=1)
    servers = await client.recommendations(country_id=GERMANY)
    assert servers and {s.country_code for s in servers} == {"DE"}


async def test_hanging_api_times_out(fake: FakeApi, pki: Pki) -> None:
    api = NordVpnApi(config_for(fake, pki, timeout=0.3, attempts=1), backoff=0.01)
    fake.set_fault("hang")
    try:
        with pytest.raises(ApiUnavailable, match=r"no answer within 0\.3 s|timed out"):
            await api.countries()
    finally:
        await api.aclose()


async def test_dead_first_address_falls_over_to_the_next(fake: FakeApi, pki: Pki) -> None:
    port = fake.addresses[0][1]
    dead = IPv4Address("127.0.0.3")  # nothing listens there
    config = ApiConfig(
        addresses=(dead, IPv4Address("127.0.0.1")),
        port=port,
        ca_file=pki.ca_cert,
        timeout=2.0,
        attempts=1,
    )
    api = NordVpnApi(config)
    try:
        assert await api.groups()
    finally:
        await api.aclose()


async def test_large_server_lists_are_parsed_off_the_event_loop(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    parsed: list[tuple[int, int]] = []  # (thread, body size) of each server list parsed
    real = parse.parse_servers

    def spy(data: bytes, source: str = "servers") -> list[Server]:
        parsed.append((threading.get_ident(), len(data)))
        return real(data, source)

    monkeypatch.setattr(parse, "parse_servers", spy)
    with FakeApi(large_fleet(3000), pki, listen=(("127.0.0.1", 0),)) as fake:
        api = NordVpnApi(config_for(fake, pki))
        try:
            servers = await api.servers(country_id=UNITED_STATES)
        finally:
            await api.aclose()
    assert len(servers) > 100
    [(thread, size)] = parsed
    assert size > OFF_LOOP_BYTES
    assert thread != loop_thread  # the loop went on serving while the list was parsed


async def test_empty_server_lists(client: NordVpnApi, fake: FakeApi) -> None:
    fake.set_fault("empty")
    assert await client.recommendations(country_id=GERMANY) == []
    with pytest.raises(NoServer):
        select_servers([await client.recommendations()], request="any server")
    with pytest.raises(NoServer, match="listed no servers"):
        await client.server_by_hostname("de1001.nordvpn.com", GERMANY)
    # Not a server list: unaffected.
    assert await client.groups()


async def test_fault_limited_to_paths(client: NordVpnApi, fake: FakeApi) -> None:
    fake.set_fault("500", paths="/v1/servers")
    assert await client.credentials(Secret(default_token()))
    with pytest.raises(ApiUnavailable, match="HTTP 500"):
        await client.servers(country_id=GERMANY)


async def test_untrusted_ca_is_refused(fake: FakeApi, pki: Pki) -> None:
    # Without the test CA, the system CAs do not trust the fake: never fall back to no checks.
    api = NordVpnApi(config_for(fake, pki, ca_file=None, attempts=1))
    try:
        with pytest.raises(ApiUnavailable, match="certificate"):
            await api.groups()
    finally:
        await api.aclose()


async def test_missing_ca_file_is_api_unavailable(fake: FakeApi, pki: Pki, tmp_path: Path) -> None:
    api = NordVpnApi(config_for(fake, pki, ca_file=tmp_path / "missing.pem"))
    with pytest.raises(ApiUnavailable, match="CA file"):
        await api.groups()
    await api.aclose()


@pytest.mark.root
async def test_marked_sockets_still_reach_the_api(fake: FakeApi, pki: Pki) -> None:
    assert os.geteuid() == 0
    api = NordVpnApi(config_for(fake, pki), fwmark=0xCA6C)
    try:
        assert await api.credentials(Secret(default_token()))
    finally:
        await api.aclose()


async def test_secrets_never_logged_nor_shown(
    client: NordVpnApi, fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    token = default_token()
    private_key = fake.fleet.tokens[token]
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "nordwgd"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    credentials = await client.credentials(Secret(token))
    fake.set_fault("500", count=1)
    await client.credentials(Secret(token))
    fake.set_fault("401", count=1)
    with pytest.raises(AuthFailed) as caught:
        await client.credentials(Secret(token))
    assert caplog.records, "the client logs at debug level"
    assert any(r.name.startswith("httpx") or r.name.startswith("httpcore") for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert token not in text and private_key not in text, record.name
    error = caught.value
    assert error.__traceback__ is not None
    # The client's frames only: this test function itself holds the token in a local.
    inner = error.__traceback__.tb_next
    with_locals = "".join(
        traceback.TracebackException(type(error), error, inner, capture_locals=True).format()
    )
    assert "Authorization" in with_locals or "authorization" in with_locals
    for shown in (repr(credentials), str(credentials), repr(client), with_locals):
        assert token not in shown and private_key not in shown
        assert base64.b64encode(f"token:{token}".encode()).decode() not in shown


class SleepRecorder:
    """Stands in for asyncio.sleep: records the delays the client asks for, waits none."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._sleep = asyncio.sleep

    async def __call__(self, delay: float, result: object = None) -> object:
        self.delays.append(delay)
        return await self._sleep(0, result)


@pytest.mark.parametrize(("max_delay", "expected"), [(5.0, [1.0, 1.0]), (0.25, [0.25, 0.25])])
async def test_retry_after_is_honoured_and_capped(
    fake: FakeApi,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    max_delay: float,
    expected: list[float],
) -> None:
    recorder = SleepRecorder()
    monkeypatch.setattr(asyncio, "sleep", recorder)
    api = NordVpnApi(config_for(fake, pki, attempts=3), backoff=0.01, max_delay=max_delay)
    fake.set_fault("429")
    try:
        with pytest.raises(ApiUnavailable, match="rate limited"):
            await api.groups()
    finally:
        await api.aclose()
    assert recorder.delays == expected
    # A rate limit is not worked around by asking the other address: one request per round.
    assert len([r for r in fake.requests if r[1] == "/v1/servers/groups"]) == 3


async def test_server_errors_try_every_address_then_back_off(
    fake: FakeApi, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = SleepRecorder()
    monkeypatch.setattr(asyncio, "sleep", recorder)
    api = NordVpnApi(config_for(fake, pki, attempts=3), backoff=0.5, max_delay=10.0)
    fake.set_fault("500")
    try:
        with pytest.raises(ApiUnavailable, match=r"3 rounds over 2 addresses\): .*HTTP 500"):
            await api.groups()
    finally:
        await api.aclose()
    assert recorder.delays == [0.5, 1.0]
    assert len([r for r in fake.requests if r[1] == "/v1/servers/groups"]) == 6
