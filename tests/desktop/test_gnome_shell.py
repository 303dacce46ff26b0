"""The GNOME Shell extension in real GNOME Shells, 43 (Debian 12) and 48 (Debian 13), and the
tray through the AppIndicator extension in GNOME Shell 43, following the real nordwgd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nordwgd.testing.world import World
from tests.desktop.conftest import REPO, Stage, eventually, stage_for
from tests.desktop.gnome import (
    APPINDICATOR_UUID,
    UNSAFE_UUID,
    UUID,
    Shell,
    extensions_for,
    tray_click,
    tray_menu_open,
    tray_view,
)

pytestmark = [pytest.mark.root, pytest.mark.nspawn, pytest.mark.slow]

# (root kind, extension flavour): Debian 12's Shell 43 (legacy imports), Debian 13's 48 (ESM).
SHELLS = {"gnome": "43", "gnome-trixie": "45"}


@pytest.fixture(scope="module", params=sorted(SHELLS))
def stage(request: pytest.FixtureRequest, shared_world: World) -> Iterator[Stage]:
    kind = request.param
    with stage_for(
        kind,
        shared_world,
        extensions=extensions_for(SHELLS[kind]),
        enabled=[UUID, UNSAFE_UUID, APPINDICATOR_UUID],
    ) as built:
        yield built


@pytest.fixture
def shell(stage: Stage) -> Iterator[Shell]:
    shell = Shell(stage.desktop)
    shell.wait_started()
    stage.settle()
    yield shell
    shell.close_menu()
    shell.clear_notifications()


def test_extension_is_enabled_and_shows_the_daemon(shell: Shell, stage: Stage) -> None:
    info = shell.extension_info(UUID)
    assert info["state"] == 1, info  # ENABLED
    assert info["error"] == ""
    view = eventually(shell.toggle, lambda v: v["subtitle"] == "Off", "the toggle to say Off")
    assert view["title"] == "VPN"
    assert view["checked"] is False
    assert view["indicator"] is False  # nothing to show while open and disconnected


def test_a_click_in_the_shell_connects_and_disconnects(shell: Shell, stage: Stage) -> None:
    eventually(shell.toggle, lambda v: v["subtitle"] == "Off", "the toggle to say Off")
    shell.eval("toggle.emit('clicked', 1); return true;")
    stage.wait_state("connected")
    country = stage.prop("Server")["country"]
    view = eventually(shell.toggle, lambda v: v["checked"], "the toggle to be on")
    eventually(shell.toggle, lambda v: country in (v["title"], v["subtitle"]), "the country")
    assert view["indicator"] is True
    assert view["countries"][0] == country  # the recent location comes first
    shell.open_menu()
    shell.screenshot(f"connected-{SHELLS[stage.desktop.kind]}")
    stage.shot(f"connected-{SHELLS[stage.desktop.kind]}")
    shell.close_menu()

    shell.eval("toggle.emit('clicked', 1); return true;")
    stage.wait_state("disconnected")
    eventually(shell.toggle, lambda v: not v["checked"] and v["subtitle"] == "Off", "off again")


def test_a_country_from_the_menu_is_connected(shell: Shell, stage: Stage) -> None:
    servers = stage.call("ListServers", "a{sv}", [{}])
    country = sorted({server["country"] for server in servers})[0]
    eventually(shell.toggle, lambda v: country in v["countries"], "the countries menu")
    shell.eval(
        "toggle._countries.menu._getMenuItems()"
        f".find(i => i.label && i.label.text === {country!r} && !i.recent).activate(null);"
        " return true;"
    )
    stage.wait_state("connected")
    assert stage.prop("Server")["country"] == country


def test_lockdown_shows_blocking_and_a_refusal_is_told(shell: Shell, stage: Stage) -> None:
    eventually(shell.toggle, lambda v: v["subtitle"] == "Off", "the toggle to say Off")
    # The desktop user may not change settings here (polkit: configure refused).
    shell.eval("toggle._lockdown.toggle(); return true;")
    notes = eventually(
        shell.notifications,
        lambda n: any(x.startswith("Not allowed: turning Lockdown on|") for x in n),
        "the refusal to be shown",
    )
    assert any("org.nordwgd.nordwgd1.configure" in note for note in notes), notes
    eventually(shell.toggle, lambda v: v["lockdown"] is False, "the switch to go back")
    assert stage.prop("Lockdown") is False
    shell.open_menu()
    shell.screenshot(f"refused-{SHELLS[stage.desktop.kind]}")
    stage.shot(f"refused-{SHELLS[stage.desktop.kind]}")
    shell.close_menu()

    # An administrator turns Lockdown on: the toggle says blocked and the panel shows it.
    stage.call("SetLockdown", "b", [True])
    view = eventually(
        shell.toggle, lambda v: v["subtitle"] == "Blocked (lockdown)", "the blocked subtitle"
    )
    assert view["lockdown"] is True and view["indicator"] is True


def test_a_daemon_restart_is_followed(shell: Shell, stage: Stage) -> None:
    eventually(shell.toggle, lambda v: v["subtitle"] == "Off", "the toggle to say Off")
    stage.daemon.stop()
    eventually(shell.toggle, lambda v: v["subtitle"] == "Service not running", "not running")
    stage.daemon.start()
    eventually(shell.toggle, lambda v: v["subtitle"] == "Off", "the daemon back")
    shell.eval("toggle.emit('clicked', 1); return true;")
    stage.wait_state("connected")


@pytest.fixture
def tray(shell: Shell, stage: Stage) -> Iterator[None]:
    process = stage.desktop.spawn(
        "tray",
        [str(REPO / ".venv" / "bin" / "python"), "-m", "nordwgd_tray", "--log-level=info"],
        env={"PYTHONPATH": str(REPO)},
    )
    # The AppIndicator extension drops about every other new item; the tray registers again.
    eventually(lambda: tray_view(shell), lambda v: v is not None and v["menu"], "the tray icon")
    yield
    tray_menu_open(shell, False)
    stage.desktop.kill("tray", process)
    eventually(lambda: tray_view(shell), lambda v: v is None, "the tray icon to go")


# The tray runs from the repository's venv (Python 3.11, as Debian 12); Debian 13 has 3.13, so
# the tray is tested in GNOME Shell 43 (and in Plasma 5.27).
ON_SHELL_43 = pytest.mark.parametrize("stage", ["gnome"], indirect=True)


@ON_SHELL_43
def test_tray_icon_and_menu_follow_the_daemon_and_connect(
    shell: Shell, stage: Stage, tray: None
) -> None:
    view = eventually(
        lambda: tray_view(shell), lambda v: v["menu"][0] == "Disconnected", "the state line"
    )
    assert view["title"] == "NordVPN"
    assert "network-vpn-disconnected-symbolic" in view["icon"]
    tray_click(shell, "Quick connect")
    stage.wait_state("connected")
    view = eventually(
        lambda: tray_view(shell),
        lambda v: v["menu"][0].startswith("Connected to") and "network-vpn-symbolic" in v["icon"],
        "the tray to show the connection",
    )
    assert stage.prop("Server")["name"] in view["menu"][0]
    eventually(
        shell.notifications,
        lambda n: any(x.startswith("VPN connected|Connected to") for x in n),
        "the connected notification",
    )
    tray_menu_open(shell, True)
    shell.screenshot("tray-connected")
    stage.shot("tray-connected")
    tray_menu_open(shell, False)

    tray_click(shell, "Disconnect")
    stage.wait_state("disconnected")
    eventually(lambda: tray_view(shell), lambda v: v["menu"][0] == "Disconnected", "disconnected")
    eventually(
        shell.notifications,
        lambda n: any(x.startswith("VPN disconnected|") for x in n),
        "the disconnected notification",
    )


@ON_SHELL_43
def test_tray_tells_a_refusal_and_follows_a_daemon_restart(
    shell: Shell, stage: Stage, tray: None
) -> None:
    eventually(lambda: tray_view(shell), lambda v: v["menu"][0] == "Disconnected", "the tray")
    tray_click(shell, "Lockdown")
    eventually(
        shell.notifications,
        lambda n: any(
            x.startswith("Not allowed: turning Lockdown on|") and "configure" in x for x in n
        ),
        "the refusal notification",
    )
    assert stage.prop("Lockdown") is False
    shell.screenshot("tray-refused")
    stage.shot("tray-refused")

    stage.daemon.stop()
    eventually(
        lambda: tray_view(shell),
        lambda v: (
            v["menu"][0] == "nordwgd is not running"
            and "network-vpn-disabled-symbolic" in v["icon"]
        ),
        "the tray to show the daemon gone",
    )
    eventually(
        shell.notifications,
        lambda n: any(x.startswith("VPN service stopped|") for x in n),
        "the stopped notification",
    )
    stage.daemon.start()
    eventually(lambda: tray_view(shell), lambda v: v["menu"][0] == "Disconnected", "back")
