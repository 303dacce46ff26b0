"""GNOME Shell seen from a test: Eval (unsafe mode, turned on by a test-only extension),
Screenshot, and the JavaScript that reads our toggle and the AppIndicator item."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nordwgd.testing.desktopshell import SHARED, Desktop
from tests.desktop.conftest import busctl, eventually

REPO = Path(__file__).resolve().parents[2]
UUID = "nordwgd@nordwgd.org"
UNSAFE_UUID = "nordwgd-test-unsafe@nordwgd.org"
APPINDICATOR_UUID = "ubuntu-appindicators@ubuntu.com"

# The toggle and indicator are found by their St names, as a theme would find them.
FIND = """
const qs = Main.panel.statusArea.quickSettings;
const toggle = qs.menu._grid.get_children().find(c => c.name === 'nordwgd-vpn-toggle');
const indicator = qs._indicators.get_children().find(c => c.name === 'nordwgd-vpn-indicator');
"""

TOGGLE_VIEW = """
const items = toggle._countries.menu._getMenuItems();
return {
    title: toggle.title ?? toggle.label,
    subtitle: toggle.subtitle ?? toggle.menu._headerSubtitle.text,
    header: toggle.menu._headerSubtitle.text,
    checked: toggle.checked,
    icon: toggle.iconName ?? toggle.icon_name,
    indicator: indicator.visible && indicator.get_children().some(i => i.visible),
    lockdown: toggle._lockdown.state,
    allowLan: toggle._allowLan.state,
    countries: items.map(i => i.label ? i.label.text : '--'),
};
"""


def extensions_for(version: str) -> list[Path]:
    return [
        REPO / "desktop" / "gnome-shell" / version / UUID,
        REPO / "tests" / "desktop" / "extensions" / version / UNSAFE_UUID,
    ]


class Shell:
    def __init__(self, desktop: Desktop) -> None:
        self.desktop = desktop
        self.address = desktop.session_address

    def eval(self, body: str) -> Any:
        """Run ``body`` (a function body with FIND's names in scope) in the shell."""
        code = f"(() => {{ {FIND} {body} }})()"
        ok, result = busctl(
            self.address,
            "call",
            "org.gnome.Shell",
            "/org/gnome/Shell",
            "org.gnome.Shell",
            "Eval",
            "s",
            code,
        )
        if not ok:
            raise RuntimeError(f"Eval failed: {result}")
        return json.loads(result) if result else None

    def wait_started(self) -> None:
        eventually(lambda: self.eval("return global.context.unsafe_mode;"), bool, "the shell")
        # The unsafe-mode banner would cover the screenshots.
        self.eval("Main.messageTray.getSources().forEach(s => s.destroy()); return true;")

    def extension_info(self, uuid: str) -> dict[str, Any]:
        (info,) = busctl(
            self.address,
            "call",
            "org.gnome.Shell",
            "/org/gnome/Shell",
            "org.gnome.Shell.Extensions",
            "GetExtensionInfo",
            "s",
            uuid,
        )
        return {key: value["data"] for key, value in info.items()}

    def toggle(self) -> dict[str, Any]:
        view: dict[str, Any] = self.eval(TOGGLE_VIEW)
        return view

    def notifications(self) -> list[str]:
        result: list[str] = self.eval(
            "return Main.messageTray.getSources().flatMap("
            "s => s.notifications.map(n => n.title + '|' + (n.bannerBodyText ?? n.body)));"
        )
        return result

    def clear_notifications(self) -> None:
        self.eval("Main.messageTray.getSources().forEach(s => s.destroy()); return true;")

    def open_menu(self) -> None:
        """Open Quick Settings and our toggle's menu, as a click on them does."""
        self.eval("Main.overview.hide(); qs.menu.open(false); return true;")
        time.sleep(0.5)
        self.eval("toggle.menu.open(false); return true;")
        time.sleep(0.7)

    def close_menu(self) -> None:
        self.eval("toggle.menu.close(false); qs.menu.close(false); return true;")

    def screenshot(self, name: str) -> None:
        path = f"{SHARED}/shots/{name}.png"
        busctl(
            self.address,
            "call",
            "org.gnome.Shell.Screenshot",
            "/org/gnome/Shell/Screenshot",
            "org.gnome.Shell.Screenshot",
            "Screenshot",
            "bbs",
            "false",
            "false",
            path,
        )


# The AppIndicator extension's panel button for our item and what it shows.
TRAY_VIEW = """
const key = Object.keys(Main.panel.statusArea).find(k => k.startsWith('appindicator-'));
if (!key)
    return null;
const button = Main.panel.statusArea[key];
return {
    title: button._indicator.title,
    icon: button._icon.gicon ? button._icon.gicon.to_string() : '',
    menu: button.menu._getMenuItems().map(i => i.label ? i.label.text : '--'),
};
"""


def tray_view(shell: Shell) -> dict[str, Any] | None:
    view: dict[str, Any] | None = shell.eval(TRAY_VIEW)
    return view


# A real pointer click on an actor, through a virtual input device of the shell's seat.
CLICK = """
const [x, y] = target.get_transformed_position();
const [w, h] = target.get_transformed_size();
const seat = Clutter.get_default_backend().get_default_seat();
const pointer = seat.create_virtual_device(Clutter.InputDeviceType.POINTER_DEVICE);
const now = GLib.get_monotonic_time();
pointer.notify_absolute_motion(now, x + w / 2, y + h / 2);
pointer.notify_button(now + 1000, Clutter.BUTTON_PRIMARY, Clutter.ButtonState.PRESSED);
pointer.notify_button(now + 2000, Clutter.BUTTON_PRIMARY, Clutter.ButtonState.RELEASED);
return [x + w / 2, y + h / 2];
"""


def tray_click(shell: Shell, label: str) -> None:
    """Open the tray's menu in the panel and click its entry ``label`` with the pointer."""
    tray_menu_open(shell, True)
    shell.eval(
        "const {Clutter, GLib} = imports.gi;"
        "const b = Main.panel.statusArea[Object.keys(Main.panel.statusArea)"
        ".find(k => k.startsWith('appindicator-'))];"
        "const target = b.menu._getMenuItems()"
        f".find(i => i.label && i.label.text.startsWith({label!r}));" + CLICK
    )


def tray_menu_open(shell: Shell, is_open: bool) -> None:
    verb = "open" if is_open else "close"
    shell.eval(
        "Main.overview.hide(); const b = Main.panel.statusArea[Object.keys(Main.panel.statusArea)"
        f".find(k => k.startsWith('appindicator-'))]; b.menu.{verb}(false); return true;"
    )
    time.sleep(0.7)
