"""The Manager for real, in the test world's host namespace.

A driver process runs a Manager with the real engine (nftables, wireguard-go, routes, DNS)
inside the host namespace and speaks JSON lines: commands on stdin, replies and every property
notification on stdout. The test checks what a user would: the web server sees the VPN server's
address while connected, a dead server is left for another one without packets leaking, and
after Disconnect traffic leaves through the uplink again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from tests.fixtures_world import DriverProcess, manager_on_fake_api

DRIVER = r"""
import asyncio, json, logging, sys
from pathlib import Path

from nordwgd.bus.convert import plain, status_values
from nordwgd.config import load_config
from nordwgd.errors import NordwgdError
from nordwgd.machine import Tuning
from nordwgd.manager import Manager

def props(status):
    return plain(status_values(status))

def emit(message):
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()

def matches(status, want):
    server = status.server.hostname if status.server is not None else ""
    if "State" in want and status.state != want["State"]:
        return False
    if "hostname" in want and server != want["hostname"]:
        return False
    if "not_hostname" in want and server in ("", want["not_hostname"]):
        return False
    return True

async def main():
    logging.basicConfig(
        filename=sys.argv[2], level=logging.DEBUG,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = load_config(Path(sys.argv[1]))
    tuning = Tuning(health_tick=0.5, retry_base=0.5, retry_max=2.0, failover_min_interval=2.0)
    manager = Manager(config, tuning=tuning)
    manager.subscribe(lambda status: emit({"event": "changed", "changed": props(status)}))
    await manager.start()
    emit({"event": "started", "props": props(manager.status())})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await manager.stop(keep_blocking=False)
            return
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "connect":
                await manager.connect(command.get("options", {}))
                result = None
            elif op == "disconnect":
                await manager.disconnect()
                result = None
            elif op == "wait":
                want = command["want"]
                result = props(
                    await manager.wait_for(lambda p: matches(p, want), command["limit"])
                )
            elif op == "statistics":
                result = await manager.get_statistics()
            elif op == "stop":
                await manager.stop(keep_blocking=command["keep_blocking"])
                emit({"reply": "ok", "result": None})
                return
            else:
                raise ValueError(op)
        except NordwgdError as error:
            emit({"reply": "error", "error": error.nick, "message": str(error)})
        except TimeoutError:
            emit({"reply": "timeout", "props": props(manager.status())})
        else:
            emit({"reply": "ok", "result": result})

asyncio.run(main())
"""


class Driver(DriverProcess):
    """The driver process in the world's host namespace."""

    def __init__(self, world: World, config: Path, log: Path) -> None:
        process = world.host_popen(
            [sys.executable, "-c", DRIVER, str(config), str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ns.python_env(),
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        super().__init__(process, log)

    def states(self) -> list[str]:
        """The states of the published statuses, each transition once."""
        states: list[str] = []
        for change in self.changes:
            if not states or states[-1] != change["State"]:
                states.append(change["State"])
        return states


@pytest.fixture
def driver(world: World) -> Iterator[Driver]:
    config = world.write_config(
        world.tmp_dir / "nordwgd.toml",
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


def table_exists(world: World) -> bool:
    listed = world.host_exec(["nft", "list", "tables"], check=False).stdout
    return "inet nordwgd" in listed


@pytest.mark.root
@pytest.mark.slow
def test_connect_fail_over_and_disconnect(world: World, driver: Driver) -> None:
    stations = {server.hostname: server.station for server in world.servers}
    assert world.http_get_from_host() == world.host_address  # open before connecting

    driver.call("connect", options={})
    props = driver.wait(60.0, State="connected")
    first = props["Server"]["hostname"]
    assert first in stations
    assert props["Blocking"] == "blocked"
    assert props["Interface"] == world.interface
    assert props["TunnelAddress"] == "10.5.0.2/32"
    assert props["ConnectedSince"] > 0
    # Through the tunnel, the web server sees the VPN server's address, not ours.
    assert world.http_get_from_host() == stations[first]
    statistics = driver.call("statistics")
    assert statistics["rx_bytes"] > 0
    assert statistics["latest_handshake"] > 0

    assert world.leak_monitor is not None
    world.leak_monitor.reset()
    world.silence_server(first)
    props = driver.wait(90.0, State="connected", not_hostname=first)
    second = props["Server"]["hostname"]
    assert second in stations and second != first
    assert world.http_get_from_host() == stations[second]
    # Nothing left the host outside the tunnel while the first server was dead.
    assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

    driver.call("disconnect")
    props = driver.wait(30.0, State="disconnected")
    assert props["Blocking"] == "open"
    assert props["Server"] == {}
    assert world.http_get_from_host() == world.host_address

    states = driver.states()
    assert states[:2] == ["connecting", "connected"]
    assert "reconnecting" in states
    assert states[-2:] == ["disconnecting", "disconnected"]

    driver.call("stop", keep_blocking=False)
    assert driver.process.wait(timeout=20) == 0
    assert not table_exists(world)
    links = world.host_exec(["ip", "-o", "link", "show"]).stdout
    assert world.interface not in links


@pytest.mark.root
@pytest.mark.slow
def test_killed_daemon_is_resumed_without_opening(world: World, driver: Driver) -> None:
    driver.call("connect", options={"country": "NL"})
    props = driver.wait(60.0, State="connected")
    assert props["Server"]["hostname"] == "nl801.nordvpn.com"
    driver.process.kill()
    driver.process.wait()
    # The table outlives the process: traffic goes through the tunnel or nowhere.
    assert table_exists(world)
    curl = ["curl", "-sS", "--max-time", "2", f"http://{world.web_address}/"]
    assert world.host_exec(curl, check=False).stdout.strip() != world.host_address

    config = world.tmp_dir / "nordwgd.toml"
    resumed = Driver(world, config, world.tmp_dir / "driver2.log")
    try:
        started = resumed.next(60.0)
        assert started["props"]["State"] == "connecting", resumed.tail()
        assert started["props"]["Blocking"] == "blocked"
        props = resumed.wait(60.0, State="connected")
        assert props["Server"]["hostname"] == "nl801.nordvpn.com"
        deadline = time.monotonic() + 10
        seen = ""
        while time.monotonic() < deadline:
            try:
                seen = world.http_get_from_host()
                break
            except (subprocess.CalledProcessError, RuntimeError):
                time.sleep(0.2)
        assert seen == world.server("nl801.nordvpn.com").station
    finally:
        resumed.close()


# -- the facade in-process: the engine double of test_machine, the fake API on 127.0.0.1 --


@pytest.fixture
async def manager(tmp_path: Path) -> Any:
    async with manager_on_fake_api(tmp_path) as (built, engine, config, _fake):
        yield built, engine, config


async def test_manager_connect_needs_a_token_and_good_options(manager: Any) -> None:
    from nordwgd import errors
    from nordwgd.testing.fleet import default_token

    built, _, config = manager
    with pytest.raises(errors.NotLoggedIn):
        await built.connect({})
    with pytest.raises(errors.InvalidArgument, match="'countr'"):
        await built.connect({"countr": "DE"})
    with pytest.raises(errors.InvalidArgument):
        await built.set_token("short")
    await built.set_token(default_token())
    token_file = config.paths.state_dir / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    await built.connect({"country": "DE"})
    status = await built.wait_for(lambda p: p.state == "connected", 10)
    assert status.server is not None and status.server.hostname == "de1001.nordvpn.com"
    record = json.loads((config.paths.runtime_dir / "target.json").read_text())
    assert record == {"options": {"country": "DE"}}
    # Logout keeps the tunnel until Disconnect (like NetworkManager).
    await built.logout()
    assert not token_file.exists()
    assert built.status().state == "connected"
    await built.disconnect()
    await built.wait_for(lambda p: p.state == "disconnected", 10)
    assert not (config.paths.runtime_dir / "target.json").exists()


async def test_manager_settings_persist(manager: Any) -> None:
    from nordwgd.manager import load_settings

    built, engine, config = manager
    await built.set_lockdown(True)
    await built.set_allow_lan(True)
    saved = load_settings(config)
    assert (saved.lockdown, saved.allow_lan) == (True, True)
    assert built.status().blocking == "blocked"
    assert engine.calls[-1][3:] == (True, True)


async def test_manager_lists(manager: Any) -> None:
    from nordwgd import errors

    built, _, _ = manager
    countries = await built.list_countries()
    assert ("DE", "Germany", "81") in countries
    assert ("Berlin", "2181458") in await built.list_cities("de")
    with pytest.raises(errors.UnknownLocation):
        await built.list_cities("Atlantis")
    assert ("legacy_p2p", "P2P") in await built.list_groups()
    servers = await built.list_servers({"country": "NL"})
    assert [s["hostname"] for s in servers] == ["nl801.nordvpn.com", "nl802.nordvpn.com"]
    assert set(servers[0]) == {
        "hostname",
        "name",
        "country",
        "country_code",
        "city",
        "load",
        "endpoint",
        "public_key",
        "groups",
    }


async def test_manager_diagnose_basic_and_full(manager: Any) -> None:
    from nordwgd import errors

    built, _, _ = manager
    report = await built.diagnose("")
    assert report["mode"] == "basic"
    assert report["public_ip"] == "127.0.0.1"
    assert report["protected"] is False
    with pytest.raises(errors.InvalidArgument):
        await built.diagnose("everything")
    full = await built.diagnose("full")
    assert "lo" in " ".join(full["interfaces"])
    assert full["kernel"].startswith("Linux")
    assert "private" not in json.dumps(full, default=str).lower()
