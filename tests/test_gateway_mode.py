"""Gateway mode: other LAN hosts route through this host, and only ever through the tunnel.

A "LAN client" namespace hangs off the world's host namespace by a veth, on a private /24
listed in ``forward_from``, with its default route via the host. The real daemon runs in the
host namespace in gateway mode.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from nordwgd.config import NetworkConfig
from nordwgd.routing import IPV4_FORWARD, IPV6_FORWARD, SRC_VALID_MARK, plan
from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from tests.fixtures_dbus import DaemonProcess, PrivateBus, call_as, running_daemon

STATE_TIMEOUT = 60.0
INTERFACE = "org.nordwgd.Nordwgd1.Manager"


def sysctl_keys(network: NetworkConfig, *, ipv6: bool) -> list[str]:
    return [s["key"] for s in plan(network, "nordlynx", ipv6=ipv6) if s["step"] == "sysctl"]


def test_only_gateway_mode_forwards() -> None:
    clients = (ip_network("10.1.2.0/24"), ip_network("fd00:1::/64"))
    assert sysctl_keys(NetworkConfig(forward_from=clients), ipv6=True) == [SRC_VALID_MARK]
    gateway = NetworkConfig(mode="gateway", forward_from=clients)
    assert sysctl_keys(gateway, ipv6=False) == [SRC_VALID_MARK, IPV4_FORWARD]
    assert sysctl_keys(gateway, ipv6=True) == [SRC_VALID_MARK, IPV4_FORWARD, IPV6_FORWARD]
    v4_only = NetworkConfig(mode="gateway", forward_from=clients[:1])
    assert sysctl_keys(v4_only, ipv6=True) == [SRC_VALID_MARK, IPV4_FORWARD]


def call(bus: PrivateBus, member: str, signature: str = "", *body: object) -> None:
    reply = call_as(bus, None, member, signature, list(body))
    assert "error" not in reply, reply


def properties(bus: PrivateBus) -> dict[str, object]:
    reply = call_as(
        bus, None, "GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties"
    )
    assert "error" not in reply, reply
    body = reply["body"]
    assert isinstance(body, list) and isinstance(body[0], dict)
    return body[0]


def wait_state(daemon: DaemonProcess, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        props = properties(daemon.bus)
        if props["State"] == wanted:
            return props
        assert time.monotonic() < deadline, (
            f"state {props['State']} ({props['ErrorCause']}), not {wanted}:\n{daemon.log_text()}"
        )
        time.sleep(0.2)


class LanClient:
    """A namespace on a private /24 behind the world's host, default route via the host."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.netns = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-lan{secrets.token_hex(2)}"
        octet = 16 + secrets.randbelow(200)
        self.network = ip_network(f"10.{octet}.77.0/24")
        self.gateway = f"10.{octet}.77.1"
        self.address = f"10.{octet}.77.2"

    def build(self) -> None:
        ns.create_netns(self.netns)
        ns.veth("eth0", self.netns, "lan0", self.world.host_ns)
        ns.ip(self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        ns.ip(self.world.host_ns, "addr", "add", f"{self.gateway}/24", "dev", "lan0")
        ns.ip(self.netns, "route", "add", "default", "via", self.gateway)

    def close(self) -> None:
        ns.kill_processes_in(self.netns)
        ns.delete_netns(self.netns)

    def http_get(self, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        url = f"http://{self.world.web_address}/"
        return ns.ns_exec(
            self.netns,
            ["curl", "-sS", "--max-time", str(timeout), url],
            check=False,
            timeout=timeout + 10,
        )


def ip_forward(world: World) -> str:
    return world.host_exec(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()


@contextlib.contextmanager
def forwarding_forced(world: World) -> Iterator[None]:
    """IPv4 forwarding on in the host namespace (as an admin might have it), then restored."""
    old = ip_forward(world)
    world.host_exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    try:
        yield
    finally:
        world.host_exec(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={old}"])


@pytest.fixture
def lan_client(world: World) -> Iterator[LanClient]:
    client = LanClient(world)
    try:
        client.build()
        yield client
    finally:
        client.close()


@pytest.mark.root
def test_lan_clients_go_through_the_tunnel_or_nowhere(
    world: World, lan_client: LanClient, private_bus: PrivateBus, tmp_path: Path
) -> None:
    assert world.leak_monitor is not None
    config = world.write_config(
        tmp_path / "nordwgd.toml",
        network={"mode": "gateway", "forward_from": [str(lan_client.network)]},
        health={"handshake_timeout": 1.0},
    )
    before = ip_forward(world)
    assert before == "0"
    with running_daemon(private_bus, world.host_ns, config, tmp_path / "daemon.log") as daemon:
        assert properties(private_bus)["Mode"] == "gateway"
        # Disconnected without lockdown is open, but nothing forwards yet.
        world.leak_monitor.reset()
        assert lan_client.http_get(timeout=2).returncode != 0
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()
        # The monitor does see forwarded traffic that takes the uplink (open, forwarding on).
        with forwarding_forced(world):
            lan_client.http_get(timeout=2)
        assert world.leak_monitor.count() > 0

        # Error (no server answers): the forward chain drops, whatever ip_forward says.
        for each in world.servers:
            world.silence_server(each.hostname)
        try:
            call(private_bus, "Connect", "a{sv}", {})
            props = wait_state(daemon, "error")
            assert props["Blocking"] == "blocked"
            world.leak_monitor.reset()
            with forwarding_forced(world):
                assert lan_client.http_get(timeout=2).returncode != 0
            assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()
        finally:
            for each in world.servers:
                world.unsilence_server(each.hostname)

        call(private_bus, "Connect", "a{sv}", {})
        props = wait_state(daemon, "connected")
        server = props["Server"]
        assert isinstance(server, dict)
        station = world.server(str(server["hostname"])).station
        world.leak_monitor.reset()
        seen = lan_client.http_get()
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.strip() == station
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()
        assert ip_forward(world) == "1"

        call(private_bus, "Disconnect")
        wait_state(daemon, "disconnected")
        assert ip_forward(world) == before

        # Lockdown: after a disconnect the client's traffic never leaves by the uplink, even
        # with forwarding switched on by someone else: the forward chain drops it.
        call(private_bus, "SetLockdown", "b", True)
        call(private_bus, "Connect", "a{sv}", {})
        wait_state(daemon, "connected")
        assert lan_client.http_get().stdout.strip() in {s.station for s in world.servers}
        call(private_bus, "Disconnect")
        props = wait_state(daemon, "disconnected")
        assert props["Blocking"] == "blocked"
        assert ip_forward(world) == before
        world.leak_monitor.reset()
        with forwarding_forced(world):
            assert lan_client.http_get(timeout=2).returncode != 0
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()
        call(private_bus, "SetLockdown", "b", False)
        assert daemon.stop() == 0, daemon.log_text()
