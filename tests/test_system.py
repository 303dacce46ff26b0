"""nordwgd under real systemd: installed units, READY, the bus API, polkit, timers, watchdog.

Each container is an overlay of this machine's root booted with systemd-nspawn and its own
network namespace (``--private-network``): the daemon's firewall only ever touches that.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.nspawn import Container, boot_container
from nordwgd.testing.systemworld import (
    BUS,
    busctl,
    connect_and_wait,
    get_property,
    kill_main_process,
    wait_for,
    wait_restarted,
)

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
INSTALLED_UNITS = [
    f"/usr/lib/systemd/system/{unit.name}" for unit in sorted((REPO / "units").glob("nordwgd*"))
]
TIMERS = ("nordwgd-renew.timer", "nordwgd-health.timer")


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    with boot_container(enable=TIMERS) as container:
        yield container


@pytest.fixture
def running(box: Container) -> Container:
    box.run(["systemctl", "start", "nordwgd.service"])
    return box


# --- the harness itself, with a tiny notify unit using nordwgd.systemd ----------------------

NOTIFY_PROBE = """\
import asyncio, os, sys
from nordwgd import systemd

async def main() -> None:
    flag = sys.argv[1]
    watchdog = systemd.Watchdog(lambda: os.path.exists(flag))
    watchdog.start()
    systemd.ready("probe up")
    await asyncio.Event().wait()

asyncio.run(main())
"""


def probe_unit(python: str) -> str:
    return f"""\
