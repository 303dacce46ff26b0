"""The fake NordVPN API: shapes like the captured responses, filters, auth, faults, CLI."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nordwgd.testing.fakeapi import FakeApi, FaultControl
from nordwgd.testing.fleet import (
    Fleet,
    ServerSpec,
    default_fleet,
    default_token,
    fixture_bytes,
    generate_keypair,
    large_fleet,
    server_keypair,
)
from nordwgd.testing.pki import Pki, make_pki

HOST = "api.nordvpn.com"
TEST_RANGES = (IPv4Network("203.0.113.0/24"), IPv4Network("198.18.0.0/15"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fake(pki: Pki) -> Iterator[FakeApi]:
    with FakeApi(default_fleet(), pki) as api:
        yield api


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


def get(
    where: FakeApi | tuple[str, int],
    pki: Pki,
    target: str,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One raw HTTP/1.1 GET over TLS: the target goes on the wire exactly as written."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    address = where.addresses[0] if isinstance(where, FakeApi) else where
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{extra}\r\n"
    with (
        socket.create_connection(address, timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(request.encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return Reply(b"".join(chunks))


def hostnames(reply: Reply) -> list[str]:
    return [server["hostname"] for server in reply.json()]


# --- fleet and PKI ---------------------------------------------------------------------


def test_default_fleet_covers_the_cases_selection_needs() -> None:
    fleet = default_fleet()
    places = {(s.country_code, s.city) for s in fleet.servers}
    assert {
        ("DE", "Frankfurt"),
        ("DE", "Berlin"),
        ("NL", "Amsterdam"),
        ("US", "New York"),
        ("US", "Los Angeles"),
        ("GB", "London"),
        ("JP", "Tokyo"),
    } <= places
    double = [s for s in fleet.servers if "legacy_double_vpn" in s.groups]
    assert double and all(s.public_key is None for s in double)
    assert any(s.status != "online" for s in fleet.servers)
    assert any(s.status == "online" and s.wireguard_status != "online" for s in fleet.servers)
    assert len({s.load for s in fleet.servers}) > 10
    for spec in fleet.servers:
        assert any(IPv4Address(spec.station) in net for net in TEST_RANGES), spec.station
    assert len({s.station for s in fleet.servers}) == len(fleet.servers)
    assert default_token() in fleet.tokens


def test_server_keys_are_derivable_for_the_world() -> None:
    fleet = default_fleet(seed=3)
    spec = fleet.by_hostname("de1001.nordvpn.com")
    private, public = server_keypair(3, spec.hostname)
    assert public == spec.public_key
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private))
    assert (
        base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        == public
    )
    assert default_fleet(seed=3) == fleet and default_fleet(seed=4) != fleet


def test_generate_keypair_is_a_real_x25519_pair() -> None:
    private, public = generate_keypair()
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private))
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == base64.b64decode(public)
    assert generate_keypair() != (private, public)


def test_fleet_file_round_trip_is_private(tmp_path: Path) -> None:
    fleet = default_fleet()
    path = tmp_path / "fleet.json"
    fleet.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Fleet.read(path) == fleet


def test_large_fleet_is_spread_and_in_range() -> None:
    fleet = large_fleet(600)
    assert len(fleet.servers) == 600
    assert len({s.hostname for s in fleet.servers}) == 600
    assert len({s.country_code for s in fleet.servers}) > 50
    assert all(IPv4Address(s.station) in TEST_RANGES[1] for s in fleet.servers)


def test_pki_keys_are_private_and_certificates_chain(pki: Pki) -> None:
    for key in (pki.key, pki.wrong_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(pki.cert, pki.key)  # the pair matches


# --- shapes ----------------------------------------------------------------------------


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_server_objects_have_the_captured_shape(fake: FakeApi, pki: Pki) -> None:
    captured = json.loads(fixture_bytes("recommendations.json"))[0]
    reply = get(fake, pki, "/v1/servers/recommendations?filters[country_id]=81&limit=1")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    ours = reply.json()[0]
    assert list(ours) == list(captured)
    assert shape(ours["locations"]) == shape(captured["locations"])
    assert shape(ours["groups"]) == shape(captured["groups"])
    assert shape(ours["ips"]) == shape(captured["ips"])
    assert shape(ours["specifications"]) == shape(captured["specifications"])
    assert [t["identifier"] for t in ours["technologies"]] == [
        t["identifier"] for t in captured["technologies"]
    ]
    wireguard = next(t for t in ours["technologies"] if t["identifier"] == "wireguard_udp")
    assert wireguard["metadata"][0]["name"] == "public_key"
    assert ours["ipv6_station"] == ""
    assert time.strptime(ours["created_at"], "%Y-%m-%d %H:%M:%S")
    assert b" " not in reply.body.split(b'"created_at"')[0], "compact JSON"


@pytest.mark.parametrize(
    "path", ["/v1/servers/countries", "/v1/servers/groups", "/v1/technologies"]
)
def test_catalog_endpoints_are_verbatim(fake: FakeApi, pki: Pki, path: str) -> None:
    name = {
        "countries": "countries.json",
        "groups": "groups.json",
        "technologies": "technologies.json",
    }[path.rsplit("/", 1)[1]]
    assert get(fake, pki, path).body == fixture_bytes(name)


# --- filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "filters[servers_groups][identifier]=legacy_p2p",
        "filters%5Bservers_groups%5D%5Bidentifier%5D=legacy_p2p",
        "&filters[servers_groups][id]=15",
        "filters[servers_groups]=15",
    ],
)
def test_group_filter_spellings(fake: FakeApi, pki: Pki, query: str) -> None:
    servers = get(fake, pki, f"/v1/servers/recommendations?{query}").json()
    assert servers
    for server in servers:
        assert "legacy_p2p" in {group["identifier"] for group in server["groups"]}


@pytest.mark.parametrize(
    "query",
    [
        "filters[servers_technologies][identifier]=wireguard_udp",
        "filters%5Bservers_technologies%5D%5Bid%5D=35",
        "&filters[servers_technologies]=35",
    ],
)
def test_technology_filter_spellings(fake: FakeApi, pki: Pki, query: str) -> None:
    names = hostnames(get(fake, pki, f"/v1/servers/recommendations?{query}&limit=0"))
    fleet = fake.fleet
    expected = {
        s.hostname for s in fleet.servers if s.status == "online" and s.wireguard_status == "online"
    }
    assert set(names) == expected


def test_recommendations_sorted_online_and_limited(fake: FakeApi, pki: Pki) -> None:
    servers = get(fake, pki, "/v1/servers/recommendations?limit=0").json()
    assert [s["load"] for s in servers] == sorted(s["load"] for s in servers)
    assert {s["status"] for s in servers} == {"online"}
    default = get(fake, pki, "/v1/servers/recommendations").json()
    assert len(default) == min(20, len(servers))
    assert len(get(fake, pki, "/v1/servers/recommendations?limit=3").json()) == 3


def test_city_and_country_filters_combine(fake: FakeApi, pki: Pki) -> None:
    berlin = get(
        fake,
        pki,
        "/v1/servers/recommendations?filters[country_id]=81&filters[country_city_id]=2181458",
    )
    assert set(hostnames(berlin)) == {"de1010.nordvpn.com", "de1011.nordvpn.com"}
    nothing = get(
        fake,
        pki,
        "/v1/servers/recommendations?filters[country_id]=153&filters[country_city_id]=2181458",
    )
    assert nothing.status == 200 and nothing.body == b"[]"


def test_server_list_includes_offline_and_limits(fake: FakeApi, pki: Pki) -> None:
    everything = get(fake, pki, "/v1/servers?limit=0").json()
    assert len(everything) == len(fake.fleet.servers)
    assert {"offline", "maintenance"} <= {s["status"] for s in everything}
    assert len(get(fake, pki, "/v1/servers?limit=2").json()) == 2


def test_servers_default_limit_is_100(pki: Pki) -> None:
    with FakeApi(large_fleet(150), pki) as big:
        assert len(get(big, pki, "/v1/servers").json()) == 100
        assert len(get(big, pki, "/v1/servers?limit=0").json()) == 150


# --- auth and insights -----------------------------------------------------------------


def test_credentials_accept_basic_and_bearer(fake: FakeApi, pki: Pki) -> None:
    token = default_token()
    basic = base64.b64encode(f"token:{token}".encode()).decode()
    for header in (f"Basic {basic}", f"Bearer token:{token}"):
        reply = get(fake, pki, "/v1/users/services/credentials", {"Authorization": header})
        assert reply.status == 200
        body = reply.json()
        assert list(body) == list(json.loads(fixture_bytes("credentials-200.json")))
        assert body["nordlynx_private_key"] == fake.fleet.tokens[token]
    assert [r[3] for r in fake.requests] == [True, True]


@pytest.mark.parametrize("header", [None, "Bearer token:nope", "Basic !!!", "Bearer " + "0" * 64])
def test_credentials_refuse_unknown_tokens(fake: FakeApi, pki: Pki, header: str | None) -> None:
    reply = get(
        fake, pki, "/v1/users/services/credentials", {"Authorization": header} if header else {}
    )
    assert reply.status == 401
    assert reply.json() == json.loads(fixture_bytes("error-401-unauthorized.json"))


def test_insights_of_an_outside_caller(fake: FakeApi, pki: Pki) -> None:
    body = get(fake, pki, "/v1/helpers/ips/insights").json()
    assert list(body) == list(json.loads(fixture_bytes("ips-insights.json")))
    assert body["ip"] == "127.0.0.1" and body["protected"] is False


def test_insights_protected_when_the_caller_is_a_station(pki: Pki) -> None:
    fleet = Fleet(
        servers=(ServerSpec("jp9.nordvpn.com", "127.0.0.1", None, "JP", "Tokyo"),), tokens={}
    )
    with FakeApi(fleet, pki) as api:
        body = get(api, pki, "/v1/helpers/ips/insights").json()
    assert body["protected"] is True and body["country_code"] == "JP" and body["city"] == "Tokyo"


# --- faults ----------------------------------------------------------------------------


def test_429_has_retry_after_and_no_json(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("429")
    reply = get(fake, pki, "/v1/servers/groups")
    assert reply.status == 429 and int(reply.headers["retry-after"]) >= 1
    with pytest.raises(ValueError):
        json.loads(reply.body)


@pytest.mark.parametrize(("fault", "status"), [("401", 401), ("500", 500), ("garbage", 200)])
def test_status_faults(fake: FakeApi, pki: Pki, fault: str, status: int) -> None:
    fake.set_fault(fault)
    reply = get(fake, pki, "/v1/servers/groups")
    assert reply.status == status
    if fault == "garbage":
        with pytest.raises(ValueError):
            json.loads(reply.body)


def test_truncated_sends_less_than_announced(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("truncated")
    reply = get(fake, pki, "/v1/servers/recommendations")
    assert reply.status == 200
    assert 0 < len(reply.body) < int(reply.headers["content-length"])


def test_empty_applies_to_server_lists_only(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("empty")
    assert get(fake, pki, "/v1/servers/recommendations").body == b"[]"
    assert get(fake, pki, "/v1/servers?limit=0").body == b"[]"
    assert get(fake, pki, "/v1/servers/groups").body == fixture_bytes("groups.json")


def test_count_limits_a_fault_to_the_next_requests(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("500", count=2)
    assert [get(fake, pki, "/v1/servers/groups").status for _ in range(3)] == [500, 500, 200]


def test_paths_limit_a_fault(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("500", paths="/v1/users")
    assert get(fake, pki, "/v1/servers/groups").status == 200
    assert get(fake, pki, "/v1/users/services/credentials").status == 500


def test_wrong_cert_fails_name_verification(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("wrong-cert", count=1)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        get(fake, pki, "/v1/servers/groups")
    assert get(fake, pki, "/v1/servers/groups").status == 200


def test_refuse_closes_without_answer(fake: FakeApi, pki: Pki) -> None:
    fake.set_fault("refuse", count=1)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        get(fake, pki, "/v1/servers/groups")
    fake.set_fault("refuse", paths="/v1/servers/groups")
    with pytest.raises(IndexError):  # closed after the request: no status line at all
        get(fake, pki, "/v1/servers/groups")
    assert get(fake, pki, "/v1/technologies").status == 200


def test_hang_holds_until_stopped(pki: Pki) -> None:
    api = FakeApi(default_fleet(), pki)
    api.start()
    api.set_fault("hang")
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(get(api, pki, "/v1/servers/groups", timeout=30))
        except (OSError, IndexError) as error:
            outcome.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "a hanging API must not answer"
    api.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert not isinstance(outcome[0], Reply), "stopping releases the caller without an answer"


def test_unknown_fault_is_refused(fake: FakeApi) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        fake.set_fault("melt")


# --- the process and its control socket ------------------------------------------------


def test_serve_cli_and_fault_control(tmp_path: Path, pki: Pki) -> None:
    fleet_path = tmp_path / "fleet.json"
    default_fleet().write(fleet_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    control = tmp_path / "control.sock"
    pki_dir = Path(pki.ca_cert).parent
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nordwgd.testing.fakeapi",
            "serve",
            "--fleet",
            str(fleet_path),
            "--pki-dir",
            str(pki_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--control",
            str(control),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        assert stat.S_IMODE(os.stat(control).st_mode) & 0o077 == 0
        faults = FaultControl(control)

        address = ("127.0.0.1", port)
        assert get(address, pki, "/v1/servers/groups").status == 200
        faults.set("500", count=1)
        assert get(address, pki, "/v1/servers/groups").status == 500
        assert get(address, pki, "/v1/servers/groups").status == 200
        records = faults.requests()
        assert [r["path"] for r in records] == ["/v1/servers/groups"] * 3
        assert records[0] == {
            "method": "GET",
            "path": "/v1/servers/groups",
            "query": "",
            "authorized": False,
        }
        with pytest.raises(RuntimeError, match="unknown fault"):
            faults.set("melt")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    assert not control.exists()
