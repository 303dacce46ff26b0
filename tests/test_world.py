"""The test world itself: topology, services, a manual WireGuard client, the leak monitor."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from nordwgd.testing.netns import list_netns
from nordwgd.testing.world import World, WorldServer, to_toml

pytestmark = pytest.mark.root

# Runs in the host namespace: a WireGuard client to one world server built from the userspace
# backend, routes for the web server and tunnel DNS only, then one HTTP GET and one DNS query.
_CLIENT = textwrap.dedent(
    """
    import asyncio, json, socket, struct, subprocess, sys, urllib.request
    from ipaddress import ip_address, ip_interface, ip_network
    from nordwgd.model import Endpoint, Secret, TunnelParams
    from nordwgd.wireguard.userspace import UserspaceBackend
    args = json.loads(sys.argv[1])
    private = sys.stdin.read().strip()

    def dns_query(server, name):
        query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
        query += struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(query, (server, 53))
            reply = sock.recv(512)
        return socket.inet_ntoa(reply[-4:])

    async def main():
        wg = UserspaceBackend()
        name = args["ifname"]
        await wg.create(name)
        result = {}
        try:
            await wg.configure(name, TunnelParams(
                private_key=Secret(private), address=ip_interface("10.5.0.2/32"),
                peer_public_key=args["public_key"],
                endpoint=Endpoint(ip_address(args["station"]), 51820),
                allowed_ips=(ip_network("0.0.0.0/0"),), dns=(), keepalive=1), 0)
            for cmd in (["ip", "addr", "add", "10.5.0.2/32", "dev", name],
                        ["ip", "link", "set", name, "up"],
                        ["ip", "route", "add", args["web"] + "/32", "dev", name],
                        ["ip", "route", "add", args["dns"] + "/32", "dev", name]):
                subprocess.run(cmd, check=True)
            for _ in range(int(args["wait"] / 0.02)):
                stats = await wg.stats(name)
                if stats.latest_handshake and stats.rx_bytes:
                    break
                await asyncio.sleep(0.02)
            result["handshake"] = stats.latest_handshake
            if args["use"]:
                def fetch():
                    url = "http://" + args["web"] + "/"
                    return urllib.request.urlopen(url, timeout=5).read().decode()
                result["seen"] = await asyncio.to_thread(fetch)
                result["resolved"] = await asyncio.to_thread(dns_query, args["dns"], "web.test")
        finally:
            await wg.destroy(name)
        return result

    print(json.dumps(asyncio.run(main())))
    """
)


def _client(world: World, server: WorldServer, *, use: bool, wait: float) -> dict[str, object]:
    args = {
        "ifname": world.interface,
        "public_key": server.public_key,
        "station": server.station,
        "web": world.web_address,
        "dns": world.tunnel_dns,
        "use": use,
        "wait": wait,
    }
    result = world.host_python(_CLIENT, json.dumps(args), input=world.client_private_key.reveal())
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _our_processes(world: World) -> list[int]:
    return [p.pid for p in world._processes if p.poll() is None]


def test_build_and_close_leave_nothing_behind(tmp_path: Path) -> None:
    world = World.build(tmp_path / "w", n_servers=2)
    names = [world.host_ns, world.router_ns, *(server.netns for server in world.servers)]
    sockets = [Path(f"/var/run/wireguard/{server.interface}.sock") for server in world.servers]
    assert set(names) <= set(list_netns())
    assert all(sock.exists() for sock in sockets)
    assert len(_our_processes(world)) == 2 + 3  # two peers, API, web, DNS
    assert Path(f"/etc/netns/{world.host_ns}/resolv.conf").exists()
    world.close()
    world.close()
    assert not set(names) & set(list_netns())
    assert not any(sock.exists() for sock in sockets)
    assert _our_processes(world) == []
    assert not Path(f"/etc/netns/{world.host_ns}").exists()
    assert not world.control_path.parent.exists()


def test_close_after_a_failed_build_cleans_up(tmp_path: Path) -> None:
    world = World(tmp_path / "w", n_servers=2)
    world.specs[1] = replace(world.specs[1], station="not-an-address")
    try:
        with pytest.raises(RuntimeError, match="not-an-address"):
            world._build()
    finally:
        world.close()
    assert not [name for name in list_netns() if world.id in name]
    assert not list(Path("/var/run/wireguard").glob(f"*{world.id}*"))


def test_without_tunnel_the_internet_sees_the_host_lan_address(world: World) -> None:
    assert world.http_get_from_host() == world.host_address
    assert world.http_get_from_host(f"http://{world.web_address}/health") == "ok"


def test_host_resolver_is_the_lan_dns(world: World) -> None:
    resolv = world.host_exec(["cat", "/etc/resolv.conf"]).stdout
    assert resolv.strip() == f"nameserver {world.lan_dns}"
    answer = world.host_exec(["getent", "ahostsv4", "web.test"]).stdout
    assert world.web_address in answer
    queries = world.dns_queries()
    assert any(
        q.server == world.lan_dns and q.client == world.host_address and q.name == "web.test"
        for q in queries
    )


@pytest.mark.parametrize("index", [0, 1])
def test_fake_api_answers_over_tls_at_each_pinned_address(world: World, index: int) -> None:
    assert world.pki is not None
    address = world.api_addresses[index]
    out = world.host_exec(
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            str(world.pki.ca_cert),
            "--resolve",
            f"{world.api_host}:443:{address}",
            f"https://{world.api_host}/v1/helpers/ips/insights",
        ]
    ).stdout
    insights = json.loads(out)
    assert insights["ip"] == world.host_address
    assert insights["protected"] is False


def test_fake_api_knows_the_world_fleet_and_token(world: World) -> None:
    assert world.pki is not None
    assert world.fleet is not None
    listed = {spec.hostname: spec.public_key for spec in world.fleet.servers}
    assert listed == {server.hostname: server.public_key for server in world.servers}
    assert world.fleet.tokens == {world.token.reveal(): world.client_private_key.reveal()}
    assert str(world.token) == "<redacted>"
    assert world.token_file.stat().st_mode & 0o777 == 0o600


def test_manual_tunnel_reaches_the_internet_as_the_server(world: World) -> None:
    assert world.leak_monitor is not None
    server = world.servers[1]
    world.leak_monitor.reset()
    result = _client(world, server, use=True, wait=10.0)
    assert result["handshake"] != 0.0
    assert result["seen"] == server.station
    assert result["resolved"] == world.web_address
    tunnelled = [q for q in world.dns_queries() if q.server == world.tunnel_dns]
    assert [(q.client, q.name) for q in tunnelled] == [(server.station, "web.test")]
    assert world.leak_monitor.leaks() == []


def test_leak_monitor_counts_traffic_outside_the_tunnel(world: World) -> None:
    assert world.leak_monitor is not None and world.pki is not None
    world.leak_monitor.reset()
    world.host_exec(
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            str(world.pki.ca_cert),
            "--resolve",
            f"{world.api_host}:443:{world.api_addresses[0]}",
            f"https://{world.api_host}/v1/helpers/ips/insights",
        ]
    )
    assert world.leak_monitor.count() == 0
    world.host_exec(["ping", "-c", "1", "-W", "2", world.web_address])
    assert world.leak_monitor.count() >= 1
    leaks = {(leak.destination, leak.protocol) for leak in world.leak_monitor.leaks()}
    assert (world.web_address, "icmp") in leaks
    world.leak_monitor.reset()
    assert world.leak_monitor.count() == 0
    assert world.leak_monitor.leaks() == []


def test_silenced_server_gives_no_handshake(world: World) -> None:
    server = world.servers[0]
    world.silence_server(server.hostname)
    assert _client(world, server, use=False, wait=1.5)["handshake"] == 0.0
    world.unsilence_server(server.hostname)
    assert _client(world, server, use=False, wait=10.0)["handshake"] != 0.0


def test_processes_can_run_as_an_unprivileged_user(world: World) -> None:
    assert world.host_exec(["id", "-u"], user="65534").stdout.strip() == "65534"
    assert world.http_get_from_host(user="65534") == world.host_address


def test_write_config_points_the_daemon_at_this_world(world: World, tmp_path: Path) -> None:
    import tomllib

    path = world.write_config(tmp_path / "nordwgd.toml", network={"lockdown": True})
    values = tomllib.loads(path.read_text())
    assert values["api"]["addresses"] == list(world.api_addresses)
    assert values["dns"]["servers"] == [world.tunnel_dns]
    assert values["network"]["interface"] == world.interface
    assert values["network"]["lockdown"] is True
    assert Path(values["token_file"]).read_text().strip() == world.token.reveal()
    assert world.token.reveal() not in path.read_text()


def test_to_toml_writes_what_tomllib_reads() -> None:
    import tomllib

    values = {"log_level": "info", "a": {"s": 'quote " here', "n": 3, "f": 0.5, "l": ["x"]}}
    assert tomllib.loads(to_toml(values)) == values


def test_fault_control_reaches_the_fake_api(world: World) -> None:
    assert world.pki is not None
    world.fault("500", count=1)
    curl = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--cacert",
        str(world.pki.ca_cert),
        "--resolve",
        f"{world.api_host}:443:{world.api_addresses[0]}",
        f"https://{world.api_host}/v1/helpers/ips/insights",
    ]
    assert world.host_exec(curl).stdout == "500"
    assert world.host_exec(curl).stdout == "200"
    assert any("/v1/helpers/ips/insights" in str(r) for r in world.api_requests())
