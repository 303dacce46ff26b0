"""Leak-proof across the daemon's life cycle, under real systemd: boot, stop, restart, upgrade,
crash.

One container for the module (nordwgd.testing.systemworld.boot_world): its boot builds the test
world, then runs the early kill switch with lockdown on, a probe, and nordwgd.service, all in the
world's host namespace. Every scenario probes from that namespace while the fault happens and
reads the leak monitor on the router's end of the uplink, which counts every packet that is not
the daemon's WireGuard or API traffic.
"""

from __future__ import annotations

import json
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nordwgd.testing.nspawn import REPO_ROOT
from nordwgd.testing.systemworld import (
    BUS,
    DAEMON,
    KILLSWITCH,
    PROBE_UNIT,
    PYTHON,
    ProbeTally,
    SystemWorld,
    boot_world,
    busctl,
    connect_and_wait,
    get_property,
    kill_main_process,
    monotonic_property,
    state,
    wait_for_connected,
    wait_restarted,
)
from tests.security.ledger import ScenarioRecorder

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]


@dataclass(frozen=True)
class Boot:
    """What the boot did, read before any scenario changed it."""

    world: SystemWorld
    leaks: list[dict[str, Any]]
    probe: ProbeTally
    killswitch_active: int  # monotonic µs
    killswitch_log: str
    probe_started: int
    probe_done: int
    daemon_started: int
    daemon_properties: dict[str, str]


@pytest.fixture(scope="module")
def boot() -> Iterator[Boot]:
    with boot_world(lockdown=True) as world:
        box = world.box
        yield Boot(
            world=world,
            leaks=world.leaks(),
            probe=world.boot_probe(),
            killswitch_active=monotonic_property(box, KILLSWITCH, "ActiveEnterTimestampMonotonic"),
            killswitch_log=box.journal(KILLSWITCH),
            probe_started=monotonic_property(box, PROBE_UNIT, "ExecMainStartTimestampMonotonic"),
            probe_done=monotonic_property(box, PROBE_UNIT, "ActiveEnterTimestampMonotonic"),
            daemon_started=monotonic_property(box, DAEMON, "ExecMainStartTimestampMonotonic"),
            daemon_properties={
                name: get_property(box, name) for name in ("State", "Blocking", "Lockdown")
            },
        )


@pytest.fixture
def connected(boot: Boot) -> SystemWorld:
    """The daemon running and connected with Lockdown off, the leak monitor at zero.

    With Lockdown off only the connection itself keeps the kill switch: what the scenarios
    show is kept because a tunnel was wanted, not because Lockdown asked for blocking.
    """
    world = boot.world
    box = world.box
    box.run(["systemctl", "start", DAEMON])
    busctl(box, "call", *BUS, "SetLockdown", "b", "false")
    if state(box) != "connected":
        connect_and_wait(box)
    world.reset_leaks()
    return world


def assert_no_way_out(tally: ProbeTally, world: SystemWorld) -> None:
    """Probes got answers only through the tunnel (the web server saw a VPN server's address)."""
    assert tally.rounds > 0
    assert tally.answered_from() <= world.stations, tally
    assert tally.lan_dns_answered == 0, tally


def record_leaks(world: SystemWorld, ledger: ScenarioRecorder) -> None:
    leaks = world.leaks()
    ledger.leaked(sum(int(leak["packets"]) for leak in leaks))
    assert leaks == []


def assert_back_through_the_tunnel(world: SystemWorld) -> None:
    box = world.box
    wait_for_connected(box)
    assert get_property(box, "Blocking") == 's "blocked"'
    assert get_property(box, "Interface") == f's "{world.info["interface"]}"'
    assert world.web_get() in world.stations


# --- d. boot: the kill switch before anything else ------------------------------------------