[Service]
Type=notify
NotifyAccess=main
ExecStart={python} /usr/local/lib/nordwgd-probe.py /run/probe-alive
WatchdogSec=2s
Restart=on-failure
RestartSec=100ms
"""


def test_notify_and_watchdog_under_real_systemd(box: Container) -> None:
    box.run(
        ["install", "-D", "-m", "0644", "/dev/stdin", "/usr/local/lib/nordwgd-probe.py"],
        input=NOTIFY_PROBE,
    )
    box.run(
        ["install", "-D", "-m", "0644", "/dev/stdin", "/run/systemd/system/nordwgd-probe.service"],
        input=probe_unit(sys.executable),
    )
    box.run(["touch", "/run/probe-alive"])
    box.run(["systemctl", "daemon-reload"])
    try:
        # Type=notify: start returns only after READY=1 arrived.
        box.run(["systemctl", "start", "nordwgd-probe.service"])
        assert box.unit_property("nordwgd-probe.service", "ActiveState") == "active"
        assert box.unit_property("nordwgd-probe.service", "StatusText") == "probe up"
        first = box.unit_property("nordwgd-probe.service", "MainPID")
        # The liveness check fails: the pings stop and systemd restarts the service.
        box.run(["rm", "/run/probe-alive"])
        wait_for(
            "a watchdog restart",
            lambda: int(box.unit_property("nordwgd-probe.service", "NRestarts")) >= 1,
        )
        box.run(["touch", "/run/probe-alive"])
        wait_for(
            "the restarted probe",
            lambda: box.unit_property("nordwgd-probe.service", "ActiveState") == "active",
        )
        assert box.unit_property("nordwgd-probe.service", "MainPID") != first
        journal = box.journal("nordwgd-probe.service")
        assert "Watchdog timeout" in journal, journal
    finally:
        box.run(["systemctl", "stop", "nordwgd-probe.service"], check=False)


# --- installed files -------------------------------------------------------------------------


def test_container_has_cgroups_of_its_own(box: Container) -> None:
    """Two containers must not share a unit's cgroup: the other one's processes there show as
    pid 0 to this container's systemd, whose kill of the unit then fails (EIO) or waits for
    processes it cannot see."""
    tracked = [
        path
        for line in Path(f"/proc/{box.leader}/cgroup").read_text().splitlines()
        for _, hierarchy, path in [line.split(":", 2)]
        if hierarchy in ("", "name=systemd")
    ]
    assert tracked, "no cgroup hierarchy that systemd tracks processes in"
    assert all(path.startswith(f"/{box.name}/") for path in tracked), tracked


def test_installed_units_verify(box: Container) -> None:
    result = box.run(["systemd-analyze", "verify", *INSTALLED_UNITS], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if "nordwgd" in line] == []


def test_polkit_knows_the_actions(box: Container) -> None:
    for action in (
        "org.nordwgd.nordwgd1.control",
        "org.nordwgd.nordwgd1.configure",
        "org.nordwgd.nordwgd1.diagnose",
    ):
        out = box.run(["pkaction", "--verbose", "--action-id", action]).stdout
        assert action in out
    control = box.run(["pkaction", "--verbose", "--action-id", "org.nordwgd.nordwgd1.control"])
    assert re.search(r"implicit active:\s+yes", control.stdout)


def test_timers_are_scheduled(box: Container) -> None:
    out = box.run(["systemctl", "list-timers", "--all", "--no-pager"]).stdout
    for timer in TIMERS:
        assert timer in out
        assert box.unit_property(timer, "ActiveState") == "active"


# --- the daemon ------------------------------------------------------------------------------


def test_start_waits_for_ready(running: Container) -> None:
    box = running
    assert box.unit_property("nordwgd.service", "ActiveState") == "active"
    assert box.unit_property("nordwgd.service", "SubState") == "running"
    assert "serving org.nordwgd.Nordwgd1" in box.unit_property("nordwgd.service", "StatusText")
    owner = busctl(box, "status", "org.nordwgd.Nordwgd1")
    assert f"PID={box.unit_property('nordwgd.service', 'MainPID')}" in owner


def test_properties_over_the_bus(running: Container) -> None:
    box = running
    assert get_property(box, "State") == 's "disconnected"'
    assert get_property(box, "Blocking") == 's "open"'
    assert get_property(box, "Lockdown") == "b false"
    assert get_property(box, "Version").startswith('s "')
    # Reading needs no authorization.
    as_nobody = busctl(box, "get-property", *BUS, "State", user="nobody")
    assert as_nobody.strip() == 's "disconnected"'


def test_cli_status_json(running: Container) -> None:
    status = json.loads(running.run(["nordwgctl", "status", "--json"]).stdout)
    assert status["State"] == "disconnected"
    assert status["Blocking"] == "open"


def test_unprivileged_connect_is_refused_by_polkit(running: Container) -> None:
    out = busctl(running, "call", *BUS, "Connect", "a{sv}", "0", user="nobody", check=False)
    assert "org.nordwgd.Nordwgd1.Error.NotAuthorized" in out or "refused by polkit" in out, out
    assert "refused by polkit" in out, out  # polkit answered, rather than being unreachable
    assert get_property(running, "State") == 's "disconnected"'


def test_only_root_may_own_the_name(running: Container) -> None:
    result = running.run_as(
        "nobody",
        ["dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus",
         "/org/freedesktop/DBus", "org.freedesktop.DBus.RequestName",
         "string:org.nordwgd.Nordwgd1", "uint32:4"],
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "AccessDenied" in result.stderr, result.stderr


def test_connect_without_a_token_is_refused(running: Container) -> None:
    # No credential, no token_file, no stored login: refused before anything is touched.
    out = busctl(running, "call", *BUS, "Connect", "a{sv}", "0", check=False)
    assert "org.nordwgd.Nordwgd1.Error.NotLoggedIn" in out or "no NordVPN access token" in out, out
    assert get_property(running, "State") == 's "disconnected"'


def test_token_arrives_as_an_optional_credential() -> None:
    token = secrets.token_hex(32)
    files = {"/etc/credstore/nordwgd.token": token + "\n"}
    with boot_container(files=files) as box:
        box.run(["chmod", "0600", "/etc/credstore/nordwgd.token"])
        box.run(["systemctl", "start", "nordwgd.service"])
        delivered = box.run(["cat", "/run/credentials/nordwgd.service/token"]).stdout
        assert delivered.strip() == token
        # The daemon found it: Connect is accepted (it then fails to reach an API, which
        # does not exist in this container, inside the container's own network).
        out = busctl(box, "call", *BUS, "Connect", "a{sv}", "0", check=False)
        assert "NotLoggedIn" not in out, out
        # The token never shows up in the journal.
        assert token not in box.journal(lines=2000)
        box.run(["systemctl", "stop", "nordwgd.service"])


def test_journal_entries_are_tagged(running: Container) -> None:
    out = running.run(
        ["journalctl", "--no-pager", "-o", "json", "SYSLOG_IDENTIFIER=nordwgd", "-n", "50"]
    ).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, running.journal("nordwgd.service")
    assert any("ready" in str(entry.get("MESSAGE", "")) for entry in entries)
    assert all(entry.get("_SYSTEMD_UNIT") == "nordwgd.service" for entry in entries)


def test_health_timer_service_calls_the_daemon(running: Container) -> None:
    box = running
    box.run(["systemctl", "start", "nordwgd-health.service"])
    assert box.unit_property("nordwgd-health.service", "Result") == "success"
    # busctl printed the daemon's reply: (b healthy, a{sv} details).
    journal = box.journal("nordwgd-health.service")
    assert re.search(r"busctl\[\d+\]: ba\{sv\} (true|false) ", journal), journal


def test_watchdog_restarts_a_stalled_daemon(running: Container) -> None:
    box = running
    dropin = "/run/systemd/system/nordwgd.service.d/50-test-watchdog.conf"
    box.run(["install", "-D", "-m", "0644", "/dev/stdin", dropin],
            input="[Service]\nWatchdogSec=3s\nRestartSec=100ms\n")  # fmt: skip
    box.run(["systemctl", "daemon-reload"])
    try:
        box.run(["systemctl", "restart", "nordwgd.service"])
        restarts = int(box.unit_property("nordwgd.service", "NRestarts"))
        stalled = box.unit_property("nordwgd.service", "MainPID")
        box.run(["kill", "-STOP", stalled])
        wait_for(
            "a watchdog restart of nordwgd",
            lambda: int(box.unit_property("nordwgd.service", "NRestarts")) > restarts,
        )
        wait_for(
            "nordwgd to be ready again",
            lambda: box.unit_property("nordwgd.service", "ActiveState") == "active",
        )
        assert box.unit_property("nordwgd.service", "MainPID") != stalled
        assert get_property(box, "State") == 's "disconnected"'
        assert "Watchdog timeout" in box.journal("nordwgd.service", lines=400)
    finally:
        box.run(["rm", "-f", dropin])
        box.run(["systemctl", "daemon-reload"])


def test_stop(running: Container) -> None:
    box = running
    box.run(["systemctl", "stop", "nordwgd.service"])
    assert box.unit_property("nordwgd.service", "ActiveState") == "inactive"
    assert box.unit_property("nordwgd.service", "Result") == "success"
    out = busctl(box, "status", "org.nordwgd.Nordwgd1", check=False)
    assert "PID=" not in out


def test_renew_is_skipped_while_the_daemon_is_stopped(box: Container) -> None:
    box.run(["systemctl", "stop", "nordwgd.service"])
    box.run(["systemctl", "start", "nordwgd-renew.service"])
    # ExecCondition said no: skipped, not failed, and the daemon was not bus-activated.
    assert box.unit_property("nordwgd-renew.service", "Result") == "exec-condition"
    assert box.unit_property("nordwgd-renew.service", "ActiveState") == "inactive"
    assert box.unit_property("nordwgd.service", "ActiveState") == "inactive"


def test_bus_activation_starts_the_service(box: Container) -> None:
    box.run(["systemctl", "stop", "nordwgd.service"])
    assert get_property(box, "State") == 's "disconnected"'
    # The name is owned (and the call answered) just before READY=1 reaches systemd.
    wait_for(
        "nordwgd.service to become active",
        lambda: box.unit_property("nordwgd.service", "ActiveState") == "active",
    )
    box.run(["systemctl", "stop", "nordwgd.service"])


# --- the early-boot kill switch --------------------------------------------------------------


def lockdown_config(lockdown: bool) -> str:
    example = (REPO / "data/nordwgd.toml.example").read_text()
    replaced, count = re.subn(
        r"^lockdown = \w+$", f"lockdown = {str(lockdown).lower()}", example, flags=re.M
    )
    assert count == 1
    return replaced


@pytest.mark.parametrize("lockdown", [True, False])
def test_killswitch_at_boot(lockdown: bool) -> None:
    files = {"/etc/nordwgd/nordwgd.toml": lockdown_config(lockdown)}
    with boot_container(files=files, enable=("nordwgd-killswitch.service",)) as box:
        assert box.unit_property("nordwgd-killswitch.service", "ActiveState") == "active"
        assert box.unit_property("nordwgd-killswitch.service", "Result") == "success"
        table = box.run(["nft", "--stateless", "list", "table", "inet", "nordwgd"], check=False)
        if lockdown:
            assert table.returncode == 0, box.journal("nordwgd-killswitch.service")
            assert "drop" in table.stdout
            # Run again, it leaves an existing table (a running daemon's) alone.
            box.run(["systemctl", "restart", "nordwgd-killswitch.service"])
            assert "already exists; left as it is" in box.journal("nordwgd-killswitch.service")
            again = box.run(["nft", "--stateless", "list", "table", "inet", "nordwgd"])
            assert again.stdout == table.stdout
        else:
            assert table.returncode != 0
        # It ran before the network could be configured.
        after = box.unit_property("network-pre.target", "After").split()
        assert "nordwgd-killswitch.service" in after


# --- connected, with the namespaced test world built inside the container --------------------

WORLD_RUNNER = """\
import json, sys
from pathlib import Path
from nordwgd.testing.world import World, cleanup_run

