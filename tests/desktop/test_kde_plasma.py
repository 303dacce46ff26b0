"""The tray in KDE Plasma 5.27 (Debian 12): Plasma's own system tray (plasmawindowed
org.kde.plasma.systemtray, with kded5's StatusNotifierWatcher) shows nordwgd-tray; a click on
the icon and in its menu (xdotool) reaches the real nordwgd."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from nordwgd.testing.world import World
from tests.desktop.conftest import REPO, Stage, busctl, eventually, stage_for

pytestmark = [pytest.mark.root, pytest.mark.nspawn, pytest.mark.slow]

WATCHER = "org.kde.StatusNotifierWatcher"


@pytest.fixture(scope="module")
def stage(shared_world: World) -> Iterator[Stage]:
    with stage_for("kde", shared_world) as built:
        desktop = built.desktop

        def load_watcher() -> str:
            # kded5 does not load the watcher by itself without Plasma's session manager.
            result = desktop.run(
                [
                    "gdbus",
                    "call",
                    "--session",
                    "--dest",
                    "org.kde.kded5",
                    "--object-path",
                    "/kded",
                    "--method",
                    "org.kde.kded5.loadModule",
                    "statusnotifierwatcher",
                ]
            )
            return result.stdout

        eventually(load_watcher, lambda out: "true" in out, "kded5's StatusNotifierWatcher")
        desktop.spawn("systemtray", ["plasmawindowed", "org.kde.plasma.systemtray"])
        eventually(lambda: watcher(built, "IsStatusNotifierHostRegistered"), bool, "the tray host")
        window = eventually(lambda: tray_window(built), bool, "the tray window")
        # Room above and below: the item's menu pops up above the icon.
        desktop.run(["xdotool", "windowmove", "--sync", window[0], "420", "380"])
        yield built


def watcher(stage: Stage, name: str) -> object:
    (value,) = [
        busctl(
            stage.desktop.session_address,
            "get-property",
            WATCHER,
            "/StatusNotifierWatcher",
            WATCHER,
            name,
        )
    ]
    return value


def tray_window(stage: Stage) -> tuple[str, int, int, int, int]:
    """(id, x, y, width, height) of Plasma's system tray window."""
    out = stage.desktop.run(
        [
            "sh",
            "-c",
            "w=$(xdotool search --onlyvisible --name '^System Tray$' | head -1);"
            " echo $w; xdotool getwindowgeometry --shell $w",
        ]
    ).stdout.split()
    values = dict(item.split("=", 1) for item in out[1:] if "=" in item)
    return out[0], *(int(values[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))  # type: ignore[return-value]


def window_image(stage: Stage, name: str) -> str:
    """A screenshot of the tray window (shots/NAME.png); returns its pixels' hash."""
    window = tray_window(stage)[0]
    path = f"/run/nordwgd-test/shots/{name}.png"
    stage.desktop.run(["import", "-window", window, path])
    # ImageMagick's signature covers the pixels only (the PNG also holds its own time).
    return stage.desktop.run(["identify", "-format", "%#", path]).stdout.strip()


def item_property(stage: Stage, name: str) -> object:
    items = watcher(stage, "RegisteredStatusNotifierItems")
    assert isinstance(items, list) and items
    service, _, path = items[-1].partition("/")
    return busctl(
        stage.desktop.session_address,
        "get-property",
        service,
        "/" + path,
        "org.kde.StatusNotifierItem",
        name,
    )


@pytest.fixture
def tray(stage: Stage) -> Iterator[None]:
    stage.settle()
    process = stage.desktop.spawn(
        "tray",
        [str(REPO / ".venv" / "bin" / "python"), "-m", "nordwgd_tray", "--log-level=info"],
        env={"PYTHONPATH": str(REPO)},
    )
    eventually(lambda: watcher(stage, "RegisteredStatusNotifierItems"), bool, "the item")
    yield
    stage.desktop.kill("tray", process)


def click_icon(stage: Stage, button: int = 3) -> None:
    """Click our icon in Plasma's tray (the first item, left of the expander arrow); the right
    button opens its menu, the left one activates it ("Show status")."""
    _window, x, y, width, height = tray_window(stage)
    stage.desktop.run(
        [
            "xdotool",
            "mousemove",
            "--sync",
            str(x + int(width * 0.29)),
            str(y + height // 2),
            "click",
            str(button),
        ]
    )


def menu_open(stage: Stage) -> bool:
    result = stage.desktop.run(["xdotool", "search", "--onlyvisible", "--class", "plasmawindowed"])
    return len(result.stdout.split()) > 1  # the tray window and the menu popup


def test_plasma_shows_the_tray_and_a_click_connects(stage: Stage, tray: None) -> None:
    eventually(lambda: item_property(stage, "IconName"), bool, "the icon name")
    eventually(
        lambda: item_property(stage, "ToolTip"),
        lambda t: t[2] == "NordVPN: Disconnected",
        "the tooltip",
    )  # type: ignore[index]
    time.sleep(2)  # let Plasma draw the icon
    before = window_image(stage, "tray-disconnected")

    def open_menu() -> bool:
        if not menu_open(stage):
            click_icon(stage)
            time.sleep(1)
        return menu_open(stage)

    eventually(open_menu, bool, "the tray menu to open", limit=60)
    stage.desktop.run(["import", "-window", "root", "/run/nordwgd-test/shots/menu.png"])
    stage.shot("menu")

    def choose_quick_connect() -> str:
        # The first line is the state; the first entry that can be chosen is Quick connect.
        if stage.prop("State") == "disconnected":
            eventually(open_menu, bool, "the tray menu to open", limit=60)
            stage.desktop.run(["xdotool", "key", "--delay", "200", "Down", "Return"])
            time.sleep(3)
        return str(stage.prop("State"))

    # A key press can reach the menu before it has the keyboard: then it is sent again.
    eventually(choose_quick_connect, lambda s: s != "disconnected", "Quick connect", limit=120)
    stage.wait_state("connected")
    eventually(
        lambda: item_property(stage, "ToolTip"),
        lambda t: str(t[2]).startswith("NordVPN: Connected to"),
        "the tooltip",
    )  # type: ignore[index]
    after = eventually(
        lambda: window_image(stage, "tray-connected"),
        lambda h: h != before,
        "Plasma to draw the connected icon",
    )
    assert after != before
    stage.desktop.run(["import", "-window", "root", "/run/nordwgd-test/shots/connected.png"])
    stage.shot("connected")


def test_plasma_follows_a_daemon_restart(stage: Stage, tray: None) -> None:
    eventually(
        lambda: item_property(stage, "ToolTip"),
        lambda t: t[2] == "NordVPN: Disconnected",
        "the tooltip",
    )  # type: ignore[index]
    stage.daemon.stop()
    eventually(
        lambda: item_property(stage, "ToolTip"),
        lambda t: t[2] == "NordVPN: nordwgd is not running",
        "the daemon gone",
    )  # type: ignore[index]
    stage.daemon.start()
    eventually(
        lambda: item_property(stage, "ToolTip"),
        lambda t: t[2] == "NordVPN: Disconnected",
        "the daemon back",
    )  # type: ignore[index]
