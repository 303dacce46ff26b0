"""The quick path for well-formed servers agrees with the precise parser on every input."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nordwgd.errors import ApiUnavailable
from nordwgd.model import Server
from nordwgd.provider.nordvpn import parse
from nordwgd.testing.fleet import fixture_bytes

SERVERS: list[dict[str, Any]] = json.loads(fixture_bytes("recommendations.json"))

# Values that sit on the edge of what the precise parser accepts somewhere in a server.
TRICKY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    100,
    101,
    2**70,
    1.5,
    "",
    "x",
    "online",
    "offline",
    "wireguard_udp",
    "public_key",
    "10.0.0.1",
    "010.0.0.1",
    "1.2.3.4 ",
    "256.1.1.1",
    "2001:db8::1",
    "fe80::1%eth0",
    "de1.nordvpn.com",
    "-bad-.host",
    "VZSqazQvXQo6XkhC+rQo92Lm4oLlwWV8eMOpZ7NnEes=",
    "c2hvcnQ=",
    [],
    [{}],
    {},
    {"name": "public_key", "value": 42},
]


def precise(obj: object) -> Server | ApiUnavailable:
    try:
        return parse.parse_server(obj, "/v1/servers")
    except ApiUnavailable as error:
        return error


def assert_agree(obj: object) -> None:
    plain = parse._plain_server(obj)
    if plain is not None:
        assert precise(obj) == plain


@st.composite
def mutated_server(draw: st.DrawFn) -> dict[str, Any]:
    server: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(SERVERS)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        parent: Any = None
        key: Any = None
        node: Any = server
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 5)) > 0:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            continue
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(TRICKY)))
    return server


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, as the keys leading there."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


def single_edits(server: dict[str, Any]) -> list[dict[str, Any]]:
    """The server with one place deleted or replaced by each tricky value, for every place."""
    edits: list[dict[str, Any]] = []
    for path in paths(server):
        for value in [*TRICKY, "delete"]:
            changed = copy.deepcopy(server)
            parent = changed
            for key in path[:-1]:
                parent = parent[key]
            if value == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(value)
            edits.append(changed)
    return edits


def test_quick_path_agrees_after_every_single_edit() -> None:
    edits = single_edits(SERVERS[0])
    quick = 0
    for obj in edits:
        assert_agree(obj)
        quick += parse._plain_server(obj) is not None
    # Both kinds of outcome were compared, not only refusals.
    assert 0 < quick < len(edits)


def test_every_fixture_server_takes_the_quick_path() -> None:
    for obj in SERVERS:
        plain = parse._plain_server(obj)
        assert plain is not None
        assert plain == parse.parse_server(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("station", "010.0.0.1"),
        ("station", "1.2.3.4\n"),
        ("station", "\uff11.2.3.4"),
        ("load", True),
        ("load", 101),
        ("ipv6_station", "10.0.0.1"),
        ("ipv6_station", False),
        ("hostname", "de1 .nordvpn.com"),
    ],
)
def test_what_the_precise_parser_refuses_never_takes_the_quick_path(
    field: str, value: object
) -> None:
    obj = {**SERVERS[0], field: value}
    assert parse._plain_server(obj) is None
    assert isinstance(precise(obj), ApiUnavailable)


def test_an_ipv6_station_is_kept() -> None:
    obj = {**SERVERS[0], "ipv6_station": "2001:db8::7"}
    plain = parse._plain_server(obj)
    assert plain is not None and str(plain.ipv6_station) == "2001:db8::7"
    assert plain == parse.parse_server(obj)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=mutated_server())
def test_quick_path_agrees_with_the_precise_parser(obj: dict[str, Any]) -> None:
    assert_agree(obj)
