"""The API parsers: precise errors for malformed answers; fuzzing lets only typed errors out."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nordwgd.errors import ApiUnavailable, NordwgdError
from nordwgd.provider.nordvpn import parse
from nordwgd.testing.fleet import fixture_bytes

RECOMMENDATIONS = json.loads(fixture_bytes("recommendations.json"))
ONE_SERVER = RECOMMENDATIONS[0]
IDENTIFIERS = tuple(group["identifier"] for group in ONE_SERVER["groups"])
TITLES = tuple(group["title"] for group in ONE_SERVER["groups"])
KEY = next(t for t in ONE_SERVER["technologies"] if t["identifier"] == "wireguard_udp")["metadata"][
    0
]["value"]

PARSERS: dict[str, Callable[[bytes], object]] = {
    "servers": parse.parse_servers,
    "credentials": parse.parse_credentials,
    "insights": parse.parse_insights,
    "countries": parse.parse_countries,
    "groups": parse.parse_groups,
    "technologies": parse.parse_technologies,
    "error": parse.parse_error,
}
FIXTURES = {
    "servers": "recommendations.json",
    "credentials": "credentials-200.json",
    "insights": "ips-insights.json",
    "countries": "countries.json",
    "groups": "groups.json",
    "technologies": "technologies.json",
    "error": "error-401-unauthorized.json",
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6)
    ),
    max_leaves=30,
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def server_with(change: Callable[[dict[str, Any]], None]) -> bytes:
    obj = copy.deepcopy(ONE_SERVER)
    change(obj)
    return encode([obj])


@pytest.mark.parametrize(("name", "fixture"), sorted(FIXTURES.items()))
def test_fixtures_parse(name: str, fixture: str) -> None:
    assert PARSERS[name](fixture_bytes(fixture)) is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Too Many Attempts.</html>", "not JSON (starts with '<html>Too Many"),
        (b"", "not JSON (empty body)"),
        (b'{"servers": []}', "expected an array, got an object"),
        (server_with(lambda s: s.pop("station")), "[0].station: missing"),
        (
            server_with(lambda s: s.update(station="999.1.1.1")),
            "[0].station: '999.1.1.1' is not an IP",
        ),
        (server_with(lambda s: s.update(station="2001:db8::1")), "is not an IPv4 address"),
        (server_with(lambda s: s.update(load="11")), "[0].load: expected an integer, got a string"),
        (
            server_with(lambda s: s.update(load=True)),
            "[0].load: expected an integer, got a boolean",
        ),
        (server_with(lambda s: s.update(load=170)), "[0].load: 170 is not a load"),
        (server_with(lambda s: s.update(hostname="de1 .nordvpn.com")), "is not a host name"),
        (server_with(lambda s: s.update(locations=[])), "[0].locations: empty"),
        (
            server_with(lambda s: s["locations"][0].pop("country")),
            "[0].locations[0].country: missing",
        ),
        (
            server_with(lambda s: s["locations"][0]["country"]["city"].update(id="x")),
            "[0].locations[0].country.city.id: expected an integer",
        ),
        (server_with(lambda s: s.update(ipv6_station="10.0.0.1")), "is not an IPv6 address"),
        (server_with(lambda s: s.pop("status")), "[0].status: missing"),
    ],
)
def test_malformed_servers_are_named(body: bytes, message: str) -> None:
    with pytest.raises(ApiUnavailable) as caught:
        parse.parse_servers(body, "/v1/servers/recommendations")
    assert message in str(caught.value)
    assert "/v1/servers/recommendations" in str(caught.value)


def drop_group_identifiers(server: dict[str, Any]) -> None:
    for group in server["groups"]:
        del group["identifier"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # What the daemon does not need may be missing or of another shape: the server is kept.
        (drop_group_identifiers, {"groups": (), "group_titles": TITLES}),
        (lambda s: s.pop("groups"), {"groups": (), "group_titles": ()}),
        (lambda s: s["groups"].append(3), {"groups": IDENTIFIERS, "group_titles": TITLES}),
        (lambda s: s["locations"][0]["country"].pop("city"), {"city": "", "city_id": 0}),
        (lambda s: s["locations"][0]["country"].pop("id"), {"country_id": 0}),
        (lambda s: s.pop("ipv6_station"), {"ipv6_station": None}),
        (lambda s: s.pop("id"), {"id": 0}),
        (lambda s: s.pop("name"), {"name": ""}),
        (lambda s: s["technologies"].insert(0, "ikev2"), {"public_key": KEY}),
        (lambda s: s["technologies"].insert(0, {"id": 1}), {"public_key": KEY}),
        (lambda s: wireguard_of(s).pop("pivot"), {"public_key": KEY, "wireguard_online": False}),
        (lambda s: s.pop("technologies"), {"public_key": None}),
        (lambda s: s.pop("services"), {"public_key": KEY}),
        (
            lambda s: wireguard_of(s)["metadata"][0].update(value="\t" + KEY + "\n"),
            {"public_key": KEY, "wireguard_online": True},
        ),
    ],
)
def test_fields_the_daemon_does_not_need_may_be_missing(
    change: Callable[[dict[str, Any]], None], expected: dict[str, object]
) -> None:
    (server,) = parse.parse_servers(server_with(change))
    for field, value in expected.items():
        assert getattr(server, field) == value, field
    assert server.hostname == ONE_SERVER["hostname"]


def test_servers_of_2017_parse() -> None:
    """The API's shape of 2017: no group identifiers, a location without a city, no NordLynx."""
    servers = parse.parse_servers(fixture_bytes("servers-2017.json"), "/v1/servers")
    assert [(s.hostname, s.country_code, s.city) for s in servers] == [
        ("cl1.nordvpn.com", "CL", "Ciudad Santiago"),
        ("fr3.nordvpn.com", "FR", ""),
    ]
    assert servers[1].group_titles == ("Standard VPN servers", "P2P", "Europe")
    assert servers[1].groups == ()
    assert all(s.status == "online" and not s.usable for s in servers)  # no wireguard_udp then


