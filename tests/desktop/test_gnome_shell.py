"""The GNOME Shell extension and the tray (through the AppIndicator extension) in a real
GNOME Shell 43 (Debian 12), following the real nordwgd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nordwgd.testing.world import World
from tests.desktop.conftest import Stage, eventually, stage_for
from tests.desktop.gnome import APPINDICATOR_UUID, UNSAFE_UUID, UUID, Shell, extensions_for

pytestmark = [pytest.mark.root, pytest.mark.nspawn, pytest.mark.slow]

KIND = "gnome"
VERSION = "43"


@pytest.fixture(scope="module")
def stage(shared_world: World) -> Iterator[Stage]:
    with stage_for(
        KIND,
        shared_world,
        extensions=extensions_for(VERSION),
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
    shell.screenshot("connected")
    stage.shot("connected")
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
    shell.screenshot("refused")
    stage.shot("refused")
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