def test_boot_blocks_before_the_daemon_starts(boot: Boot, ledger: ScenarioRecorder) -> None:
    ledger.fault("boot with lockdown on: the early kill switch before nordwgd.service")
    # Order: kill switch active, then the probe ran and finished, then the daemon started.
    assert 0 < boot.killswitch_active <= boot.probe_started < boot.probe_done
    assert boot.probe_done <= boot.daemon_started
    assert "lockdown is on; all traffic blocked until nordwgd connects" in boot.killswitch_log
    # Between the two nothing got out: the table existed and every probe went unanswered.
    assert boot.probe.rounds == 1
    assert boot.probe.table_missing == 0
    assert boot.probe.http_answers == {}
    assert boot.probe.lan_dns_answered == 0
    assert boot.probe.ping_answered == 0
    # The daemon took over the blocking at its start.
    assert boot.daemon_properties == {
        "State": 's "disconnected"',
        "Blocking": 's "blocked"',
        "Lockdown": "b true",
    }
    ledger.leaked(sum(int(leak["packets"]) for leak in boot.leaks))
    assert boot.leaks == []

    world = boot.world
    world.reset_leaks()
    box = world.box
    box.run(["systemctl", "start", DAEMON])
    if state(box) != "connected":
        connect_and_wait(box)
    assert_back_through_the_tunnel(world)
    record_leaks(world, ledger)


def test_boot_honours_lockdown_set_over_the_bus(ledger: ScenarioRecorder) -> None:
    """Lockdown switched on with SetLockdown is stored, not written to the config: the early
    kill switch reads the stored choice as the daemon does, and blocks from boot on."""
    ledger.fault("boot with Lockdown stored by SetLockdown and lockdown = false in the config")
    stored = {"/var/lib/nordwgd/settings.json": '{"lockdown": true, "allow_lan": false}\n'}
    with boot_world(lockdown=False, files=stored) as world:
        box = world.box
        probe = world.boot_probe()
        leaks = world.leaks()
        assert "lockdown is on" in box.journal(KILLSWITCH)
        assert probe.table_missing == 0
        assert probe.http_answers == {} and probe.lan_dns_answered == 0
        assert get_property(box, "Lockdown") == "b true"
        assert get_property(box, "Blocking") == 's "blocked"'
        ledger.leaked(sum(int(leak["packets"]) for leak in leaks))
        assert leaks == []


# --- a. systemctl stop / start --------------------------------------------------------------


def test_stop_while_connected_keeps_the_kill_switch(
    connected: SystemWorld, ledger: ScenarioRecorder
) -> None:
    world = connected
    box = world.box
    ledger.fault("systemctl stop nordwgd while connected")
    box.run(["systemctl", "stop", DAEMON])
    assert box.unit_property(DAEMON, "ActiveState") == "inactive"
    assert box.unit_property(DAEMON, "Result") == "success"
    assert "stopped (keep_blocking=True)" in box.journal(DAEMON, lines=100)
    # The user did not disconnect: the table stays, and so does the wish to be connected.
    table = world.table()
    assert table is not None and "policy drop" in table
    box.run(["test", "-s", "/run/nordwgd/target.json"])

    # Probes (not the bus: a property read would start the daemon again) get nowhere.
    tally = world.probe_rounds(3)
    assert tally.http_answers == {}
    assert tally.lan_dns_answered == 0
    assert tally.ping_answered == 0
    assert tally.table_missing == 0
    assert box.unit_property(DAEMON, "ActiveState") == "inactive"

    box.run(["systemctl", "start", DAEMON])
    assert_back_through_the_tunnel(world)
    record_leaks(world, ledger)


# --- b. systemctl restart -------------------------------------------------------------------


def test_restart_while_connected_does_not_leak(
    connected: SystemWorld, ledger: ScenarioRecorder
) -> None:
    world = connected
    box = world.box
    ledger.fault("systemctl restart nordwgd while connected")
    first = box.unit_property(DAEMON, "MainPID")
    with world.probing() as loop:
        box.run(["systemctl", "restart", DAEMON])
        wait_for_connected(box)
    assert box.unit_property(DAEMON, "MainPID") != first
    assert loop.tally is not None
    assert_no_way_out(loop.tally, world)
    assert loop.tally.table_missing == 0
    assert_back_through_the_tunnel(world)
    record_leaks(world, ledger)