def test_server_of_2020_is_usable() -> None:
    """The shape of 2020: no group identifiers, no ipv6_station, a key with a leading tab."""
    obj = json.loads(fixture_bytes("server-2020.json"))
    (server,) = parse.parse_servers(encode([obj]), "/v1/servers")
    assert server.hostname == "lv40.nordvpn.com" and server.city == "Riga"
    assert server.public_key == "Zid1YfpCDPeeyWzEEmiZLPcmwNopke/B/Pa/DtiViiw="
    assert server.usable and server.ipv6_station is None
    assert server.group_titles == ("Standard VPN servers", "P2P", "Europe")


def wireguard_of(server: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(
        t for t in server["technologies"] if t["identifier"] == "wireguard_udp"
    )
    return entry


@pytest.mark.parametrize(
    "change",
    [
        lambda s: wireguard_of(s).update(metadata=[]),
        lambda s: wireguard_of(s).update(metadata=[{"name": "public_key", "value": 42}]),
        lambda s: wireguard_of(s).update(metadata=[{"name": "public_key", "value": "c2hvcnQ="}]),
        lambda s: wireguard_of(s).update(
            metadata=[{"name": "public_key", "value": "!!not base64"}]
        ),
        lambda s: s.update(technologies=[t for t in s["technologies"] if t["id"] != 35]),
    ],
)
def test_server_without_a_usable_key_parses_unusable(
    change: Callable[[dict[str, Any]], None],
) -> None:
    (server,) = parse.parse_servers(server_with(change))
    assert server.public_key is None and not server.usable


def test_wireguard_pivot_offline_is_unusable() -> None:
    (server,) = parse.parse_servers(
        server_with(lambda s: wireguard_of(s)["pivot"].update(status="offline"))
    )
    assert server.public_key and not server.wireguard_online and not server.usable


def test_one_malformed_server_does_not_hide_the_others() -> None:
    good = copy.deepcopy(ONE_SERVER)
    servers = parse.parse_servers(encode([{"id": "broken"}, good]))
    assert [s.hostname for s in servers] == [good["hostname"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"nordlynx_private_key": 5}', "nordlynx_private_key: expected a string"),
        (b'{"username": "x"}', "nordlynx_private_key: missing"),
        (b'{"nordlynx_private_key": "c2VjcmV0LWJ1dC1zaG9ydA=="}', "not a base64 WireGuard key"),
        (b"[]", "expected an object, got an array"),
        # Cut short: the part that arrived is not quoted, it may hold the key.
        (b'{"nordlynx_private_key": "c2VjcmV0LWJ1dC1zaG9ydA', "not JSON"),
    ],
)
def test_malformed_credentials_are_named_without_the_key(body: bytes, message: str) -> None:
    with pytest.raises(ApiUnavailable) as caught:
        parse.parse_credentials(body)
    assert message in str(caught.value)
    assert "c2VjcmV0LWJ1dC1zaG9ydA" not in str(caught.value)


