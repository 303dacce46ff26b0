"""RecentLocations: kept by the daemon across restarts, published with the connection."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nordwgd.config import Config
from nordwgd.manager import RECENT_FILE, load_recent, save_recent
from nordwgd.status import Location
from tests.fixtures_dbus import DaemonProcess, call_as

MANAGER = "org.nordwgd.Nordwgd1.Manager"


def config_in(directory: Path) -> Config:
    config = Config()
    return replace(config, paths=replace(config.paths, state_dir=directory))


def test_saved_recent_locations_load_back(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    assert load_recent(config) == ()
    recent = (Location("Sweden", "SE", "Stockholm"), Location("Germany", "DE", "Berlin"))
    save_recent(config, recent)
    assert load_recent(config) == recent
    assert (tmp_path / RECENT_FILE).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"locations": 5}',
        '{"locations": [{"country": "Sweden"}, 7, {"country": 1, "country_code": "SE"}]}',
    ],
)
def test_an_unreadable_recent_file_gives_none(tmp_path: Path, text: str) -> None:
    (tmp_path / RECENT_FILE).write_text(text)
    assert load_recent(config_in(tmp_path)) == ()


def test_good_entries_of_a_partly_bad_file_are_kept(tmp_path: Path) -> None:
    entries = [{"country": "Sweden", "country_code": "SE", "city": "Stockholm"}, {"city": 3}]
    (tmp_path / RECENT_FILE).write_text(json.dumps({"locations": entries}))
    assert load_recent(config_in(tmp_path)) == (Location("Sweden", "SE", "Stockholm"),)


def _recent(daemon: DaemonProcess) -> list[dict[str, str]]:
    reply = call_as(
        daemon.bus,
        None,
        "Get",
        "ss",
        [MANAGER, "RecentLocations"],
        interface="org.freedesktop.DBus.Properties",
    )
    body = reply["body"]
    assert isinstance(body, list)
    return list(body[0])


def _wait_state(daemon: DaemonProcess, state: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        reply = call_as(
            daemon.bus,
            None,
            "Get",
            "ss",
            [MANAGER, "State"],
            interface="org.freedesktop.DBus.Properties",
        )
        body = reply.get("body")
        if isinstance(body, list) and body[0] == state:
            return
        assert time.monotonic() < deadline, f"State never became {state}: {reply}"
        time.sleep(0.1)


@pytest.mark.root
@pytest.mark.slow
def test_the_daemon_publishes_and_keeps_recent_locations(world_daemon: DaemonProcess) -> None:
    servers = call_as(world_daemon.bus, None, "ListServers", "a{sv}", [{}])["body"]
    assert isinstance(servers, list)
    server = servers[0][-1]
    assert "error" not in call_as(
        world_daemon.bus, None, "Connect", "a{sv}", [{"server": server["hostname"]}]
    )
    _wait_state(world_daemon, "connected")
    expected = {
        "country": server["country"],
        "country_code": server["country_code"],
        "city": server["city"],
    }
    assert _recent(world_daemon)[0] == expected
    call_as(world_daemon.bus, None, "Disconnect")
    _wait_state(world_daemon, "disconnected")
    world_daemon.stop()
    world_daemon.start()
    assert _recent(world_daemon)[0] == expected
