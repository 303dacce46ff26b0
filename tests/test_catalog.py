"""The location catalog: what ships in data/, how names resolve, and the refresh command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.errors import ApiUnavailable, ConfigError, InvalidArgument, UnknownLocation
from nordwgd.provider.nordvpn.catalog import (
    COUNTRIES,
    DATA_DIRECTORY,
    Catalog,
    main,
    normalize,
    parse_body,
    write_catalog,
)
from nordwgd.testing.fakeapi import FakeApi
from nordwgd.testing.fleet import default_fleet
from nordwgd.testing.pki import make_pki

FIXTURES = Path(__file__).resolve().parent.parent / "nordwgd" / "testing" / "fixtures"
CATALOG_FILES = ("countries.json", "groups.json", "technologies.json")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(FIXTURES)


def small_catalog(directory: Path) -> Catalog:
    """A made-up catalog with accents and a city name used in two countries."""
    countries = [
        {"id": 1, "name": "Curaçao", "code": "CW", "serverCount": 1, "cities": [
            {"id": 10, "name": "Willemstad", "dns_name": "willemstad"}]},
        {"id": 2, "name": "Côte d'Ivoire", "code": "CI", "serverCount": 1, "cities": [
            {"id": 20, "name": "Abidjan", "dns_name": "abidjan"}]},
        {"id": 3, "name": "United States", "code": "US", "serverCount": 2, "cities": [
            {"id": 30, "name": "Portland", "dns_name": "portland"},
            {"id": 31, "name": "San José", "dns_name": "san-jose"}]},
        {"id": 4, "name": "Costa Rica", "code": "CR", "serverCount": 1, "cities": [
            {"id": 40, "name": "San José", "dns_name": "san-jose"}]},
        {"id": 5, "name": "Jamaica", "code": "JM", "serverCount": 1, "cities": [
            {"id": 50, "name": "Portland", "dns_name": "portland"}]},
    ]  # fmt: skip
    groups = [
        {"id": 15, "title": "P2P", "identifier": "legacy_p2p", "type": {"identifier": "x"}},
    ]
    technologies = [{"id": 35, "name": "Wireguard", "identifier": "wireguard_udp"}]
    directory.mkdir(exist_ok=True)
    for name, body in zip(CATALOG_FILES, (countries, groups, technologies), strict=True):
        (directory / name).write_text(json.dumps(body, ensure_ascii=False))
    return Catalog.load(directory)


def test_package_data_is_the_api_catalog() -> None:
    for name in CATALOG_FILES:
        assert (DATA_DIRECTORY / name).read_bytes() == (FIXTURES / name).read_bytes(), name
    shipped = Catalog.load()
    assert shipped is Catalog.load(DATA_DIRECTORY)  # parsed once
    assert len(shipped.countries) == 118
    assert {t.identifier for t in shipped.technologies} >= {"wireguard_udp", "openvpn_udp"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Germany", "DE"),
        ("germany", "DE"),
        ("  GERMANY ", "DE"),
        ("de", "DE"),
        ("81", "DE"),
        ("United States", "US"),
        ("united_states", "US"),
        ("united-states", "US"),
        ("US", "US"),
        ("usa", "US"),
        ("UK", "GB"),
        ("gb", "GB"),
        ("United Kingdom", "GB"),
        ("bosnia_and_herzegovina", "BA"),
        ("Lao Peoples Democratic Republic", "LA"),
        ("lao people's democratic republic", "LA"),
    ],
)
def test_resolve_country(catalog: Catalog, text: str, code: str) -> None:
    assert catalog.resolve_country(text).code == code


def test_resolve_country_with_accents(tmp_path: Path) -> None:
    small = small_catalog(tmp_path / "small")
    assert small.resolve_country("curacao").name == "Curaçao"
    assert small.resolve_country("CURAÇAO").id == 1
    assert small.resolve_country("Cote d'Ivoire").code == "CI"
    assert small.resolve_country("cote_divoire").code == "CI"
    with pytest.raises(UnknownLocation) as raised:
        small.resolve_country("curacoa")
    assert raised.value.suggestions == ("Curaçao",)


def test_unknown_country_suggests(catalog: Catalog) -> None:
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_country("Germny")
    assert raised.value.suggestions[0] == "Germany"
    assert len(raised.value.suggestions) <= 3
    assert "unknown country 'Germny'" in str(raised.value)
    assert "did you mean: Germany" in str(raised.value)
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_country("united")
    assert set(raised.value.suggestions) <= {
        "United States",
        "United Kingdom",
        "United Arab Emirates",
    }
    assert raised.value.suggestions
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_country("9999")
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_country("Xqzzyv")
    assert raised.value.suggestions == ()
    with pytest.raises(InvalidArgument):
        catalog.resolve_country("  ")


@pytest.mark.parametrize(
    ("text", "country", "expected"),
    [
        ("Frankfurt", None, (2215709, "DE")),
        ("frankfurt", "Germany", (2215709, "DE")),
        ("2215709", None, (2215709, "DE")),
        ("new-york", None, (None, "US")),
        ("New York", "us", (None, "US")),
        ("sao_paulo", None, (890249, "BR")),
        ("São Paulo", "Brazil", (890249, "BR")),
        ("London", "UK", (2989907, "GB")),
    ],
)
def test_resolve_city(
    catalog: Catalog, text: str, country: str | None, expected: tuple[int | None, str]
) -> None:
    city = catalog.resolve_city(text, country)
    city_id, code = expected
    assert city.country_code == code
    if city_id is not None:
        assert city.id == city_id
    assert city.country_id == catalog.resolve_country(code).id


def test_city_in_the_wrong_country(catalog: Catalog) -> None:
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_city("Frankfurt", "France")
    assert "in France" in str(raised.value)
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_city("Frankfrut")
    assert raised.value.suggestions[0] == "Frankfurt"


def test_ambiguous_city_lists_the_countries(tmp_path: Path) -> None:
    small = small_catalog(tmp_path / "small")
    with pytest.raises(InvalidArgument) as raised:
        small.resolve_city("Portland")
    assert not isinstance(raised.value, UnknownLocation)
    assert "Jamaica, United States" in str(raised.value)
    assert small.resolve_city("portland", "JM").id == 50
    assert small.resolve_city("san jose", "Costa Rica").id == 40
    assert small.resolve_city("SAN-JOSÉ", "us").id == 31
    assert small.resolve_city("Willemstad").country_code == "CW"


@pytest.mark.parametrize(
    ("text", "identifier"),
    [
        ("p2p", "legacy_p2p"),
        ("P2P", "legacy_p2p"),
        ("15", "legacy_p2p"),
        ("legacy_p2p", "legacy_p2p"),
        ("double vpn", "legacy_double_vpn"),
        ("Double_VPN", "legacy_double_vpn"),
        ("obfuscated", "legacy_obfuscated_servers"),
        ("Obfuscated Servers", "legacy_obfuscated_servers"),
        ("onion", "legacy_onion_over_vpn"),
        ("Onion Over VPN", "legacy_onion_over_vpn"),
        ("dedicated ip", "legacy_dedicated_ip"),
        ("dedicated-ip", "legacy_dedicated_ip"),
        ("standard", "legacy_standard"),
        ("Standard VPN servers", "legacy_standard"),
        ("europe", "europe"),
        ("The Americas", "the_americas"),
        ("americas", "the_americas"),
        ("asia_pacific", "asia_pacific"),
    ],
)
def test_resolve_group(catalog: Catalog, text: str, identifier: str) -> None:
    assert catalog.resolve_group(text).identifier == identifier


def test_group_fields_and_unknown_group(catalog: Catalog) -> None:
    p2p = catalog.resolve_group("p2p")
    assert (p2p.id, p2p.title, p2p.type_identifier) == (15, "P2P", "legacy_group_category")
    assert catalog.resolve_group("europe").type_identifier == "regions"
    with pytest.raises(UnknownLocation) as raised:
        catalog.resolve_group("obfuscatd")
    assert "obfuscated" in raised.value.suggestions
    with pytest.raises(UnknownLocation):
        catalog.resolve_group("9999")


def test_normalize() -> None:
    assert normalize("  Curaçao ") == "curacao"
    assert normalize("united_states") == normalize("United-States") == "united states"
    assert normalize("Côte d\u2019Ivoire") == "cote divoire"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>rate limited</html>", "not valid JSON"),
        (b"{}", "non-empty JSON array"),
        (b"[]", "non-empty JSON array"),
        (b"[1]", "entry 0: expected an object"),
        (b'[{"id":1,"name":"X","cities":[]}]', "entry 0: missing key 'code'"),
        (b'[{"id":"1","name":"X","code":"XX","cities":[]}]', "'id' has the wrong type"),
        (b'[{"id":1,"name":"X","code":"XX","cities":[{"id":2}]}]', "entry 0 city 0: missing"),
    ],
)
def test_bad_body_is_refused(body: bytes, words: str) -> None:
    with pytest.raises(ApiUnavailable) as raised:
        parse_body(body, COUNTRIES, "GET /v1/servers/countries")
    assert words in str(raised.value)
    assert str(raised.value).startswith("GET /v1/servers/countries: ")


def test_damaged_catalog_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the catalog"):
        Catalog.load(tmp_path / "nothing")
    small_catalog(tmp_path / "bad")
    (tmp_path / "bad" / "groups.json").write_text("[{]")
    with pytest.raises(ConfigError, match=r"catalog is damaged: .*groups.json: not valid JSON"):
        Catalog.load(tmp_path / "bad")


def test_write_catalog_is_verbatim_and_leaves_no_temporaries(tmp_path: Path) -> None:
    from nordwgd.provider.nordvpn.catalog import SOURCES

    bodies = {source: (FIXTURES / source.file_name).read_bytes() for source in SOURCES}
    written = write_catalog(bodies, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(CATALOG_FILES)
    for path in written:
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes()


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[FakeApi, Path]]:
    """The fake API on 127.0.0.1 and a config file that points the client at it."""
    pki = make_pki(tmp_path / "pki")
    with FakeApi(default_fleet(), pki) as api:
        host, port = api.addresses[0]
        config = tmp_path / "nordwgd.toml"
        config.write_text(
            f'[api]\naddresses = ["{host}"]\nport = {port}\nca_file = "{pki.ca_cert}"\n'
            "attempts = 1\ntimeout = 5\n"
        )
        yield api, config


def test_refresh_command_writes_the_api_bodies(
    fake_api: tuple[FakeApi, Path], tmp_path: Path
) -> None:
    api, config = fake_api
    output = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "nordwgd.provider.nordvpn.catalog", "refresh", "--config", config,
         "--output", output],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in output.iterdir()) == sorted(CATALOG_FILES)
    for name in CATALOG_FILES:
        assert (output / name).read_bytes() == (FIXTURES / name).read_bytes(), name
        assert f"wrote {output / name}" in done.stdout
    assert [(method, path) for method, path, _, _ in api.requests] == [
        ("GET", "/v1/servers/countries"),
        ("GET", "/v1/servers/groups"),
        ("GET", "/v1/technologies"),
    ]
    refreshed = Catalog.load(output)
    assert refreshed.resolve_country("uk").name == "United Kingdom"


def test_refresh_failure_writes_nothing(
    fake_api: tuple[FakeApi, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api, config = fake_api
    output = tmp_path / "data"
    api.set_fault("garbage", paths="/v1/technologies")
    assert main(["refresh", "--config", str(config), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("python -m nordwgd.provider.nordvpn.catalog: error: ")
    assert "/v1/technologies" in error
    assert not output.exists()  # countries and groups were fetched, but nothing is half-written


def test_refresh_with_a_bad_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nordwgd.toml"
    config.write_text("[api]\nport = 'https'\n")
    assert main(["refresh", "--config", str(config), "--output", str(tmp_path / "out")]) == 1
    assert f"{config}:2: api.port: must be an integer" in capsys.readouterr().err
