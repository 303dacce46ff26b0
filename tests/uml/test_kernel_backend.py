"""The kernel backend (nordwgd.wireguard.kernel) against a kernel WireGuard peer.

Two namespaces joined by a veth: "client" where the backend runs (in a child process, as the
daemon runs it), "server" with a kernel WireGuard link set up by ``ip`` and ``wg``. What the
backend did is checked with ``wg show``, which reads the kernel without pyroute2.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.fleet import generate_keypair
from tests.test_wireguard import (
    netns,
    test_kernel_backend_lifecycle,
    test_open_backend_auto_and_kernel,
)
from tests.uml.helpers import assert_kernel_wireguard, link_kind

# The kernel tests of tests/test_wireguard.py, which skip where the kernel has no WireGuard.
__all__ = ["netns", "test_kernel_backend_lifecycle", "test_open_backend_auto_and_kernel"]

pytestmark = pytest.mark.root

CLIENT_ADDRESS = "192.0.2.2"
SERVER_ADDRESS = "192.0.2.1"
CLIENT_TUNNEL = "10.9.0.2"
SERVER_TUNNEL = "10.9.0.1"
FWMARK = 0xCA6C


@dataclass
class Peers:
    client: str
    server: str
    server_if: str
    client_if: str
    client_private: str
    client_public: str
    server_public: str


def _wg_set(netns: str, ifname: str, key_file: Path, *args: str) -> None:
    ns.ns_exec(netns, ["wg", "set", ifname, "private-key", str(key_file), *args])


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    client = ns.unique_name("nwgt-kc-", limit=64)
    server = ns.unique_name("nwgt-ks-", limit=64)
    made: list[str] = []
    try:
        for name in (client, server):
            ns.create_netns(name)
            made.append(name)
        ns.veth("eth0", client, "eth0", server)
        ns.ip(client, "address", "add", f"{CLIENT_ADDRESS}/24", "dev", "eth0")
        ns.ip(server, "address", "add", f"{SERVER_ADDRESS}/24", "dev", "eth0")
        server_private, server_public = generate_keypair()
        client_private, client_public = generate_keypair()
        server_if = ns.unique_name("wks")
        ns.ip(server, "link", "add", server_if, "type", "wireguard")
        key_file = tmp_path / "server.key"
        key_file.touch(mode=0o600)
        key_file.write_text(server_private + "\n")
        _wg_set(
            server,
            server_if,
            key_file,
            *("listen-port", "51820", "peer", client_public),
            *("allowed-ips", f"{CLIENT_TUNNEL}/32"),
        )
        ns.ip(server, "address", "add", f"{SERVER_TUNNEL}/24", "dev", server_if)
        ns.ip(server, "link", "set", server_if, "up")
        yield Peers(
            client,
            server,
            server_if,
            ns.unique_name("wkc"),
            client_private,
            client_public,
            server_public,
        )
    finally:
        for name in made:
            ns.kill_processes_in(name)
            ns.delete_netns(name)


_BACKEND = textwrap.dedent(
    """
    import asyncio, json, sys
    from ipaddress import ip_address, ip_interface, ip_network
    from nordwgd.errors import TunnelFailed
    from nordwgd.model import Endpoint, Secret, TunnelParams
    from nordwgd.wireguard import open_backend

    request = json.loads(sys.stdin.read())
    op, ifname = request["op"], request["ifname"]

    def params(raw):
        return TunnelParams(
            private_key=Secret(raw["private_key"]), address=ip_interface(raw["address"]),
            peer_public_key=raw["peer_public_key"],
            endpoint=Endpoint(ip_address(raw["endpoint"]), raw["port"]),
            allowed_ips=tuple(ip_network(n) for n in raw["allowed_ips"]), dns=(),
            keepalive=raw["keepalive"])

    async def main():
        wg = open_backend(request.get("kind", "kernel"))
        reply = {"kind": wg.kind}
        try:
            if op == "create":
                reply["index"] = await wg.create(ifname)
            elif op == "configure":
                await wg.configure(ifname, params(request["params"]), request["fwmark"])
            elif op == "stats":
                stats = await wg.stats(ifname)
                reply.update(latest_handshake=stats.latest_handshake,
                             rx_bytes=stats.rx_bytes, tx_bytes=stats.tx_bytes)
            elif op == "destroy":
                await wg.destroy(ifname)
            reply["exists"] = await wg.exists(ifname)
        except TunnelFailed as error:
            reply["error"] = str(error)
        return reply

    print(json.dumps(asyncio.run(main())))
    """
)


def backend(netns: str, op: str, ifname: str, **fields: Any) -> dict[str, Any]:
    request = {"op": op, "ifname": ifname, **fields}
    done = ns.run_python(netns, _BACKEND, input=json.dumps(request))
    reply: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return reply


def tunnel_params(peers: Peers, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "private_key": peers.client_private,
        "address": f"{CLIENT_TUNNEL}/32",
        "peer_public_key": peers.server_public,
        "endpoint": SERVER_ADDRESS,
        "port": 51820,
        "allowed_ips": ["0.0.0.0/0"],
        "keepalive": 25,
    }
    value.update(overrides)
    return value


def wg_dump(netns: str, ifname: str) -> tuple[list[str], list[list[str]]]:
    """``wg show IF dump``: the interface's fields and one list of fields per peer."""
    lines = ns.ns_exec(netns, ["wg", "show", ifname, "dump"]).stdout.splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def bring_up(peers: Peers) -> None:
    ns.ip(peers.client, "address", "add", f"{CLIENT_TUNNEL}/32", "dev", peers.client_if)
    ns.ip(peers.client, "link", "set", peers.client_if, "up")
    ns.ip(peers.client, "route", "add", f"{SERVER_TUNNEL}/32", "dev", peers.client_if)


