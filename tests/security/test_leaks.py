"""Leak-proof under faults, network half: what leaves the host in every state of the real daemon.

One world and one daemon serve the module; every scenario starts from ``stack.reset()``
(disconnected, open, servers answering, leak monitor at zero). Each drives the daemon over
D-Bus, probes from the host like ordinary programs would, and reads the leak monitor on the
router's end of the uplink: it counts every packet that is not WireGuard to a station, HTTPS
to the pinned API or link housekeeping.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from nordwgd.testing.netns import nft
from tests.fixtures_dbus import PYTHON, REPO
from tests.security.harness import (
    NOBODY,
    UNROUTED_RESOLVER,
    BusError,
    Stack,
    answered,
    stack_fixture,
)
from tests.security.ledger import ScenarioRecorder

pytestmark = [pytest.mark.root, pytest.mark.slow]

stack = stack_fixture()

NO_SERVER_COUNTRY = "Japan"  # in the catalog, but the world's fleet has no server there


def _record_leaks(stack: Stack, ledger: ScenarioRecorder) -> int:
    count = stack.leaked()
    ledger.leaked(count)
    return count


def _silence_all(stack: Stack, ledger: ScenarioRecorder) -> None:
    for server in stack.world.servers:
        stack.world.silence_server(server.hostname)
    ledger.fault(f"{len(stack.world.servers)} servers blackholed")


def test_positive_control_open_traffic_is_counted(stack: Stack, ledger: ScenarioRecorder) -> None:
    """Disconnected without lockdown: traffic flows and the monitor sees it (it works)."""
    stack.reset()
    props = stack.props()
    assert (props["State"], props["Blocking"]) == ("disconnected", "open")

    results = stack.probes.standard()

    assert results["http"] == stack.world.host_address
    assert results["ping"] is True
    assert results["dns_lan"] == "answered"
    assert results["tcp_web"] == "answered"
    counted = stack.leaked()
    destinations = {leak.destination for leak in stack.leaks()}
    # Open traffic is allowed, so nothing here is a leak; the ledger records none.
    ledger.leaked(0)
    assert counted >= 6, stack.leaks()
    assert {stack.world.web_address, stack.world.lan_dns, UNROUTED_RESOLVER} <= destinations


def test_blackholed_servers_block_until_error(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    _silence_all(stack, ledger)

    stack.client.connect()
    props = stack.wait_for_state("connecting", Blocking="blocked", timeout=15)
    during_connecting = stack.probes.standard()
    props = stack.wait_for_state("error", ErrorCause="tunnel-failed", timeout=60)
    in_error = stack.probes.standard()

    assert props["Blocking"] == "blocked"
    assert props["Server"] == {}
    assert "connected" not in stack.states_seen
    assert answered(during_connecting) == [], during_connecting
    assert answered(in_error) == [], in_error
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_bad_locations_keep_blocking(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    with pytest.raises(BusError) as refused:
        stack.client.connect(country="Atlantis")
    ledger.bad_inputs()
    assert refused.value.nick == "UnknownLocation"
    props = stack.props()
    assert (props["State"], props["Blocking"]) == ("disconnected", "open")

    _silence_all(stack, ledger)
    stack.client.connect()
    stack.wait_for_state("connecting", Blocking="blocked", timeout=15)
    with pytest.raises(BusError) as refused:
        stack.client.connect(country="Atlantis")
    ledger.bad_inputs()
    assert refused.value.nick == "UnknownLocation"
    assert stack.props()["Blocking"] == "blocked"

    stack.client.connect(country=NO_SERVER_COUNTRY)
    ledger.bad_inputs()
    props = stack.wait_for_state("error", ErrorCause="no-server", timeout=30)
    results = stack.probes.standard()

    assert props["Blocking"] == "blocked"
    assert answered(results) == [], results
    assert "connected" not in stack.states_seen
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_connected_traffic_and_dns_only_through_the_tunnel(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    world = stack.world
    props = stack.connect_and_wait()
    station = world.server(props["Server"]["hostname"]).station
    before = len(world.dns_queries())
    stack.reset_leaks()

    seen_by_web = stack.probes.http()
    resolved = stack.probes.resolve()
    lan_dns = stack.probes.dns(world.lan_dns)
    other_dns = stack.probes.dns(UNROUTED_RESOLVER, timeout=0.5)
    tcp_dns = stack.probes.sockets(
        [{"kind": "tcp", "host": world.lan_dns, "port": 53, "timeout": 1.0}]
    )[0]
    ipv6 = world.host_exec(
        ["ping", "-6", "-n", "-c", "1", "-W", "1", f"ff02::1%{world.uplink}"], check=False
    )
    queries = world.dns_queries()[before:]

    assert seen_by_web == station
    assert resolved == world.web_address
    assert queries, "the name was not resolved by any resolver of the world"
    assert {(q.server, q.client) for q in queries} == {(world.tunnel_dns, station)}
    assert lan_dns != "answered" and other_dns != "answered" and tcp_dns != "answered"
    assert ipv6.returncode != 0
    assert stack.props()["State"] == "connected"
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_lockdown_and_allow_lan(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    world = stack.world
    stack.client.call("SetLockdown", "b", [True])
    props = stack.wait_for_state("disconnected", Blocking="blocked", Lockdown=True, timeout=10)
    locked = stack.probes.standard()
    router_reachable = stack.probes.ping(world.router_lan)
    assert answered(locked) == [], locked
    assert router_reachable is False
    assert props["AllowLan"] is False

    stack.client.call("SetAllowLan", "b", [True])
    stack.wait_for_state("disconnected", Blocking="blocked", AllowLan=True, timeout=10)
    lan_ping = stack.probes.ping(world.router_lan)
    lan_dns = stack.probes.dns(world.lan_dns)
    with_lan = stack.probes.standard()

    assert lan_ping is True
    assert lan_dns != "answered"
    assert answered(with_lan) == [], with_lan
    # LAN traffic is what the user allowed; anything else counted is a leak.
    leaks = [
        leak
        for leak in stack.leaks()
        if not (leak.destination == world.router_lan and leak.protocol == "icmp")
    ]
    ledger.leaked(sum(leak.packets for leak in leaks))
    assert leaks == []


def test_public_lan_range_is_refused_at_start(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    config = stack.world.write_config(
        stack.directory / "public-lan.toml",
        network={"lan": [str(stack.world.lan_network), "198.51.100.0/24"], "allow_lan": True},
    )
    ledger.bad_inputs()
    argv = ["ip", "netns", "exec", stack.world.host_ns, PYTHON, "-m", "nordwgd"]
    result = subprocess.run(
        [*argv, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 78, result.stderr
    assert "198.51.100.0/24" in result.stderr and "not a private range" in result.stderr
    assert "lan" in result.stderr and "Traceback" not in result.stderr
    # The running daemon and its open state were not touched.
    assert stack.props()["Blocking"] == "open"
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


_DRIP = r"""
import socket, sys, time
sock = socket.create_connection((sys.argv[1], 80), 5)
sock.sendall(b"GET /slow HTTP/1.1\r\nHost: web\r\n")
print("open", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        sock.send(b"X-Drip: 1\r\n")
    except OSError:
        pass
    time.sleep(0.1)
"""


@contextlib.contextmanager
def _dripping_flow(stack: Stack, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A TCP flow to the web server that sends a header line every 0.1 s (never finishing)."""
    process = stack.world.host_popen(
        [sys.executable, "-c", _DRIP, stack.world.web_address, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open", process.stderr
        yield process
    finally:
        process.kill()
        process.wait(10)


def _conntrack_knows(stack: Stack) -> bool:
    listing = stack.world.host_exec(
        ["conntrack", "-L", "-p", "tcp", "--dport", "80", "-d", stack.world.web_address],
        check=False,
    ).stdout
    return "ESTABLISHED" in listing


@contextlib.contextmanager
def _connection_tracking(stack: Stack) -> Iterator[None]:
    """Track connections in the host namespace while open, as any host firewall (or container
    runtime) does: the old flow is then ESTABLISHED in conntrack before the kill switch."""
    nft(
        stack.world.host_ns,
        "table inet nwgt_track {\n"
        "  chain output { type filter hook output priority 10; ct state new counter; }\n"
        "}\n",
    )
    try:
        yield
    finally:
        nft(stack.world.host_ns, "delete table inet nwgt_track\n", check=False)


@pytest.mark.parametrize("engage", ["lockdown", "connect"])
def test_flow_opened_before_the_kill_switch_stops_leaking(
    stack: Stack, ledger: ScenarioRecorder, engage: str
) -> None:
    stack.reset()
    with _connection_tracking(stack), _dripping_flow(stack, 40.0):
        time.sleep(0.5)
        assert stack.leaked() > 0  # the flow is on the uplink while open
        assert _conntrack_knows(stack)
        ledger.fault(f"a TCP flow opened before the kill switch ({engage})")
        if engage == "lockdown":
            stack.client.call("SetLockdown", "b", [True])
            stack.wait_for_state("disconnected", Blocking="blocked", timeout=10)
        else:
            stack.connect_and_wait()
        stack.reset_leaks()
        time.sleep(2.0)  # about 20 more lines of the old flow
        still_known = _conntrack_knows(stack)
        leaked = _record_leaks(stack, ledger)
    assert still_known
    assert leaked == 0, stack.leaks()


_PAYLOAD = "nwgdpay."  # 8 bytes the router-side counter matches in UDP payloads
_PAYLOAD_TABLE = "nwgt_payload"


@contextlib.contextmanager
def _payload_counter(stack: Stack) -> Iterator[None]:
    """Count UDP packets to port 51820 carrying ``_PAYLOAD`` at the router's uplink end."""
    hexed = "0x" + _PAYLOAD.encode().hex()
    nft(
        stack.world.router_ns,
        f"table netdev {_PAYLOAD_TABLE} {{\n"
        f"  counter seen {{ }}\n"
        f"  chain ingress {{\n"
        f'    type filter hook ingress device "{stack.world.uplink_router}" priority -10;\n'
        f'    udp dport 51820 @ih,0,64 {hexed} counter name "seen"\n'
        f"  }}\n}}\n",
    )
    try:
        yield
    finally:
        nft(stack.world.router_ns, f"delete table netdev {_PAYLOAD_TABLE}\n", check=False)


def _payload_seen(stack: Stack) -> int:
    out = stack.world.router_exec(["nft", "list", "counter", "netdev", _PAYLOAD_TABLE, "seen"])
    words = out.split()
    return int(words[words.index("packets") + 1])


def _arp_answered(stack: Stack, address: str) -> bool:
    out = stack.world.router_exec(
        ["arping", "-c", "2", "-w", "3", "-I", stack.world.uplink_router, address], check=False
    )
    return "Received 0 response" not in out and "Unicast reply" in out


def test_unprivileged_payload_to_the_endpoint_and_arp(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    world = stack.world
    with _payload_counter(stack):
        station = world.servers[0].station
        stack.probes.udp(station, 51820, _PAYLOAD, user=NOBODY)
        assert _payload_seen(stack) == 1  # the counter sees it while traffic is open

        _silence_all(stack, ledger)
        stack.client.connect()
        props = stack.wait_for(
            lambda p: p["State"] == "connecting" and bool(p["Server"]), 15, "a server to try"
        )
        endpoint = props["Server"]["endpoint"].rsplit(":", 1)[0]
        connecting = [stack.probes.udp(endpoint, 51820, _PAYLOAD, user=NOBODY) for _ in range(3)]
        seen_connecting = _payload_seen(stack) - 1

        stack.client.call("Disconnect")
        stack.wait_for_state("disconnected", timeout=20)
        for server in world.servers:
            world.unsilence_server(server.hostname)
        props = stack.connect_and_wait()
        endpoint = props["Server"]["endpoint"].rsplit(":", 1)[0]
        stack.reset_leaks()
        connected = [stack.probes.udp(endpoint, 51820, _PAYLOAD, user=NOBODY) for _ in range(3)]
        seen_connected = _payload_seen(stack) - 1
    assert _arp_answered(stack, world.host_address)  # arping works at all
    tunnel_arp = _arp_answered(stack, props["TunnelAddress"].split("/")[0])

    assert seen_connecting == 0, connecting
    assert seen_connected == 0, connected
    assert tunnel_arp is False, "the host answers ARP for its tunnel address on the LAN"
    assert _record_leaks(stack, ledger) == 0, stack.leaks()
    stack.client.call("Disconnect")
    stack.wait_for_state("disconnected", timeout=20)
    arp_ignore = world.host_exec(["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"]).stdout
    assert arp_ignore.strip() == "0"  # restored with the routes


def test_ipv6_uplink_and_a_route_that_pulls_traffic_off_the_tunnel(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    world = stack.world
    host_v6, router_v6 = "2001:db8:6::2", "2001:db8:6::1"
    steal = "198.51.100.0/25"
    world.host_exec(["ip", "-6", "addr", "add", f"{host_v6}/64", "dev", world.uplink, "nodad"])
    try:
        world.router_exec(
            ["ip", "-6", "addr", "add", f"{router_v6}/64", "dev", world.uplink_router, "nodad"]
        )
        world.host_exec(["ip", "-6", "route", "add", "default", "via", router_v6])
        ledger.fault("global IPv6 on the uplink with an IPv4-only tunnel")
        assert stack.probes.ping(router_v6, timeout=2)  # IPv6 works while open

        stack.connect_and_wait()
        stack.reset_leaks()
        v6_ping = stack.probes.ping(router_v6)
        v6_sockets = stack.probes.sockets(
            [
                {"kind": "dns", "host": router_v6, "port": 53, "name": "web.test", "timeout": 1},
                {"kind": "tcp", "host": "2001:db8:80::80", "port": 80, "timeout": 1},
            ]
        )
        v6_leaks = _record_leaks(stack, ledger)

        world.host_exec(["ip", "route", "add", steal, "via", world.router_lan])
        ledger.fault(f"route {steal} via the LAN gateway while connected")
        stack.reset_leaks()
        stolen = stack.probes.http(timeout=2)
        stolen_ping = stack.probes.ping(world.web_address)
        route_leaks = _record_leaks(stack, ledger)
    finally:
        world.host_exec(["ip", "route", "del", steal], check=False)
        world.host_exec(["ip", "-6", "route", "del", "default"], check=False)
        world.host_exec(
            ["ip", "-6", "addr", "del", f"{host_v6}/64", "dev", world.uplink], check=False
        )
        world.router_exec(
            ["ip", "-6", "addr", "del", f"{router_v6}/64", "dev", world.uplink_router],
            check=False,
        )

    assert v6_ping is False
    assert "answered" not in v6_sockets, v6_sockets
    assert v6_leaks == 0, "IPv6 left the host while connected"
    assert stolen is None and stolen_ping is False
    assert route_leaks == 0, "traffic left through the more specific LAN route"
