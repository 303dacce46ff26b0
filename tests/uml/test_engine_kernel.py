"""The Manager and its real engine in the test world, with ``backend = "kernel"`` and "auto".

The world tests of tests/test_manager_world.py run here unchanged (imported below): connect,
fail over from a silenced server without a packet leaking, disconnect; and a killed process's
tunnel resumed without opening the kill switch. The fixtures differ: the daemon's backend is
"kernel" (against fake VPN servers on kernel WireGuard too) or "auto" (against wireguard-go
servers), and in this kernel "auto" must pick the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.world import ServerBackend, World
from tests.test_manager_world import (
    Driver,
    test_connect_fail_over_and_disconnect,
    test_killed_daemon_is_resumed_without_opening,
)
from tests.uml.helpers import assert_kernel_wireguard, link_kind

__all__ = ["test_connect_fail_over_and_disconnect", "test_killed_daemon_is_resumed_without_opening"]

# (the daemon's backend setting, the fake servers' WireGuard)
BACKENDS = [("kernel", "kernel"), ("auto", "userspace")]


@pytest.fixture(params=BACKENDS, ids=[f"{mine}-vs-{theirs}" for mine, theirs in BACKENDS])
def backends(request: pytest.FixtureRequest) -> tuple[str, ServerBackend]:
    mine, theirs = request.param
    return mine, theirs


@pytest.fixture
def world(tmp_path: Path, backends: tuple[str, ServerBackend]) -> Iterator[World]:
    built = World.build(tmp_path / "world", server_backend=backends[1])
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def driver(world: World, backends: tuple[str, ServerBackend]) -> Iterator[Driver]:
    config = world.write_config(
        world.tmp_dir / "nordwgd.toml",
        network={"backend": backends[0]},
        health={
            "urls": [f"http://{world.web_address}/health"],
            "interval": 1.0,
            "attempts": 2,
            "timeout": 1.0,
            "handshake_timeout": 5.0,
        },
    )
    running = Driver(world, config, world.tmp_dir / "driver.log")
    try:
        started = running.next(60.0)
        assert started.get("event") == "started", f"{started}\n{running.tail()}"
        yield running
    finally:
        running.close()


@pytest.mark.root
def test_the_servers_and_the_tunnel_are_the_wireguard_asked_for(
    world: World, driver: Driver, backends: tuple[str, ServerBackend]
) -> None:
    theirs = backends[1]
    for server in world.servers:
        assert link_kind(server.netns, server.interface) == (
            "wireguard" if theirs == "kernel" else "tun"
        )
    driver.call("connect", options={})
    props = driver.wait(60.0, State="connected")
    assert_kernel_wireguard(world.host_ns, world.interface)
    assert world.http_get_from_host() == world.server(props["Server"]["hostname"]).station
    driver.call("disconnect")
    driver.wait(30.0, State="disconnected")
    assert link_kind(world.host_ns, world.interface) == ""