world = World.build(Path(sys.argv[1]))
try:
    world.write_config(
        Path("/etc/nordwgd/nordwgd.toml"),
        paths={"state_dir": "/var/lib/nordwgd", "runtime_dir": "/run/nordwgd"},
    )
    info = {
        "host_ns": world.host_ns,
        "interface": world.interface,
        "web": world.web_address,
        "stations": [server.station for server in world.servers],
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "leaks":
            assert world.leak_monitor is not None
            print(json.dumps([str(leak) for leak in world.leak_monitor.leaks()]), flush=True)
finally:
    world.close()
    cleanup_run()
"""


class InnerWorld:
    """The test world running inside the container, driven over the runner's pipes."""

    def __init__(self, box: Container) -> None:
        box.run(
            ["install", "-D", "-m", "0644", "/dev/stdin", "/usr/local/lib/nordwgd-world.py"],
            input=WORLD_RUNNER,
        )
        self.box = box
        self.process = box.popen([sys.executable, "/usr/local/lib/nordwgd-world.py", "/srv/w"])
        self.info = json.loads(self._line(timeout=120))
        self.host_ns: str = self.info["host_ns"]

    def _line(self, timeout: float) -> str:
        import selectors

        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise AssertionError("the world inside the container did not answer")
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"the world runner exited: {self.process.stderr.read()}")
        return line

    def leaks(self) -> list[str]:
        assert self.process.stdin is not None
        self.process.stdin.write("leaks\n")
        self.process.stdin.flush()
        result: list[str] = json.loads(self._line(timeout=30))
        return result

    def host(self, argv: list[str], check: bool = True) -> str:
        return self.box.run(["ip", "netns", "exec", self.host_ns, *argv], check=check).stdout

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # the runner tears the world down on EOF
        try:
            self.process.wait(timeout=60)
        except Exception:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def world_box() -> Iterator[tuple[Container, InnerWorld]]:
    with boot_container() as box:
        world = InnerWorld(box)
        try:
            # The daemon runs under systemd, in the world's host namespace.
            dropin = "/run/systemd/system/nordwgd.service.d/50-test-world.conf"
            box.run(
                ["install", "-D", "-m", "0644", "/dev/stdin", dropin],
                input=(
                    "[Service]\n"
                    f"NetworkNamespacePath=/run/netns/{world.host_ns}\n"
                    f"ReadWritePaths=/etc/netns/{world.host_ns}\n"
                ),
            )
            box.run(["systemctl", "daemon-reload"])
            yield box, world
        finally:
            box.run(["systemctl", "stop", "nordwgd.service"], check=False)
            world.close()


