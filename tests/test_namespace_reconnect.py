"""Namespace mode keeps its namespace across reconnects: a program that joined it before a
Reconnect or a health failover goes on working through the new server, without a restart, and
only a Disconnect removes the namespace.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.privatebus import PrivateBus
from nordwgd.testing.world import World
from nordwgd.wireguard.uapi import socket_path
from tests.fixtures_dbus import PYTHON
from tests.test_namespace_mode import (
    Daemon,
    call,
    links_in,
    properties,
    station_of,
    vpn_ns,
    wait_state,
)

pytestmark = pytest.mark.root

__all__ = ["vpn_ns"]  # a fixture used here

HEALTH_INTERVAL = 1.0
SEEN_TIMEOUT = 30.0

# Asks the web server who it sees, every 0.2 s, forever; one line per answer ("-" on failure).
_LOOP = r"""
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            print(reply.read().decode().strip(), flush=True)
    except OSError:
        print("-", flush=True)
    time.sleep(0.2)
"""


class Watcher:
    """One long-running process in the namespace and the addresses the web server saw."""

    def __init__(self, namespace: str, url: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, PYTHON, "-c", _LOOP, url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def wait_for(self, address: str, timeout: float = SEEN_TIMEOUT) -> None:
        """Until the server saw ``address`` from this same process (which must stay alive)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the process in the namespace ended: {seen}"
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if line == address:
                return
        raise AssertionError(f"the web server never saw {address}; seen {seen[-20:]}")

    def drain(self) -> None:
        """Forget the answers read so far: a later ``wait_for`` needs a new one."""
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _inode(namespace: str) -> int:
    return os.stat(Path("/run/netns") / namespace).st_ino


def _hostname(props: dict[str, object]) -> str:
    server = props["Server"]
    assert isinstance(server, dict)
    return str(server["hostname"])


def _wait_other_server(bus: PrivateBus, daemon: Daemon, old: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        props = properties(bus)
        if props["State"] == "connected" and _hostname(props) != old:
            return props
        assert time.monotonic() < deadline, (props, daemon.log_text())
        time.sleep(0.2)


@pytest.fixture
def reconnect_daemon(
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


def test_a_joined_program_survives_reconnect_and_failover(
    reconnect_daemon: tuple[World, PrivateBus, Daemon, str],
) -> None:
    world, bus, daemon, vpn_ns = reconnect_daemon
    assert world.leak_monitor is not None
    daemon.start()
    call(bus, "Connect", "a{sv}", {})
    props = wait_state(bus, daemon, "connected")
    inode = _inode(vpn_ns)
    watcher = Watcher(vpn_ns, f"http://{world.web_address}/")
    try:
        watcher.wait_for(station_of(world, props))
        world.leak_monitor.reset()

        # Reconnect: another server, the same namespace, the same process.
        first = _hostname(props)
        call(bus, "Reconnect")
        props = _wait_other_server(bus, daemon, first)
        watcher.wait_for(station_of(world, props))
        assert _inode(vpn_ns) == inode
        assert links_in(vpn_ns) == {"lo", world.interface}

        # Failover: the current server goes silent, health notices, the daemon moves on.
        second = _hostname(props)
        world.silence_server(second)
        try:
            props = _wait_other_server(bus, daemon, second)
        finally:
            world.unsilence_server(second)
        watcher.wait_for(station_of(world, props))
        assert _inode(vpn_ns) == inode
        assert "health failed" in daemon.log.read_text(errors="replace")
        # Nothing from the namespace (or anything else) took the uplink meanwhile.
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

        # Only a Disconnect removes the namespace.
        call(bus, "Disconnect")
        wait_state(bus, daemon, "disconnected")
        assert vpn_ns not in ns.list_netns()
        assert not (Path("/etc/netns") / vpn_ns).exists()
    finally:
        watcher.stop()
    assert not socket_path(world.interface).exists()
    assert daemon.stop() == 0, daemon.log_text()


@pytest.mark.parametrize("restart", ["sigkill", "sigterm"])
def test_a_joined_program_keeps_the_namespace_across_a_daemon_restart(
    reconnect_daemon: tuple[World, PrivateBus, Daemon, str], restart: str
) -> None:
    """SIGKILL then start (a crash), or SIGTERM then start (systemctl stop, start): the new
    process resumes into the namespace the services joined, not into a new one."""
    world, bus, daemon, vpn_ns = reconnect_daemon
    assert world.leak_monitor is not None
    daemon.start()
    call(bus, "Connect", "a{sv}", {})
    props = wait_state(bus, daemon, "connected")
    inode = _inode(vpn_ns)
    watcher = Watcher(vpn_ns, f"http://{world.web_address}/")
    try:
        watcher.wait_for(station_of(world, props))
        world.leak_monitor.reset()
        if restart == "sigkill":
            daemon.kill()
        else:
            assert daemon.stop() == 0, daemon.log_text()
        daemon.start()
        props = wait_state(bus, daemon, "connected")
        watcher.drain()  # answers from before the restart prove nothing
        watcher.wait_for(station_of(world, props))
        assert _inode(vpn_ns) == inode
        assert links_in(vpn_ns) == {"lo", world.interface}
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

        call(bus, "Disconnect")
        wait_state(bus, daemon, "disconnected")
        assert vpn_ns not in ns.list_netns()
        assert not (Path("/etc/netns") / vpn_ns).exists()
    finally:
        watcher.stop()
    assert not socket_path(world.interface).exists()
    assert daemon.stop() == 0, daemon.log_text()
