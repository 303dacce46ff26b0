"""The uplink watcher in a namespace of its own: real rtnetlink events, real debouncing; then
the real daemon in the test world reacting to uplink changes.

The watcher runs in a child process inside the watched namespace and prints one line per
callback; closing its stdin stops it after a grace period, so every callback it made is read.
Each burst of changes is one ``ip -batch`` run, so it reaches the kernel well within the
debounce window.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess, call_as

pytestmark = pytest.mark.root

GATEWAY = "192.168.91.1"
ADDRESS = "192.168.91.2/24"
LINE_TIMEOUT = 30.0

_WATCHER = r"""
import asyncio, json, sys
from nordwgd.netwatch import UplinkWatcher

async def main():
    loop = asyncio.get_running_loop()
    watcher = UplinkWatcher(lambda reason: print(json.dumps(reason), flush=True),
                            ignore={sys.argv[1]})
    await watcher.start()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await asyncio.sleep(2.5)  # let a pending burst report before stopping
    await watcher.stop()
    print("stopped", flush=True)

asyncio.run(main())
"""


@dataclass
class Watched:
    netns: str
    peer: str
    process: subprocess.Popen[str]

    def batch(self, *commands: str) -> None:
        ns.run(["ip", "-n", self.netns, "-batch", "-"], input="\n".join(commands) + "\n")

    def __post_init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def next_line(self) -> str:
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            raise AssertionError("the watcher reported nothing") from None
        if not line:
            raise AssertionError(f"the watcher ended with status {self.process.wait(10)}")
        return line

    def next_change(self) -> str:
        line = self.next_line()
        assert line not in ("ready", "stopped"), line
        reason: str = json.loads(line)
        return reason

    def finish(self) -> list[str]:
        """Stop the watcher; the callbacks it still made."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        rest: list[str] = []
        while (line := self.next_line()) != "stopped":
            rest.append(json.loads(line))
        return rest


@pytest.fixture
def watched() -> Iterator[Watched]:
    """Namespace with an uplink ``up0`` (default route) and a tunnel-like ``wg0``, both veths
    whose peers live in a second namespace, and the watcher running inside (ignoring wg0)."""
    name = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-{ns.unique_name('nw', limit=15)}"
    peer = name + "p"
    process: subprocess.Popen[str] | None = None
    try:
        ns.create_netns(name)
        ns.create_netns(peer)
        ns.veth("up0", name, "up0p", peer)
        ns.veth("wg0", name, "wg0p", peer)
        ns.ip(name, "addr", "add", ADDRESS, "dev", "up0")
        ns.ip(name, "route", "add", "default", "via", GATEWAY)
        process = subprocess.Popen(
            ns.exec_argv(name, ns.python_argv(_WATCHER, "wg0")),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=ns.python_env(),
        )
        result = Watched(name, peer, process)
        assert result.next_line() == "ready"
        yield result
    finally:
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        ns.delete_netns(name)
        ns.delete_netns(peer)


def test_default_route_flap_is_one_change(watched: Watched) -> None:
    watched.batch("route del default", f"route add default via {GATEWAY}")
    change = watched.next_change()
    assert f"default route via {GATEWAY} removed" in change
    assert f"default route via {GATEWAY} added" in change
    assert watched.finish() == []


def test_uplink_down_and_up_is_one_change(watched: Watched) -> None:
    # The kernel drops the default route with the link; the burst puts it back.
    watched.batch("link set up0 down", "link set up0 up", f"route replace default via {GATEWAY}")
    change = watched.next_change()
    assert "up0 down" in change and "up0 up" in change
    assert watched.finish() == []


def test_tunnel_changes_and_address_refreshes_are_ignored(watched: Watched) -> None:
    watched.batch(
        "link set wg0 down",
        "link set wg0 up",
        "addr add 10.5.0.2/32 dev wg0",
        "route add 10.5.0.0/16 dev wg0",
        "route add default dev wg0 table 51820",
        "rule add not fwmark 51820 table 51820 priority 32765",
        # A DHCP renewal: the same address with fresh lifetimes.
        f"addr change {ADDRESS} dev up0 valid_lft 600 preferred_lft 600",
    )
    # An uplink change after them: if any of the above had counted, it would show up as an
    # earlier report or inside this one.
    watched.batch("route del default")
    change = watched.next_change()
    assert change == f"default route via {GATEWAY} removed"
    watched.batch("link del wg0", "rule del priority 32765")
    assert watched.finish() == []


def test_a_new_uplink_address_is_a_change(watched: Watched) -> None:
    watched.batch("addr add 192.168.92.2/24 dev up0")
    assert watched.next_change() == "up0: address 192.168.92.2/24 added"
    watched.batch("addr del 192.168.92.2/24 dev up0")
    assert watched.next_change() == "up0: address 192.168.92.2/24 removed"
    assert watched.finish() == []