# --- c. an upgrade: new code on disk, daemon-reload, restart --------------------------------

UPGRADED = "/usr/local/lib/nordwgd-upgraded"


def install_upgrade(world: SystemWorld, version: str) -> None:
    """Install a modified copy of nordwgd (another version string) as a package upgrade would.

    The copy gets its own interpreter environment (a virtualenv that sees this checkout's
    dependencies but not its nordwgd), and packaging/install.sh rewrites the installed
    commands and units to run it.
    """
    site = sysconfig.get_paths()["purelib"]  # this interpreter's: the dependencies
    script = f"""
set -eu
rm -rf {UPGRADED}
/usr/bin/python3 -m venv --without-pip --system-site-packages {UPGRADED}/venv
mkdir -p {UPGRADED}/src
cp -RL {REPO_ROOT}/nordwgd {UPGRADED}/src/
find {UPGRADED}/src -name __pycache__ -prune -exec rm -rf {{}} +
sed -i 's/^__version__ = .*/__version__ = "{version}"/' {UPGRADED}/src/nordwgd/__init__.py
purelib=$({UPGRADED}/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\\n%s\\n' {UPGRADED}/src {site} > "$purelib/nordwgd-upgraded.pth"
{REPO_ROOT}/packaging/install.sh --python {UPGRADED}/venv/bin/python >/dev/null
"""
    world.box.run(["sh", "-c", script])


def reinstall_original(world: SystemWorld) -> None:
    world.box.run([str(REPO_ROOT / "packaging/install.sh"), "--python", PYTHON])
    world.box.run(["systemctl", "daemon-reload"])
    world.box.run(["systemctl", "restart", DAEMON])
    world.box.run(["rm", "-rf", UPGRADED])


def test_upgrade_restart_does_not_leak(connected: SystemWorld, ledger: ScenarioRecorder) -> None:
    world = connected
    box = world.box
    old = json.loads(get_property(box, "Version").removeprefix("s "))
    new = f"{old}+upgraded"
    ledger.fault("package upgrade: new files, daemon-reload, restart while connected")
    try:
        install_upgrade(world, new)
        with world.probing() as loop:
            box.run(["systemctl", "daemon-reload"])
            box.run(["systemctl", "restart", DAEMON])
            wait_for_connected(box)
        # The new code runs, from the new files, and serves the API.
        assert get_property(box, "Version") == f's "{new}"'
        main_pid = box.unit_property(DAEMON, "MainPID")
        assert UPGRADED in box.run(["cat", f"/proc/{main_pid}/cmdline"]).stdout
        assert loop.tally is not None
        assert_no_way_out(loop.tally, world)
        assert loop.tally.table_missing == 0
        assert_back_through_the_tunnel(world)
        record_leaks(world, ledger)
    finally:
        reinstall_original(world)
    assert re.fullmatch(r's "[^"+]+"', get_property(box, "Version"))


# --- e. a crash: SIGKILL of the main process ------------------------------------------------


def test_killed_daemon_is_restarted_by_systemd_without_a_leak(
    connected: SystemWorld, ledger: ScenarioRecorder
) -> None:
    world = connected
    box = world.box
    ledger.fault("SIGKILL of nordwgd's main process while connected")
    with world.probing() as loop:
        killed, restarts = kill_main_process(box)
        # No process, no bus name: the kernel's table alone blocks until systemd restarts it.
        assert world.table() is not None
        wait_restarted(box, killed, restarts)
        wait_for_connected(box)
    assert loop.tally is not None
    assert_no_way_out(loop.tally, world)
    assert loop.tally.table_missing == 0
    assert_back_through_the_tunnel(world)
    record_leaks(world, ledger)
