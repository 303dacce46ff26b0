"""nordwgctl against the real daemon in the test world: every command a user has, and the
one-line errors they get when they ask for something that does not exist.

One daemon serves the whole module; every test leaves it disconnected with its settings as it
found them.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nordwgd.testing.world import World
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess

pytestmark = pytest.mark.root

LIMIT = 90.0


@dataclass
class Result:
    code: int
    out: str
    err: str


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}


def ctl(daemon: DaemonProcess, *args: str) -> Result:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "--bus", daemon.bus.address, *args],
        capture_output=True,
        text=True,
        timeout=LIMIT + 30,
        check=False,
        cwd=REPO,
        env=_env(),
    )
    return Result(result.returncode, result.stdout, result.stderr)


def ok(daemon: DaemonProcess, *args: str) -> str:
    result = ctl(daemon, *args)
    assert result.code == 0, f"{args}: {result.err}\n{daemon.log_text()}"
    assert result.err == ""
    return result.out


def as_json(daemon: DaemonProcess, *args: str) -> Any:
    return json.loads(ok(daemon, *args, "--json"))


def status(daemon: DaemonProcess) -> dict[str, Any]:
    props: dict[str, Any] = as_json(daemon, "status")
    return props


def one_line_error(result: Result, code: int, start: str) -> None:
    assert result.code == code, result
    assert result.out == ""
    assert result.err.startswith(start), result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err


@pytest.fixture
def daemon(world_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon, disconnected with its settings restored after the test."""
    before = status(world_daemon)
    assert before["State"] == "disconnected"
    try:
        yield world_daemon
    finally:
        ctl(world_daemon, "disconnect")
        for setting, prop in (("lockdown", "Lockdown"), ("allow-lan", "AllowLan")):
            ctl(world_daemon, "set", setting, "on" if before[prop] else "off")


def connected_server(daemon: DaemonProcess) -> str:
    props = status(daemon)
    assert props["State"] == "connected", props
    hostname: str = props["Server"]["hostname"]
    return hostname


def test_reconnect_moves_to_another_server(daemon: DaemonProcess, shared_world: World) -> None:
    out = ok(daemon, "connect", "--timeout", str(LIMIT))
    first = connected_server(daemon)
    assert out.strip().endswith(f"connected to {first}")
    out = ok(daemon, "reconnect", "--timeout", str(LIMIT))
    second = connected_server(daemon)
    assert second != first
    assert out.splitlines()[0] == "reconnecting..."
    assert out.strip().endswith(f"connected to {second}")
    # The web server sees the new server's station.
    assert shared_world.http_get_from_host() == shared_world.server(second).station


def test_reconnect_when_disconnected_connects(daemon: DaemonProcess) -> None:
    out = ok(daemon, "reconnect", "--timeout", str(LIMIT))
    assert out.strip().endswith(f"connected to {connected_server(daemon)}")


def test_renew_refreshes_and_stays_connected(daemon: DaemonProcess, shared_world: World) -> None:
    ok(daemon, "connect", "--timeout", str(LIMIT))
    before = len(shared_world.api_requests())
    assert ok(daemon, "renew").strip() == "renewed"
    paths = [r["path"] for r in shared_world.api_requests()[before:]]
    assert "/v1/users/services/credentials" in paths
    deadline = time.monotonic() + LIMIT
    while status(daemon)["State"] != "connected":
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.3)


def test_renew_when_disconnected_stays_disconnected(daemon: DaemonProcess) -> None:
    assert ok(daemon, "renew").strip() == "renewed"
    assert status(daemon)["State"] == "disconnected"


def test_cities_of_a_country(daemon: DaemonProcess) -> None:
    cities = as_json(daemon, "cities", "Germany")
    names = {city["name"] for city in cities}
    assert "Frankfurt" in names
    assert all(set(city) == {"name", "id"} and city["id"].isdigit() for city in cities)
    table = ok(daemon, "cities", "de").splitlines()
    assert table[0].split() == ["CITY", "ID"]
    assert any(line.split()[0] == "Frankfurt" for line in table[1:])


def test_servers_by_country_and_group(daemon: DaemonProcess, shared_world: World) -> None:
    spec = shared_world.specs[0]
    group = spec.groups[0]
    rows = as_json(daemon, "servers", "--country", spec.country_code, "--group", group)
    assert spec.hostname in {row["hostname"] for row in rows}
    assert all(row["country_code"] == spec.country_code for row in rows)
    assert all(group in row["groups"] for row in rows)
    loads = [row["load"] for row in rows]
    assert loads == sorted(loads)
    table = ok(daemon, "servers", "--country", spec.country_code, "--limit", "1").splitlines()
    assert table[0].split() == ["SERVER", "COUNTRY", "CITY", "LOAD"]
    assert len(table) == 2


def test_groups_as_people_type_them(daemon: DaemonProcess, shared_world: World) -> None:
    p2p = {spec.hostname for spec in shared_world.specs if "legacy_p2p" in spec.groups}
    assert p2p, "the world has no P2P server to connect to"
    out = ok(daemon, "connect", "p2p", "--timeout", str(LIMIT))
    assert out.strip().endswith(f"connected to {connected_server(daemon)}")
    assert connected_server(daemon) in p2p
    ok(daemon, "disconnect")
    names = [line.split("  ")[0] for line in ok(daemon, "groups").splitlines()[1:]]
    assert {"P2P", "Double VPN", "Obfuscated Servers"} <= set(names)


def test_set_lockdown_blocks_while_disconnected(daemon: DaemonProcess) -> None:
    assert ok(daemon, "set", "lockdown", "on").strip() == "lockdown: on"
    props = status(daemon)
    assert props["Lockdown"] is True and props["Blocking"] == "blocked"
    assert ok(daemon, "set", "lockdown", "off").strip() == "lockdown: off"
    props = status(daemon)
    assert props["Lockdown"] is False and props["Blocking"] == "open"