# The real daemon in the test world -------------------------------------------------------

DAEMON_LIMIT = 90.0


def _ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "--bus", daemon.bus.address, *args],
        capture_output=True,
        text=True,
        timeout=DAEMON_LIMIT + 30,
        check=False,
        cwd=REPO,
        env=ns.python_env(),
    )


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    result = _ctl(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def _statistics(daemon: DaemonProcess) -> dict[str, Any]:
    reply = call_as(daemon.bus, None, "GetStatistics")
    assert "body" in reply, reply
    body = reply["body"]
    assert isinstance(body, list)
    statistics: dict[str, Any] = body[0]
    return statistics


def _wait_for(what: str, check: Callable[[], bool], daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + DAEMON_LIMIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DAEMON_LIMIT}s:\n{daemon.log_text()}")
        time.sleep(0.3)


class LogWatch:
    """The daemon's log from the moment this was made."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self._path = daemon.log
        self._offset = self._path.stat().st_size

    def text(self) -> str:
        with self._path.open("rb") as stream:
            stream.seek(self._offset)
            return stream.read().decode(errors="replace")

    def lines(self, *containing: str) -> list[str]:
        return [
            line for line in self.text().splitlines() if any(word in line for word in containing)
        ]


def _flap(world: World, *, down: bool = True, up: bool = True) -> None:
    commands = []
    if down:
        commands.append(f"link set {world.uplink} down")
    if up:
        commands += [
            f"link set {world.uplink} up",
            f"route replace default via {world.router_lan}",
        ]
    world.host_exec(["ip", "-batch", "-"], input="\n".join(commands) + "\n")


@pytest.fixture
def connected(world_daemon: DaemonProcess, shared_world: World) -> Iterator[DaemonProcess]:
    """The world's daemon connected; disconnected again (and the uplink up) afterwards."""
    try:
        result = _ctl(world_daemon, "connect", "--timeout", str(DAEMON_LIMIT))
        assert result.returncode == 0, result.stderr + world_daemon.log_text()
        yield world_daemon
    finally:
        _flap(shared_world, down=False)
        _ctl(world_daemon, "disconnect")


def test_uplink_flap_makes_the_connected_daemon_check_the_tunnel(
    connected: DaemonProcess, shared_world: World
) -> None:
    before = _statistics(connected)["triggered_checks"]
    station = shared_world.http_get_from_host()
    log = LogWatch(connected)
    _flap(shared_world)
    _wait_for(
        "health check after the flap",
        lambda: _statistics(connected)["triggered_checks"] > before,
        connected,
    )
    assert f"uplink changed ({shared_world.uplink} down" in log.text()
    assert f"health check after uplink changed ({shared_world.uplink} down" in log.text()
    assert _status(connected)["State"] == "connected"
    # Still through the same server's tunnel.
    assert shared_world.http_get_from_host() == station


def test_uplink_back_retries_an_offline_daemon_at_once(
    world_daemon: DaemonProcess, shared_world: World
) -> None:
    log = LogWatch(world_daemon)
    try:
        _flap(shared_world, up=False)
        result = _ctl(world_daemon, "connect", "--no-wait")
        assert result.returncode == 0, result.stderr
        # Let the backoff grow past the watcher's quiet period, so that a retry right after
        # the uplink returns can only be the one the change asked for.
        _wait_for("a long backoff", lambda: "retrying in 8.0s" in log.text(), world_daemon)
        assert _status(world_daemon)["State"] == "error"
        _flap(shared_world, down=False)
        _wait_for(
            "connected",
            lambda: _status(world_daemon)["State"] == "connected",
            world_daemon,
        )
        story = log.lines("nordwgd.netwatch", "nordwgd.manager", "state:", "retrying")
        assert any("uplink changed (" in line and ": retrying now" in line for line in story), (
            "\n".join(story)
        )
    finally:
        _flap(shared_world, down=False)
        _ctl(world_daemon, "disconnect")


def test_disconnected_daemon_ignores_uplink_changes(
    world_daemon: DaemonProcess, shared_world: World
) -> None:
    assert _status(world_daemon)["State"] == "disconnected"
    before = _statistics(world_daemon)["triggered_checks"]
    marker = f"{shared_world.uplink}: address 192.168.254.7/32 added"
    log = LogWatch(world_daemon)
    shared_world.host_exec(["ip", "addr", "add", "192.168.254.7/32", "dev", shared_world.uplink])
    try:
        _wait_for("the change", lambda: marker in log.text(), world_daemon)
        _wait_for(
            "its handling", lambda: "nothing to check (disconnected)" in log.text(), world_daemon
        )
        assert _status(world_daemon)["State"] == "disconnected"
        assert _statistics(world_daemon)["triggered_checks"] == before
    finally:
        shared_world.host_exec(
            ["ip", "addr", "del", "192.168.254.7/32", "dev", shared_world.uplink], check=False
        )