def ping(netns: str, address: str) -> bool:
    argv = ["ping", "-c", "1", "-W", "3", address]
    return ns.ns_exec(netns, argv, check=False).returncode == 0


def test_create_configure_statistics_delete(peers: Peers) -> None:
    created = backend(peers.client, "create", peers.client_if)
    assert created["kind"] == "kernel"
    assert created["index"] > 0 and created["exists"] is True
    assert_kernel_wireguard(peers.client, peers.client_if)
    # Created down, with no key and no peer.
    assert "state DOWN" in ns.ns_exec(peers.client, ["ip", "link", "show", peers.client_if]).stdout
    device, listed = wg_dump(peers.client, peers.client_if)
    assert device[0] == "(none)" and listed == []

    configured = backend(
        peers.client, "configure", peers.client_if, params=tunnel_params(peers), fwmark=FWMARK
    )
    assert "error" not in configured, configured
    device, listed = wg_dump(peers.client, peers.client_if)
    private, public, _port, fwmark = device
    assert (private, public) == (peers.client_private, peers.client_public)
    assert fwmark == hex(FWMARK)
    [peer] = listed
    assert peer[0] == peers.server_public
    assert peer[2] == f"{SERVER_ADDRESS}:51820"
    assert peer[3] == "0.0.0.0/0"
    assert peer[4] == "0"  # no handshake yet
    assert peer[7] == "25"  # persistent keepalive
    before = backend(peers.client, "stats", peers.client_if)
    assert (before["latest_handshake"], before["rx_bytes"]) == (0.0, 0)

    bring_up(peers)
    assert ping(peers.client, SERVER_TUNNEL)
    stats = backend(peers.client, "stats", peers.client_if)
    assert abs(stats["latest_handshake"] - time.time()) < 60
    _, [peer] = wg_dump(peers.client, peers.client_if)
    assert int(peer[4]) == int(stats["latest_handshake"])
    assert stats["rx_bytes"] > 0 and stats["tx_bytes"] > 0
    assert stats["rx_bytes"] <= int(peer[5]) and stats["tx_bytes"] <= int(peer[6])
    # The server's side saw the same handshake, over kernel WireGuard on both ends.
    device, _ = wg_dump(peers.client, peers.client_if)
    _, [server_peer] = wg_dump(peers.server, peers.server_if)
    assert server_peer[0] == peers.client_public and int(server_peer[4]) > 0
    assert server_peer[2] == f"{CLIENT_ADDRESS}:{device[2]}"

    destroyed = backend(peers.client, "destroy", peers.client_if)
    assert destroyed["exists"] is False
    assert link_kind(peers.client, peers.client_if) == ""
    again = backend(peers.client, "destroy", peers.client_if)
    assert "error" not in again and again["exists"] is False


