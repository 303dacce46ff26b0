"""nordwgd's Debian packages on a clean Debian 12, installed with apt, under real systemd.

scripts/check-package builds the packages (the current version and a "previous" one to
upgrade from), makes a local apt repository of them and the Debian 12 packages they depend on,
and runs this file. The container boots a minimal Debian 12 root (systemd, dbus, polkitd,
wireguard-go, nftables) in which nothing of nordwgd exists until apt installs it. The test
world (fake API, VPN servers and leak monitor) runs inside from this checkout, as in the
system tests; the daemon under test is the packaged one.

The tests share one container and run in order: install, connect, upgrade while connected,
the checks of the upgraded install, removal (with and without lockdown), purge.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.nspawn import Container, boot_container
from nordwgd.testing.systemworld import (
    BUS,
    DAEMON,
    IN_WORLD_DROPIN,
    KILLSWITCH,
    LEAKS_SCRIPT,
    PROBE_SCRIPT,
    TEST_DIR,
    WORLD_RUNNER,
    WORLD_UNIT,
    SystemWorld,
    _world_unit,
    busctl,
    connect_and_wait,
    get_property,
    state,
    wait_for,
    wait_for_connected,
)

pytestmark = [pytest.mark.root, pytest.mark.nspawn, pytest.mark.slow]

REPO_IN_CONTAINER = "/srv/nordwgd-repo"
PACKAGES = ("nordwgd", "nordwgd-tray")
UNPRIVILEGED = "pkgtester"
# Where the test itself writes inside the container; not the package's business.
TEST_PATHS = (
    "/usr/local/lib/nordwgd-test",
    "/run/nordwgd-test",
    "/srv/nordwgd-world",
    f"/etc/systemd/system/{WORLD_UNIT}",
    f"/etc/systemd/system/{DAEMON}.d",
    f"/etc/systemd/system/{KILLSWITCH}.d",
)
# Changes every boot or apt run makes whatever is installed (logs, apt's and dpkg's own state).
VOLATILE = (
    "/var/log",
    "/var/cache",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/systemd",
    "/var/lib/polkit-1",
    "/var/tmp",
    "/etc/ld.so.cache",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/apt/sources.list",
)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this suite through scripts/check-package")
    return value


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    root = Path(_env("NORDWGD_PKG_TESTROOT"))
    repo = Path(_env("NORDWGD_PKG_REPO"))
    files = {
        # Only the local repository: the container has no network.
        "/etc/apt/sources.list": f"deb [trusted=yes] file:{REPO_IN_CONTAINER} ./\n",
        "/etc/machine-id": secrets.token_hex(16) + "\n",
    }
    with boot_container(
        install=False,
        python=None,
        lower=root,
        files=files,
        binds=(f"{repo}:{REPO_IN_CONTAINER}",),
        boot_timeout=120,
    ) as container:
        container.run(["apt-get", "update", "-qq"], timeout=300)
        container.run(["useradd", "--create-home", UNPRIVILEGED])
        yield container


def _snapshot(box: Container) -> set[str]:
    """Every path on the container's root file system, but the volatile places."""
    prune = " -o ".join(f"-path {shlex.quote(p)}" for p in VOLATILE)
    out = box.run(
        ["sh", "-c", f"find / -xdev \\( {prune} \\) -prune -o -print"], timeout=300
    ).stdout
    return set(out.splitlines())