def test_connect_and_disconnect_under_systemd(world_box: tuple[Container, InnerWorld]) -> None:
    box, world = world_box
    box.run(["systemctl", "start", "nordwgd.service"])
    assert get_property(box, "State") == 's "disconnected"'

    busctl(box, "call", *BUS, "Connect", "a{sv}", "0")

    def settled() -> bool:
        return get_property(box, "State") in ('s "connected"', 's "error"')

    wait_for("the connection to settle", settled, timeout=90)
    assert get_property(box, "State") == 's "connected"', (
        get_property(box, "ErrorCause") + "\n" + box.journal("nordwgd.service")
    )
    assert get_property(box, "Interface") == f's "{world.info["interface"]}"'
    assert get_property(box, "Blocking") == 's "blocked"'
    status = json.loads(box.run(["nordwgctl", "status", "--json"]).stdout)
    assert status["State"] == "connected"
    hostname = status["Server"]["hostname"]
    # systemctl status tells a person where the tunnel goes and that the kill switch holds.
    assert box.unit_property("nordwgd.service", "StatusText") == (
        f"connected to {hostname} ({status['Server']['city']}, {status['Server']['country']}); "
        "traffic outside the tunnel blocked"
    )

    # Traffic from the host namespace leaves through a VPN server.
    seen = world.host(["curl", "-sS", "--max-time", "10", f"http://{world.info['web']}/"])
    assert seen.strip() in world.info["stations"]
    assert "table inet nordwgd" in world.host(["nft", "list", "table", "inet", "nordwgd"])

    busctl(box, "call", *BUS, "Disconnect")
    wait_for(
        "the disconnect",
        lambda: get_property(box, "State") == 's "disconnected"',
        timeout=60,
    )
    assert get_property(box, "Blocking") == 's "open"'
    assert box.unit_property("nordwgd.service", "StatusText") == "disconnected; traffic open"
    box.run(["systemctl", "stop", "nordwgd.service"])
    assert box.unit_property("nordwgd.service", "Result") == "success"
    assert world.leaks() == []