def test_insights_need_ip_and_protected() -> None:
    with pytest.raises(ApiUnavailable, match="protected: missing"):
        parse.parse_insights(b'{"ip": "192.0.2.1"}')
    with pytest.raises(ApiUnavailable, match="ip: 'nowhere' is not an IP"):
        parse.parse_insights(b'{"ip": "nowhere", "protected": false}')


def test_error_bodies() -> None:
    assert parse.parse_error(fixture_bytes("error-401-unauthorized.json")) == parse.ApiError(
        101301, "Unauthorized"
    )
    assert parse.parse_error(b"<html>") is None
    assert parse.parse_error(b'{"errors": {"code": "1"}}') is None


def test_deeply_nested_json_is_api_unavailable() -> None:
    with pytest.raises(ApiUnavailable):
        parse.parse_servers(b"[" * 100_000 + b"]" * 100_000)


def check_only_typed_errors(name: str, body: bytes) -> None:
    """Any exception other than a NordwgdError escapes and fails the test."""
    with contextlib.suppress(NordwgdError):
        PARSERS[name](body)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(name=st.sampled_from(sorted(PARSERS)), value=json_values)
def test_random_json(name: str, value: Any) -> None:
    check_only_typed_errors(name, encode(value))


@FUZZ
@given(name=st.sampled_from(sorted(PARSERS)), body=st.binary(max_size=200))
def test_random_bytes(name: str, body: bytes) -> None:
    check_only_typed_errors(name, body)


def mutate(document: Any, data: st.DataObject) -> Any:
    """Replace, delete or retype one value somewhere inside ``document``."""
    document = copy.deepcopy(document)
    parent: Any = None
    key: Any = None
    node = document
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        return data.draw(json_values)
    action = data.draw(st.sampled_from(["replace", "delete", "null", "stringify"]))
    if action == "delete":
        del parent[key]
    elif action == "null":
        parent[key] = None
    elif action == "stringify":
        parent[key] = str(parent[key])
    else:
        parent[key] = data.draw(json_values)
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PARSERS)), data=st.data())
def test_mutated_fixtures(name: str, data: st.DataObject) -> None:
    document = json.loads(fixture_bytes(FIXTURES[name]))
    if name == "servers":
        document = document[:2]  # keeps examples small; every server has the same shape
    check_only_typed_errors(name, encode(mutate(document, data)))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_single_server_parses_or_names_the_problem(data: st.DataObject) -> None:
    mutated = mutate(ONE_SERVER, data)
    try:
        server = parse.parse_server(mutated)
    except ApiUnavailable as error:
        assert error.message.startswith("unusable answer from the NordVPN API")
    else:
        assert server.hostname