def test_configure_replaces_the_peer_and_its_allowed_ips(peers: Peers) -> None:
    backend(peers.client, "create", peers.client_if)
    _, other_public = generate_keypair()
    first = tunnel_params(peers, peer_public_key=other_public, allowed_ips=["10.0.0.0/8"])
    assert "error" not in backend(
        peers.client, "configure", peers.client_if, params=first, fwmark=FWMARK
    )
    second = tunnel_params(peers, allowed_ips=["0.0.0.0/0", "::/0"], keepalive=0)
    assert "error" not in backend(
        peers.client, "configure", peers.client_if, params=second, fwmark=FWMARK
    )
    _, listed = wg_dump(peers.client, peers.client_if)
    assert [peer[0] for peer in listed] == [peers.server_public]
    assert sorted(listed[0][3].split(",")) == ["0.0.0.0/0", "::/0"]
    assert listed[0][7] == "off"
    # The same peer again with fewer allowed IPs: replaced, not added to.
    third = tunnel_params(peers, allowed_ips=["10.9.0.0/24"])
    assert "error" not in backend(
        peers.client, "configure", peers.client_if, params=third, fwmark=FWMARK
    )
    _, listed = wg_dump(peers.client, peers.client_if)
    assert [(peer[0], peer[3]) for peer in listed] == [(peers.server_public, "10.9.0.0/24")]
    bring_up(peers)
    assert ping(peers.client, SERVER_TUNNEL)
    backend(peers.client, "destroy", peers.client_if)


def test_errors_are_tunnel_failed_and_name_the_interface(peers: Peers) -> None:
    assert backend(peers.client, "create", peers.client_if)["exists"] is True
    again = backend(peers.client, "create", peers.client_if)
    assert f"an interface named {peers.client_if} exists already" in again["error"]
    bad = tunnel_params(peers, peer_public_key="bm90LWEta2V5")
    refused = backend(peers.client, "configure", peers.client_if, params=bad, fwmark=FWMARK)
    assert peers.client_if in refused["error"]
    backend(peers.client, "destroy", peers.client_if)
    missing = backend(peers.client, "stats", peers.client_if)
    assert f"cannot read WireGuard interface {peers.client_if}" in missing["error"]
    # Linux's own rule on names holds before netlink is asked.
    assert "invalid interface name" in backend(peers.client, "create", "x" * 16)["error"]


def test_auto_picks_the_kernel_and_the_secret_stays_out_of_the_log(
    peers: Peers, tmp_path: Path
) -> None:
    created = backend(peers.client, "create", peers.client_if, kind="auto")
    assert created["kind"] == "kernel"
    assert_kernel_wireguard(peers.client, peers.client_if)
    code = (
        "import logging, sys\n"
        f"logging.basicConfig(filename={str(tmp_path / 'log')!r}, level=logging.DEBUG)\n"
        f"exec(compile({_BACKEND!r}, 'backend', 'exec'))\n"
    )
    request = {
        "op": "configure",
        "ifname": peers.client_if,
        "params": tunnel_params(peers),
        "fwmark": FWMARK,
    }
    ns.run_python(peers.client, code, input=json.dumps(request))
    log = (tmp_path / "log").read_text()
    assert f"wg set {peers.client_if} peer {peers.server_public}" in log
    assert peers.client_private not in log
    backend(peers.client, "destroy", peers.client_if)
