"""Server ranking as a table: usable only, order, pins, exclusions, random top N."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from nordwgd.errors import NoServer
from nordwgd.model import Server
from nordwgd.provider.nordvpn.selection import (
    describe_unusable,
    select_servers,
    select_with_fallback,
)

KEY = "m0tej5P6pYfBivkJc8yRV4KqQXmM81AChLlzlsOSjSs="


def server(name: str, load: int, **changes: object) -> Server:
    base = Server(
        id=abs(hash(name)) % 100000,
        name=name,
        hostname=f"{name}.nordvpn.com",
        station=IPv4Address("203.0.113.1"),
        ipv6_station=None,
        load=load,
        status="online",
        country="Germany",
        country_code="DE",
        country_id=81,
        city="Frankfurt",
        city_id=2215709,
        groups=("legacy_standard",),
        group_titles=("Standard VPN servers",),
        public_key=KEY,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


A, B, C, D = server("de1", 10), server("de2", 20), server("de3", 30), server("de4", 40)
NL1, NL2 = server("nl1", 15, country_code="NL"), server("nl2", 35, country_code="NL")
OFFLINE = server("de9", 1, status="offline")
KEYLESS = server("de8", 2, public_key=None)
PIVOT_DOWN = server("de7", 3, wireguard_online=False)


def names(servers: list[Server]) -> list[str]:
    return [s.hostname.split(".")[0] for s in servers]


@pytest.mark.parametrize(
    ("candidates", "options", "expected"),
    [
        # One location keeps the API's order, even when it is not by load.
        ([[B, A, C]], {}, ["de2", "de1", "de3"]),
        # Unusable servers are dropped wherever they stand.
        ([[OFFLINE, KEYLESS, PIVOT_DOWN, A, B]], {}, ["de1", "de2"]),
        # Several locations are merged by load.
        ([[A, C], [NL1, NL2]], {}, ["de1", "nl1", "de3", "nl2"]),
        # A server listed under two locations counts once.
        ([[A, B], [B, NL1]], {}, ["de1", "nl1", "de2"]),
        # Pins go first in the given order, whatever their load.
        (
            [[A, B, C, D]],
            {"pinned_hostnames": ["de4.nordvpn.com", "DE3.nordvpn.com"]},
            ["de4", "de3", "de1", "de2"],
        ),
        # A pinned server that is unusable is not tried.
        ([[A, OFFLINE]], {"pinned_hostnames": ["de9.nordvpn.com"]}, ["de1"]),
        # Recently failed servers go last ...
        ([[A, B, C]], {"exclude": {"de1.nordvpn.com"}}, ["de2", "de3", "de1"]),
        # ... and are still tried when nothing else is left.
        ([[A]], {"exclude": {"de1.nordvpn.com"}}, ["de1"]),
        # Failed pins lose their place too.
        (
            [[A, B]],
            {"pinned_hostnames": ["de2.nordvpn.com"], "exclude": {"de2.nordvpn.com"}},
            ["de1", "de2"],
        ),
    ],
)
def test_ranking_table(
    candidates: list[list[Server]], options: dict[str, object], expected: list[str]
) -> None:
    assert names(select_servers(candidates, **options)) == expected  # type: ignore[arg-type]


def test_random_top_is_seeded_and_stays_in_the_top() -> None:
    pool = [server(f"de{i}", i) for i in range(1, 11)]
    first = select_servers([pool], random_top=3, seed=7)
    again = select_servers([pool], random_top=3, seed=7)
    assert first == again
    assert sorted(names(first[:3])) == ["de1", "de2", "de3"]
    assert names(first[3:]) == [f"de{i}" for i in range(4, 11)]
    firsts = {select_servers([pool], random_top=3, seed=seed)[0].hostname for seed in range(40)}
    assert firsts == {"de1.nordvpn.com", "de2.nordvpn.com", "de3.nordvpn.com"}


def test_random_top_keeps_pins_first() -> None:
    pool = [server(f"de{i}", i) for i in range(1, 6)]
    for seed in range(10):
        ranked = select_servers(
            [pool], pinned_hostnames=["de5.nordvpn.com"], random_top=4, seed=seed
        )
        assert ranked[0].hostname == "de5.nordvpn.com"
        assert sorted(names(ranked[1:])) == ["de1", "de2", "de3", "de4"]


def test_random_top_of_one_is_best_first() -> None:
    assert names(select_servers([[A, B, C]], random_top=1, seed=3)) == ["de1", "de2", "de3"]


def test_negative_random_top_is_refused() -> None:
    with pytest.raises(ValueError, match="random_top"):
        select_servers([[A]], random_top=-1)


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([[]], "the API listed no servers"),
        ([[], []], "the API listed no servers"),
        ([[OFFLINE]], "1 not online"),
        ([[KEYLESS, KEYLESS]], "2 without a NordLynx key"),
        ([[PIVOT_DOWN], [OFFLINE]], "1 not online, 1 with NordLynx offline"),
    ],
)
def test_nothing_usable_is_no_server(candidates: list[list[Server]], message: str) -> None:
    with pytest.raises(NoServer) as caught:
        select_servers(candidates, request="group Double VPN")
    assert "group Double VPN" in str(caught.value)
    assert message in str(caught.value)


def test_describe_unusable_counts_each_reason() -> None:
    assert describe_unusable([OFFLINE, KEYLESS]) == (
        "the API listed 2 servers: 1 not online, 1 without a NordLynx key"
    )


def test_fallback_used_only_when_preferred_has_nothing() -> None:
    chosen = select_with_fallback([[A]], [[B]], request="group P2P")
    assert names(list(chosen.servers)) == ["de1"] and not chosen.fell_back
    fallen = select_with_fallback([[KEYLESS]], [[B, C]], request="group Double VPN")
    assert fallen.fell_back and names(list(fallen.servers)) == ["de2", "de3"]
    assert "group Double VPN" in fallen.reason and "without a NordLynx key" in fallen.reason


def test_fallback_failing_too_reports_the_preferred_request() -> None:
    with pytest.raises(NoServer, match="group Double VPN"):
        select_with_fallback([[KEYLESS]], [[OFFLINE]], request="group Double VPN")
    with pytest.raises(NoServer, match="group Double VPN"):
        select_with_fallback([[KEYLESS]], None, request="group Double VPN")
