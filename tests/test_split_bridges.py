"""A Docker-shaped bridge behind the real daemon: through the tunnel, or nowhere.

In the world's host namespace the test builds what ``dockerd`` builds for its default network:
the bridge ``docker0`` (172.17.0.1/16), a veth into a "container" namespace (172.17.0.2, default
route via the bridge), IPv4 forwarding, and Docker's iptables-nft rules (filter FORWARD with
DOCKER-USER and the isolation chains, nat PREROUTING/OUTPUT to DOCKER, MASQUERADE of the
subnet, a published port 8080 -> 172.17.0.2:80). A web server in the container stands in for
a published service.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from tests.fixtures_dbus import DaemonProcess, PrivateBus, running_daemon
from tests.test_gateway_mode import call, properties, wait_state

BRIDGE = "docker0"
SUBNET = "172.17.0.0/16"
BRIDGE_ADDRESS = "172.17.0.1"
CONTAINER_ADDRESS = "172.17.0.2"
PUBLISHED = 8080
CTR = CONTAINER_ADDRESS

# What dockerd 24 installs for the default bridge and one published port (iptables-save form).
DOCKER_RULES = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {SUBNET} ! -o {BRIDGE} -j MASQUERADE
-A POSTROUTING -s {CTR}/32 -d {CTR}/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i {BRIDGE} -j RETURN
-A DOCKER ! -i {BRIDGE} -p tcp -m tcp --dport {PUBLISHED} -j DNAT --to-destination {CTR}:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {BRIDGE} -j DOCKER
-A FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT
-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT
-A DOCKER -d {CTR}/32 ! -i {BRIDGE} -o {BRIDGE} -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {BRIDGE} ! -o {BRIDGE} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""


class DockerShaped:
    """docker0, one container namespace on it, Docker's rules, forwarding on."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.netns = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-ctr{secrets.token_hex(2)}"
        self.server: subprocess.Popen[str] | None = None

    def build(self) -> None:
        host = self.world.host_ns
        ns.create_netns(self.netns)
        ns.ip(host, "link", "add", BRIDGE, "type", "bridge")
        ns.ip(host, "addr", "add", f"{BRIDGE_ADDRESS}/16", "dev", BRIDGE)
        ns.ip(host, "link", "set", BRIDGE, "up")
        ns.veth("vethc0", host, "eth0", self.netns)
        ns.ip(host, "link", "set", "vethc0", "master", BRIDGE)
        ns.ip(self.netns, "addr", "add", f"{CONTAINER_ADDRESS}/16", "dev", "eth0")
        ns.ip(self.netns, "route", "add", "default", "via", BRIDGE_ADDRESS)
        ns.sysctl(host, "net.ipv4.ip_forward", "1")
        self.world.host_exec(["iptables-nft-restore", "--noflush"], input=DOCKER_RULES)
        self.server = ns.popen_python_module(
            self.netns, "nordwgd.testing.webserver", f"--listen={CONTAINER_ADDRESS}:80"
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
        ns.kill_processes_in(self.netns)
        ns.delete_netns(self.netns)

    def fetch(self, timeout: float = 3) -> str | None:
        """What the web server saw as the container's address; None when nothing came back."""
        url = f"http://{self.world.web_address}/"
        argv = ["curl", "-sS", "--max-time", str(timeout), url]
        result = ns.ns_exec(self.netns, argv, check=False, timeout=timeout + 10)
        return result.stdout.strip() if result.returncode == 0 else None

    def resolve(self, server: str) -> str:
        argv = ["dig", f"@{server}", "+short", "+time=2", "+tries=1", "web.test"]
        result = ns.ns_exec(self.netns, argv, check=False, timeout=15)
        return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture
def docker(world: World) -> Iterator[DockerShaped]:
    shaped = DockerShaped(world)
    try:
        shaped.build()
        yield shaped
    finally:
        shaped.close()


def stations(world: World) -> set[str]:
    return {server.station for server in world.servers}


def published_from_lan(world: World, timeout: float = 3) -> str | None:
    """From the LAN (the router), the container's port published on the host's address."""
    argv = ["curl", "-sS", "--max-time", str(timeout), f"http://{world.host_address}:{PUBLISHED}/"]
    result = ns.ns_exec(world.router_ns, argv, check=False, timeout=timeout + 10)
    return result.stdout.strip() if result.returncode == 0 else None


def wait_until(what: str, check: object, daemon: DaemonProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}:\n{daemon.log_text()}"
        time.sleep(0.2)


@pytest.mark.root
@pytest.mark.slow
def test_docker_bridge_goes_through_the_tunnel_or_nowhere(
    world: World, docker: DockerShaped, private_bus: PrivateBus, tmp_path: Path
) -> None:
    monitor = world.leak_monitor
    assert monitor is not None
    # Without nordwgd the "container" reaches the web by the uplink (Docker's masquerade): the
    # setup is real, and the leak monitor sees it.
    monitor.reset()
    assert docker.fetch() == world.host_address
    assert monitor.count() > 0

    config = world.write_config(tmp_path / "nordwgd.toml", health={"handshake_timeout": 3.0})
    with running_daemon(private_bus, world.host_ns, config, tmp_path / "daemon.log") as daemon:
        call(private_bus, "Connect", "a{sv}", {})
        wait_state(daemon, "connected")
        reply = ns.run(
            [
                "ip",
                "netns",
                "exec",
                world.host_ns,
                "nft",
                "list",
                "set",
                "inet",
                "nordwgd",
                "local_bridges",
            ]
        ).stdout
        assert '"docker0"' in reply and '"br-*"' in reply

        # Connected: through the tunnel, DNS through the tunnel DNS, nothing leaks.
        monitor.reset()
        assert docker.fetch() in stations(world), daemon.log_text()
        # The container asks the LAN resolver (as a copied resolv.conf would); the query goes
        # to the tunnel DNS through the tunnel instead.
        assert docker.resolve(world.lan_dns) == world.web_address
        assert docker.resolve(world.tunnel_dns) == world.web_address
        assert monitor.count() == 0, monitor.leaks()
        queries = [q for q in world.dns_queries() if q.name.rstrip(".") == "web.test"]
        assert queries and all(q.server == world.tunnel_dns for q in queries), queries
        assert all(q.client in stations(world) for q in queries), queries

        # Published port from the LAN: refused without AllowLan, served with it.
        assert published_from_lan(world) is None
        call(private_bus, "SetAllowLan", "b", True)
        assert published_from_lan(world) == world.router_lan
        call(private_bus, "SetAllowLan", "b", False)

        # Reconnecting and error (no server answers): nothing leaves, nothing leaks.
        for each in world.servers:
            world.silence_server(each.hostname)
        try:
            monitor.reset()
            call(private_bus, "Reconnect")
            wait_until(
                "reconnecting",
                lambda: properties(private_bus)["State"] in ("reconnecting", "error"),
                daemon,
            )
            # Each silent server takes handshake_timeout: reconnecting lasts seconds.
            assert properties(private_bus)["State"] == "reconnecting"
            assert docker.fetch(timeout=1) is None
            assert docker.resolve(world.lan_dns) == ""
            wait_state(daemon, "error")
            assert docker.fetch(timeout=1) is None
            assert docker.resolve(world.lan_dns) == ""
            assert monitor.count() == 0, monitor.leaks()
        finally:
            for each in world.servers:
                world.unsilence_server(each.hostname)

        # Lockdown after a disconnect: nothing outside, nothing leaks; the host still reaches
        # the container (that traffic stays on the machine).
        call(private_bus, "SetLockdown", "b", True)
        call(private_bus, "Disconnect")
        props = wait_state(daemon, "disconnected")
        assert props["Blocking"] == "blocked"
        monitor.reset()
        assert docker.fetch(timeout=1) is None
        assert docker.resolve(world.lan_dns) == ""
        assert monitor.count() == 0, monitor.leaks()
        host_view = world.host_exec(
            ["curl", "-sS", "--max-time", "3", f"http://{CONTAINER_ADDRESS}/"]
        ).stdout.strip()
        assert host_view == BRIDGE_ADDRESS
        call(private_bus, "SetLockdown", "b", False)
        wait_state(daemon, "disconnected")
        assert daemon.stop() == 0, daemon.log_text()
