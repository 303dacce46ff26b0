"""nordwgctl as a user runs it: a separate process talking D-Bus to a service.

Most tests talk to the real ``ManagerInterface`` exported in this process around a Manager
double (fast, no root); the ``root`` tests drive the real daemon inside the test world.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nordwgd.states import Blocking, State
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess, PrivateBus, Service


@dataclass
class Result:
    code: int
    out: str
    err: str


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}


async def nordwgctl(*args: str, stdin: str | None = None) -> Result:
    """Run the CLI without blocking the loop that serves the bus."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "nordwgd.cli",
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else b""), 120)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def _assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err and "Traceback" not in result.out


async def test_status_json(service: Service, private_bus: PrivateBus) -> None:
    result = await nordwgctl("--bus", private_bus.address, "status", "--json")
    assert result.code == 0, result.err
    status = json.loads(result.out)
    assert status["State"] == "disconnected"
    assert status["AllowLan"] is True
    assert status["Version"] == "0.1.0"


async def test_status_human(service: Service, private_bus: PrivateBus) -> None:
    service.manager.set(state="hibernating")  # a state from a newer daemon
    result = await nordwgctl("--bus", private_bus.address, "status")
    assert result.code == 0, result.err
    assert "State:      unknown (hibernating)" in result.out
    assert "Allow LAN:  on" in result.out


async def test_countries_and_servers(service: Service, private_bus: PrivateBus) -> None:
    result = await nordwgctl("--bus", private_bus.address, "countries")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1].split() == ["DE", "Germany", "81"]
    result = await nordwgctl("--bus", private_bus.address, "servers", "--country", "DE", "--json")
    assert json.loads(result.out)[0]["hostname"] == "de1001.nordvpn.com"
    assert ("list_servers", {"country": "DE"}) in service.manager.calls


async def test_connect_follows_state_until_connected(
    service: Service, private_bus: PrivateBus
) -> None:
    result = await nordwgctl("--bus", private_bus.address, "connect", "germany", "--group", "P2P")
    assert result.code == 0, result.err
    assert result.out.strip().endswith("connected to de1001.nordvpn.com")
    # "germany" matched a country in ListCountries, so it was sent as one.
    assert ("connect", {"country": "germany", "group": "P2P"}) in service.manager.calls
    result = await nordwgctl("--bus", private_bus.address, "disconnect")
    assert result.code == 0, result.err
    assert service.manager.current.state == "disconnected"


@pytest.mark.parametrize(
    ("location", "options"),
    [
        ("Germany/Frankfurt", {"country": "Germany", "city": "Frankfurt"}),
        ("de1001.nordvpn.com", {"server": "de1001.nordvpn.com"}),
        ("Frankfurt", {"city": "Frankfurt"}),
    ],
)
async def test_connect_location_forms(
    service: Service, private_bus: PrivateBus, location: str, options: dict[str, str]
) -> None:
    result = await nordwgctl("--bus", private_bus.address, "connect", location, "--no-wait")
    assert result.code == 0, result.err
    assert service.manager.calls[-1] == ("connect", options)


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["p2p"], {"group": "p2p"}),
        (["P2P"], {"group": "P2P"}),
        (["double vpn"], {"group": "double vpn"}),
        (["Double_VPN"], {"group": "Double_VPN"}),
        (["legacy_double_vpn"], {"group": "legacy_double_vpn"}),
        (["--group", "p2p", "germany"], {"country": "germany", "group": "p2p"}),
        (["--group", "double vpn"], {"group": "double vpn"}),
    ],
)
async def test_connect_takes_groups_as_the_official_client_does(
    service: Service, private_bus: PrivateBus, argv: list[str], options: dict[str, str]
) -> None:
    result = await nordwgctl("--bus", private_bus.address, "connect", *argv, "--no-wait")
    assert result.code == 0, result.err
    assert service.manager.calls[-1] == ("connect", options)


async def test_connect_group_twice_is_a_usage_error(
    service: Service, private_bus: PrivateBus
) -> None:
    result = await nordwgctl("--bus", private_bus.address, "connect", "p2p", "--group", "p2p")
    assert result.code == 2 and "server group" in result.err, result
    assert not any(name == "connect" for name, _ in service.manager.calls)


async def test_groups_lists_the_names_people_know(
    service: Service, private_bus: PrivateBus
) -> None:
    result = await nordwgctl("--bus", private_bus.address, "groups")
    assert result.code == 0, result.err
    rows = [line.split("  ")[0].strip() for line in result.out.splitlines()[1:]]
    assert rows == ["Double VPN", "P2P"]
    assert "legacy_p2p" in result.out  # the API identifier is shown beside it


async def test_connect_errors_are_named(service: Service, private_bus: PrivateBus) -> None:
    from nordwgd import errors

    service.manager.failure = errors.NotLoggedIn("no access token is configured")
    result = await nordwgctl("--bus", private_bus.address, "connect")
    assert result.code == 5
    assert result.err.startswith("nordwgctl: not logged in: no access token")
    service.manager.failure = errors.UnknownLocation("country 'Atlantis'", ["Austria"])
    result = await nordwgctl("--bus", private_bus.address, "connect", "Atlantis/Nowhere")
    assert result.code == 2
    assert "unknown location" in result.err and "Austria" in result.err
    _assert_no_traceback(result)