def _apt(box: Container, *args: str) -> str:
    result = box.run(
        ["apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-confdef", *args],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"apt-get {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _install_file(box: Container, path: str, content: str, mode: str = "0644") -> None:
    box.run(["install", "-D", "-m", mode, "/dev/stdin", path], input=content)


class State:
    """What the ordered tests hand on to each other."""

    before: set[str] = set()
    world: SystemWorld | None = None


def test_nothing_of_nordwgd_before_install(box: Container) -> None:
    assert box.run(["sh", "-c", "command -v nordwgd nordwgctl"], check=False).returncode != 0
    found = box.run(["sh", "-c", "ls -d /usr/share/nordwgd /etc/nordwgd 2>&1"], check=False)
    assert found.returncode != 0
    State.before = _snapshot(box)
    assert "/usr/bin/apt-get" in State.before


def test_install_enables_and_starts_the_service(box: Container) -> None:
    previous = _env("NORDWGD_PKG_PREVIOUS")
    _apt(box, "install", *(f"{package}={previous}" for package in PACKAGES))
    assert box.unit_property(DAEMON, "ActiveState") == "active", box.journal(DAEMON)
    assert box.run(["systemctl", "is-enabled", DAEMON]).stdout.strip() == "enabled"
    assert box.run(["systemctl", "is-enabled", KILLSWITCH]).stdout.strip() == "enabled"
    for timer in ("nordwgd-health.timer", "nordwgd-renew.timer"):
        assert box.unit_property(timer, "ActiveState") == "active"
    assert state(box) == "disconnected"
    # The daemon is the packaged one: Debian's python3, isolated, nordwgd's private directory.
    pid = box.unit_property(DAEMON, "MainPID")
    cmdline = box.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    assert cmdline[:3] == ["/usr/bin/python3", "-I", "/usr/bin/nordwgd"], cmdline
    where = box.run(
        ["/usr/bin/python3", "-I", "-c",
         "import sys; sys.path[:0] = ['/usr/share/nordwgd', '/usr/share/nordwgd/vendor'];"
         "import nordwgd, anyio, dbus_fast; print(nordwgd.__file__, anyio.__file__)"]
    ).stdout  # fmt: skip
    assert where.startswith("/usr/share/nordwgd/nordwgd/"), where
    assert "/usr/share/nordwgd/vendor/anyio/" in where
    # The test world runs from a checkout only.
    listing = box.run(["dpkg", "-L", "nordwgd"]).stdout
    assert "/usr/share/nordwgd/nordwgd/launch.py" in listing
    assert "/nordwgd/testing" not in listing
    # Debian's own libraries stay Debian's: nothing was installed into dist-packages.
    plain = box.run(["/usr/bin/python3", "-I", "-c", "import nordwgd"], check=False)
    assert plain.returncode != 0


def _start_world(box: Container) -> SystemWorld:
    """The test world as a unit, and the daemon moved into its host namespace."""
    _install_file(box, f"{TEST_DIR}/world.py", WORLD_RUNNER)
    _install_file(box, f"{TEST_DIR}/probe.py", PROBE_SCRIPT)
    _install_file(box, f"{TEST_DIR}/leaks.py", LEAKS_SCRIPT)
    _install_file(box, f"/etc/systemd/system/{WORLD_UNIT}", _world_unit(lockdown=False))
    _install_file(box, f"/etc/systemd/system/{KILLSWITCH}.d/50-test-world.conf", IN_WORLD_DROPIN)
    _install_file(
        box,
        f"/etc/systemd/system/{DAEMON}.d/50-test-world.conf",
        IN_WORLD_DROPIN + "ReadWritePaths=-/etc/netns\n",
    )
    box.run(["systemctl", "daemon-reload"])
    started = box.run(["systemctl", "start", WORLD_UNIT], timeout=180, check=False)
    assert started.returncode == 0, box.journal(WORLD_UNIT)
    # The world wrote its config (API address, CA, token file) over the shipped one.
    box.run(["systemctl", "restart", DAEMON])
    return SystemWorld(box)


def test_connects_in_the_test_world_without_a_leak(box: Container) -> None:
    world = _start_world(box)
    State.world = world
    world.reset_leaks()
    connect_and_wait(box)
    assert get_property(box, "Blocking") == 's "blocked"'
    assert world.web_get() in world.stations
    assert world.leaked_packets() == 0, world.leaks()


def test_upgrade_while_connected_leaks_nothing_and_keeps_config_and_choices(
    box: Container,
) -> None:
    world = State.world
    assert world is not None
    current = _env("NORDWGD_PKG_VERSION")
    busctl(box, "call", *BUS, "SetAllowLan", "b", "true")
    config_before = box.run(["cat", "/etc/nordwgd/nordwgd.toml"]).stdout
    first = box.unit_property(DAEMON, "MainPID")
    world.reset_leaks()
    with world.probing() as loop:
        output = _apt(box, "install", *(f"{package}={current}" for package in PACKAGES))
        wait_for_connected(box)
    tally = loop.tally
    assert tally is not None and tally.rounds > 0
    assert box.unit_property(DAEMON, "MainPID") != first, "the upgrade did not restart nordwgd"
    assert "nordwgd" in output
    assert world.leaked_packets() == 0, world.leaks()
    assert tally.answered_from() <= world.stations, tally
    assert tally.table_missing == 0, tally
    assert tally.lan_dns_answered == 0, tally
    assert box.run(["cat", "/etc/nordwgd/nordwgd.toml"]).stdout == config_before
    assert get_property(box, "AllowLan") == "b true"
    assert world.web_get() in world.stations


def test_the_upgraded_package_is_the_current_version(box: Container) -> None:
    installed = box.run(["dpkg-query", "-W", "-f", "${Version}", "nordwgd"]).stdout
    assert installed == _env("NORDWGD_PKG_VERSION")
    version = get_property(box, "Version")
    assert version.startswith('s "'), version


def test_the_interface_is_on_the_bus(box: Container) -> None:
    out = box.run(["busctl", "introspect", BUS[0], BUS[1], BUS[2]]).stdout
    for member in (".Connect", ".Disconnect", ".SetLockdown", ".State", ".Lockdown", ".Version"):
        assert member in out, out


def test_nordwgctl_status(box: Container) -> None:
    status = json.loads(box.run(["nordwgctl", "status", "--json"]).stdout)
    assert status["State"] == "connected"
    text = box.run(["nordwgctl", "status"]).stdout
    assert "connected" in text
    manual = box.run(["sh", "-c", "zcat /usr/share/man/man1/nordwgctl.1.gz"]).stdout
    assert "nordwgctl" in manual and ".SH COMMANDS" in manual


def test_an_unprivileged_caller_is_refused_by_polkit(box: Container) -> None:
    result = box.run_as(UNPRIVILEGED, ["nordwgctl", "disconnect"], check=False)
    assert result.returncode == 4, result
    assert state(box) == "connected"
    # Reading needs nothing.
    assert box.run_as(UNPRIVILEGED, ["nordwgctl", "status"]).returncode == 0


def test_bus_activation_starts_the_daemon(box: Container) -> None:
    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: state(box) == "disconnected", timeout=60)
    box.run(["systemctl", "stop", DAEMON])
    assert box.unit_property(DAEMON, "ActiveState") == "inactive"
    assert get_property(box, "State") == 's "disconnected"'
    assert box.unit_property(DAEMON, "ActiveState") == "active"


