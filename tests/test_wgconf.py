"""NordLynx tunnel parameters and their wg-quick export."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Network
from pathlib import Path

import pytest

from nordwgd.errors import InvalidArgument, NoServer
from nordwgd.model import NORDLYNX_DNS, Credentials, Endpoint, Secret, Server
from nordwgd.provider.nordvpn.wgconf import render_wg_quick, tunnel_params

PRIVATE = "oOQW3cgcumh8XNVwk1kxzMTyknkn1nmrg+8mqbJcfIA="
PUBLIC = "m0tej5P6pYfBivkJc8yRV4KqQXmM81AChLlzlsOSjSs="

SERVER = Server(
    id=1000000,
    name="Germany #1001",
    hostname="de1001.nordvpn.com",
    station=IPv4Address("203.0.113.11"),
    ipv6_station=None,
    load=12,
    status="online",
    country="Germany",
    country_code="DE",
    country_id=81,
    city="Frankfurt",
    city_id=2215709,
    groups=("legacy_standard", "europe"),
    group_titles=("Standard VPN servers", "Europe"),
    public_key=PUBLIC,
)

SNAPSHOT = """\
[Interface]
PrivateKey = oOQW3cgcumh8XNVwk1kxzMTyknkn1nmrg+8mqbJcfIA=
Address = 10.5.0.2/32
DNS = 103.86.96.100, 103.86.99.100

[Peer]
# de1001.nordvpn.com (Germany, Frankfurt, load 12%)
PublicKey = m0tej5P6pYfBivkJc8yRV4KqQXmM81AChLlzlsOSjSs=
AllowedIPs = 0.0.0.0/0
Endpoint = 203.0.113.11:51820
PersistentKeepalive = 25
"""


def test_params_follow_the_nordlynx_settings() -> None:
    params = tunnel_params(Credentials(Secret(PRIVATE)), SERVER, dns=NORDLYNX_DNS)
    assert params.address == IPv4Interface("10.5.0.2/32")
    assert params.peer_public_key == PUBLIC
    assert params.endpoint == Endpoint(IPv4Address("203.0.113.11"), 51820)
    assert params.allowed_ips == (IPv4Network("0.0.0.0/0"),)
    assert params.keepalive == 25
    assert params.dns == NORDLYNX_DNS
    assert params.private_key.reveal() == PRIVATE
    assert PRIVATE not in repr(params)


def test_ipv6_tunnel_routes_all_ipv6_too() -> None:
    params = tunnel_params(Credentials(Secret(PRIVATE)), SERVER, dns=(), ipv6_tunnel=True)
    assert params.allowed_ips == (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))


def test_wg_quick_snapshot() -> None:
    params = tunnel_params(Credentials(Secret(PRIVATE)), SERVER, dns=NORDLYNX_DNS)
    assert render_wg_quick(params) == SNAPSHOT


def test_wg_quick_without_dns_and_with_ipv6() -> None:
    params = tunnel_params(Credentials(Secret(PRIVATE)), SERVER, dns=(), ipv6_tunnel=True)
    text = render_wg_quick(params)
    assert "DNS" not in text
    assert "AllowedIPs = 0.0.0.0/0, ::/0\n" in text


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="wireguard-tools not installed")
def test_wg_quick_reads_the_rendered_file(tmp_path: Path) -> None:
    # `wg-quick strip` parses the file and keeps what `wg setconf` takes: Address and DNS
    # must be recognised as wg-quick keys, the rest passed on unchanged.
    params = tunnel_params(Credentials(Secret(PRIVATE)), SERVER, dns=NORDLYNX_DNS)
    path = tmp_path / "nordtest.conf"
    path.write_text(render_wg_quick(params))
    path.chmod(0o600)
    result = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Address" not in result.stdout and "DNS" not in result.stdout
    for line in (
        f"PrivateKey = {PRIVATE}",
        f"PublicKey = {PUBLIC}",
        "Endpoint = 203.0.113.11:51820",
        "PersistentKeepalive = 25",
    ):
        assert line in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "offline"}, "offline"),
        ({"public_key": None}, "not usable"),
        ({"wireguard_online": False}, "not usable"),
        ({"public_key": "c2hvcnQ="}, "malformed"),
    ],
)
def test_unusable_server_is_no_server(change: dict[str, object], message: str) -> None:
    with pytest.raises(NoServer, match=message):
        tunnel_params(Credentials(Secret(PRIVATE)), replace(SERVER, **change), dns=())  # type: ignore[arg-type]


def test_bad_private_key_is_refused_without_showing_it() -> None:
    with pytest.raises(InvalidArgument) as caught:
        tunnel_params(Credentials(Secret("not-a-key")), SERVER, dns=())
    assert "not-a-key" not in str(caught.value)