def test_set_allow_lan(daemon: DaemonProcess) -> None:
    for value in ("on", "off", "on"):
        assert ok(daemon, "set", "allow-lan", value).strip() == f"allow-lan: {value}"
        assert status(daemon)["AllowLan"] is (value == "on")


def test_diagnose_full_json(daemon: DaemonProcess, shared_world: World) -> None:
    ok(daemon, "connect", "--timeout", str(LIMIT))
    report = as_json(daemon, "diagnose", "--full")
    assert report["mode"] == "full"
    assert report["state"] == "connected"
    server = connected_server(daemon)
    assert report["public_ip"] == shared_world.server(server).station
    assert report["wireguard"]["interface"] == shared_world.interface
    assert report["wireguard"]["server"]["hostname"] == server
    assert "nordwgd" in json.dumps(report["firewall"])
    assert report["kernel"].startswith("Linux ")
    for key in ("interfaces", "routes", "rules", "dns"):
        assert key in report
    human = ok(daemon, "diagnose")
    assert "public_ip" in human or "Public" in human


class Monitor:
    """``nordwgctl monitor`` with its output read line by line by a thread."""

    def __init__(self, daemon: DaemonProcess, *args: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "nordwgd.cli", "--bus", daemon.bus.address, "monitor", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def line(self) -> str:
        try:
            return self.lines.get(timeout=LIMIT)
        except queue.Empty:
            raise AssertionError("monitor printed nothing") from None

    def until(self, wanted: str) -> list[str]:
        seen: list[str] = []
        while wanted not in seen:
            line = self.line()
            assert line, f"monitor ended; saw {seen}"
            seen.append(line)
        return seen

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


def test_monitor_follows_a_connection(daemon: DaemonProcess) -> None:
    monitor = Monitor(daemon)
    try:
        assert monitor.line() == "State: disconnected (watching; Ctrl-C to stop)"
        ok(daemon, "connect", "--no-wait")
        seen = monitor.until("State: connected")
        assert "State: connecting" in seen
        assert any(line.startswith("Server: ") for line in seen)
        ok(daemon, "disconnect")
        seen = monitor.until("State: disconnected")
        assert "State: disconnecting" in seen
    finally:
        monitor.close()


def test_monitor_json(daemon: DaemonProcess) -> None:
    monitor = Monitor(daemon, "--json")
    try:
        ok(daemon, "set", "lockdown", "on")
        change = json.loads(monitor.line())
        assert change["Lockdown"] is True
        assert change["Blocking"] == "blocked"
    finally:
        monitor.close()


def test_monitor_ends_when_the_daemon_leaves(
    world_daemon: DaemonProcess, shared_world: World
) -> None:
    """Last in the module: it stops the daemon (the fixture's stop then finds it stopped)."""
    monitor = Monitor(world_daemon)
    try:
        monitor.line()
        assert world_daemon.stop() == 0
        assert monitor.process.wait(LIMIT) == 3
        assert monitor.process.stderr is not None
        assert monitor.process.stderr.read().strip() == "nordwgctl: nordwgd left the bus"
    finally:
        monitor.close()
    world_daemon.start()


# Errors: one line, the right exit code, no traceback -------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "start"),
    [
        (("cities", "Atlantis"), 2, "nordwgctl: unknown location: "),
        (("servers", "--country", "Atlantis"), 2, "nordwgctl: unknown location: "),
        (("servers", "--group", "nonsense"), 2, "nordwgctl: unknown location: "),
        (("connect", "Germany", "--group", "nonsense"), 2, "nordwgctl: unknown location: "),
        (("connect", "Germany/Atlantis"), 2, "nordwgctl: unknown location: "),
        (("set", "lockdown", "maybe"), 2, "usage: "),
        (("check",), 1, "nordwgctl: "),
    ],
)
def test_errors_are_one_clear_line(
    daemon: DaemonProcess, args: tuple[str, ...], code: int, start: str
) -> None:
    result = ctl(daemon, *args)
    if start == "usage: ":
        # argparse prints its usage line first, then the one-line reason.
        assert result.code == code
        assert result.err.strip().splitlines()[-1].startswith("nordwgctl")
        assert "Traceback" not in result.err
        return
    if args[0] == "check":
        # Not connected: the check answers "unhealthy" with its reason, as a result.
        assert result.code == code
        assert result.out.splitlines()[0] == "unhealthy"
        assert "Traceback" not in result.err
        return
    one_line_error(result, code, start)
    assert status(daemon)["State"] == "disconnected"


def test_unknown_server_is_refused_with_suggestions(daemon: DaemonProcess) -> None:
    # Connect asks the API for a named server at once, so a typo is an answer, not an error state.
    result = ctl(daemon, "connect", "--server", "de1010", "--timeout", str(LIMIT))
    one_line_error(result, 2, "nordwgctl: unknown location: unknown server 'de1010.nordvpn.com'")
    assert "(did you mean: de1001.nordvpn.com" in result.err
    assert status(daemon)["State"] == "disconnected"
    result = ctl(daemon, "connect", "--server", "zz9999", "--timeout", str(LIMIT))
    one_line_error(result, 2, "nordwgctl: unknown location: unknown server 'zz9999.nordvpn.com'")
    assert status(daemon)["State"] == "disconnected"


def test_unknown_country_suggests_close_names(daemon: DaemonProcess) -> None:
    result = ctl(daemon, "cities", "Germny")
    one_line_error(result, 2, "nordwgctl: unknown location: ")
    assert "(did you mean" in result.err and "Germany" in result.err