def test_killed_daemon_is_restarted_without_a_leak(world_box: tuple[Container, InnerWorld]) -> None:
    box, world = world_box
    box.run(["systemctl", "start", "nordwgd.service"])
    connect_and_wait(box)
    killed, restarts = kill_main_process(box)
    # The kill switch stays in the kernel while no daemon runs.
    assert "table inet nordwgd" in world.host(["nft", "list", "table", "inet", "nordwgd"])
    # What the dead daemon recorded is still there for the next one (RuntimeDirectoryPreserve).
    assert box.run(["ls", "-A", "/run/nordwgd"]).stdout.strip()
    wait_restarted(box, killed, restarts)
    assert get_property(box, "Blocking") != 's "open"'
    wait_for(
        "the restarted daemon to settle",
        lambda: get_property(box, "State") in ('s "connected"', 's "disconnected"', 's "error"'),
        timeout=90,
    )
    # Traffic still leaves only through the tunnel, or not at all.
    try:
        seen = world.host(["curl", "-sS", "--max-time", "5", f"http://{world.info['web']}/"])
    except Exception:
        seen = ""
    assert seen.strip() in ("", *world.info["stations"])
    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: get_property(box, "State") == 's "disconnected"')
    box.run(["systemctl", "stop", "nordwgd.service"])
    assert world.leaks() == []


def test_packaged_install_runs_from_its_own_virtualenv() -> None:
    """install.sh without --python: the private venv under /usr/lib/nordwgd, as packaged."""
    with boot_container(python=None, boot_timeout=600) as box:
        wrapper = box.run(["cat", "/usr/bin/nordwgd"]).stdout
        assert "'/usr/lib/nordwgd/bin/python'" in wrapper
        started = box.run(["systemctl", "start", "nordwgd.service"], check=False)
        assert started.returncode == 0, box.journal("nordwgd.service")
        assert box.unit_property("nordwgd.service", "ActiveState") == "active"
        main_pid = box.unit_property("nordwgd.service", "MainPID")
        exe = box.run(["readlink", f"/proc/{main_pid}/exe"]).stdout.strip()
        assert exe.startswith("/usr/bin/python3")  # the venv's interpreter links to it
        cmdline = box.run(["cat", f"/proc/{main_pid}/cmdline"]).stdout
        assert "/usr/lib/nordwgd/bin/python" in cmdline
        status = json.loads(box.run(["nordwgctl", "status", "--json"]).stdout)
        assert status["State"] == "disconnected"
        # The tray applet is packaged into the same venv.
        assert "nordwgd-tray" in box.run(["nordwgd-tray", "--help"]).stdout
        box.run(["systemctl", "stop", "nordwgd.service"])
        assert box.unit_property("nordwgd.service", "Result") == "success"