async def test_connect_wait_ends_when_the_daemon_leaves(
    service: Service, private_bus: PrivateBus
) -> None:
    async def connect_and_stall(options: dict[str, str]) -> None:
        service.manager.change(state=State.CONNECTING, blocking=Blocking.BLOCKED)
        # The daemon goes away in the middle of connecting (a crash, a stop).
        asyncio.get_running_loop().call_later(1.0, service.bus.disconnect)

    service.manager.connect = connect_and_stall  # type: ignore[method-assign]
    result = await nordwgctl("--bus", private_bus.address, "connect", "--timeout", "100")
    assert result.code == 3, result.err
    assert result.err.strip() == "nordwgctl: nordwgd left the bus while connecting"
    _assert_no_traceback(result)


async def test_login_reads_the_token_from_stdin(service: Service, private_bus: PrivateBus) -> None:
    token = "ab" * 32
    result = await nordwgctl("--bus", private_bus.address, "login", "--stdin", stdin=token + "\n")
    assert result.code == 0, result.err
    assert ("set_token", len(token)) in service.manager.calls
    assert token not in result.out + result.err


async def test_pia_login_reads_username_and_password(
    service: Service, private_bus: PrivateBus
) -> None:
    service.manager.change(provider="pia")
    password = "correct horse battery"
    result = await nordwgctl(
        "--bus", private_bus.address, "login", "--stdin", stdin=f"p1234567\n{password}\n"
    )
    assert result.code == 0, result.err
    assert ("set_login", ("p1234567", len(password))) in service.manager.calls
    assert password not in result.out + result.err
    status = await nordwgctl("--bus", private_bus.address, "status")
    assert "Provider:   pia" in status.out


async def test_set_and_check(service: Service, private_bus: PrivateBus) -> None:
    result = await nordwgctl("--bus", private_bus.address, "set", "lockdown", "on")
    assert result.code == 0 and result.out.strip() == "lockdown: on"
    assert service.manager.current.lockdown is True
    result = await nordwgctl("--bus", private_bus.address, "check", "--json")
    assert result.code == 0
    assert json.loads(result.out)["healthy"] is True
    result = await nordwgctl("--bus", private_bus.address, "diagnose", "--full", "--json")
    assert json.loads(result.out)["mode"] == "full"


async def test_monitor_prints_changes(service: Service, private_bus: PrivateBus) -> None:
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "nordwgd.cli",
        "--bus",
        private_bus.address,
        "monitor",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), 60)
        assert first.decode().startswith("State: disconnected")
        service.manager.change(state=State.CONNECTING)
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.decode().strip() == "State: connecting"
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["set", "lockdown", "maybe"],
        ["cities"],
        ["connect", "--server"],
        ["connect", ""],
        ["connect", "  "],
        ["connect", "--group", ""],
        ["connect", "--server", ""],
        ["connect", "--timeout", "-1"],
        ["connect", "--timeout", "0"],
        ["connect", "--timeout", "nan"],
        ["connect", "--timeout", "inf"],
        ["disconnect", "--timeout", "-5"],
        ["reconnect", "--timeout", "NaN"],
        ["servers", "--limit", "-1"],
        ["servers", "--limit", "nan"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "nordwgctl" in result.stderr and "usage error" in result.stderr
    assert "Traceback" not in result.stderr


def test_login_refuses_a_token_in_argv() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "login", "abcdef"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2


def test_daemon_absent_exits_3(private_bus: PrivateBus) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "--bus", private_bus.address, "status"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert (
        result.stderr.strip()
        == "nordwgctl: nordwgd is not running (org.nordwgd.Nordwgd1 is not on the bus)"
    )


def test_bus_absent_exits_3(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "--bus", f"unix:path={tmp_path}/none", "connect"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("nordwgctl: cannot reach unix:path=")
    assert "Traceback" not in result.stderr


def test_version_without_daemon(private_bus: PrivateBus) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.cli", "--bus", private_bus.address, "version"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["nordwgctl 0.1.0", "nordwgd not running"]


# Against the real daemon in the test world ----------------------------------------------


@pytest.mark.root
async def test_real_daemon_status_countries_connect(world_daemon: DaemonProcess) -> None:
    address = world_daemon.bus.address
    result = await nordwgctl("--bus", address, "status", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["State"] == "disconnected"
    result = await nordwgctl("--bus", address, "countries", "--json")
    assert result.code == 0, result.err
    countries = json.loads(result.out)
    assert countries and all(set(c) == {"code", "name", "id"} for c in countries)
    result = await nordwgctl("--bus", address, "connect", "--timeout", "90")
    assert result.code == 0, result.err + world_daemon.log_text()
    assert "connected to " in result.out
    status = json.loads((await nordwgctl("--bus", address, "status", "--json")).out)
    assert status["State"] == "connected"
    result = await nordwgctl("--bus", address, "disconnect")
    assert result.code == 0, result.err
    status = json.loads((await nordwgctl("--bus", address, "status", "--json")).out)
    assert status["State"] == "disconnected"


@pytest.mark.root
async def test_real_daemon_login_and_unknown_location(
    world_daemon: DaemonProcess, shared_world: Any
) -> None:
    address = world_daemon.bus.address
    token = shared_world.token.reveal()
    result = await nordwgctl("--bus", address, "login", "--stdin", stdin=token + "\n")
    assert result.code == 0, result.err
    assert token not in world_daemon.log_text()
    result = await nordwgctl("--bus", address, "connect", "Atlantis/Nowhere", "--no-wait")
    assert result.code == 2
    assert result.err.startswith("nordwgctl: unknown location: ")
    _assert_no_traceback(result)