def test_remove_keeps_blocking_in_lockdown(box: Container) -> None:
    world = State.world
    assert world is not None
    connect_and_wait(box)
    busctl(box, "call", *BUS, "SetLockdown", "b", "true")
    world.reset_leaks()
    output = _apt(box, "remove", *PACKAGES)
    assert "lockdown is on" in output
    assert box.unit_property(DAEMON, "LoadState") == "not-found"
    assert world.table() is not None, "lockdown was on: the kill switch must stay"
    # Nothing leaves outside the tunnel (while the last of it is torn down, through it).
    assert world.web_get() in ("", *world.stations)
    assert world.leaked_packets() == 0, world.leaks()


def test_remove_opens_the_firewall_when_not_in_lockdown(box: Container) -> None:
    world = State.world
    assert world is not None
    current = _env("NORDWGD_PKG_VERSION")
    _apt(box, "install", *(f"{package}={current}" for package in PACKAGES))
    wait_for("the daemon", lambda: box.unit_property(DAEMON, "ActiveState") == "active")
    # Removal kept the stored choices (only purge forgets them).
    assert get_property(box, "Lockdown") == "b true"
    busctl(box, "call", *BUS, "SetLockdown", "b", "false")
    # The reinstalled daemon may be back in the tunnel it kept (it was removed while connected):
    # start from a settled disconnect so that the connection below is this test's own.
    wait_for("the daemon to settle", lambda: state(box) in ("connected", "disconnected"))
    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: state(box) == "disconnected", timeout=60)
    connect_and_wait(box)
    world.reset_leaks()
    _apt(box, "remove", *PACKAGES)
    assert world.table() is None, "not in lockdown: removal must not leave traffic blocked"
    assert world.web_get() not in ("", *world.stations)  # straight out, as without nordwgd
    assert box.run(["ip", "netns", "exec", world.host_ns, "ip", "link", "show", "nordlynx"],
                   check=False).returncode != 0  # fmt: skip


def test_purge_leaves_nothing_behind(box: Container) -> None:
    _apt(box, "purge", *PACKAGES)
    _apt(box, "autoremove", "--purge")
    # The test's own world and drop-ins go first: they are not the package's.
    box.run(["systemctl", "stop", WORLD_UNIT], timeout=120)
    box.run(["rm", "-rf", *TEST_PATHS])
    # The world keeps its host namespace's resolv.conf in /etc/netns/NAME/ (removed when it
    # stops); the directory above is left empty. Not empty would be something else's.
    box.run(["rmdir", "--ignore-fail-on-non-empty", "/etc/netns"], check=False)
    box.run(["systemctl", "daemon-reload"])
    after = _snapshot(box)
    left = sorted(after - State.before)
    assert left == [], "\n".join(left)
    gone = sorted(State.before - after)
    assert gone == [], "\n".join(gone)
    assert box.run(["nft", "list", "tables"]).stdout.strip() == ""
    assert box.run(["test", "-e", "/run/nordwgd"], check=False).returncode != 0
    # Anywhere else, the volatile places included: nothing carries nordwgd's name.
    named = box.run(
        ["sh", "-c", "find / -xdev \\( -path /var/lib/dpkg -o -path /var/lib/apt -o "
         f"-path /var/cache/apt -o -path /var/log/apt -o -path {REPO_IN_CONTAINER} \\) -prune "
         "-o -name '*nordwgd*' -print"]
    ).stdout.split()  # fmt: skip
    assert named == [], named
    listing = box.run(["dpkg", "-l", "nordwgd", "nordwgd-tray"], check=False).stdout
    assert "ii " not in listing and "rc " not in listing


def test_the_gnome_shell_extension_package_for_debian_12() -> None:
    """Its files (installing it needs GNOME Shell, which the container does not have)."""
    repo = Path(_env("NORDWGD_PKG_REPO"))
    version = _env("NORDWGD_PKG_VERSION")
    (deb,) = repo.glob(f"gnome-shell-extension-nordwgd_{version}_all.deb")
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    where = "./usr/share/gnome-shell/extensions/nordwgd@nordwgd.org"
    assert f"{where}/metadata.json" in listing and f"{where}/extension.js" in listing
    metadata = subprocess.run(
        ["sh", "-c", f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
         f"tar -xOf - {where}/metadata.json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    info = json.loads(metadata)
    assert info["uuid"] == "nordwgd@nordwgd.org"
    assert "43" in info["shell-version"]  # Debian 12's GNOME Shell
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    assert "gnome-shell (>= 43)" in fields and "gnome-shell (<< 45)" in fields
