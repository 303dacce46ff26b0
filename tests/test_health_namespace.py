"""Health probes in namespace mode run inside the tunnel's namespace, not the daemon's.

First the probes alone, against a resolver and a web server that exist only in one namespace
made here; then the real daemon in the test world, in namespace mode under lockdown (the
daemon's own namespace reaches nothing), with a health URL checked every second.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from nordwgd.health import namespace_probers
from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from nordwgd.wireguard.uapi import socket_path
from tests.fixtures_dbus import PrivateBus
from tests.test_namespace_mode import (
    Daemon,
    call,
    in_namespace,
    properties,
    station_of,
    wait_state,
)

pytestmark = pytest.mark.root

RESOLVER = "198.51.100.53"
WEB = "198.51.100.80"
HEALTH_INTERVAL = 1.0
QUIET_PERIOD = 8.0  # several health intervals


def _namespace_name(tag: str) -> str:
    return f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-{tag}{secrets.token_hex(2)}"


def _start(netns: str, module: str, *args: str) -> subprocess.Popen[str]:
    process = ns.popen_python_module(netns, module, *args)
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded: the servers print "ready" or exit
    if line.strip() != "ready":
        process.kill()
        process.wait(10)
        raise RuntimeError(f"{module} did not start in {netns}: {line!r}")
    return process


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(a namespace with a resolver and a web server on its loopback, an empty namespace)."""
    served, empty = _namespace_name("hs"), _namespace_name("he")
    processes: list[subprocess.Popen[str]] = []
    try:
        for name in (served, empty):
            ns.create_netns(name)
        for address in (RESOLVER, WEB):
            ns.ip(served, "address", "add", f"{address}/32", "dev", "lo")
        processes.append(
            _start(
                served,
                "nordwgd.testing.dnsserver",
                "--listen",
                f"{RESOLVER}:53",
                "--log",
                str(tmp_path / "dns.log"),
            )
        )
        processes.append(_start(served, "nordwgd.testing.webserver", "--listen", f"{WEB}:80"))
        yield served, empty
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for name in (served, empty):
            ns.kill_processes_in(name)
            ns.delete_netns(name)


async def test_probes_run_in_the_given_namespace(services: tuple[str, str]) -> None:
    served, empty = services
    before = os.readlink("/proc/thread-self/ns/net")

    http, dns = namespace_probers(served)
    assert await dns(ip_address(RESOLVER), 2.0) is None
    assert await http(f"http://{WEB}/health", 2.0) is None

    # The same probes from a namespace without the services find nothing.
    http, dns = namespace_probers(empty)
    dns_reason = await dns(ip_address(RESOLVER), 1.0)
    assert dns_reason is not None and dns_reason.startswith("DNS: ")  # no route at all
    http_reason = await http(f"http://{WEB}/health", 1.0)
    assert http_reason is not None and http_reason.startswith("ConnectError")

    # The caller's own thread never moved.
    assert os.readlink("/proc/thread-self/ns/net") == before


async def test_a_missing_namespace_is_a_reason() -> None:
    http, dns = namespace_probers(_namespace_name("gone"))
    dns_reason = await dns(ip_address(RESOLVER), 1.0)
    assert dns_reason is not None and "No such file" in dns_reason
    http_reason = await http(f"http://{WEB}/health", 1.0)
    assert http_reason is not None and "No such file" in http_reason


# -- the real daemon in the world ------------------------------------------------------------


@pytest.fixture
def vpn_ns() -> Iterator[str]:
    name = _namespace_name("vpn")
    try:
        yield name
    finally:
        ns.kill_processes_in(name)
        ns.delete_netns(name)


@pytest.fixture
def namespace_daemon(
    world: World, private_bus: PrivateBus, vpn_ns: str, tmp_path: Path
) -> Iterator[tuple[World, PrivateBus, Daemon, str]]:
    config = world.write_config(
        tmp_path / "nordwgd.toml",
        network={"mode": "namespace", "namespace": vpn_ns},
        health={
            "urls": [f"http://{world.web_address}/health"],
            "interval": HEALTH_INTERVAL,
            "attempts": 2,
            "timeout": 2.0,
        },
    )
    daemon = Daemon(private_bus, world, config, tmp_path / "daemon.log")
    try:
        yield world, private_bus, daemon, vpn_ns
    finally:
        daemon.stop()
        leftover = socket_path(world.interface)
        if leftover.exists():
            leftover.unlink()


def _hostname(props: dict[str, object]) -> str:
    server = props["Server"]
    assert isinstance(server, dict)
    return str(server["hostname"])


def test_namespace_health_probes_the_tunnel_under_lockdown(
    namespace_daemon: tuple[World, PrivateBus, Daemon, str],
) -> None:
    world, bus, daemon, vpn_ns = namespace_daemon
    daemon.start()
    call(bus, "SetLockdown", "b", True)
    call(bus, "Connect", "a{sv}", {})
    props = wait_state(bus, daemon, "connected")
    first, since = _hostname(props), props["ConnectedSince"]
    assert props["Blocking"] == "blocked"
    with pytest.raises(RuntimeError):  # a probe from the daemon's namespace would fail
        world.http_get_from_host(timeout=2)

    # Several health intervals later: still on the first server, never reconnected.
    quiet_until = time.monotonic() + QUIET_PERIOD
    while time.monotonic() < quiet_until:
        healthy, details = call(bus, "CheckHealth")
        assert healthy is True, (details, daemon.log_text())
        assert isinstance(details, dict)
        assert details["probes"] == {f"http://{world.web_address}/health": "ok"}
        time.sleep(2 * HEALTH_INTERVAL)
    props = properties(bus)
    assert props["State"] == "connected"
    assert (_hostname(props), props["ConnectedSince"]) == (first, since), daemon.log_text()
    assert "health check" not in daemon.log.read_text(errors="replace")  # none failed

    # A silenced server is still noticed from inside the namespace: the daemon fails over.
    world.silence_server(first)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            props = properties(bus)
            if props["State"] == "connected" and _hostname(props) != first:
                break
            time.sleep(0.2)
        assert props["State"] == "connected" and _hostname(props) != first, daemon.log_text()
    finally:
        world.unsilence_server(first)
    assert "health failed" in daemon.log.read_text(errors="replace")
    web = f"http://{world.web_address}/"
    seen = in_namespace(vpn_ns, ["curl", "-sS", "--max-time", "5", web]).stdout.strip()
    assert seen == station_of(world, props)

    call(bus, "Disconnect")
    wait_state(bus, daemon, "disconnected")
    assert daemon.stop() == 0, daemon.log_text()
