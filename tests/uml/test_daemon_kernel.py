"""The real daemon (``python -m nordwgd`` on a private bus) on kernel WireGuard, driven by
nordwgctl as a user would, with the world's leak monitor watching the uplink."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.privatebus import PrivateBus
from nordwgd.testing.world import World
from tests.fixtures_dbus import DaemonProcess
from tests.test_cli_world import LIMIT, ok, status
from tests.uml.helpers import assert_kernel_wireguard, link_kind

pytestmark = pytest.mark.root


@pytest.fixture
def kernel_world(tmp_path: Path) -> Iterator[World]:
    built = World.build(tmp_path / "world", server_backend="kernel")
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def daemon(kernel_world: World, private_bus: PrivateBus, tmp_path: Path) -> Iterator[DaemonProcess]:
    config = kernel_world.write_config(tmp_path / "nordwgd.toml", network={"backend": "kernel"})
    running = DaemonProcess(
        bus=private_bus, netns=kernel_world.host_ns, config=config, log=tmp_path / "daemon.log"
    )
    running.start()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"nordwgd exited with {code}:\n{running.log_text()}"


def test_connect_through_the_daemon_leaks_nothing(
    kernel_world: World, daemon: DaemonProcess
) -> None:
    world = kernel_world
    assert world.leak_monitor is not None
    world.leak_monitor.reset()

    ok(daemon, "connect", "NL", "--timeout", str(LIMIT))
    props = status(daemon)
    assert props["State"] == "connected", props
    assert props["Interface"] == world.interface
    server = world.server(props["Server"]["hostname"])
    assert server.country_code == "NL"
    assert_kernel_wireguard(world.host_ns, world.interface)
    # Through the tunnel the web server sees the VPN server; names resolve through it too.
    assert world.http_get_from_host() == server.station
    looked_up = world.host_exec(["getent", "ahostsv4", "web.test"]).stdout
    assert world.web_address in looked_up
    queries = [q for q in world.dns_queries() if q.name.rstrip(".") == "web.test"]
    assert queries and all(q.client == server.station for q in queries), queries
    # The daemon's own health check (handshake age, probe through the tunnel) passes.
    health = json.loads(ok(daemon, "check", "--json"))
    assert health["healthy"] is True, health
    # Nothing left the host but WireGuard to the station and HTTPS to the API.
    assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

    ok(daemon, "disconnect")
    assert status(daemon)["State"] == "disconnected"
    assert link_kind(world.host_ns, world.interface) == ""
    assert world.http_get_from_host() == world.host_address
