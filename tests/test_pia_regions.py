"""PIA's region list: the signature is checked with PIA's real key, regions are chosen by name."""

from __future__ import annotations

import json
import random

import pytest

from nordwgd.errors import NoServer, UnknownLocation
from nordwgd.provider.pia import regions
from nordwgd.provider.pia.api import shipped
from nordwgd.testing.fleet import fixture_bytes

WIRE = fixture_bytes("pia-legacy-serverlist.wire.txt")


@pytest.fixture(scope="module")
def key() -> regions.rsa.RSAPublicKey:
    return regions.load_public_key(shipped("pia-regions-list-pubkey.pem"))


@pytest.fixture(scope="module")
def listing() -> regions.RegionList:
    return regions.parse(fixture_bytes("pia-serverlist-v6.json"))


def test_the_real_signed_list_verifies_with_the_shipped_key(key: regions.rsa.RSAPublicKey) -> None:
    body = regions.verify(WIRE, key)
    assert body == WIRE.split(b"\n", 1)[0]
    assert "us_california" in json.loads(body)


def test_the_signature_may_be_on_one_line(key: regions.rsa.RSAPublicKey) -> None:
    body, _, signature = WIRE.partition(b"\n\n")
    assert b"\n" in signature.strip()  # the fixture is wrapped
    one_line = body + b"\n\n" + b"".join(signature.split()) + b"\n"
    assert regions.verify(one_line, key) == body


@pytest.mark.parametrize("position", [0, 1, 100, 5000, -3])
def test_one_changed_byte_of_the_list_is_refused(
    key: regions.rsa.RSAPublicKey, position: int
) -> None:
    body, _, signature = WIRE.partition(b"\n\n")
    index = position % len(body)
    changed = body[:index] + bytes([body[index] ^ 0x20]) + body[index + 1 :]
    with pytest.raises(regions.SignatureInvalid, match="does not verify"):
        regions.verify(changed + b"\n\n" + signature, key)


def test_a_changed_signature_and_a_missing_one_are_refused(
    key: regions.rsa.RSAPublicKey,
) -> None:
    body, _, signature = WIRE.partition(b"\n\n")
    flipped = signature.replace(b"A", b"B", 1)
    with pytest.raises(regions.SignatureInvalid):
        regions.verify(body + b"\n\n" + flipped, key)
    with pytest.raises(regions.SignatureInvalid, match="no signature"):
        regions.verify(body, key)
    with pytest.raises(regions.SignatureInvalid, match="not base64"):
        regions.verify(body + b"\n\n%%%", key)


def test_the_v6_body_parses(listing: regions.RegionList) -> None:
    assert len(listing.regions) == 107
    assert listing.wireguard_port == 1337
    uk = listing.by_id("uk")
    assert uk is not None and uk.port_forward and uk.country == "GB"
    assert all(server.cn for server in uk.wireguard)
    assert not any(r.port_forward for r in listing.regions if r.country == "US")


def test_bad_fields_are_named() -> None:
    document = json.loads(fixture_bytes("pia-serverlist-v6.json"))
    document["regions"][2]["servers"]["wg"][0]["ip"] = "not-an-address"
    with pytest.raises(regions.ApiUnavailable, match=r"regions\[2\]\.servers\.wg\[0\]\.ip"):
        regions.parse(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("text", "ids"),
    [("uk", {"uk"}), ("UK London", {"uk"}), ("swiss", {"swiss"}), ("ch", {"swiss"})],
)
def test_regions_by_id_name_or_country(
    listing: regions.RegionList, text: str, ids: set[str]
) -> None:
    assert {region.id for region in regions.match_regions(listing, text)} == ids


def test_a_country_with_several_regions_gives_them_all(listing: regions.RegionList) -> None:
    assert len(regions.match_regions(listing, "US")) > 10


def test_unknown_region_suggests(listing: regions.RegionList) -> None:
    with pytest.raises(UnknownLocation) as caught:
        regions.match_regions(listing, "londn")
    assert "UK London" in caught.value.suggestions
    assert "did you mean" in caught.value.message


def test_port_forwarding_refused_in_us_regions_naming_others(
    listing: regions.RegionList,
) -> None:
    matched = regions.match_regions(listing, "us_california")
    assert regions.usable(matched, port_forward=False, all_regions=listing, asked="x") == matched
    with pytest.raises(NoServer) as caught:
        regions.usable(matched, port_forward=True, all_regions=listing, asked="us_california")
    message = caught.value.message
    assert "no port forwarding" in message
    named = message.rsplit(": ", 1)[1].split(", ")
    assert len(named) == regions.MAX_SUGGESTIONS
    assert all(
        listing.by_id(name) is not None and listing.by_id(name).port_forward for name in named
    )  # type: ignore[union-attr]


def test_offline_regions_are_skipped(listing: regions.RegionList) -> None:
    uk = listing.by_id("uk")
    assert uk is not None
    offline = regions.Region(**{**uk.__dict__, "offline": True})
    with pytest.raises(NoServer, match="offline"):
        regions.usable([offline], port_forward=False, all_regions=listing, asked="uk")
    assert regions.usable([offline, uk], port_forward=True, all_regions=listing, asked="uk") == (
        uk,
    )


def test_a_random_server_of_the_region_not_excluded(listing: regions.RegionList) -> None:
    uk = listing.by_id("uk")
    assert uk is not None and len(uk.wireguard) > 1
    rng = random.Random(1)
    seen = {regions.pick_server([uk], frozenset(), rng)[1].cn for _ in range(60)}
    assert len(seen) > 1
    excluded = frozenset(server.cn for server in uk.wireguard[1:])
    for _ in range(10):
        assert regions.pick_server([uk], excluded, rng)[1] == uk.wireguard[0]
    with pytest.raises(NoServer):
        regions.pick_server([uk], frozenset(s.cn for s in uk.wireguard), rng)
